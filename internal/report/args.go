package report

import (
	"fmt"
	"math"
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
