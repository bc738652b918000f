package session

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/livetrace/livetrace/internal/testtarget"
)

// TestGoProgram attaches to running Go programs. Go code is refused: the
// agent would run on a goroutine's stack, which may have 128 bytes left
// (elfsite's goRefusal; a static Go program traced this way died with
// "unexpected return pc"). The C functions of a cgo program run on the
// thread's own stack and are traced, every record whole. Either way the
// program runs on, its goroutines growing their stacks and collecting.
func TestGoProgram(t *testing.T) {
	testtarget.RequireRoot(t)
	advancing := func(t *testing.T, tp *testtarget.Process) {
		t.Helper()
		first := -1
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
			l, err := tp.Expect("calls ", 5*time.Second)
			if err != nil {
				t.Fatalf("the Go program: %v", err)
			}
			n, _ := strconv.Atoi(strings.TrimPrefix(l, "calls "))
			if first < 0 {
				first = n
			} else if n > first {
				return
			}
		}
		t.Fatal("the Go program stopped making calls")
	}
	t.Run("static", func(t *testing.T) {
		tp := testtarget.Start(t, testtarget.BuildGo(t, false))
		if _, err := tp.Expect("ready", 10*time.Second); err != nil {
			t.Fatal(err)
		}
		_, err := Start(tp.Pid(), Options{Funcs: []string{"main.*"}, Discard: true})
		if err == nil || !strings.Contains(err.Error(), "Go code") {
			t.Fatalf("Start on Go functions: %v, want the refusal of Go code", err)
		}
		advancing(t, tp)
		testtarget.CheckText(t, tp.Pid())
	})
	t.Run("cgo", func(t *testing.T) {
		tp := testtarget.Start(t, testtarget.BuildGo(t, true))
		if _, err := tp.Expect("ready", 10*time.Second); err != nil {
			t.Fatal(err)
		}
		s, c := startCounting(t, tp.Pid(), Options{Funcs: []string{"c_*", "main.*"}})
		if n := s.Functions(); n != 2 {
			t.Errorf("tracing %d functions, want c_leaf and c_work", n)
		}
		// Windows until a thousand c_work are in, not one window: on a
		// loaded machine the program advanced by a few hundred calls
		// in the first ("931 c_work, want thousands").
		got := map[string]uint64{}
		for deadline := time.Now().Add(30 * time.Second); got["c_work"] < 1000 && time.Now().Before(deadline); {
			advancing(t, tp)
			for fn, n := range c.take(t) {
				got[fn] += n
			}
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		// c_work(n) calls c_leaf n times, n going round 0..99 (events
		// lost on a loaded machine go in whole chunks of both).
		ratio := float64(got["c_leaf"]) / float64(got["c_work"])
		if got["c_work"] < 1000 || ratio < 40 || ratio > 60 {
			t.Errorf("recorded %v: want thousands of c_work, and about 49.5 c_leaf a c_work", got)
		}
		if sum := s.Summary(); sum.Corrupt > 0 {
			t.Errorf("%d malformed records", sum.Corrupt)
		}
		advancing(t, tp)
		testtarget.CheckText(t, tp.Pid())
	})
}
