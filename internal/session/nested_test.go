package session

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/livetrace/livetrace/internal/testtarget"
	"github.com/livetrace/livetrace/internal/tracefile"
)

// nestedRun makes the nested fixture run n rounds and checks its results:
// a corrupted static chain gives a wrong sum (or a crash).
func nestedRun(t *testing.T, tp *testtarget.Process, n int64) {
	t.Helper()
	if err := tp.Send(fmt.Sprintf("run %d", n)); err != nil {
		t.Fatalf("send: %v; stderr: %s", err, tp.Stderr())
	}
	line, err := tp.Expect("done", 20*time.Second)
	if err != nil {
		t.Fatalf("the target died or hung: %v (exit: %v); stderr: %s", err, tp.Wait(), tp.Stderr())
	}
	want := fmt.Sprintf("done %d %d", 6*n+9*n*(n-1)/2, 3*n)
	if line != want {
		t.Fatalf("target printed %q, want %q", line, want)
	}
}

// TestNestedGraph: a gcc nested function built with -pg -mfentry saves
// %r10 before its site, so [rsp] there is the static chain, not the
// return address. Graph mode must leave it alone (and say so) while it
// traces the rest; the program computes the right results. Entry mode
// traces it, with exact counts.
func TestNestedGraph(t *testing.T) {
	testtarget.RequireRoot(t)
	const n = 300
	for _, graph := range []bool{true, false} {
		t.Run(fmt.Sprintf("graph=%v", graph), func(t *testing.T) {
			exe := testtarget.Build(t, testtarget.Nested, testtarget.GccMcount)
			tp := testtarget.Start(t, exe)
			if _, err := tp.Expect("ready", 10*time.Second); err != nil {
				t.Fatal(err)
			}
			nestedRun(t, tp, 1)
			before := testtarget.TakeSnapshot(t, tp.Pid())
			out := filepath.Join(t.TempDir(), "rec.data")
			s, err := Start(tp.Pid(), Options{Funcs: []string{"nested_*"}, Graph: graph, Output: out})
			if err != nil {
				t.Fatal(err)
			}
			refused := s.Refused()
			nestedRun(t, tp, n)
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			nestedRun(t, tp, 5)
			before.CheckSame(t, tp.Pid())
			rec, err := tracefile.Read(out)
			check(t, err)
			got := countEntries(rec)
			want := map[string]uint64{"nested_outer": n, "nested_apply": 3 * n, "nested_add.0": 3 * n}
			if graph {
				want["nested_add.0"] = 0
				if len(refused) != 1 || refused[0].Name != "nested_add.0" || !strings.Contains(refused[0].Reason, "return address not at [rsp]") {
					t.Errorf("Refused() = %+v, want nested_add.0 with its reason", refused)
				}
				exits := 0
				for _, ev := range rec.Events {
					if ev.Kind == tracefile.KindExit {
						exits++
					}
				}
				if exits != 4*n {
					t.Errorf("%d exits recorded, want %d", exits, 4*n)
				}
			} else if len(refused) != 0 {
				t.Errorf("entry mode refused %+v", refused)
			}
			for fn, w := range want {
				if got[fn] != w {
					t.Errorf("%s: recorded %d calls, want %d", fn, got[fn], w)
				}
			}
		})
	}
}

// TestNestedGraphOnly: a graph-mode selection of nothing but unsafe sites
// is an error that says why and what to do.
func TestNestedGraphOnly(t *testing.T) {
	testtarget.RequireRoot(t)
	exe := testtarget.Build(t, testtarget.Nested, testtarget.GccMcount)
	tp := testtarget.Start(t, exe)
	if _, err := tp.Expect("ready", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	_, err := Start(tp.Pid(), Options{Funcs: []string{"nested_add*"}, Graph: true, Output: filepath.Join(t.TempDir(), "rec.data")})
	if !errors.Is(err, ErrGraphUnsafe) || !strings.Contains(err.Error(), "without --graph") {
		t.Errorf("Start = %v, want ErrGraphUnsafe saying to trace without --graph", err)
	}
	nestedRun(t, tp, 10)
}
