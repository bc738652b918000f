package report

import (
	"bufio"
	"compress/gzip"
	"fmt"
	"io"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/livetrace/livetrace/internal/tracefile"
)

// The pprof export writes pprof's profile.proto (github.com/google/pprof,
// proto/profile.proto) itself, with protowire, gzipped as `go tool pprof`
// reads it. The pprof library would do the same, but its package
// initialization compiles regular expressions at every start of the
// tracer, whatever the command: 0.6 ms of CPU of the 3.6 a start costs,
// on the attach path of `record`.

// Profile is a pprof profile of a recording, as [ProfileStream] builds it.
type Profile struct {
	Mappings  []ProfileMapping
	Functions []ProfileFunction
	Locations []ProfileLocation
	Samples   []ProfileSample
	// Graph: the samples' values are calls and self time (default
	// sample type "time"); otherwise calls, and a time of 0 (default
	// "calls").
	Graph               bool
	TimeNanos, Duration int64
	Comment             string
}

// ProfileMapping is a module: IDs are 1-based indexes.
type ProfileMapping struct {
	Start, Limit  uint64
	File, BuildID string
}

// ProfileFunction is a function; StartLine and a File from DWARF when the
// module's file (or its debug file) has line tables.
type ProfileFunction struct {
	Name, File string
	StartLine  int64
}

// ProfileLocation is a function's entry: Mapping and Function are 1-based
// indexes (Mapping 0: none).
type ProfileLocation struct {
	Mapping, Function uint64
	Address           uint64
	Line              int64
}

// ProfileSample is one stack, leaf first (1-based indexes of Locations),
// with its calls and self time.
type ProfileSample struct {
	Locations   []uint64
	Calls, Time int64
}

// ProfileStream builds the pprof profile of a stream with two sample types,
// calls/count and time/nanoseconds (the default). Each unique stack of
// traced functions (threads merged) is one sample: its calls value counts
// the calls that ended in that stack, its time value is the stack's self
// time (0 in entry mode, whose stacks are rebuilt from the recorded callers
// and may start with an untraced caller). Each function is one location at
// its entry address, in the mapping of its module. When the module's file
// on this machine has the recorded build ID and DWARF line tables (in the
// file or in its separate debug file under /usr/lib/debug/.build-id), the
// function carries its source file and the location the line of its
// entry.
func ProfileStream(s *tracefile.Stream, f Filter) (*Profile, error) {
	rec := &s.Meta
	st, err := newStackTree(s, f)
	if err != nil {
		return nil, err
	}
	p := &Profile{
		Graph:     st.graph,
		TimeNanos: rec.Start.UnixNano(),
		Comment:   fmt.Sprintf("livetrace %s-mode recording of pid %d (%s)", rec.Mode, rec.PID, Printable(rec.Comm)),
	}
	if !rec.End.IsZero() && rec.End.After(rec.Start) {
		p.Duration = rec.End.Sub(rec.Start).Nanoseconds()
	}
	// Mappings: one per module, sized to hold its functions.
	maps := make([]ProfileMapping, len(rec.Modules))
	for i, m := range rec.Modules {
		maps[i] = ProfileMapping{Start: m.Base, Limit: m.Limit, File: Printable(m.Path), BuildID: Printable(m.BuildID)}
	}
	grow := func(mod int, addr, size uint64) {
		if mod >= 0 && mod < len(maps) {
			m := &maps[mod]
			m.Limit = max(m.Limit, addr+max(size, 1))
			m.Start = min(m.Start, addr)
		}
	}
	for _, fn := range rec.Funcs {
		grow(fn.Module, fn.Addr, fn.Size)
	}
	for _, c := range st.callers {
		grow(c.Module, c.Addr, c.Size)
	}
	p.Mappings = maps
	src := newSourceLines(rec)
	defer src.close()
	locs := map[uint32]uint64{}
	loc := func(fn uint32) uint64 {
		if id, ok := locs[fn]; ok {
			return id
		}
		addr, mod := st.symbol(fn)
		pf := ProfileFunction{Name: st.name(fn)}
		l := ProfileLocation{Address: addr, Function: uint64(len(p.Functions) + 1)}
		if mod >= 0 && mod < len(maps) {
			l.Mapping = uint64(mod + 1)
			pf.File = Printable(rec.Modules[mod].Path)
			if file, line, ok := src.line(mod, addr); ok {
				pf.File, pf.StartLine = Printable(file), int64(line)
				l.Line = int64(line)
			}
		}
		p.Functions = append(p.Functions, pf)
		p.Locations = append(p.Locations, l)
		id := uint64(len(p.Locations))
		locs[fn] = id
		return id
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
		s := ProfileSample{Calls: int64(node.calls), Time: self}
		for k := n; k >= 0; k = st.nodes[k].parent {
			s.Locations = append(s.Locations, loc(st.nodes[k].fn))
		}
		p.Samples = append(p.Samples, s)
	})
	return p, nil
}

// The field numbers of profile.proto.
const (
	pfSampleType        = 1
	pfSample            = 2
	pfMapping           = 3
	pfLocation          = 4
	pfFunction          = 5
	pfStringTable       = 6
	pfTimeNanos         = 9
	pfDurationNanos     = 10
	pfPeriodType        = 11
	pfPeriod            = 12
	pfComment           = 13
	pfDefaultSampleType = 14
)

// Encode returns the profile as profile.proto (not gzipped).
func (p *Profile) Encode() []byte {
	strs := []string{""}
	idx := map[string]uint64{"": 0}
	str := func(s string) uint64 {
		if i, ok := idx[s]; ok {
			return i
		}
		idx[s] = uint64(len(strs))
		strs = append(strs, s)
		return idx[s]
	}
	var b, m []byte
	// msg appends field num of b holding message m (built by fill).
	msg := func(num protowire.Number, fill func(m []byte) []byte) {
		m = fill(m[:0])
		b = protowire.AppendTag(b, num, protowire.BytesType)
		b = protowire.AppendBytes(b, m)
	}
	varint := func(m []byte, num protowire.Number, v uint64) []byte {
		if v == 0 {
			return m // proto3: zero is the default
		}
		m = protowire.AppendTag(m, num, protowire.VarintType)
		return protowire.AppendVarint(m, v)
	}
	valueType := func(typ, unit string) func(m []byte) []byte {
		t, u := str(typ), str(unit)
		return func(m []byte) []byte { return varint(varint(m, 1, t), 2, u) }
	}
	msg(pfSampleType, valueType("calls", "count"))
	msg(pfSampleType, valueType("time", "nanoseconds"))
	var packed []byte
	for _, s := range p.Samples {
		msg(pfSample, func(m []byte) []byte {
			packed = packed[:0]
			for _, l := range s.Locations {
				packed = protowire.AppendVarint(packed, l)
			}
			m = protowire.AppendTag(m, 1, protowire.BytesType)
			m = protowire.AppendBytes(m, packed)
			packed = protowire.AppendVarint(packed[:0], uint64(s.Calls))
			packed = protowire.AppendVarint(packed, uint64(s.Time))
			m = protowire.AppendTag(m, 2, protowire.BytesType)
			return protowire.AppendBytes(m, packed)
		})
	}
	for i, mp := range p.Mappings {
		msg(pfMapping, func(m []byte) []byte {
			m = varint(m, 1, uint64(i+1))
			m = varint(m, 2, mp.Start)
			m = varint(m, 3, mp.Limit)
			m = varint(m, 5, str(mp.File))
			m = varint(m, 6, str(mp.BuildID))
			return varint(m, 7, 1) // has_functions
		})
	}
	for i, l := range p.Locations {
		msg(pfLocation, func(m []byte) []byte {
			m = varint(m, 1, uint64(i+1))
			m = varint(m, 2, l.Mapping)
			m = varint(m, 3, l.Address)
			line := varint(varint(nil, 1, l.Function), 2, uint64(l.Line))
			m = protowire.AppendTag(m, 4, protowire.BytesType)
			return protowire.AppendBytes(m, line)
		})
	}
	for i, f := range p.Functions {
		msg(pfFunction, func(m []byte) []byte {
			name := str(f.Name)
			m = varint(m, 1, uint64(i+1))
			m = varint(m, 2, name)
			m = varint(m, 3, name) // system_name
			m = varint(m, 4, str(f.File))
			return varint(m, 5, uint64(f.StartLine))
		})
	}
	comment := str(p.Comment)
	def := str("calls")
	if p.Graph {
		def = str("time")
	}
	period := valueType("calls", "count")
	for _, s := range strs {
		b = protowire.AppendTag(b, pfStringTable, protowire.BytesType)
		b = protowire.AppendString(b, s)
	}
	b = varint(b, pfTimeNanos, uint64(p.TimeNanos))
	b = varint(b, pfDurationNanos, uint64(p.Duration))
	msg(pfPeriodType, period)
	b = varint(b, pfPeriod, 1)
	b = protowire.AppendTag(b, pfComment, protowire.VarintType)
	b = protowire.AppendVarint(b, comment)
	return varint(b, pfDefaultSampleType, def)
}

// Write writes the profile gzipped, as pprof reads it.
func (p *Profile) Write(w io.Writer) error {
	bw := bufio.NewWriter(w)
	zw := gzip.NewWriter(bw)
	if _, err := zw.Write(p.Encode()); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	return bw.Flush()
}

// ExportPprof writes the profile of rec (see [ProfileStream]) as a gzipped
// protocol buffer.
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
