package report

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"path"
	"slices"
	"strconv"
	"strings"

	"github.com/livetrace/livetrace/internal/tracefile"
)

// ArgValues returns the captured arguments of an entry event of fn as
// uftrace prints them between the parentheses ("42, \"bob\""), one string
// per argument, or nil when the event has none. Values that do not decode
// print as "?" (a damaged recording is not a reason to stop reading it).
func ArgValues(rec *tracefile.Meta, fn uint32, args string) []string {
	if args == "" {
		return nil
	}
	vals, err := tracefile.DecodeArgs(args)
	if err != nil {
		return []string{"?"}
	}
	var specs []tracefile.ArgSpec
	if int(fn) < len(rec.Funcs) {
		specs = rec.Funcs[fn].Args
	}
	out := make([]string, 0, len(vals))
	for _, v := range vals {
		var sp tracefile.ArgSpec
		for _, s := range specs {
			if s.Reg == v.Reg {
				sp = s
			}
		}
		s := FormatValue(sp, v)
		if sp.Name != "" {
			s = Printable(sp.Name) + "=" + s
		}
		out = append(out, s)
	}
	return out
}

// RetValue returns the captured return value of an exit event of fn as
// uftrace prints it after "} = ", or "" when the event has none.
func RetValue(rec *tracefile.Meta, fn uint32, args string) string {
	if args == "" {
		return ""
	}
	vals, err := tracefile.DecodeArgs(args)
	if err != nil || len(vals) != 1 || vals[0].Reg != 0 {
		return "?"
	}
	var sp tracefile.ArgSpec
	if int(fn) < len(rec.Funcs) && rec.Funcs[fn].Ret != nil {
		sp = *rec.Funcs[fn].Ret
	}
	return FormatValue(sp, vals[0])
}

// callText is "name(args)" for an entry with arguments, name otherwise
// followed by "()".
func callText(rec *tracefile.Meta, fn uint32, args string) string {
	return funcName(rec, fn) + "(" + strings.Join(ArgValues(rec, fn, args), ", ") + ")"
}

// retSuffix is " = VALUE" for an exit with a return value, "" otherwise.
func retSuffix(rec *tracefile.Meta, fn uint32, args string) string {
	if r := RetValue(rec, fn, args); r != "" {
		return " = " + r
	}
	return ""
}

// FormatValue prints one captured value in the format of sp (decimal
// when sp names none).
func FormatValue(sp tracefile.ArgSpec, v tracefile.Value) string {
	raw := v.Raw
	bits := 64
	if sp.Size > 0 && sp.Size < 8 {
		bits = 8 * sp.Size
		raw &= 1<<bits - 1
	}
	signed := int64(raw<<(64-bits)) >> (64 - bits)
	if sp.Enum != nil {
		if n, ok := sp.Enum[signed]; ok {
			return Printable(n)
		}
	}
	if v.Str {
		switch {
		case v.Raw == 0:
			return "NULL"
		case v.Bad:
			return fmt.Sprintf("0x%x", v.Raw)
		}
		s := quoteC(v.Text)
		if v.Cut {
			s += "..."
		}
		return s
	}
	switch sp.Format {
	case tracefile.FormatUnsigned:
		return strconv.FormatUint(raw, 10)
	case tracefile.FormatHex:
		return fmt.Sprintf("0x%x", raw)
	case tracefile.FormatPointer:
		if raw == 0 {
			return "NULL"
		}
		return fmt.Sprintf("0x%x", raw)
	case tracefile.FormatChar:
		return "'" + strings.TrimSuffix(strings.TrimPrefix(quoteC(string([]byte{byte(raw)})), `"`), `"`) + "'"
	case tracefile.FormatFloat:
		return strconv.FormatFloat(math.Float64frombits(v.Raw), 'g', -1, 64)
	default:
		return strconv.FormatInt(signed, 10)
	}
}

// quoteC quotes s as a C string literal: printable ASCII as is, the usual
// escapes, other bytes as \xNN (never a terminal control sequence).
func quoteC(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c == '\n':
			b.WriteString(`\n`)
		case c == '\t':
			b.WriteString(`\t`)
		case c == '\r':
			b.WriteString(`\r`)
		case c >= 0x20 && c < 0x7f:
			b.WriteByte(c)
		default:
			fmt.Fprintf(&b, `\x%02x`, c)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// argsMap returns the captured values of an event as name -> printed value
// (the argument's name, or argN; "retval" for a return value), for the
// Chrome and Perfetto args and the JSON outputs; nil when none.
func argsMap(rec *tracefile.Meta, fn uint32, args string, exit bool) map[string]string {
	if args == "" {
		return nil
	}
	if exit {
		return map[string]string{"retval": RetValue(rec, fn, args)}
	}
	vals, err := tracefile.DecodeArgs(args)
	if err != nil {
		return map[string]string{"args": "?"}
	}
	m := make(map[string]string, len(vals))
	var specs []tracefile.ArgSpec
	if int(fn) < len(rec.Funcs) {
		specs = rec.Funcs[fn].Args
	}
	for _, v := range vals {
		var sp tracefile.ArgSpec
		for _, s := range specs {
			if s.Reg == v.Reg {
				sp = s
			}
		}
		k := sp.Name
		if k == "" {
			k = "arg" + strconv.Itoa(v.Reg)
		}
		m[k] = FormatValue(sp, v)
	}
	return m
}

// addArgs adds the captured arguments (entry) and return value (exit) of
// a call of fn to the Chrome event args m (allocated when nil).
func addArgs(m map[string]any, rec *tracefile.Meta, fn uint32, entry, exit string) map[string]any {
	if entry == "" && exit == "" {
		return m
	}
	if m == nil {
		m = map[string]any{}
	}
	for k, v := range argsMap(rec, fn, entry, false) {
		m[k] = v
	}
	for k, v := range argsMap(rec, fn, exit, true) {
		m[k] = v
	}
	return m
}

// extraAnnotations appends p.extra (the captured values of the event)
// to the TrackEvent te as debug annotations, in name order, with their
// names interned in in, and clears p.extra.
func (p *perfettoWriter) extraAnnotations(te, in []byte) ([]byte, []byte) {
	if len(p.extra) == 0 {
		return te, in
	}
	keys := make([]string, 0, len(p.extra))
	for k := range p.extra {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		aiid := p.annots[k]
		if aiid == 0 {
			aiid = uint64(len(p.annots) + 1)
			p.annots[k] = aiid
			p.sub = appendVarint(p.sub[:0], pfInternedIID, aiid)
			p.sub = appendString(p.sub, pfInternedName, k)
			in = appendBytes(in, pfInternedAnnotNames, p.sub)
		}
		p.sub = appendVarint(p.sub[:0], pfAnnotNameIID, aiid)
		p.sub = appendString(p.sub, pfAnnotString, p.extra[k])
		te = appendBytes(te, pfEventAnnotations, p.sub)
	}
	p.extra = nil
	return te, in
}

// ByArgOptions are the options of [ReportByArg].
type ByArgOptions struct {
	Filter
	// Arg names the argument to group by: argN (N = 1..6, the register)
	// or an argument's name (record -a).
	Arg string
	// Funcs are globs of the functions to report (all with a capture of
	// Arg when empty).
	Funcs []string
	// JSON writes a JSON array instead of a table.
	JSON bool
}

// ArgGroup is one row of [ReportByArg]: the calls of Function whose
// argument had Value.
type ArgGroup struct {
	Function string `json:"function"`
	Arg      string `json:"arg"`
	Value    string `json:"value"`
	Calls    uint64 `json:"calls"`
	// Graph mode, over the completed calls.
	TotalNS int64 `json:"total_ns,omitempty"`
	AvgNS   int64 `json:"avg_ns,omitempty"`
	MinNS   int64 `json:"min_ns,omitempty"`
	MaxNS   int64 `json:"max_ns,omitempty"`
	done    int64
}

// argKey returns the register of argument arg of fn (argN, or a name
// from the spec), 0 when fn does not capture it.
func argKey(rec *tracefile.Meta, fn uint32, arg string) int {
	if int(fn) >= len(rec.Funcs) {
		return 0
	}
	for _, a := range rec.Funcs[fn].Args {
		if a.Name == arg || "arg"+strconv.Itoa(a.Reg) == arg {
			return a.Reg
		}
	}
	return 0
}

// ReportByArg prints, for each function that captured argument o.Arg,
// one line per value of the argument: the calls with that value and, in
// graph mode, their total, average, minimum and maximum time. Rows go by
// function, then by calls (most first), then by value.
func ReportByArg(w io.Writer, s *tracefile.Stream, o ByArgOptions) error {
	rec := &s.Meta
	if err := o.Filter.check(rec); err != nil {
		return err
	}
	for _, g := range o.Funcs {
		if _, err := path.Match(g, ""); err != nil {
			return fmt.Errorf("bad pattern %q: %w", g, err)
		}
	}
	want := make([]int, len(rec.Funcs)) // register of the argument per function, 0: not reported
	found := false
	for i, fn := range rec.Funcs {
		if len(o.Funcs) > 0 && !slices.ContainsFunc(o.Funcs, func(g string) bool { ok, _ := path.Match(g, fn.Name); return ok }) {
			continue
		}
		want[i] = argKey(rec, uint32(i), o.Arg)
		found = found || want[i] != 0
	}
	if !found {
		return fmt.Errorf("report --by %s: no selected function of this recording captured %s: record it with -A 'FUNC@%s' (or -a), or pick another argument", o.Arg, o.Arg, o.Arg)
	}
	groups := map[[2]string]*ArgGroup{}
	add := func(fn uint32, args string) *ArgGroup {
		reg := want[fn]
		if reg == 0 || args == "" {
			return nil
		}
		val := "?"
		if vals, err := tracefile.DecodeArgs(args); err == nil {
			for _, v := range vals {
				if v.Reg == reg {
					var sp tracefile.ArgSpec
					for _, a := range rec.Funcs[fn].Args {
						if a.Reg == reg {
							sp = a
						}
					}
					val = FormatValue(sp, v)
				}
			}
		}
		name := funcName(rec, fn)
		k := [2]string{name, val}
		g := groups[k]
		if g == nil {
			g = &ArgGroup{Function: name, Arg: o.Arg, Value: val}
			groups[k] = g
		}
		g.Calls++
		return g
	}
	graph := rec.Mode == tracefile.ModeGraph
	if graph {
		e := newEngine(s, o.Filter)
		e.recycle = true
		e.onClose = func(c *ocall) {
			if !c.own {
				return
			}
			g := add(c.fn, c.args)
			if g == nil || c.status != complete {
				return
			}
			d := c.dur()
			if g.done == 0 || d < g.MinNS {
				g.MinNS = d
			}
			g.MaxNS = max(g.MaxNS, d)
			g.TotalNS += d
			g.done++
		}
		if err := e.run(s, nil); err != nil {
			return err
		}
	} else {
		for {
			ev, ok := s.Next()
			if !ok {
				break
			}
			if ev.Kind == tracefile.KindEntry && o.keepTID(ev.TID) {
				add(ev.Func, ev.Args)
			}
		}
		if err := s.Err(); err != nil {
			return err
		}
	}
	rows := make([]*ArgGroup, 0, len(groups))
	for _, g := range groups {
		if g.done > 0 {
			g.AvgNS = g.TotalNS / g.done
		}
		rows = append(rows, g)
	}
	slices.SortFunc(rows, func(a, b *ArgGroup) int {
		if c := strings.Compare(a.Function, b.Function); c != 0 {
			return c
		}
		if a.Calls != b.Calls {
			if a.Calls > b.Calls {
				return -1
			}
			return 1
		}
		return strings.Compare(a.Value, b.Value)
	})
	bw := bufio.NewWriter(w)
	if o.JSON {
		if len(rows) == 0 {
			bw.WriteString("[]\n")
		} else {
			b, err := json.MarshalIndent(rows, "", "  ")
			if err != nil {
				return err
			}
			bw.Write(b)
			bw.WriteString("\n")
		}
		return bw.Flush()
	}
	if graph {
		fmt.Fprintf(bw, "%-24s %-20s %10s %12s %12s %12s %12s\n", "FUNCTION", strings.ToUpper(o.Arg), "CALLS", "TOTAL", "AVG", "MIN", "MAX")
	} else {
		fmt.Fprintf(bw, "%-24s %-20s %10s\n", "FUNCTION", strings.ToUpper(o.Arg), "CALLS")
	}
	for _, g := range rows {
		if graph {
			fmt.Fprintf(bw, "%-24s %-20s %10d %12s %12s %12s %12s\n", g.Function, g.Value, g.Calls, human(g.TotalNS), human(g.AvgNS), human(g.MinNS), human(g.MaxNS))
		} else {
			fmt.Fprintf(bw, "%-24s %-20s %10d\n", g.Function, g.Value, g.Calls)
		}
	}
	return bw.Flush()
}
