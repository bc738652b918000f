package session

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/livetrace/livetrace/internal/elfsite"
	"github.com/livetrace/livetrace/internal/testtarget"
	"github.com/livetrace/livetrace/internal/tracefile"
)

// keepRun runs "run n" on the keepregs fixture and returns its bad and
// wrong counts.
func keepRun(t *testing.T, tp *testtarget.Process, n int) (bad, wrong int) {
	t.Helper()
	if err := tp.Send(fmt.Sprintf("run %d", n)); err != nil {
		t.Fatal(err)
	}
	l, err := tp.Expect("done", 60*time.Second)
	if err != nil {
		t.Fatalf("the program did not answer (killed?): %v", err)
	}
	var got int
	if _, err := fmt.Sscanf(l, "done %d bad %d wrong %d", &got, &bad, &wrong); err != nil || got != n {
		t.Fatalf("reply %q", l)
	}
	return bad, wrong
}

// TestKeepRegs traces, by relocation, functions of a gcc -O2 program
// whose callers keep values in call-clobbered registers across the call
// (gcc's -fipa-ra; and an assembly caller that checks rax..r11 and the
// carry flag around a function that touches none of them). Every register
// and the flags must come back as the function left them, at the entry
// and, in graph mode, at the hijacked return; the counts must be exact.
// Without the keep stubs (keepOff) the program sees its registers change:
// the check is real.
func TestKeepRegs(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := testtarget.Build(t, testtarget.KeepRegs, testtarget.GccMcount, testtarget.NoSites())
	const n = 20000
	for _, tc := range []struct {
		graph, off bool
	}{{false, false}, {true, false}, {false, true}} {
		t.Run(fmt.Sprintf("graph=%v/keep=%v", tc.graph, !tc.off), func(t *testing.T) {
			tp := testtarget.Start(t, bin)
			if _, err := tp.Expect("ready", 10*time.Second); err != nil {
				t.Fatal(err)
			}
			before := testtarget.TakeSnapshot(t, tp.Pid())
			out := filepath.Join(t.TempDir(), "rec.data")
			keepOff = tc.off
			s, err := Start(tp.Pid(), Options{Funcs: []string{"kr_touch_none", "ipa_callee", "ipa_caller", "kr_five"}, Graph: tc.graph, Output: out})
			keepOff = false
			if err != nil {
				t.Fatal(err)
			}
			for _, x := range s.sel {
				if x.site.Form != elfsite.FormReloc || x.keep == tc.off {
					t.Errorf("%s: form %s keep %v, want a relocated site that keeps every register: %v", x.name, x.site.Form, x.keep, !tc.off)
				}
			}
			// In rounds that fit the agent's buffer, with time for the
			// consumer between them: a lost event would fail the count.
			bad, wrong := 0, 0
			for r := 0; r < n/1000; r++ {
				b, w := keepRun(t, tp, 1000)
				bad, wrong = bad+b, wrong+w
				if _, err := s.Poll(); err != nil {
					t.Fatal(err)
				}
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if tc.off {
				if bad == 0 || wrong == 0 {
					t.Errorf("without keep stubs: %d registers changed, %d wrong results: the fixture does not see the damage", bad, wrong)
				}
				return
			}
			if bad != 0 || wrong != 0 {
				t.Errorf("%d registers or flags came back changed, %d wrong results", bad, wrong)
			}
			rec, err := tracefile.Read(out)
			if err != nil {
				t.Fatal(err)
			}
			got := countEntries(rec)
			want := map[string]uint64{"kr_touch_none": n, "ipa_caller": n, "ipa_callee": 100 * n, "kr_five": n}
			for fn, w := range want {
				if got[fn] != w {
					t.Errorf("%s: %d calls recorded, want %d", fn, got[fn], w)
				}
			}
			if tc.graph {
				exits := 0
				for _, ev := range rec.Events {
					if ev.Kind == tracefile.KindExit {
						exits++
					}
				}
				if uint64(exits) != 103*n {
					t.Errorf("%d exits recorded, want %d", exits, 103*n)
				}
			}
			if rec.Lost != 0 {
				t.Errorf("%d events lost", rec.Lost)
			}
			testtarget.CheckText(t, tp.Pid())
			before.CheckSame(t, tp.Pid())
			if bad, wrong := keepRun(t, tp, 100); bad != 0 || wrong != 0 {
				t.Errorf("after detach: %d bad, %d wrong", bad, wrong)
			}
		})
	}
}

// TestCompilerOfModule checks how a module's compiler is told: clang with
// DWARF keeps no registers, gcc does, and so does a file that does not say
// (-fno-ident).
func TestCompilerOfModule(t *testing.T) {
	if commentClangOnly("GCC: (Debian 12.2.0-14) 12.2.0\x00Debian clang version 16.0.6\x00") {
		t.Error("a .comment naming GCC and clang counts as clang alone")
	}
	if !commentClangOnly("Debian clang version 16.0.6\x00") {
		t.Error("a .comment naming clang alone does not count")
	}
	if commentClangOnly("") {
		t.Error("an empty .comment counts as clang")
	}
	for _, tc := range []struct {
		form  testtarget.Form
		ident bool // else built with -fno-ident: nothing says which compiler
		keep  bool
	}{{testtarget.ClangNop5, true, false}, {testtarget.GccMcount, true, true}, {testtarget.ClangNop5, false, true}} {
		opts := []testtarget.Option{testtarget.NoSites()}
		if tc.ident {
			opts = append(opts, testtarget.Ident())
		}
		bin := testtarget.Build(t, testtarget.KeepRegs, tc.form, opts...)
		tp := testtarget.Start(t, bin)
		if _, err := tp.Expect("ready", 10*time.Second); err != nil {
			t.Fatal(err)
		}
		mods, err := elfsite.LiveModules(tp.Pid())
		if err != nil {
			t.Fatal(err)
		}
		s := &Session{pid: tp.Pid(), mods: mods}
		found := false
		for i, m := range mods {
			if strings.HasSuffix(m.Path, "/"+testtarget.KeepRegs) {
				found = true
				if got := s.moduleKeeps(i); got != tc.keep {
					t.Errorf("%s built by %s (ident %v): keep %v, want %v", m.Path, tc.form, tc.ident, got, tc.keep)
				}
			}
		}
		if !found {
			t.Fatalf("no module %s in %v", testtarget.KeepRegs, mods)
		}
		tp.Kill()
	}
}
