package session

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/livetrace/livetrace/internal/testtarget"
	"github.com/livetrace/livetrace/internal/tracefile"
)

// ucRound makes the ucontext fixture run "run n" and returns its reply and
// its entry counts by function.
func ucRound(t *testing.T, tp *testtarget.Process, n int) (string, map[string]uint64) {
	t.Helper()
	return fixtureRound(t, tp, fmt.Sprintf("run %d", n), "uc_", "sum")
}

// TestGraphUcontext records the ucontext fixture in graph mode, in every
// site form: coroutines whose stack is an array in a traced frame (the
// agent once took the frames below that array for frames left by longjmp
// and dropped them, and the program died of SIGILL when they returned) or
// a malloc'd block, a longjmp out of traced frames, and a handler on a
// sigaltstack that is an array in a traced frame. The program must compute
// what it computes untraced, every entry must be recorded, every frame
// must get its exit at the depth of its entry (but those left by longjmp,
// which get none), and detaching must restore the text and the mappings.
func TestGraphUcontext(t *testing.T) {
	testtarget.RequireRoot(t)
	const n = 200
	for _, form := range testtarget.Forms {
		t.Run(string(form), func(t *testing.T) {
			tp := testtarget.Start(t, testtarget.Build(t, testtarget.Ucontext, form))
			if _, err := tp.Expect("ready", 10*time.Second); err != nil {
				t.Fatal(err)
			}
			base, _ := ucRound(t, tp, n)
			snap := testtarget.TakeSnapshot(t, tp.Pid())
			out := filepath.Join(t.TempDir(), "rec.data")
			s, err := Start(tp.Pid(), Options{Output: out, Graph: true})
			if err != nil {
				t.Fatal(err)
			}
			hooked := false
			for _, h := range s.hookedSlots() {
				hooked = hooked || strings.HasPrefix(h.what, "longjmp ") || strings.HasPrefix(h.what, "__longjmp_chk ")
			}
			if !hooked {
				t.Errorf("longjmp not hooked: %+v", s.hookedSlots())
			}
			line1, want1 := ucRound(t, tp, n)
			line2, want2 := ucRound(t, tp, n)
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			after, _ := ucRound(t, tp, n)
			for _, l := range []string{line1, line2, after} {
				if l != base {
					t.Errorf("the program computed %q, untraced %q", l, base)
				}
			}
			testtarget.CheckText(t, tp.Pid())
			snap.CheckSame(t, tp.Pid())

			rec, err := tracefile.Read(out)
			if err != nil {
				t.Fatal(err)
			}
			got := countEntries(rec)
			for k := range want1 {
				if w := want1[k] + want2[k]; got[k] != w {
					t.Errorf("%s: recorded %d entries, the program counted %d", k, got[k], w)
				}
			}
			checkUcontextGraph(t, rec, want1["uc_jump"]+want2["uc_jump"])
		})
	}
}

// checkUcontextGraph checks that every entry of a uc_ function has its
// exit, of the same function at the same depth, except the jumps frames
// of uc_jump that longjmp left: those are closed by the next entry at
// their depth or above. The calls of two stacks interleave, so they are
// not checked to nest; but two open frames never share a depth.
func checkUcontextGraph(t *testing.T, rec *tracefile.Recording, jumps uint64) {
	t.Helper()
	name := func(f uint32) string {
		n := rec.Funcs[f].Name
		if i := strings.IndexByte(n, '('); i >= 0 {
			n = n[:i]
		}
		return n
	}
	type frame struct {
		fn uint32
		i  int
	}
	var abandoned uint64
	exits := map[string]uint64{}
	threads := map[uint32]map[uint16]frame{}
	for i, ev := range rec.Events {
		th := threads[ev.TID]
		if th == nil {
			th = map[uint16]frame{}
			threads[ev.TID] = th
		}
		switch ev.Kind {
		case tracefile.KindEntry:
			for d, f := range th {
				if d >= ev.Depth && name(f.fn) == "uc_jump" {
					abandoned++
					delete(th, d)
				}
			}
			if f, ok := th[ev.Depth]; ok {
				t.Errorf("event %d: %s entered at depth %d while %s (event %d) is open there", i, name(ev.Func), ev.Depth, name(f.fn), f.i)
				return
			}
			th[ev.Depth] = frame{ev.Func, i}
		case tracefile.KindExit:
			f, ok := th[ev.Depth]
			if !ok || f.fn != ev.Func {
				t.Errorf("event %d: exit of %s at depth %d, open there: %+v", i, name(ev.Func), ev.Depth, f)
				return
			}
			delete(th, ev.Depth)
			exits[name(ev.Func)]++
		}
	}
	for _, th := range threads {
		for d, f := range th {
			if name(f.fn) == "uc_jump" {
				abandoned++
				continue
			}
			t.Errorf("%s (event %d) at depth %d never exited", name(f.fn), f.i, d)
		}
	}
	if abandoned+exits["uc_jump"] != jumps {
		t.Errorf("uc_jump: %d frames left by longjmp + %d exits, %d calls", abandoned, exits["uc_jump"], jumps)
	}
	for _, fn := range []string{"uc_run", "uc_resume", "uc_body", "uc_yield", "uc_alt_deep"} {
		if exits[fn] == 0 {
			t.Errorf("no exit of %s recorded", fn)
		}
	}
}
