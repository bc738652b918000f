package session

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/livetrace/livetrace/internal/testtarget"
)

// TestQuiesceEach checks that Close, in entry mode with NOP sites, checks
// the threads one at a time instead of stopping them all (quiesce.go),
// while 4 threads call the traced functions, and that the target's text,
// memory map and results come out intact. In graph mode it must not.
func TestQuiesceEach(t *testing.T) {
	testtarget.RequireRoot(t)
	tp, want := startHammering(t, testtarget.ClangNop5)
	before := testtarget.TakeSnapshot(t, tp.Pid())
	stepped := 0
	for i := 0; i < 3; i++ {
		graph := i == 2
		s, err := Start(tp.Pid(), Options{Funcs: []string{"fn_*"}, Graph: graph, Output: filepath.Join(t.TempDir(), "rec.data")})
		if err != nil {
			t.Fatalf("cycle %d: %v", i, err)
		}
		time.Sleep(50 * time.Millisecond)
		if err := s.Close(); err != nil {
			t.Fatalf("cycle %d: %v", i, err)
		}
		// In entry mode a thread caught in a stub steps into the agent,
		// and quiesce then stops every thread after all (quiesceEach):
		// the check one at a time was made, and stepped that thread.
		tried := s.quiescedEach || s.quiesceStepped > 0
		if graph && s.quiescedEach || !graph && !tried {
			t.Errorf("cycle %d (graph %v): quiesced one thread at a time: %v (threads stepped: %d)", i, graph, s.quiescedEach, s.quiesceStepped)
		}
		stepped += s.quiesceStepped
		testtarget.CheckText(t, tp.Pid())
	}
	t.Logf("threads stepped out of the agent or a stub at detach: %d", stepped)
	before.CheckSame(t, tp.Pid())
	stopHammering(t, tp, want)
}
