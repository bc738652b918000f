package report

import (
	"strings"
	"testing"

	"github.com/livetrace/livetrace/internal/tracefile"
)

// TestLiveGraph feeds a graph-mode printer two threads' batches, split at
// awkward places (a leaf's entry at the end of one batch, its exit at the
// start of the next), and checks replay's layout: leaves folded, open calls
// with their durations on the closing line, threads told apart.
func TestLiveGraph(t *testing.T) {
	meta := tracefile.Meta{Mode: tracefile.ModeGraph, PID: 42, Comm: "app",
		Funcs: []tracefile.Func{{Name: "outer"}, {Name: "leaf"}},
		Clock: tracefile.Clock{TSC0: 1000, Mono0: 0, TSCHz: 1e9}}
	var b strings.Builder
	l := NewLive(&b, meta, Filter{})
	ev := func(tsc uint64, tid uint32, fn uint32, depth uint16, kind tracefile.Kind) tracefile.Event {
		return tracefile.Event{TSC: tsc, TID: tid, Func: fn, Depth: depth, Kind: kind}
	}
	E, X := tracefile.KindEntry, tracefile.KindExit
	l.Events([]tracefile.Event{ev(1000, 7, 0, 0, E), ev(2000, 7, 1, 1, E)})
	l.Events([]tracefile.Event{ev(1500, 8, 1, 0, E), ev(1600, 8, 1, 0, X)})
	l.Events([]tracefile.Event{ev(2500, 7, 1, 1, X), ev(4000, 7, 0, 0, X)})
	if err := l.Flush(true); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"           [      7] | outer() {",
		"  0.100 us [      8] | leaf();",
		"  0.500 us [      7] |   leaf();",
		"  3.000 us [      7] | } /* outer */",
	}
	got := strings.Split(strings.TrimRight(b.String(), "\n"), "\n")
	if len(got) != len(want) {
		t.Fatalf("got\n%s", b.String())
	}
	for i := range want {
		if strings.TrimRight(got[i], " ") != strings.TrimRight(want[i], " ") {
			t.Errorf("line %d: got %q, want %q", i, got[i], want[i])
		}
	}
}

// TestLiveEntry prints entry-mode lines with the caller and the time since
// the session's start; exits are ignored.
func TestLiveEntry(t *testing.T) {
	meta := tracefile.Meta{Mode: tracefile.ModeEntry, PID: 42, Comm: "app",
		Funcs:   []tracefile.Func{{Name: "f"}},
		Threads: []tracefile.Thread{{TID: 7, Name: "worker"}},
		Clock:   tracefile.Clock{TSC0: 0, Mono0: 0, TSCHz: 1e9}}
	var b strings.Builder
	l := NewLive(&b, meta, Filter{})
	l.Events([]tracefile.Event{{TSC: 1_500_000_000, TID: 7, Func: 0, Kind: tracefile.KindEntry}, {TSC: 1_600_000_000, TID: 7, Func: 0, Kind: tracefile.KindExit}})
	l.Flush(true)
	got := strings.TrimSpace(b.String())
	if !strings.Contains(got, "worker-7") || !strings.Contains(got, "1.500000: f <- ") || strings.Count(got, "\n") != 0 {
		t.Fatalf("got %q", got)
	}
}
