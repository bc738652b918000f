package session

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/livetrace/livetrace/internal/testtarget"
	"github.com/livetrace/livetrace/internal/textpoke"
	"github.com/livetrace/livetrace/internal/tracefile"
)

// sigStorm: see the signals fixture (c/signals.c). ITIMER_PROF at 1 kHz,
// SIGALRM every 2 ms without SA_RESTART, a realtime storm between two
// threads, every handler on a sigaltstack and calling the traced
// sig_handler_fn; the main thread waits in read, the checkers in
// nanosleep, futex, epoll_wait and read.
var sigStorm = []string{"-t", "4", "-prof", "1000", "-alrm", "2000", "-norestart", "-rt", "-rtus", "500", "-altstack"}

// TestRecordUnderSignals records the signals fixture while signals rain on
// it, in every site form, in entry and graph mode, and in stop mode (a
// worker that blocks every signal, SIGTRAP too, rules out live mode).
// Attach, injection, patching, recording, unpatching and agent removal
// must all survive: the counts are exact, the program's results and text
// are as before, and its blocked threads saw no EINTR and no short wait.
func TestRecordUnderSignals(t *testing.T) {
	testtarget.RequireRoot(t)
	const iters = 3000
	for _, form := range testtarget.Forms {
		for _, variant := range []string{"entry", "graph", "stop-blocked"} {
			t.Run(string(form)+"/"+variant, func(t *testing.T) {
				args := sigStorm
				if variant == "stop-blocked" {
					args = append(append([]string{}, sigStorm...), "-blocked")
				}
				tp := testtarget.Start(t, testtarget.Build(t, testtarget.Signals, form), args...)
				if _, err := tp.Expect("ready", 30*time.Second); err != nil {
					t.Fatal(err)
				}
				want := sigDone(t, tp, iters)
				before := testtarget.TakeSnapshot(t, tp.Pid())
				out := filepath.Join(t.TempDir(), "rec.data")
				s, err := Start(tp.Pid(), Options{Funcs: []string{"sig_*"}, Output: out, Graph: variant == "graph"})
				if err != nil {
					t.Fatal(err)
				}
				mode, why := s.Mode()
				if wantStop := variant == "stop-blocked"; (mode == textpoke.ModeStop) != wantStop {
					t.Errorf("mode %v (%s)", mode, why)
				}
				time.Sleep(200 * time.Millisecond) // patched, under signals
				got := sigDone(t, tp, iters)
				time.Sleep(100 * time.Millisecond)
				if err := s.Close(); err != nil {
					t.Fatal(err)
				}
				if got != want {
					t.Errorf("traced run: %s, want %s", got, want)
				}
				rec, err := tracefile.Read(out)
				check(t, err)
				counts := countEntries(rec)
				n := uint64(iters * 4)
				for fn, c := range map[string]uint64{"sig_top": n, "sig_mid": 2 * n, "sig_leaf": 2 * n} {
					if counts[fn] != c {
						t.Errorf("%s: recorded %d calls, the program made %d", fn, counts[fn], c)
					}
				}
				// A handler that interrupts the agent while it records
				// an event of the same thread has its own call dropped
				// (and counted lost) by design; the calls of the code it
				// interrupted are all there, as checked above.
				t.Logf("mode %v; recorded %d calls of sig_handler_fn (from handlers on the alternate stack), %d dropped as reentries", mode, counts["sig_handler_fn"], rec.Lost)
				testtarget.CheckText(t, tp.Pid())
				before.CheckSame(t, tp.Pid())
				if again := sigDone(t, tp, iters); again != want {
					t.Errorf("after detach: %s, want %s", again, want)
				}
				sigCheckers(t, tp)
			})
		}
	}
}

func sigDone(t *testing.T, tp *testtarget.Process, n int) string {
	t.Helper()
	check(t, tp.Send(fmt.Sprintf("run %d", n)))
	l, err := tp.Expect("done", 60*time.Second)
	if err != nil {
		t.Fatalf("run: %v (the target died? stderr %q)", err, tp.Stderr())
	}
	return l
}

// sigCheckers checks the signals fixture's counters: its blocked threads
// saw no EINTR and no short wait, its handlers ran on the alternate stack.
func sigCheckers(t *testing.T, tp *testtarget.Process) {
	t.Helper()
	check(t, tp.Send("stats"))
	l, err := tp.Expect("stats", 10*time.Second)
	check(t, err)
	m := map[string]uint64{}
	for _, f := range strings.Fields(l)[1:] {
		k, v, _ := strings.Cut(f, "=")
		m[k], _ = strconv.ParseUint(v, 10, 64)
	}
	for _, k := range []string{"sleep", "futex", "epoll", "read"} {
		if m[k+"_eintr"] != 0 || m[k+"_short"] != 0 {
			t.Errorf("checker %s: %d EINTR, %d short waits, want none", k, m[k+"_eintr"], m[k+"_short"])
		}
	}
	if m["offstack"] != 0 {
		t.Errorf("%d handlers ran off the alternate stack", m["offstack"])
	}
	if m["prof"] == 0 || m["alrm"] == 0 || m["rt"] == 0 {
		t.Errorf("not every signal was handled: %v", m)
	}
}

// TestCloneVMChildKeepsParentTraced checks that a clone(CLONE_VM) child
// that is not a thread does not make the tracer restore the text it
// shares with the parent: the parent's calls after the clone are still
// all recorded.
func TestCloneVMChildKeepsParentTraced(t *testing.T) {
	testtarget.RequireRoot(t)
	tp := testtarget.Start(t, testtarget.Build(t, testtarget.SignalsExec, testtarget.ClangNop5))
	if _, err := tp.Expect("ready", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "rec.data")
	s, err := Start(tp.Pid(), Options{Funcs: []string{"sig_exec_fn"}, Output: out})
	check(t, err)
	for _, c := range []struct{ cmd, reply string }{
		{"call 10", "called 10"},
		{"clonevm 10", "clonevm 0"},
		{"call 10", "called 10"},
	} {
		check(t, tp.Send(c.cmd))
		if l, err := tp.Expect(strings.Fields(c.reply)[0], 10*time.Second); err != nil || l != c.reply {
			t.Fatalf("%s: %q, %v", c.cmd, l, err)
		}
	}
	check(t, s.Close())
	rec, err := tracefile.Read(out)
	check(t, err)
	// The parent made 30 calls; the child's 10 run the same patched text
	// and may be recorded too.
	got := countEntries(rec)["sig_exec_fn"]
	if got != 30 && got != 40 {
		t.Errorf("recorded %d calls of sig_exec_fn, want the parent's 30 (plus the child's 10)", got)
	}
	testtarget.CheckText(t, tp.Pid())
	check(t, tp.Send("call 1"))
	if _, err := tp.Expect("called 1", 10*time.Second); err != nil {
		t.Fatal(err)
	}
}
