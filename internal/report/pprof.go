package report

import (
	"fmt"
	"io"

	"github.com/google/pprof/profile"

	"github.com/livetrace/livetrace/internal/tracefile"
)

// Profile builds a pprof profile of rec with two sample types, calls/count
// and time/nanoseconds (the default). Each unique stack of traced functions
// (threads merged) is one sample: its calls value counts the calls that
// ended in that stack, its time value is the stack's self time (0 in entry
// mode, whose stacks are rebuilt from the recorded callers and may start
// with an untraced caller). Each function is one location at its entry
// address, in the mapping of its module. When the module's file on this
// machine has the recorded build ID and DWARF line tables (in the file or
// in its separate debug file under /usr/lib/debug/.build-id), the
// function carries its source file and the location the line of its
// entry.
func Profile(rec *tracefile.Recording, f Filter) (*profile.Profile, error) {
	return ProfileStream(rec.Stream(tracefile.StreamOptions{}), f)
}

// ProfileStream is [Profile] of a stream.
func ProfileStream(s *tracefile.Stream, f Filter) (*profile.Profile, error) {
	rec := &s.Meta
	st, err := newStackTree(s, f)
	if err != nil {
		return nil, err
	}
	p := &profile.Profile{
		SampleType: []*profile.ValueType{
			{Type: "calls", Unit: "count"},
			{Type: "time", Unit: "nanoseconds"},
		},
		DefaultSampleType: "time",
		PeriodType:        &profile.ValueType{Type: "calls", Unit: "count"},
		Period:            1,
		TimeNanos:         rec.Start.UnixNano(),
		Comments:          []string{fmt.Sprintf("livetrace %s-mode recording of pid %d (%s)", rec.Mode, rec.PID, Printable(rec.Comm))},
	}
	if !rec.End.IsZero() && rec.End.After(rec.Start) {
		p.DurationNanos = rec.End.Sub(rec.Start).Nanoseconds()
	}
	if !st.graph {
		p.DefaultSampleType = "calls"
	}
	// Mappings: one per module, sized to hold its functions.
	maps := make([]*profile.Mapping, len(rec.Modules))
	for i, m := range rec.Modules {
		maps[i] = &profile.Mapping{ID: uint64(i + 1), Start: m.Base, Limit: m.Limit, File: Printable(m.Path), BuildID: Printable(m.BuildID), HasFunctions: true}
	}
	for _, fn := range rec.Funcs {
		if fn.Module >= 0 && fn.Module < len(maps) {
			m := maps[fn.Module]
			if end := fn.Addr + max(fn.Size, 1); end > m.Limit {
				m.Limit = end
			}
			m.Start = min(m.Start, fn.Addr)
		}
	}
	for _, c := range st.callers {
		if c.Module >= 0 && c.Module < len(maps) {
			m := maps[c.Module]
			if end := c.Addr + max(c.Size, 1); end > m.Limit {
				m.Limit = end
			}
			m.Start = min(m.Start, c.Addr)
		}
	}
	p.Mapping = maps
	src := newSourceLines(rec)
	defer src.close()
	locs := map[uint32]*profile.Location{}
	loc := func(fn uint32) *profile.Location {
		if l, ok := locs[fn]; ok {
			return l
		}
		addr, mod := st.symbol(fn)
		pf := &profile.Function{ID: uint64(len(p.Function) + 1), Name: st.name(fn), SystemName: st.name(fn)}
		p.Function = append(p.Function, pf)
		l := &profile.Location{ID: uint64(len(p.Location) + 1), Line: []profile.Line{{Function: pf}}, Address: addr}
		if mod >= 0 && mod < len(maps) {
			l.Mapping = maps[mod]
			pf.Filename = Printable(rec.Modules[mod].Path)
			if file, line, ok := src.line(mod, addr); ok {
				pf.Filename, pf.StartLine = Printable(file), int64(line)
				l.Line[0].Line = int64(line)
			}
		}
		p.Location = append(p.Location, l)
		locs[fn] = l
		return l
	}
	st.walk(func(n int32, _ []string) {
		node := &st.nodes[n]
		var self int64
		if st.graph {
			self = max(node.self, 0)
		}
		if node.calls == 0 && self == 0 {
			return
		}
		s := &profile.Sample{Value: []int64{int64(node.calls), self}}
		for k := n; k >= 0; k = st.nodes[k].parent {
			s.Location = append(s.Location, loc(st.nodes[k].fn))
		}
		p.Sample = append(p.Sample, s)
	})
	return p, nil
}

// ExportPprof writes the [Profile] of rec as a gzipped protocol buffer.
func ExportPprof(w io.Writer, rec *tracefile.Recording, f Filter) error {
	return ExportPprofStream(w, rec.Stream(tracefile.StreamOptions{}), f)
}

// ExportPprofStream is [ExportPprof] of a stream.
func ExportPprofStream(w io.Writer, s *tracefile.Stream, f Filter) error {
	p, err := ProfileStream(s, f)
	if err != nil {
		return err
	}
	if err := p.Write(w); err != nil {
		return fmt.Errorf("write pprof profile: %w", err)
	}
	return nil
}
