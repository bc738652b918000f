package report

import (
	"bufio"
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"

	"github.com/livetrace/livetrace/internal/tracefile"
)

// FuncStats is the report line of one traced function. Times are in ns and
// count only calls that completed (see the package documentation).
type FuncStats struct {
	Function string `json:"function"`
	Module   string `json:"module"`
	// Calls counts the shown calls (entries), completed or not.
	Calls uint64 `json:"calls"`
	// Total is the time the function was on the stack: the durations of its
	// outermost frames, so that recursion counts once.
	Total int64 `json:"total_ns"`
	// Self is the time spent in the function itself: its durations minus
	// those of its shown children, summed over all frames.
	Self int64 `json:"self_ns"`
	// Avg, Min and Max are over the durations of every completed call,
	// recursive ones included.
	Avg int64 `json:"avg_ns"`
	Min int64 `json:"min_ns"`
	Max int64 `json:"max_ns"`
	// Traced is, for a function traced for part of the recording only
	// (enabled or disabled while attached, see Meta.Changes), how long it
	// was traced; nil for one traced throughout.
	Traced *int64 `json:"traced_ns,omitempty"`

	fn        uint32
	spans     []tscSpan
	completed uint64
	sum       int64
}

// SortColumns are the columns [Stats] can sort by.
var SortColumns = []string{"calls", "name", "total", "self", "avg", "min", "max"}

// ReportOptions configures [Report].
type ReportOptions struct {
	Filter
	// Sort is one of SortColumns; "" sorts by calls in entry mode and by
	// total in graph mode.
	Sort string
	// JSON writes a JSON array instead of a table.
	JSON bool
}

// Stats computes the per-function statistics of rec, sorted by column sort
// (numbers descending, names ascending; ties by name).
func Stats(rec *tracefile.Recording, f Filter, sort string) ([]FuncStats, error) {
	return StatsStream(rec.Stream(tracefile.StreamOptions{}), f, sort)
}

// StatsStream is [Stats] of a stream: it aggregates as it reads, holding
// the open calls only.
func StatsStream(s *tracefile.Stream, f Filter, sort string) ([]FuncStats, error) {
	rec := &s.Meta
	graph := rec.Mode == tracefile.ModeGraph
	if sort == "" {
		sort = "calls"
		if graph {
			sort = "total"
		}
	}
	if !slices.Contains(SortColumns, sort) {
		return nil, fmt.Errorf("sort report: unknown column %q: use one of calls, name, total, self, avg, min, max", sort)
	}
	if !graph && sort != "calls" && sort != "name" {
		return nil, fmt.Errorf("sort report: column %q needs a graph-mode recording: sort by calls or name", sort)
	}
	if err := f.check(rec); err != nil {
		return nil, err
	}
	// Indexed by function: no map lookup per call.
	byFn := make([]*FuncStats, len(rec.Funcs))
	get := func(fn uint32) *FuncStats {
		if int(fn) >= len(byFn) {
			// Only a Recording made by hand has such events.
			byFn = append(byFn, make([]*FuncStats, int(fn)+1-len(byFn))...)
		}
		s := byFn[fn]
		if s == nil {
			s = &FuncStats{Function: funcName(rec, fn), Module: moduleName(rec, fn), Min: math.MaxInt64, fn: fn}
			byFn[fn] = s
		}
		return s
	}
	if graph {
		e := newEngine(s, f)
		e.recycle = true
		e.onResolve = func(c *ocall) {
			if !c.visible {
				return
			}
			s := get(c.fn)
			s.Calls++
			if c.status != complete {
				return
			}
			d := c.dur()
			s.completed++
			s.sum += d
			s.Self += d - c.childTime
			if c.outermost {
				s.Total += d
			}
			s.Min = min(s.Min, d)
			s.Max = max(s.Max, d)
		}
		if err := e.run(s, nil); err != nil {
			return nil, err
		}
	} else {
		// A slice indexed by function: no map lookup per event.
		calls := make([]uint64, len(rec.Funcs))
		all := len(f.TIDs) == 0 && f.Funcs == nil
		for {
			b, ok := s.NextBatch()
			if !ok {
				break
			}
			for i := range b {
				ev := &b[i]
				if ev.Kind == tracefile.KindEntry && (all || f.keep(ev)) && int(ev.Func) < len(calls) {
					calls[ev.Func]++
				}
			}
		}
		for fn, n := range calls {
			if n > 0 {
				get(uint32(fn)).Calls = n
			}
		}
	}
	if err := s.Err(); err != nil {
		return nil, err
	}
	out := make([]FuncStats, 0, len(byFn))
	for _, s := range byFn {
		if s == nil {
			continue
		}
		if s.completed > 0 {
			s.Avg = s.sum / int64(s.completed)
		} else {
			s.Min = 0
		}
		out = append(out, *s)
	}
	if spans := tracedSpans(rec, s.FirstTSC, s.LastTSC); spans != nil {
		for i := range out {
			st := &out[i]
			sp, ok := spans[st.fn]
			if !ok {
				continue
			}
			var t int64
			for _, x := range sp {
				t += s.Clock.Nanos(x.to) - s.Clock.Nanos(x.from)
			}
			st.Traced, st.spans = &t, sp
			if st.spans == nil {
				st.spans = []tscSpan{}
			}
		}
	}
	key := map[string]func(*FuncStats) int64{
		"calls": func(s *FuncStats) int64 { return int64(s.Calls) },
		"total": func(s *FuncStats) int64 { return s.Total },
		"self":  func(s *FuncStats) int64 { return s.Self },
		"avg":   func(s *FuncStats) int64 { return s.Avg },
		"min":   func(s *FuncStats) int64 { return s.Min },
		"max":   func(s *FuncStats) int64 { return s.Max },
	}[sort]
	slices.SortFunc(out, func(a, b FuncStats) int {
		if key != nil {
			if c := cmp.Compare(key(&b), key(&a)); c != 0 {
				return c
			}
		}
		if c := cmp.Compare(a.Function, b.Function); c != 0 {
			return c
		}
		return cmp.Compare(a.Module, b.Module)
	})
	return out, nil
}

// Report writes the per-function statistics of rec as a table or as JSON:
// an array of objects with "function", "module", "calls", and in graph mode
// "total_ns", "self_ns", "avg_ns", "min_ns", "max_ns".
func Report(w io.Writer, rec *tracefile.Recording, o ReportOptions) error {
	return ReportStream(w, rec.Stream(tracefile.StreamOptions{}), o)
}

// ReportStream is [Report] of a stream.
func ReportStream(w io.Writer, s *tracefile.Stream, o ReportOptions) error {
	rec := &s.Meta
	stats, err := StatsStream(s, o.Filter, o.Sort)
	if err != nil {
		return err
	}
	graph := rec.Mode == tracefile.ModeGraph
	bw := bufio.NewWriter(w)
	if o.JSON {
		var v any
		if graph {
			v = stats
		} else {
			type entryStats struct {
				Function string `json:"function"`
				Module   string `json:"module"`
				Calls    uint64 `json:"calls"`
				Traced   *int64 `json:"traced_ns,omitempty"`
			}
			es := make([]entryStats, len(stats))
			for i, s := range stats {
				es[i] = entryStats{s.Function, s.Module, s.Calls, s.Traced}
			}
			v = es
		}
		enc := json.NewEncoder(bw)
		enc.SetIndent("", "  ")
		if err := enc.Encode(v); err != nil {
			return fmt.Errorf("write report: %w", err)
		}
	} else if graph {
		writeLostHeader(bw, rec, s.Recovered, s.Dropped)
		fmt.Fprintf(bw, "%12s  %12s  %10s  %12s  %12s  %12s  %s\n", "Total time", "Self time", "Calls", "Avg", "Min", "Max", "Function")
		fmt.Fprintf(bw, "%12s  %12s  %10s  %12s  %12s  %12s  %s\n", "==========", "==========", "==========", "==========", "==========", "==========", "========")
		for _, s := range stats {
			// A function none of whose calls completed has no times.
			tot, self, avg, lo, hi := "-", "-", "-", "-", "-"
			if s.completed > 0 {
				tot, self, avg, lo, hi = human(s.Total), human(s.Self), human(s.Avg), human(s.Min), human(s.Max)
			}
			fmt.Fprintf(bw, "%12s  %12s  %10d  %12s  %12s  %12s  %s\n", tot, self, s.Calls, avg, lo, hi, s.Function)
		}
		partialNote(bw, s, stats)
	} else {
		writeLostHeader(bw, rec, s.Recovered, s.Dropped)
		fmt.Fprintf(bw, "%10s  %s\n%10s  %s\n", "Calls", "Function", "==========", "========")
		for _, s := range stats {
			fmt.Fprintf(bw, "%10d  %s\n", s.Calls, s.Function)
		}
		partialNote(bw, s, stats)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return nil
}

// human formats ns as "123 ns", "1.234 us", "1.234 ms" or "1.234 s".
func human(ns int64) string {
	a := ns
	if a < 0 {
		a = -a
	}
	switch {
	case a < 1e3:
		return fmt.Sprintf("%d ns", ns)
	case a < 1e6:
		return fmt.Sprintf("%.3f us", float64(ns)/1e3)
	case a < 1e9:
		return fmt.Sprintf("%.3f ms", float64(ns)/1e6)
	default:
		return fmt.Sprintf("%.3f s", float64(ns)/1e9)
	}
}
