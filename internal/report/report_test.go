package report_test

import (
	"bytes"
	"encoding/json"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/google/pprof/profile"

	"github.com/livetrace/livetrace/internal/report"
	"github.com/livetrace/livetrace/internal/tracefile"
	"github.com/livetrace/livetrace/internal/tracefile/tracefiletest"
)

func scenario(mode tracefile.Mode) *tracefile.Recording {
	return tracefiletest.Scenario(mode).Recording()
}

func statsByName(t *testing.T, rec *tracefile.Recording, f report.Filter) map[string]report.FuncStats {
	t.Helper()
	stats, err := report.Stats(rec, f, "")
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]report.FuncStats{}
	for _, s := range stats {
		m[s.Function] = s
	}
	return m
}

// TestStatsGraph checks the report of the scenario against durations
// worked out by hand from tracefiletest.Scenario.
func TestStatsGraph(t *testing.T) {
	rec := scenario(tracefile.ModeGraph)
	got := statsByName(t, rec, report.Filter{})
	opt := cmpopts.IgnoreUnexported(report.FuncStats{})
	// fib(n) lasts 15 us + n ns plus its children: fib(3) = 75007 ns. Only
	// the outermost frame counts in total; self adds all five frames.
	fib := report.FuncStats{Function: "fib", Module: "/usr/bin/demo", Calls: 5,
		Total: 75007, Self: 75007, Avg: (75007 + 45003 + 15001 + 15000 + 15001) / 5, Min: 15000, Max: 75007}
	if diff := cmp.Diff(fib, got["fib"], opt); diff != "" {
		t.Errorf("fib (-want +got):\n%s", diff)
	}
	// compute: one complete call (175007 ns), one unfinished; its entry in
	// run #2 was lost, so that exit is ignored.
	compute := report.FuncStats{Function: "compute", Module: "/usr/bin/demo", Calls: 2,
		Total: 175007, Self: 100000, Avg: 175007, Min: 175007, Max: 175007}
	if diff := cmp.Diff(compute, got["compute"], opt); diff != "" {
		t.Errorf("compute (-want +got):\n%s", diff)
	}
	// run: 2055007 + 505000 (the third is unfinished). The lost compute
	// and fib of run #2 count as run's self time.
	run := report.FuncStats{Function: "run", Module: "/usr/bin/demo", Calls: 3,
		Total: 2560007, Self: 130000 + 205000, Avg: 2560007 / 2, Min: 505000, Max: 2055007}
	if diff := cmp.Diff(run, got["run"], opt); diff != "" {
		t.Errorf("run (-want +got):\n%s", diff)
	}
	// libhash_update in worker-2 lost its exit: counted, no time.
	lh := got["libhash_update"]
	if lh.Calls != 4 || lh.Total != 270000 || lh.Module != "/usr/lib/libhash.so" {
		t.Errorf("libhash_update = %+v", lh)
	}
	// process in worker-2: 165 us, of which the unfinished child took 135.
	if p := got["process"]; p.Calls != 4 || p.Self != 30000+(20000+300000)+(20000+400000)+(20000+500000) {
		t.Errorf("process = %+v", p)
	}
	stats, _ := report.Stats(rec, report.Filter{}, "")
	if stats[0].Function != "run" {
		t.Errorf("default sort starts with %q, want run (largest total)", stats[0].Function)
	}
}

func TestStatsEntry(t *testing.T) {
	rec := scenario(tracefile.ModeEntry)
	got := statsByName(t, rec, report.Filter{})
	want := map[string]uint64{"fib": 5, "run": 3, "compute": 2, "process": 4, "idle": 2, "parse": 3, "worker": 1}
	for name, calls := range want {
		if got[name].Calls != calls {
			t.Errorf("%s: %d calls, want %d", name, got[name].Calls, calls)
		}
	}
	if _, err := report.Stats(rec, report.Filter{}, "total"); err == nil {
		t.Error("sort by total accepted in entry mode")
	}
	if _, err := report.Stats(rec, report.Filter{MinDuration: time.Microsecond}, ""); err == nil {
		t.Error("duration filter accepted in entry mode")
	}
}

func TestStatsSort(t *testing.T) {
	rec := scenario(tracefile.ModeGraph)
	for _, col := range report.SortColumns {
		stats, err := report.Stats(rec, report.Filter{}, col)
		if err != nil {
			t.Fatal(err)
		}
		ok := slices.IsSortedFunc(stats, func(a, b report.FuncStats) int {
			v := map[string]func(s report.FuncStats) int64{
				"calls": func(s report.FuncStats) int64 { return -int64(s.Calls) },
				"total": func(s report.FuncStats) int64 { return -s.Total },
				"self":  func(s report.FuncStats) int64 { return -s.Self },
				"avg":   func(s report.FuncStats) int64 { return -s.Avg },
				"min":   func(s report.FuncStats) int64 { return -s.Min },
				"max":   func(s report.FuncStats) int64 { return -s.Max },
			}[col]
			if v == nil {
				return strings.Compare(a.Function, b.Function)
			}
			if x, y := v(a), v(b); x != y {
				if x < y {
					return -1
				}
				return 1
			}
			return strings.Compare(a.Function, b.Function)
		})
		if !ok {
			t.Errorf("sort %s: not sorted: %v", col, stats)
		}
	}
	if _, err := report.Stats(rec, report.Filter{}, "bogus"); err == nil || !strings.Contains(err.Error(), "use one of") {
		t.Errorf("sort bogus: %v", err)
	}
}

func TestFilters(t *testing.T) {
	rec := scenario(tracefile.ModeGraph)
	// Depth 1: only outermost calls; run's self is then its whole time.
	got := statsByName(t, rec, report.Filter{MaxDepth: 1})
	if len(got) != 4 { // run, worker, process (worker-2), idle
		t.Errorf("depth 1 shows %d functions: %v", len(got), got)
	}
	if r := got["run"]; r.Self != r.Total {
		t.Errorf("depth 1: run self %d != total %d", r.Self, r.Total)
	}
	// 100 us: fib and push_back are shorter; so is libhash_update (80, 90).
	got = statsByName(t, rec, report.Filter{MinDuration: 100 * time.Microsecond})
	for _, name := range []string{"fib", "std::vector<int>::push_back(int const&)"} {
		if _, ok := got[name]; ok {
			t.Errorf("-t 100us shows %s", name)
		}
	}
	// Kept: the 100 us call, and worker-2's call without an exit.
	if lh := got["libhash_update"]; lh.Calls != 2 {
		t.Errorf("-t 100us: libhash_update %+v, want 2 calls", lh)
	}
	got = statsByName(t, rec, report.Filter{TIDs: []uint32{101}})
	if _, ok := got["run"]; ok || got["process"].Calls != 3 {
		t.Errorf("--tid 101: %v", got)
	}
	if _, err := report.Stats(rec, report.Filter{MaxDepth: -1}, ""); err == nil {
		t.Error("negative depth accepted")
	}
}

func TestReportJSON(t *testing.T) {
	for _, mode := range []tracefile.Mode{tracefile.ModeEntry, tracefile.ModeGraph} {
		var buf bytes.Buffer
		if err := report.Report(&buf, scenario(mode), report.ReportOptions{JSON: true}); err != nil {
			t.Fatal(err)
		}
		var rows []map[string]any
		if err := json.Unmarshal(buf.Bytes(), &rows); err != nil {
			t.Fatalf("%s: %v\n%s", mode, err, buf.Bytes())
		}
		if len(rows) == 0 {
			t.Fatalf("%s: no rows", mode)
		}
		keys := []string{"function", "module", "calls"}
		if mode == tracefile.ModeGraph {
			keys = append(keys, "total_ns", "self_ns", "avg_ns", "min_ns", "max_ns")
		}
		for _, r := range rows {
			var got []string
			for k := range r {
				got = append(got, k)
			}
			if diff := cmp.Diff(keys, got, cmpopts.SortSlices(func(a, b string) bool { return a < b })); diff != "" {
				t.Errorf("%s: keys (-want +got):\n%s", mode, diff)
			}
		}
	}
}

type chromeEvent struct {
	Name string         `json:"name"`
	Ph   string         `json:"ph"`
	TS   *float64       `json:"ts"`
	Dur  *float64       `json:"dur"`
	PID  *int           `json:"pid"`
	TID  *uint32        `json:"tid"`
	Args map[string]any `json:"args"`
}

// checkChrome parses a chrome trace and checks its structure: every event
// has ph, ts, pid and tid, "X" events have dur and nest per thread.
func checkChrome(t *testing.T, data []byte) []chromeEvent {
	t.Helper()
	var doc struct {
		TraceEvents     []chromeEvent `json:"traceEvents"`
		DisplayTimeUnit string        `json:"displayTimeUnit"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatalf("chrome trace: %v\n%s", err, data)
	}
	if doc.DisplayTimeUnit != "ns" {
		t.Errorf("displayTimeUnit %q", doc.DisplayTimeUnit)
	}
	type span struct{ start, end float64 }
	stacks := map[uint32][]span{}
	const eps = 1e-6
	for i, ev := range doc.TraceEvents {
		if ev.Ph == "" || ev.TS == nil || ev.PID == nil || ev.TID == nil {
			t.Fatalf("event %d lacks ph/ts/pid/tid: %+v", i, ev)
		}
		if ev.Ph != "X" {
			continue
		}
		if ev.Dur == nil || *ev.Dur < 0 {
			t.Fatalf("X event %d without a valid dur: %+v", i, ev)
		}
		s := stacks[*ev.TID]
		start, end := *ev.TS, *ev.TS+*ev.Dur
		for len(s) > 0 && s[len(s)-1].end <= start+eps && !(s[len(s)-1].end >= end-eps && s[len(s)-1].start <= start+eps && *ev.Dur == 0) {
			s = s[:len(s)-1]
		}
		if n := len(s); n > 0 {
			if p := s[n-1]; start < p.start-eps || end > p.end+eps {
				t.Fatalf("event %d (%s) [%v, %v] overlaps its enclosing [%v, %v] on tid %d", i, ev.Name, start, end, p.start, p.end, *ev.TID)
			}
		}
		if n := len(s); n > 0 && start < s[n-1].start-eps {
			t.Fatalf("event %d out of order", i)
		}
		stacks[*ev.TID] = append(s, span{start, end})
	}
	return doc.TraceEvents
}

func TestChrome(t *testing.T) {
	var buf bytes.Buffer
	if err := report.ExportChrome(&buf, scenario(tracefile.ModeGraph), report.Filter{}); err != nil {
		t.Fatal(err)
	}
	evs := checkChrome(t, buf.Bytes())
	var x, names, unfinished int
	for _, ev := range evs {
		switch {
		case ev.Ph == "X":
			x++
			if ev.Args["unfinished"] == true {
				unfinished++
			}
		case ev.Ph == "M" && ev.Name == "thread_name":
			names++
		}
	}
	stats, _ := report.Stats(scenario(tracefile.ModeGraph), report.Filter{}, "")
	var calls uint64
	for _, s := range stats {
		calls += s.Calls
	}
	if uint64(x) != calls || names != 3 || unfinished != 2 {
		t.Errorf("%d X events (want %d), %d thread names, %d unfinished", x, calls, names, unfinished)
	}

	buf.Reset()
	if err := report.ExportChrome(&buf, scenario(tracefile.ModeEntry), report.Filter{TIDs: []uint32{100}}); err != nil {
		t.Fatal(err)
	}
	for _, ev := range checkChrome(t, buf.Bytes()) {
		if ev.Ph != "M" && (ev.Ph != "i" || *ev.TID != 100 || ev.Args["caller"] == nil) {
			t.Errorf("entry mode event %+v", ev)
		}
	}
}

func foldedTotal(t *testing.T, data string) (total int64, lines int) {
	t.Helper()
	for _, line := range strings.Split(strings.TrimSuffix(data, "\n"), "\n") {
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseInt(line[i+1:], 10, 64)
		if i <= 0 || err != nil || v <= 0 {
			t.Fatalf("bad folded line %q", line)
		}
		total += v
		lines++
	}
	return total, lines
}

func TestFoldedAndPprof(t *testing.T) {
	for _, mode := range []tracefile.Mode{tracefile.ModeEntry, tracefile.ModeGraph} {
		rec := scenario(mode)
		var folded, pb bytes.Buffer
		if err := report.ExportFolded(&folded, rec, report.Filter{}); err != nil {
			t.Fatal(err)
		}
		ftotal, _ := foldedTotal(t, folded.String())
		if err := report.ExportPprof(&pb, rec, report.Filter{}); err != nil {
			t.Fatal(err)
		}
		p, err := profile.Parse(&pb)
		if err != nil {
			t.Fatal(err)
		}
		if len(p.SampleType) != 2 || p.SampleType[0].Type != "calls" || p.SampleType[1].Unit != "nanoseconds" {
			t.Fatalf("sample types %v", p.SampleType)
		}
		var calls, ns int64
		for _, s := range p.Sample {
			calls += s.Value[0]
			ns += s.Value[1]
			if s.Location[0].Mapping == nil {
				t.Errorf("location without mapping: %v", s.Location[0])
			}
		}
		stats, _ := report.Stats(rec, report.Filter{}, "")
		var wantCalls int64
		for _, s := range stats {
			wantCalls += int64(s.Calls)
		}
		if calls != wantCalls {
			t.Errorf("%s: pprof calls %d, want %d", mode, calls, wantCalls)
		}
		if mode == tracefile.ModeEntry {
			if ftotal != wantCalls || ns != 0 {
				t.Errorf("entry: folded total %d, pprof time %d; want %d calls", ftotal, ns, wantCalls)
			}
			continue
		}
		if ns != ftotal {
			t.Errorf("graph: pprof time %d != folded total %d", ns, ftotal)
		}
		// Every thread's top-level calls, ended at the last event when
		// unfinished: demo 2055007+505000+(last-run3 start), worker-1, worker-2.
		last := rec.Clock.Nanos(rec.Events[len(rec.Events)-1].TSC) - rec.Clock.Nanos(rec.Events[0].TSC)
		run3 := int64(5+20+2055+200+505+100)*1000 + 7 - 5000 // first event is at 5 us
		want := 2055007 + 505000 + (last - run3) + (1675000 + 1000000) + (165000 + 400000)
		if ns != want {
			t.Errorf("graph: pprof time %d, want %d", ns, want)
		}
	}
}

func TestFlameGraph(t *testing.T) {
	var buf bytes.Buffer
	if err := report.ExportFlameGraph(&buf, scenario(tracefile.ModeGraph), report.Filter{}); err != nil {
		t.Fatal(err)
	}
	html := buf.String()
	for _, bad := range []string{"http://", "https://", "src=", "href=", "@import"} {
		if strings.Contains(html, bad) {
			t.Errorf("flame graph is not self-contained: contains %q", bad)
		}
	}
	for _, name := range []string{"run", "compute", "fib", "libhash_update", "std::vector&lt;int&gt;::push_back(int const&amp;)"} {
		if !strings.Contains(html, `data-n="`+name+`"`) {
			t.Errorf("flame graph lacks %s", name)
		}
	}
	if !strings.HasPrefix(html, "<!DOCTYPE html>") || !strings.Contains(html, "</html>") {
		t.Error("not an HTML document")
	}
}

func TestInfo(t *testing.T) {
	var buf bytes.Buffer
	if err := report.Info(&buf, scenario(tracefile.ModeGraph)); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"pid 4242 (demo)", "graph", "worker-1", "/usr/lib/libhash.so", "lost events:             3"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("info lacks %q:\n%s", want, buf.String())
		}
	}
}

func TestSymbolizedCallers(t *testing.T) {
	var buf bytes.Buffer
	if err := report.Replay(&buf, scenario(tracefile.ModeEntry), report.Filter{}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"fib <- fib+0x13", "run <- __libc_start_call_main+0x7a"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("replay lacks %q", want)
		}
	}
}

// TestRandomRecordings runs every reader on random event streams (lost
// events, bad depths, exits without entries): nothing may panic, and chrome
// traces must still nest.
func TestRandomRecordings(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for iter := 0; iter < 300; iter++ {
		rec := &tracefile.Recording{Meta: tracefile.Meta{Mode: tracefile.ModeGraph, PID: 1}}
		if iter%5 == 0 {
			rec.Mode = tracefile.ModeEntry
		}
		nf := 1 + r.IntN(5)
		for i := 0; i < nf; i++ {
			rec.Funcs = append(rec.Funcs, tracefile.Func{Name: "f" + strconv.Itoa(i), Module: -1, Addr: uint64(0x1000 * (i + 1)), Size: 0x100})
		}
		tsc := uint64(r.IntN(100))
		for i := r.IntN(60); i > 0; i-- {
			tsc += uint64(r.IntN(50))
			k := tracefile.KindEntry
			if r.IntN(2) == 0 {
				k = tracefile.KindExit
			}
			rec.Events = append(rec.Events, tracefile.Event{TSC: tsc, TID: uint32(1 + r.IntN(3)), Kind: k,
				Func: uint32(r.IntN(nf)), Depth: uint16(r.IntN(4)), Caller: uint64(r.IntN(0x8000))})
		}
		if iter%7 == 0 {
			rec.Clock = tracefile.Clock{TSC0: math.MaxUint64, TSC1: 3, Mono1: math.MaxUint64}
		}
		var filters []report.Filter
		filters = append(filters, report.Filter{}, report.Filter{TIDs: []uint32{2}})
		if rec.Mode == tracefile.ModeGraph {
			filters = append(filters, report.Filter{MaxDepth: 2, MinDuration: 20})
		}
		for _, f := range filters {
			var buf bytes.Buffer
			if err := report.ExportChrome(&buf, rec, f); err != nil {
				t.Fatal(err)
			}
			if iter%7 != 0 {
				checkChrome(t, buf.Bytes())
			}
			for _, fn := range []func() error{
				func() error { return report.Replay(&buf, rec, f) },
				func() error { return report.Report(&buf, rec, report.ReportOptions{Filter: f}) },
				func() error { return report.ExportFolded(&buf, rec, f) },
				func() error { return report.ExportPprof(&buf, rec, f) },
				func() error { return report.ExportFlameGraph(&buf, rec, f) },
				func() error { return report.Info(&buf, rec) },
			} {
				if err := fn(); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
}

func TestPrintable(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", ""},
		{"std::vector<int>::push_back(int const&)", "std::vector<int>::push_back(int const&)"},
		{"worker-1", "worker-1"},
		{"\x1b[2Jclear", `\x1b[2Jclear`},
		{"a\r\n\tb\a\x00", `a\r\n\tb\x07\x00`},
		{"del\x7f", `del\x7f`},
		{"back\\slash", `back\\slash`},
		{"c1\u0085\u009b", `c1\u0085\u009b`},
		{"\u202eexe.txt", `\u202eexe.txt`},
		{"\u2066iso\u2069\u200f\u200b\u2028\ufeff", `\u2066iso\u2069\u200f\u200b\u2028\ufeff`},
		{"bad\xff\xc3", `bad\xff\xc3`},
		{"\U000e0001tag\U0010fffd", `\U000e0001tag\U0010fffd`},
		{"поток-1 名前 café\u00a0x", "поток-1 名前 café\u00a0x"},
	} {
		if got := report.Printable(tc.in); got != tc.want {
			t.Errorf("Printable(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestPprofFields reads the pprof export back with pprof's own parser and
// checks every field livetrace writes: the sample, period and default
// types, the period, the time, duration and comment, and for each sample
// its locations, their mappings (module path, build ID, a range holding
// the function) and functions (name, system name, file).
func TestPprofFields(t *testing.T) {
	for _, mode := range []tracefile.Mode{tracefile.ModeEntry, tracefile.ModeGraph} {
		rec := scenario(mode)
		rec.Modules[0].BuildID = "0123abcd"
		var pb bytes.Buffer
		if err := report.ExportPprof(&pb, rec, report.Filter{}); err != nil {
			t.Fatal(err)
		}
		p, err := profile.Parse(&pb)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.CheckValid(); err != nil {
			t.Fatalf("%s: %v", mode, err)
		}
		def := "calls"
		if mode == tracefile.ModeGraph {
			def = "time"
		}
		if p.DefaultSampleType != def || p.PeriodType == nil || p.PeriodType.Type != "calls" || p.PeriodType.Unit != "count" || p.Period != 1 {
			t.Errorf("%s: default %q, period type %v, period %d", mode, p.DefaultSampleType, p.PeriodType, p.Period)
		}
		if p.TimeNanos != rec.Start.UnixNano() || p.DurationNanos != rec.End.Sub(rec.Start).Nanoseconds() {
			t.Errorf("%s: time %d duration %d, want %d and %d", mode, p.TimeNanos, p.DurationNanos, rec.Start.UnixNano(), rec.End.Sub(rec.Start).Nanoseconds())
		}
		if len(p.Comments) != 1 || !strings.Contains(p.Comments[0], mode.String()+"-mode recording of pid") {
			t.Errorf("%s: comments %q", mode, p.Comments)
		}
		if len(p.Sample) == 0 {
			t.Fatalf("%s: no samples", mode)
		}
		byName := map[string]tracefile.Func{}
		for _, f := range rec.Funcs {
			byName[f.Name] = f
		}
		for _, s := range p.Sample {
			if len(s.Value) != 2 {
				t.Fatalf("%s: sample values %v", mode, s.Value)
			}
			for _, l := range s.Location {
				fn := l.Line[0].Function
				if fn.SystemName != fn.Name {
					t.Errorf("%s: function %q has system name %q", mode, fn.Name, fn.SystemName)
				}
				f, ok := byName[fn.Name]
				if !ok {
					continue // an untraced caller (entry mode)
				}
				m := l.Mapping
				if l.Address != f.Addr || m == nil || m.File != rec.Modules[f.Module].Path || fn.Filename != m.File ||
					m.BuildID != rec.Modules[f.Module].BuildID || !m.HasFunctions || f.Addr < m.Start || f.Addr >= m.Limit {
					t.Errorf("%s: %s at %#x in %+v (file %q), want %#x in %s", mode, fn.Name, l.Address, m, fn.Filename, f.Addr, rec.Modules[f.Module].Path)
				}
			}
		}
	}
}
