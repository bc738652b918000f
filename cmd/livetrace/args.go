package main

import (
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/spf13/pflag"

	"github.com/livetrace/livetrace/internal/agent"
	"github.com/livetrace/livetrace/internal/report"
	"github.com/livetrace/livetrace/internal/session"
	"github.com/livetrace/livetrace/internal/tracefile"
)

// argOptions holds the argument and return value flags of record (-A,
// -R, --string-max).
type argOptions struct {
	args      []string
	rets      []string
	stringMax int
	graphFns  []string
	callerFns []string
	auto      bool
}

func (o *argOptions) addFlags(f *pflag.FlagSet) {
	f.StringArrayVarP(&o.args, "argument", "A", nil, "record arguments of functions matching GLOB: `GLOB@arg1,arg2/s,...` (formats d u x s c p, sizes 8 16 32 64: arg1/u32; repeatable)")
	f.StringArrayVarP(&o.rets, "retval", "R", nil, "record the return value of functions matching GLOB (--graph): `GLOB[@retval/FMT]` (formats d u x s c p f; repeatable)")
	f.StringArrayVarP(&o.graphFns, "graph-function", "G", nil, "with --graph, record only the calls made while a function matching `GLOB` is on the thread's stack (ftrace's set_graph_function; repeatable)")
	f.StringArrayVar(&o.callerFns, "caller", nil, "with --graph, record only the calls of functions matching `GLOB` and of their callers (uftrace -C; repeatable)")
	f.BoolVarP(&o.auto, "auto-args", "a", false, "record the arguments (and with --graph the return value) of every traced function from the DWARF of its module: names, types, enum names")
	f.IntVar(&o.stringMax, "string-max", session.DefaultStringMax, "record at most `N` bytes of a string argument (/s), 1 to 126")
}

// rules parses the flags into session rules.
func (o *argOptions) rules(graph bool) ([]session.ArgRule, error) {
	if len(o.rets) > 0 && !graph {
		return nil, fmt.Errorf("record: -R needs --graph (a return value is captured at the function's exit)")
	}
	if (len(o.graphFns) > 0 || len(o.callerFns) > 0) && !graph {
		return nil, fmt.Errorf("record: -G and --caller need --graph (the agent follows each thread's stack of traced calls)")
	}
	if o.stringMax < 1 || o.stringMax > agent.StringMax {
		return nil, fmt.Errorf("parse --string-max %d: give 1 to %d bytes", o.stringMax, agent.StringMax)
	}
	var out []session.ArgRule
	for _, a := range o.args {
		r, err := parseArgRule(a, false)
		if err != nil {
			return nil, fmt.Errorf("parse -A %q: %w", a, err)
		}
		out = append(out, r)
	}
	for _, a := range o.rets {
		r, err := parseArgRule(a, true)
		if err != nil {
			return nil, fmt.Errorf("parse -R %q: %w", a, err)
		}
		out = append(out, r)
	}
	return out, nil
}

// parseArgRule parses `GLOB@arg1,arg2/s` (-A) or `GLOB[@retval[/FMT]]` (-R),
// uftrace's syntax.
func parseArgRule(s string, ret bool) (session.ArgRule, error) {
	glob, list, hasAt := strings.Cut(s, "@")
	if glob == "" {
		return session.ArgRule{}, fmt.Errorf("no function glob before '@' (example: 'lookup_*@arg1,arg2/s')")
	}
	r := session.ArgRule{Glob: glob}
	if ret {
		spec := tracefile.ArgSpec{Format: tracefile.FormatDecimal}
		if hasAt {
			name, fmtS, _ := strings.Cut(list, "/")
			if name != "retval" {
				return r, fmt.Errorf("%q: -R takes GLOB or GLOB@retval/FMT", list)
			}
			if err := parseFormat(&spec, fmtS, true); err != nil {
				return r, err
			}
		}
		r.Ret = &spec
		return r, nil
	}
	if !hasAt || list == "" {
		return r, fmt.Errorf("no arguments after '@' (example: 'lookup_*@arg1,arg2/s')")
	}
	seen := map[int]bool{}
	for _, item := range strings.Split(list, ",") {
		name, fmtS, _ := strings.Cut(strings.TrimSpace(item), "/")
		n, err := strconv.Atoi(strings.TrimPrefix(name, "arg"))
		if !strings.HasPrefix(name, "arg") || err != nil {
			if strings.HasPrefix(name, "fparg") {
				return r, fmt.Errorf("%q: floating point arguments are passed in xmm registers, which livetrace does not capture", item)
			}
			return r, fmt.Errorf("%q: an argument is argN, N from 1 to 6, with an optional /FMT", item)
		}
		if n < 1 || n > 6 {
			return r, fmt.Errorf("%q: only arguments 1 to 6 are passed in registers (rdi, rsi, rdx, rcx, r8, r9); later ones are on the stack, which livetrace does not capture", item)
		}
		if seen[n] {
			return r, fmt.Errorf("%q: argument %d given twice", item, n)
		}
		seen[n] = true
		spec := tracefile.ArgSpec{Reg: n, Format: tracefile.FormatDecimal}
		if err := parseFormat(&spec, fmtS, false); err != nil {
			return r, err
		}
		r.Args = append(r.Args, spec)
	}
	return r, nil
}

// parseFormat parses FMT[SIZE]: d (or i) u x s c p f, SIZE in bits.
func parseFormat(spec *tracefile.ArgSpec, s string, ret bool) error {
	if s == "" {
		return nil
	}
	f, size := s[:1], s[1:]
	switch f {
	case "i":
		f = tracefile.FormatDecimal
	case tracefile.FormatDecimal, tracefile.FormatUnsigned, tracefile.FormatHex, tracefile.FormatString,
		tracefile.FormatChar, tracefile.FormatPointer:
	case tracefile.FormatFloat:
		if !ret {
			return fmt.Errorf("format %q: floating point arguments are passed in xmm registers, which livetrace does not capture (only a return value can be /f)", s)
		}
	default:
		return fmt.Errorf("format %q: use d (signed), u (unsigned), x (hex), s (string), c (char), p (pointer) or f (double return value)", s)
	}
	spec.Format = f
	if size == "" {
		return nil
	}
	bits, err := strconv.Atoi(size)
	if err != nil || (bits != 8 && bits != 16 && bits != 32 && bits != 64) || (f != tracefile.FormatDecimal && f != tracefile.FormatUnsigned && f != tracefile.FormatHex) {
		return fmt.Errorf("format %q: a size is 8, 16, 32 or 64 bits, after d, u or x (example: arg1/u32)", s)
	}
	spec.Size = bits / 8
	return nil
}

// byArgOptions holds report's --by and -F flags.
type byArgOptions struct {
	arg   string
	funcs []string
}

func (o *byArgOptions) addFlags(f *pflag.FlagSet) {
	f.StringVar(&o.arg, "by", "", "group the calls of each function by the value of argument `ARG` (argN or its name; needs a recording with -A or -a), or pid: one table per process (record --follow)")
	f.StringArrayVarP(&o.funcs, "function", "F", nil, "with --by: only functions matching `GLOB` (repeatable)")
}

func (o *byArgOptions) report(w io.Writer, s *tracefile.Stream, f report.Filter, json bool) error {
	if o.arg == "" {
		return fmt.Errorf("report: -F selects the functions of --by ARG: give --by arg1 (or an argument's name) too")
	}
	return report.ReportByArg(w, s, report.ByArgOptions{Filter: f, Arg: o.arg, Funcs: o.funcs, JSON: json})
}
