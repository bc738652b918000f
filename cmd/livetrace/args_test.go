package main

import (
	"io"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/livetrace/livetrace/internal/testtarget"
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
	"-R", "args_ints", "-R", "args_half@retval/f", "-R", "lookup_user", "-R", "args_enum@retval/d32",
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
	}
	if graph {
		want[0] += q(` = -58;`)
		want[7] += q(` = 2.5;`)
		want[8] += q(` = 1;`)
		want[9] += q(` = 0;`)
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
