package main

import (
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/livetrace/livetrace/internal/testtarget"
	"github.com/livetrace/livetrace/internal/tracefile"
)

// argsSpecs are the -A and -R flags of the args fixture (c/args.c).
var argsSpecs = []string{
	"-A", "args_ints@arg1,arg2/d32,arg3/u32,arg4/x,arg5/c,arg6/p",
	"-A", "args_str@arg1/s,arg2",
	"-A", "args_half@arg1",
	"-A", "args_enum@arg1/d32",
	"-A", "lookup_user@arg1,arg2/s",
	"-A", "args_sig@arg1,arg2/s",
}

var argsRets = []string{
	"-R", "args_ints", "-R", "args_half@retval/f", "-R", "lookup_user",
}

// TestRecordArgs records the args fixture with argument (and, in graph
// mode, return value) specs, in every site form and in a build without
// sites (relocating sites), and checks every value replay prints.
func TestRecordArgs(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := livetraceBinary(t)
	type build struct {
		name string
		form testtarget.Form
		opts []testtarget.Option
	}
	builds := []build{
		{"clang-nop5", testtarget.ClangNop5, nil},
		{"gcc-mcount", testtarget.GccMcount, nil},
		{"gcc-sled", testtarget.GccSled, nil},
		{"reloc", testtarget.ClangNop5, []testtarget.Option{testtarget.NoSites()}},
	}
	const rounds = 3
	for _, b := range builds {
		for _, graph := range []bool{false, true} {
			name := b.name + "/entry"
			if graph {
				name = b.name + "/graph"
			}
			t.Run(name, func(t *testing.T) {
				exe := testtarget.Build(t, testtarget.Args, b.form, b.opts...)
				tp := testtarget.Start(t, exe)
				if _, err := tp.Expect("ready", 10*time.Second); err != nil {
					t.Fatal(err)
				}
				out := filepath.Join(t.TempDir(), "rec.data")
				args := []string{"record", "-p", strconv.Itoa(tp.Pid()), "-F", "args_*", "-F", "lookup_user", "-o", out}
				args = append(args, argsSpecs...)
				if graph {
					args = append(args, "--graph")
					args = append(args, argsRets...)
				}
				cmd, stderr, said := startTracing(t, bin, args...)
				if err := tp.Send("run " + strconv.Itoa(rounds)); err != nil {
					t.Fatal(err)
				}
				if _, err := tp.Expect("done ", 10*time.Second); err != nil {
					t.Fatal(err)
				}
				_ = cmd.Process.Signal(syscall.SIGINT)
				rest, _ := io.ReadAll(stderr)
				if err := cmd.Wait(); err != nil {
					t.Fatalf("record: %v\n%s%s", err, said, rest)
				}
				replay, _, err := runCLI(t, "replay", "-i", out)
				if err != nil {
					t.Fatal(err)
				}
				if testing.Verbose() {
					t.Logf("replay:\n%s", replay)
				}
				checkArgsReplay(t, replay, graph, rounds)
				checkArgsOutputs(t, out, graph, rounds)
				testtarget.CheckText(t, tp.Pid())
			})
		}
	}
}

// checkArgsReplay checks that every call of the fixture appears rounds
// times in replay with its exact values.
func checkArgsReplay(t *testing.T, replay string, graph bool, rounds int) {
	t.Helper()
	q := regexp.QuoteMeta
	want := []string{
		q(`args_ints(-42, -16, 4000000000, 0xbeef, 'Z', 0x1234)`),
		q(`args_str("bob", 3)`),
		q(`args_str(NULL, 0)`),
		`args_str\(0x[0-9a-f]+, 1\)`,
		q(`args_str("0123456789abcdefghijklmnopqrstuv"..., 2)`),
		q(`args_str("xyz"..., 3)`),
		q(`args_str("tab\tq\"", 4)`),
		q(`args_half(5)`),
		q(`args_enum(2)`),
		q(`args_enum(3)`),
		q(`lookup_user(42, "bob")`),
		q(`args_sig(7, "sig")`),
		q(`args_str("` + strings.Repeat("x", 32) + `"..., 5)`),
	}
	if graph {
		want[0] += q(` = -58;`)
		want[7] += q(` = 2.5;`)
		want[8] += q(`;`) // arguments without a return value
		want[9] += q(`;`)
		want[10] += q(` = 47;`)
		want[1] += q(`;`)
	} else {
		for i := range want {
			want[i] += ` <- `
		}
	}
	for _, w := range want {
		re := regexp.MustCompile(w)
		if n := len(re.FindAllString(replay, -1)); n != rounds {
			t.Errorf("replay has %d lines matching %s, want %d", n, w, rounds)
		}
	}
	if t.Failed() {
		t.Logf("replay:\n%s", replay)
	}
	if strings.Contains(replay, "?") && !strings.Contains(replay, "# ") {
		t.Errorf("replay has undecodable values")
	}
}

// checkArgsOutputs checks the captured values in the Chrome export and
// in report --by.
func checkArgsOutputs(t *testing.T, rec string, graph bool, rounds int) {
	t.Helper()
	chrome := filepath.Join(t.TempDir(), "trace.json")
	if _, _, err := runCLI(t, "export", "--format", "chrome", "-i", rec, "-o", chrome); err != nil {
		t.Fatal(err)
	}
	var tr struct {
		TraceEvents []struct {
			Name string         `json:"name"`
			Args map[string]any `json:"args"`
		} `json:"traceEvents"`
	}
	b, err := os.ReadFile(chrome)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &tr); err != nil {
		t.Fatal(err)
	}
	found := 0
	for _, e := range tr.TraceEvents {
		if e.Name != "lookup_user" {
			continue
		}
		found++
		if e.Args["arg1"] != "42" || e.Args["arg2"] != `"bob"` {
			t.Errorf("chrome event of lookup_user has args %v", e.Args)
		}
		if graph && e.Args["retval"] != "47" {
			t.Errorf("chrome event of lookup_user has args %v, want retval 47", e.Args)
		}
	}
	if found != rounds {
		t.Errorf("chrome export has %d lookup_user events, want %d", found, rounds)
	}
	if _, _, err := runCLI(t, "export", "--format", "perfetto", "-i", rec, "-o", filepath.Join(t.TempDir(), "trace.pftrace")); err != nil {
		t.Fatal(err)
	}
	stdout, _, err := runCLI(t, "report", "--json", "--by", "arg2", "-F", "args_str", "-i", rec)
	if err != nil {
		t.Fatal(err)
	}
	var rows []struct {
		Function string `json:"function"`
		Value    string `json:"value"`
		Calls    int    `json:"calls"`
	}
	if err := json.Unmarshal([]byte(stdout), &rows); err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for _, r := range rows {
		if r.Function != "args_str" {
			t.Errorf("report --by arg2 -F args_str has a row for %s", r.Function)
		}
		got[r.Value] = r.Calls
	}
	want := map[string]int{"0": rounds, "1": rounds, "2": rounds, "3": 2 * rounds, "4": rounds, "5": rounds}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("report --by arg2 -F args_str (-want +got):\n%s\n%s", diff, stdout)
	}
	if _, _, err := runCLI(t, "report", "--by", "arg9", "-i", rec); err == nil || !strings.Contains(err.Error(), "-A") {
		t.Errorf("report --by arg9: %v, want an error that says how to record it", err)
	}
}

// TestRecordStackFilters records the args fixture's call tree with -G
// and --caller, in every site form and with relocating sites, and checks
// the calls kept and, with -A, their exact values: a held-back entry
// (--caller) carries the values its call had.
func TestRecordStackFilters(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := livetraceBinary(t)
	const rounds = 3
	q := regexp.QuoteMeta
	for _, b := range []struct {
		name string
		form testtarget.Form
		opts []testtarget.Option
	}{
		{"clang-nop5", testtarget.ClangNop5, nil},
		{"gcc-mcount", testtarget.GccMcount, nil},
		{"gcc-sled", testtarget.GccSled, nil},
		{"reloc", testtarget.ClangNop5, []testtarget.Option{testtarget.NoSites()}},
	} {
		for _, f := range []struct {
			name   string
			flags  []string
			want   map[string]int // calls in replay per function
			values []string       // regexps replay must match rounds times each
		}{
			{"G", []string{"-G", "tree_mid"}, map[string]int{"tree_mid": rounds, "tree_leaf": rounds}, nil},
			{"caller", []string{"--caller", "tree_leaf"}, map[string]int{"tree_top": rounds, "tree_mid": rounds, "tree_leaf": 2 * rounds, "tree_other": rounds}, nil},
			{"G-args", []string{"-G", "tree_mid", "-A", "tree_*@arg1", "-R", "tree_*"}, map[string]int{"tree_mid": rounds, "tree_leaf": rounds},
				[]string{q(`tree_mid(1) {`), q(`tree_leaf(1) = 2;`), q(`} = 3; /* tree_mid */`)}},
			{"caller-args", []string{"--caller", "tree_leaf", "-A", "tree_*@arg1", "-A", "tree_other@arg1/s", "-R", "tree_*"},
				map[string]int{"tree_top": rounds, "tree_mid": rounds, "tree_leaf": 2 * rounds, "tree_other": rounds},
				[]string{q(`tree_top(1) {`), q(`tree_mid(1) {`), q(`tree_leaf(1) = 2;`), q(`tree_leaf(2) = 3;`), q(`tree_other(0x2) {`), q(`} = 5; /* tree_other */`)}},
		} {
			t.Run(b.name+"/"+f.name, func(t *testing.T) {
				exe := testtarget.Build(t, testtarget.Args, b.form, b.opts...)
				tp := testtarget.Start(t, exe)
				if _, err := tp.Expect("ready", 10*time.Second); err != nil {
					t.Fatal(err)
				}
				out := filepath.Join(t.TempDir(), "rec.data")
				args := append([]string{"record", "--graph", "-p", strconv.Itoa(tp.Pid()), "-F", "args_*", "-F", "lookup_user", "-F", "tree_*", "-o", out}, f.flags...)
				cmd, stderr, said := startTracing(t, bin, args...)
				if err := tp.Send("run " + strconv.Itoa(rounds)); err != nil {
					t.Fatal(err)
				}
				if _, err := tp.Expect("done ", 10*time.Second); err != nil {
					t.Fatal(err)
				}
				_ = cmd.Process.Signal(syscall.SIGINT)
				rest, _ := io.ReadAll(stderr)
				if err := cmd.Wait(); err != nil {
					t.Fatalf("record: %v\n%s%s", err, said, rest)
				}
				stdout, _, err := runCLI(t, "report", "--json", "-i", out)
				if err != nil {
					t.Fatal(err)
				}
				var rows []struct {
					Function string `json:"function"`
					Calls    int    `json:"calls"`
				}
				if err := json.Unmarshal([]byte(stdout), &rows); err != nil {
					t.Fatal(err)
				}
				got := map[string]int{}
				for _, r := range rows {
					if r.Calls > 0 {
						got[r.Function] = r.Calls
					}
				}
				replay, _, err := runCLI(t, "replay", "-i", out)
				if err != nil {
					t.Fatal(err)
				}
				if diff := cmp.Diff(f.want, got); diff != "" {
					t.Errorf("calls recorded (-want +got):\n%s\n%s", diff, replay)
				}
				for _, v := range f.values {
					if n := len(regexp.MustCompile(v).FindAllString(replay, -1)); n != rounds {
						t.Errorf("replay has %d lines matching %s, want %d\n%s", n, v, rounds, replay)
					}
				}
				testtarget.CheckText(t, tp.Pid())
			})
		}
	}
}

// TestRecordAutoArgs records the args fixture with -a: argument names,
// types and enum names come from its DWARF.
func TestRecordAutoArgs(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := livetraceBinary(t)
	const rounds = 2
	for _, form := range []testtarget.Form{testtarget.ClangNop5, testtarget.GccMcount} {
		t.Run(string(form), func(t *testing.T) {
			tp := testtarget.Start(t, testtarget.Build(t, testtarget.Args, form))
			if _, err := tp.Expect("ready", 10*time.Second); err != nil {
				t.Fatal(err)
			}
			out := filepath.Join(t.TempDir(), "rec.data")
			cmd, stderr, said := startTracing(t, bin, "record", "--graph", "-a", "-p", strconv.Itoa(tp.Pid()), "-F", "args_*", "-F", "lookup_user", "-o", out)
			if err := tp.Send("run " + strconv.Itoa(rounds)); err != nil {
				t.Fatal(err)
			}
			if _, err := tp.Expect("done ", 10*time.Second); err != nil {
				t.Fatal(err)
			}
			_ = cmd.Process.Signal(syscall.SIGINT)
			rest, _ := io.ReadAll(stderr)
			if err := cmd.Wait(); err != nil {
				t.Fatalf("record: %v\n%s%s", err, said, rest)
			}
			replay, _, err := runCLI(t, "replay", "-i", out)
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range []string{
				`args_ints(a=-42, b=-16, c=4000000000, x=48879, ch='Z', p=0x1234) = -58;`,
				`args_str(s="bob", n=3) = 6;`,
				`args_str(s=NULL, n=0) = 0;`,
				`args_half(x=5) = 2.5;`,
				`args_enum(c=ARGS_GREEN) = 1;`,
				`args_enum(c=3) = 0;`,
				`lookup_user(id=42, name="bob") = 47;`,
				`args_sig(n=7, who="sig") = 8;`,
			} {
				if n := strings.Count(replay, w); n != rounds {
					t.Errorf("replay has %s %d times, want %d", w, n, rounds)
				}
			}
			if t.Failed() {
				t.Logf("replay:\n%s", replay)
			}
			testtarget.CheckText(t, tp.Pid())
		})
	}
}

func TestParseArgRule(t *testing.T) {
	r, err := parseArgRule("lookup_*@arg1,arg2/s,arg3/x32,arg6/u8", false)
	if err != nil {
		t.Fatal(err)
	}
	want := []tracefile.ArgSpec{{Reg: 1, Format: "d"}, {Reg: 2, Format: "s"}, {Reg: 3, Format: "x", Size: 4}, {Reg: 6, Format: "u", Size: 1}}
	if r.Glob != "lookup_*" || !cmp.Equal(r.Args, want) {
		t.Errorf("parsed %+v", r)
	}
	r, err = parseArgRule("f@retval/f", true)
	if err != nil || r.Ret == nil || r.Ret.Format != "f" {
		t.Errorf("-R f@retval/f: %+v, %v", r, err)
	}
	r, err = parseArgRule("f", true)
	if err != nil || r.Ret == nil || r.Ret.Format != "d" {
		t.Errorf("-R f: %+v, %v", r, err)
	}
	for _, c := range []struct {
		in   string
		ret  bool
		want string
	}{
		{"f", false, "no arguments"},
		{"@arg1", false, "no function glob"},
		{"f@arg7", false, "arguments 1 to 6"},
		{"f@arg0", false, "arguments 1 to 6"},
		{"f@x1", false, "argN"},
		{"f@fparg1", false, "xmm"},
		{"f@arg1/f", false, "xmm"},
		{"f@arg1/q", false, "use d"},
		{"f@arg1/s32", false, "size"},
		{"f@arg1/d12", false, "size"},
		{"f@arg1,arg1", false, "twice"},
		{"f@arg1", true, "retval"},
	} {
		_, err := parseArgRule(c.in, c.ret)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("parse %q (ret %v): %v, want an error with %q", c.in, c.ret, err, c.want)
		}
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"record", "-p", "1", "-R", "f"}, "-R needs --graph"},
		{[]string{"record", "-p", "1", "-G", "f"}, "need --graph"},
		{[]string{"record", "-p", "1", "--caller", "f"}, "need --graph"},
		{[]string{"record", "-p", "1", "-A", "f@arg1", "--string-max", "500"}, "1 to 126"},
		{[]string{"report", "-F", "f", "-i", scenarioFile(t, tracefile.ModeGraph)}, "--by"},
		{[]string{"report", "--by", "arg1", "-i", scenarioFile(t, tracefile.ModeGraph)}, "-A 'FUNC@arg1'"},
	} {
		_, _, err := runCLI(t, c.args...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("livetrace %s: %v, want an error with %q", strings.Join(c.args, " "), err, c.want)
		}
	}
}

// TestRecordArgsSignals captures arguments while an interval timer's
// handler calls a capturing function every 100 us, interrupting the agent
// in the middle of captures: every value recorded must be exact, and
// every call of the interrupted loop recorded.
func TestRecordArgsSignals(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := livetraceBinary(t)
	// Every SIGALRM the target takes while attached is a ptrace stop the
	// tracer answers: when that round trip is slower than the 100 us
	// timer, the loop only moves between stops, and 5,000 iterations took
	// from 3 s to 65 s on the 2-vCPU VM. 2,000 still take tens of
	// thousands of signals.
	const calls = 2000
	for _, graph := range []bool{false, true} {
		name := "entry"
		if graph {
			name = "graph"
		}
		t.Run(name, func(t *testing.T) {
			tp := testtarget.Start(t, testtarget.Build(t, testtarget.Args, testtarget.ClangNop5))
			if _, err := tp.Expect("ready", 10*time.Second); err != nil {
				t.Fatal(err)
			}
			out := filepath.Join(t.TempDir(), "rec.data")
			args := []string{"record", "-p", strconv.Itoa(tp.Pid()), "-F", "lookup_user", "-F", "args_str", "-F", "args_sig", "-o", out,
				"-A", "lookup_user@arg1,arg2/s", "-A", "args_str@arg1/s,arg2", "-A", "args_sig@arg1,arg2/s"}
			if graph {
				args = append(args, "--graph", "-R", "lookup_user", "-R", "args_sig")
			}
			cmd, stderr, said := startTracing(t, bin, args...)
			if err := tp.Send("storm " + strconv.Itoa(calls)); err != nil {
				t.Fatal(err)
			}
			line, err := tp.Expect("done ", 120*time.Second) // see calls
			if err != nil {
				t.Fatal(err)
			}
			_ = cmd.Process.Signal(syscall.SIGINT)
			rest, _ := io.ReadAll(stderr)
			if err := cmd.Wait(); err != nil {
				t.Fatalf("record: %v\n%s%s", err, said, rest)
			}
			f := strings.Fields(line)
			signals, _ := strconv.Atoi(f[len(f)-1])
			replay, _, err := runCLI(t, "replay", "-i", out)
			if err != nil {
				t.Fatal(err)
			}
			n := map[string]int{}
			bad := 0
			for _, l := range strings.Split(replay, "\n") {
				for _, c := range []struct{ fn, want string }{
					{"lookup_user(", `lookup_user(42, "bob")`},
					{"args_str(", `args_str("0123456789abcdefghijklmnopqrstuv"..., 2)`},
					{"args_sig(", `args_sig(7, "sig")`},
				} {
					if strings.Contains(l, c.fn) {
						n[c.fn]++
						if !strings.Contains(l, c.want) && bad < 10 {
							bad++
							t.Errorf("replay line %q, want %s", l, c.want)
						}
					}
				}
				if graph && strings.Contains(l, "} = ") {
					if !strings.Contains(l, "} = 47; /* lookup_user */") && !strings.Contains(l, "} = 8; /* args_sig */") && bad < 10 {
						bad++
						t.Errorf("replay exit line %q", l)
					}
				}
			}
			if n["lookup_user("] != calls || n["args_str("] != calls {
				t.Errorf("replay has %d lookup_user and %d args_str calls, want %d each", n["lookup_user("], n["args_str("], calls)
			}
			if n["args_sig("] == 0 || n["args_sig("] > signals {
				t.Errorf("replay has %d args_sig calls, the handler made %d", n["args_sig("], signals)
			}
			t.Logf("%d signals, %d args_sig calls recorded", signals, n["args_sig("])
			testtarget.CheckText(t, tp.Pid())
		})
	}
}

// TestRecordStringMax records the fixture's 200-byte string with the
// largest --string-max: 126 bytes and a cut, not an unreadable pointer.
func TestRecordStringMax(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := livetraceBinary(t)
	tp := testtarget.Start(t, testtarget.Build(t, testtarget.Args, testtarget.ClangNop5))
	if _, err := tp.Expect("ready", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "rec.data")
	cmd, stderr, said := startTracing(t, bin, "record", "-p", strconv.Itoa(tp.Pid()), "-F", "args_str", "-A", "args_str@arg1/s,arg2", "--string-max", "126", "-o", out)
	if err := tp.Send("run 1"); err != nil {
		t.Fatal(err)
	}
	if _, err := tp.Expect("done ", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Process.Signal(syscall.SIGINT)
	rest, _ := io.ReadAll(stderr)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("record: %v\n%s%s", err, said, rest)
	}
	replay, _, err := runCLI(t, "replay", "-i", out)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{`args_str("` + strings.Repeat("x", 126) + `"..., 5)`, `args_str("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJ", 2)`} {
		if strings.Count(replay, w) != 1 {
			t.Errorf("replay lacks %s:\n%s", w, replay)
		}
	}
}

// TestCtlEnableArgs records the args fixture with only tree_top traced
// and the fixture's -A/-R specs, then adds every other function with
// `ctl enable`: they capture what record's specs give them (the exact
// values of TestRecordArgs), tree_leaf what ctl's own -A/-R give it, and
// a spec that would change what a traced function captures is refused.
// With -a, the added functions take their DWARF specs; with --caller,
// the added functions are held back or record their callers as at the
// start.
func TestCtlEnableArgs(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := livetraceBinary(t)
	const rounds = 3
	for _, c := range []struct {
		name   string
		form   testtarget.Form
		opts   []testtarget.Option
		graph  bool
		auto   bool
		caller bool
	}{
		{"clang-nop5/entry", testtarget.ClangNop5, nil, false, false, false},
		{"clang-nop5/graph", testtarget.ClangNop5, nil, true, false, false},
		{"gcc-sled/graph", testtarget.GccSled, nil, true, false, false},
		{"reloc/graph", testtarget.ClangNop5, []testtarget.Option{testtarget.NoSites()}, true, false, false},
		{"clang-nop5/auto", testtarget.ClangNop5, nil, true, true, false},
		{"clang-nop5/caller", testtarget.ClangNop5, nil, true, false, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			tp := testtarget.Start(t, testtarget.Build(t, testtarget.Args, c.form, c.opts...))
			if _, err := tp.Expect("ready", 10*time.Second); err != nil {
				t.Fatal(err)
			}
			pid := strconv.Itoa(tp.Pid())
			out := filepath.Join(t.TempDir(), "rec.data")
			args := []string{"record", "-p", pid, "-F", "tree_top", "-A", "tree_top@arg1", "-o", out}
			switch {
			case c.caller:
				args = append(args, "--graph", "-F", "tree_leaf", "--caller", "tree_leaf", "-A", "tree_*@arg1")
			case c.auto:
				args = append(args, "--graph", "-a")
			case c.graph:
				args = append(append(append(args, "--graph"), argsSpecs...), argsRets...)
			default:
				args = append(args, argsSpecs...)
			}
			rec, stderr, said := startTracing(t, bin, args...)
			defer rec.Process.Kill()
			switch {
			case c.caller:
				// tree_leaf records its callers; the others are held
				// back, and those of args_* never recorded.
				mustCtl(t, "-p", pid, "enable", "tree_*", "args_*")
			case c.auto:
				mustCtl(t, "-p", pid, "enable", "args_*", "lookup_user")
			default:
				if _, err := ctlRun("-p", pid, "-A", "tree_top@arg1/x", "enable", "tree_leaf"); err == nil || !strings.Contains(err.Error(), "tree_top was traced before") {
					t.Errorf("enable with a spec that changes a traced function: %v", err)
				}
				if _, err := ctlRun("-p", pid, "-A", "tree_leaf@arg9", "enable", "tree_leaf"); err == nil || !strings.Contains(err.Error(), "arg9") {
					t.Errorf("enable with a bad spec: %v", err)
				}
				if _, err := ctlRun("-p", pid, "-A", "tree_leaf@arg1", "disable", "tree_top"); err == nil || !strings.Contains(err.Error(), "enable only") {
					t.Errorf("disable with -A: %v", err)
				}
				if got := mustCtl(t, "-p", pid, "enable", "args_*", "lookup_user"); !strings.Contains(got, "lookup_user") {
					t.Errorf("enable:\n%s", got)
				}
				leaf := []string{"-p", pid, "-A", "tree_leaf@arg1/x"}
				if c.graph {
					leaf = append(leaf, "-R", "tree_leaf")
				}
				mustCtl(t, append(leaf, "enable", "tree_leaf")...)
			}
			if err := tp.Send("run " + strconv.Itoa(rounds)); err != nil {
				t.Fatal(err)
			}
			if _, err := tp.Expect("done ", 10*time.Second); err != nil {
				t.Fatal(err)
			}
			_ = rec.Process.Signal(syscall.SIGINT)
			rest, _ := io.ReadAll(stderr)
			if err := rec.Wait(); err != nil {
				t.Fatalf("record: %v\n%s%s", err, said, rest)
			}
			replay, _, err := runCLI(t, "replay", "-i", out)
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case c.caller:
				for _, w := range []string{`tree_top(1) {`, `tree_mid(1) {`, `tree_leaf(1);`, `tree_other(2) {`, `tree_leaf(2);`} {
					if n := strings.Count(replay, w); n != rounds {
						t.Errorf("replay has %s %d times, want %d\n%s", w, n, rounds, replay)
					}
				}
				calls := regexp.MustCompile(`(?m)^[^#].*$`).FindAllString(replay, -1) // not the comment lines (changes)
				if strings.Contains(strings.Join(calls, "\n"), "args_") {
					t.Errorf("replay has calls that no --caller function is below:\n%s", replay)
				}
			case c.auto:
				for _, w := range []string{`args_ints(a=-42, b=-16, c=4000000000, x=48879, ch='Z', p=0x1234) = -58;`, `lookup_user(id=42, name="bob") = 47;`, `args_str(s="bob", n=3) = 6;`} {
					if n := strings.Count(replay, w); n != rounds {
						t.Errorf("replay has %s %d times, want %d\n%s", w, n, rounds, replay)
					}
				}
			default:
				checkArgsReplay(t, replay, c.graph, rounds)
				want := `tree_leaf(0x1) <- `
				if c.graph {
					want = `tree_leaf(0x1) = 2;`
				}
				if n := strings.Count(replay, want); n != rounds {
					t.Errorf("replay has %s %d times, want %d\n%s", want, n, rounds, replay)
				}
			}
			testtarget.CheckText(t, tp.Pid())
		})
	}
}
