package report

import (
	"bufio"
	"fmt"
	"sort"
	"strings"

	"github.com/livetrace/livetrace/internal/tracefile"
)

// Changes of what is traced, made while attached (Meta.Changes): replay
// prints each as a comment line where it happened, and report counts a
// function's time only while it was traced.

// changeText describes change c in one line: the operation, the globs and
// the functions (at most 10 named).
func changeText(rec *tracefile.Meta, c *tracefile.Change) string {
	var names []string
	for i, f := range c.Funcs {
		if i == 10 {
			names = append(names, fmt.Sprintf("and %d more", len(c.Funcs)-10))
			break
		}
		names = append(names, funcName(rec, f))
	}
	s := c.Op
	if len(c.Globs) > 0 {
		s += " " + Printable(strings.Join(c.Globs, " "))
	}
	return fmt.Sprintf("%s (%s: %s)", s, count(uint64(len(c.Funcs)), "function"), strings.Join(names, ", "))
}

// changeMarks writes the changes of a recording into a replay, each
// before the first event shown at or after its time.
type changeMarks struct {
	rec  *tracefile.Meta
	ns   []int64 // of each change, since the first event
	keep []bool  // the change names a function the filter shows
	next int
}

func newChangeMarks(s *tracefile.Stream, f Filter) *changeMarks {
	m := &changeMarks{rec: &s.Meta}
	first := s.Clock.Nanos(s.FirstTSC)
	for i := range s.Changes {
		c := &s.Changes[i]
		m.ns = append(m.ns, s.Clock.Nanos(c.TSC)-first)
		keep := f.Funcs == nil
		for _, fn := range c.Funcs {
			if keep {
				break
			}
			keep = int(fn) < len(f.Funcs) && f.Funcs[fn]
		}
		m.keep = append(m.keep, keep)
	}
	return m
}

// upTo writes the changes made at or before ns (since the first event).
func (m *changeMarks) upTo(w *bufio.Writer, ns int64) {
	for m.next < len(m.ns) && m.ns[m.next] <= ns {
		m.write(w)
	}
}

// rest writes the changes made after the last event.
func (m *changeMarks) rest(w *bufio.Writer) {
	for m.next < len(m.ns) {
		m.write(w)
	}
}

func (m *changeMarks) write(w *bufio.Writer) {
	i := m.next
	m.next++
	if !m.keep[i] {
		return
	}
	ns := m.ns[i]
	sign := ""
	if ns < 0 {
		// Made before the first event.
		sign, ns = "-", -ns
	}
	fmt.Fprintf(w, "# %s%d.%06d: %s\n", sign, ns/1e9, ns%1e9/1e3, changeText(m.rec, &m.rec.Changes[i]))
}

// tscSpan is a half-open interval of TSC values.
type tscSpan struct{ from, to uint64 }

// tracedSpans returns, for each function whose state a change altered, the
// spans of [lo, hi] in which it was traced. A function is traced from the
// start unless the first change that names it traces it (an enable or a
// load): then it was not traced before. Functions no change names were
// traced throughout and are not in the map.
func tracedSpans(rec *tracefile.Meta, lo, hi uint64) map[uint32][]tscSpan {
	if len(rec.Changes) == 0 {
		return nil
	}
	changes := make([]*tracefile.Change, len(rec.Changes))
	for i := range rec.Changes {
		changes[i] = &rec.Changes[i]
	}
	// In the order they were made; the writer keeps that order, this is
	// only for recordings made otherwise.
	sort.SliceStable(changes, func(i, j int) bool { return changes[i].TSC < changes[j].TSC })
	type state struct {
		on    bool
		since uint64
		spans []tscSpan
	}
	fns := map[uint32]*state{}
	for _, c := range changes {
		on := c.Op == "enable" || c.Op == "load"
		for _, fn := range c.Funcs {
			st := fns[fn]
			if st == nil {
				st = &state{on: !on, since: lo}
				fns[fn] = st
			}
			if st.on == on {
				continue
			}
			at := min(max(c.TSC, lo), hi)
			if st.on {
				if at > st.since {
					st.spans = append(st.spans, tscSpan{st.since, at})
				}
			} else {
				st.since = at
			}
			st.on = on
		}
	}
	out := make(map[uint32][]tscSpan, len(fns))
	for fn, st := range fns {
		if st.on && hi > st.since {
			st.spans = append(st.spans, tscSpan{st.since, hi})
		}
		out[fn] = st.spans
	}
	return out
}

// partialNote writes, under a report table, the functions traced for part
// of the recording only: how long and from when.
func partialNote(w *bufio.Writer, s *tracefile.Stream, stats []FuncStats) {
	var lines []string
	first := s.Clock.Nanos(s.FirstTSC)
	span := s.Clock.Nanos(s.LastTSC) - first
	for i := range stats {
		st := &stats[i]
		if st.spans == nil {
			continue
		}
		var from []string
		for _, sp := range st.spans {
			from = append(from, fmt.Sprintf("%+.3f s", float64(s.Clock.Nanos(sp.from)-first)/1e9))
		}
		when := "never"
		if len(from) > 0 {
			when = "from " + strings.Join(from, ", ")
		}
		lines = append(lines, fmt.Sprintf("#   %s: %s of %s, %s", st.Function, human(*st.Traced), human(span), when))
	}
	if len(lines) == 0 {
		return
	}
	fmt.Fprintf(w, "#\n# traced for part of the recording only (livetrace ctl), calls count while traced:\n")
	for _, l := range lines {
		fmt.Fprintln(w, l)
	}
}
