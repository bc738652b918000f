package session

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/livetrace/livetrace/internal/testtarget"
)

// TestPartialChunksPrompt: a thread that calls a few traced functions and
// then idles never fills its chunk, yet its events must reach the tracer
// (and the status line) within drainEvery, not at detach.
func TestPartialChunksPrompt(t *testing.T) {
	testtarget.RequireRoot(t)
	tp := startWorkload(t, testtarget.ClangNop5)
	workloadRun(t, tp, 1)
	out := filepath.Join(t.TempDir(), "rec.data")
	s, err := Start(tp.Pid(), Options{Funcs: []string{"work_*"}, Output: out})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	want := uint64(0)
	for _, n := range workloadRun(t, tp, 1) {
		want += n
	}
	start := time.Now()
	for time.Since(start) < 5*time.Second {
		if _, err := s.Poll(); err != nil {
			t.Fatal(err)
		}
		if s.Summary().Events >= want {
			break
		}
		time.Sleep(time.Millisecond)
	}
	took := time.Since(start)
	if got := s.Summary().Events; got < want {
		t.Fatalf("after %v the tracer has %d events of the %d calls made", took, got, want)
	}
	t.Logf("%d events arrived %v after the calls", want, took.Round(time.Millisecond))
}
