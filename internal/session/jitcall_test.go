package session

import (
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/livetrace/livetrace/internal/testtarget"
	"github.com/livetrace/livetrace/internal/tracefile"
)

// jitRound makes the jitcall fixture run "run n" and returns its reply's
// counts.
func jitRound(t *testing.T, tp *testtarget.Process, n int) map[string]uint64 {
	t.Helper()
	_, got := fixtureRound(t, tp, "run "+strconv.Itoa(n), "")
	return got
}

// TestGraphJITCaller traces a function that code the program generated
// at run time calls, as JIT-compiled code calls into its runtime, and
// which reads its own return address back, as HotSpot does when it walks
// the stack from a call into the VM (graph mode hijacking it killed a JVM
// within 200 ms). Graph mode must leave those calls alone, count them,
// and trace the calls from the program's text with their exits; entry
// mode traces them all. In every site form, and relocated.
func TestGraphJITCaller(t *testing.T) {
	testtarget.RequireRoot(t)
	const n = 500
	type variant struct {
		name string
		opts []testtarget.Option
	}
	var variants []variant
	for _, form := range testtarget.Forms {
		variants = append(variants, variant{string(form), nil})
	}
	variants = append(variants, variant{"reloc", []testtarget.Option{testtarget.NoSites()}})
	for _, v := range variants {
		form := testtarget.ClangNop5
		for _, f := range testtarget.Forms {
			if string(f) == v.name {
				form = f
			}
		}
		t.Run(v.name, func(t *testing.T) {
			tp := testtarget.Start(t, testtarget.Build(t, testtarget.JITCall, form, v.opts...))
			if _, err := tp.Expect("ready", 10*time.Second); err != nil {
				t.Fatal(err)
			}
			base := jitRound(t, tp, n)
			if base["jit"] != n || base["bad"] != 0 {
				t.Fatalf("untraced: %v", base)
			}
			for _, graph := range []bool{true, false} {
				snap := testtarget.TakeSnapshot(t, tp.Pid())
				out := filepath.Join(t.TempDir(), "rec.data")
				s, err := Start(tp.Pid(), Options{Output: out, Graph: graph, Funcs: []string{"jit_vm", "jit_direct"}})
				if err != nil {
					t.Fatal(err)
				}
				got := jitRound(t, tp, n)
				if err := s.Close(); err != nil {
					t.Fatal(err)
				}
				if got["sum"] != base["sum"] || got["bad"] != 0 || got["jit"] != n {
					t.Errorf("graph=%v: the program saw %v, untraced %v (bad: a return address that was not the thunk's)", graph, got, base)
				}
				testtarget.CheckText(t, tp.Pid())
				snap.CheckSame(t, tp.Pid())
				rec, err := tracefile.Read(out)
				if err != nil {
					t.Fatal(err)
				}
				entries, exits := countEntries(rec), countExits(rec)
				wantVM, wantJIT := uint64(2*n), uint64(0)
				if graph {
					wantVM, wantJIT = n, n
					if exits["jit_vm"] != n || exits["jit_direct"] != n {
						t.Errorf("graph: exits %v, want %d of each", exits, n)
					}
				}
				if entries["jit_vm"] != wantVM || entries["jit_direct"] != n {
					t.Errorf("graph=%v: entries %v, want jit_vm %d, jit_direct %d", graph, entries, wantVM, n)
				}
				if rec.JITCalls != wantJIT {
					t.Errorf("graph=%v: the recording counts %d calls from JIT code, want %d", graph, rec.JITCalls, wantJIT)
				}
			}
		})
	}
}
