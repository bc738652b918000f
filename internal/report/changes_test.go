package report_test

import (
	"bytes"
	"encoding/json"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/livetrace/livetrace/internal/report"
	"github.com/livetrace/livetrace/internal/tracefile"
	"github.com/livetrace/livetrace/internal/tracefile/tracefiletest"
)

// withChanges is the scenario with fib enabled while attached at 40% of
// the recording and compute disabled at 20% and enabled again at 60%.
func withChanges(t *testing.T, mode tracefile.Mode) (rec *tracefile.Recording, at func(pct int64) uint64, span int64) {
	t.Helper()
	rec = scenario(mode)
	lo, hi := rec.Events[0].TSC, rec.Events[len(rec.Events)-1].TSC
	at = func(pct int64) uint64 { return lo + (hi-lo)*uint64(pct)/100 }
	idx := func(name string) uint32 {
		i := slices.IndexFunc(rec.Funcs, func(f tracefile.Func) bool { return f.Name == name })
		if i < 0 {
			t.Fatalf("no function %s", name)
		}
		return uint32(i)
	}
	rec.Changes = []tracefile.Change{
		{TSC: at(20), Op: "disable", Globs: []string{"comp*"}, Funcs: []uint32{idx("compute")}},
		{TSC: at(40), Op: "enable", Globs: []string{"fib"}, Funcs: []uint32{idx("fib")}},
		{TSC: at(60), Op: "enable", Globs: []string{"compute"}, Funcs: []uint32{idx("compute")}},
	}
	return rec, at, int64(hi-lo) / tracefiletest.TSCPerNS
}

// TestChangesReport checks that report gives each function changed while
// attached the time it was traced, in the table and in JSON.
func TestChangesReport(t *testing.T) {
	for _, mode := range []tracefile.Mode{tracefile.ModeGraph, tracefile.ModeEntry} {
		rec, _, span := withChanges(t, mode)
		got := statsByName(t, rec, report.Filter{})
		near := func(name string, want int64) {
			t.Helper()
			s := got[name]
			if s.Traced == nil {
				t.Fatalf("%s: mode %v: no traced time", name, mode)
			}
			if d := *s.Traced - want; d < -2 || d > 2 {
				t.Errorf("%s: mode %v: traced %d ns, want %d", name, mode, *s.Traced, want)
			}
		}
		// fib: from 40% to the end; compute: 0-20% and 60-100%.
		near("fib", span*60/100)
		near("compute", span*20/100+span*40/100)
		if got["run"].Traced != nil {
			t.Errorf("run, never changed, has a traced time %d", *got["run"].Traced)
		}
		var b bytes.Buffer
		if err := report.Report(&b, rec, report.ReportOptions{}); err != nil {
			t.Fatal(err)
		}
		out := b.String()
		if !strings.Contains(out, "# traced for part of the recording only") ||
			!regexpLine(out, `#   fib: .* of .*, from \+0\.00[0-9] s`) ||
			!regexpLine(out, `#   compute: .*, from \+0\.000 s, \+0\.00[0-9] s`) {
			t.Errorf("mode %v: report has no right note on partly traced functions:\n%s", mode, out)
		}
		b.Reset()
		if err := report.Report(&b, rec, report.ReportOptions{JSON: true}); err != nil {
			t.Fatal(err)
		}
		var js []map[string]any
		if err := json.Unmarshal(b.Bytes(), &js); err != nil {
			t.Fatal(err)
		}
		for _, o := range js {
			_, has := o["traced_ns"]
			if want := o["function"] == "fib" || o["function"] == "compute"; has != want {
				t.Errorf("mode %v: JSON %v: traced_ns present %v, want %v", mode, o, has, want)
			}
		}
	}
}

// TestChangesReplay checks that replay prints each change as a comment
// line between the events before and after it.
func TestChangesReplay(t *testing.T) {
	for _, mode := range []tracefile.Mode{tracefile.ModeGraph, tracefile.ModeEntry} {
		rec, _, _ := withChanges(t, mode)
		var b bytes.Buffer
		if err := report.Replay(&b, rec, report.Filter{}); err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(b.String(), "\n")
		var marks []int
		for i, l := range lines {
			if strings.Contains(l, ": disable comp* (1 function: compute)") ||
				strings.Contains(l, ": enable fib (1 function: fib)") ||
				strings.Contains(l, ": enable compute (1 function: compute)") {
				marks = append(marks, i)
			}
		}
		if len(marks) != 3 || !(marks[0] < marks[1] && marks[1] < marks[2]) {
			t.Fatalf("mode %v: change lines at %v, want 3 in order:\n%s", mode, marks, b.String())
		}
		// Events on both sides of the changes.
		if marks[0] < 5 || marks[2] > len(lines)-3 {
			t.Errorf("mode %v: change lines at %v of %d lines: not among the events:\n%s", mode, marks, len(lines), b.String())
		}
		// A function filter keeps only the changes that name it.
		b.Reset()
		f := report.Filter{Funcs: make([]bool, len(rec.Funcs))}
		f.Funcs[slices.IndexFunc(rec.Funcs, func(f tracefile.Func) bool { return f.Name == "fib" })] = true
		if err := report.Replay(&b, rec, f); err != nil {
			t.Fatal(err)
		}
		if out := b.String(); !strings.Contains(out, "enable fib") || strings.Contains(out, "compute)") {
			t.Errorf("mode %v: replay -F fib shows the wrong changes:\n%s", mode, out)
		}
	}
}

// regexpLine reports whether a line of s matches re.
func regexpLine(s, re string) bool {
	return regexp.MustCompile("(?m)^" + re + "$").MatchString(s)
}
