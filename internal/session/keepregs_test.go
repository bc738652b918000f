package session

import (
	"bytes"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/livetrace/livetrace/internal/elfsite"
	"github.com/livetrace/livetrace/internal/reloc"
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
				// A first instruction left in place whose flags or
				// registers the rest reads keeps them regardless.
				if want := !tc.off || x.plan.KeptLive; x.site.Form != elfsite.FormReloc || x.keep != want {
					t.Errorf("%s: form %s keep %v, want a relocated site that keeps every register: %v", x.name, x.site.Form, x.keep, want)
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

// TestStubBodyOff: restore finds where a stub's relocated instructions
// start from the stub's own bytes, for every stub layout: with and
// without the keep prologue, with a kept push or sub (undone before the
// call, run again after) and with a kept instruction that only needs the
// registers and flags kept. A stub that undoes one thing and then runs
// another is refused.
func TestStubBodyOff(t *testing.T) {
	const fn, at, slot = 0x401000, 0x402000, 0x403000
	rest := []byte{0x48, 0x89, 0xe5, 0x31, 0xc0, 0xc3} // mov %rsp,%rbp; xor %eax,%eax; ret
	for _, first := range [][]byte{
		nil,                      // the region at the function's start
		{0x55},                   // push %rbp
		{0x41, 0x54},             // push %r12
		{0x48, 0x83, 0xec, 0x18}, // sub $0x18,%rsp
		{0x48, 0x81, 0xec, 0xd8, 0x00, 0x00, 0x00}, // sub $0xd8,%rsp
		{0x85, 0xff}, // test %edi,%edi
	} {
		code := append(append([]byte(nil), first...), rest...)
		plan, err := reloc.Analyze(code, fn, reloc.Options{KeepFirst: true})
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(plan.Kept, first) {
			t.Fatalf("% x: kept % x", first, plan.Kept)
		}
		for _, keep := range []bool{false, true} {
			stub, err := relocStub(plan, at, slot, keep)
			if err != nil {
				t.Fatal(err)
			}
			off, err := stubBodyOff(stub[:min(len(stub), maxStubHead)])
			if want := relocBodyOff(plan, keep); err != nil || off != want {
				t.Errorf("% x, keep %v: body at %d (%v), want %d", first, keep, off, err, want)
			}
			body, err := plan.Relocate(at + relocBodyOff(plan, keep))
			if err != nil || !bytes.HasPrefix(stub[relocBodyOff(plan, keep):], body) {
				t.Errorf("% x, keep %v: the body is not where relocBodyOff says", first, keep)
			}
			if call := stub[relocCallOff(plan, keep)]; call != 0xe8 {
				t.Errorf("% x, keep %v: %#x where the call should be", first, keep, call)
			}
		}
	}
	bad := append(undo(8), 0xe8, 0, 0, 0, 0, 0x41, 0x55) // undoes 8, then runs push %r13: fine
	if _, err := stubBodyOff(bad); err != nil {
		t.Errorf("lea 8; call; push %%r13: %v", err)
	}
	bad = append(undo(16), 0xe8, 0, 0, 0, 0, 0x55) // undoes 16, then runs a push of 8
	if _, err := stubBodyOff(bad); err == nil {
		t.Error("a stub that undoes 16 bytes and pushes 8: no error")
	}
}
