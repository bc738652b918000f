package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/livetrace/livetrace/internal/testtarget"
	"github.com/livetrace/livetrace/internal/tracefile"
)

// TestReaderInputForms checks that every reader takes the recording as an
// argument, as -i FILE, and as -i - on standard input, with the same
// output.
func TestReaderInputForms(t *testing.T) {
	bin := livetraceBinary(t)
	graph := scenarioFile(t, tracefile.ModeGraph)
	data, err := os.ReadFile(graph)
	if err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"replay"}, {"report"}, {"info"},
		{"export", "--format", "folded", "-o", "-"},
		{"export", "--format", "chrome", "-o", "-"},
	} {
		want, _, err := runCLIBin(bin, append(append([]string(nil), args...), "-i", graph)...)
		if err != nil || want == "" {
			t.Fatalf("%v -i: %v, %q", args, err, want)
		}
		pos, stderr, err := runCLIBin(bin, append(append([]string(nil), args...), graph)...)
		if err != nil || pos != want {
			t.Errorf("%v FILE: %v %s\n%s\nwant\n%s", args, err, stderr, pos, want)
		}
		for _, in := range [][]string{{"-i", "-"}, {"-"}} {
			cmd := exec.Command(bin, append(append([]string(nil), args...), in...)...)
			cmd.Stdin = bytes.NewReader(data)
			var o, e strings.Builder
			cmd.Stdout, cmd.Stderr = &o, &e
			if err := cmd.Run(); err != nil || o.String() != want {
				t.Errorf("%v %v < FILE: %v %s\n%s\nwant\n%s", args, in, err, e.String(), o.String(), want)
			}
		}
	}
	// Not a recording on stdin: refused before it is copied anywhere.
	cmd := exec.Command(bin, "report", "-")
	cmd.Stdin = strings.NewReader("this is not a recording at all")
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "read standard input: not a livetrace recording") {
		t.Errorf("garbage on stdin: %v\n%s", err, out)
	}
	zero, err := os.Open("/dev/zero")
	if err != nil {
		t.Fatal(err)
	}
	defer zero.Close()
	cmd = exec.Command(bin, "info", "-i", "-")
	cmd.Stdin = zero
	out, err = cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "not a livetrace recording") {
		t.Errorf("/dev/zero on stdin: %v\n%s", err, out)
	}
}

// TestReaderModuleFilter checks -m in the readers: only the functions of
// the matching modules show, as if record had been given -m.
func TestReaderModuleFilter(t *testing.T) {
	for _, mode := range []tracefile.Mode{tracefile.ModeEntry, tracefile.ModeGraph} {
		file := scenarioFile(t, mode)
		all, _, err := runCLI(t, "report", file)
		if err != nil {
			t.Fatal(err)
		}
		lib, _, err := runCLI(t, "report", file, "-m", "libhash.so")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(all, "parse") || !strings.Contains(lib, "libhash_update") || strings.Contains(lib, "parse") || strings.Contains(lib, "process") {
			t.Errorf("%s: report -m libhash.so:\n%s\nall:\n%s", mode, lib, all)
		}
		exe, _, err := runCLI(t, "replay", file, "-m", "/usr/bin/*")
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(exe, "libhash_update") || !strings.Contains(exe, "parse") {
			t.Errorf("%s: replay -m /usr/bin/*:\n%s", mode, exe)
		}
		folded, _, err := runCLI(t, "export", file, "-f", "folded", "-o", "-", "-m", "demo")
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(folded, "libhash") || !strings.Contains(folded, "process") {
			t.Errorf("%s: folded -m demo:\n%s", mode, folded)
		}
		if _, _, err := runCLI(t, "report", file, "-m", "libc*"); err == nil || !strings.Contains(err.Error(), "no module of the recording matches -m libc*: it has demo, libhash.so") {
			t.Errorf("%s: -m matching nothing: %v", mode, err)
		}
		if _, _, err := runCLI(t, "report", file, "-m", "[x"); err == nil || !strings.Contains(err.Error(), `parse -m "[x"`) {
			t.Errorf("%s: bad -m: %v", mode, err)
		}
	}
	// In graph mode a hidden call's time is its parent's self time:
	// process calls libhash_update, so its self time grows by exactly
	// the time of libhash_update when libhash.so is left out.
	file := scenarioFile(t, tracefile.ModeGraph)
	self := func(args ...string) map[string]int64 {
		out, _, err := runCLI(t, append([]string{"report", file, "--json"}, args...)...)
		if err != nil {
			t.Fatal(err)
		}
		var rows []struct {
			Function string `json:"function"`
			Self     int64  `json:"self_ns"`
		}
		if err := json.Unmarshal([]byte(out), &rows); err != nil {
			t.Fatal(err)
		}
		m := map[string]int64{}
		for _, r := range rows {
			m[r.Function] = r.Self
		}
		return m
	}
	full, demo := self(), self("-m", "demo")
	// The completed calls of libhash_update take 270 us in all; the one
	// of thread 102 lost its exit and counts no self time of its own, but
	// its 135 us until its parent's exit were its parent's child time.
	if _, ok := demo["libhash_update"]; ok || full["libhash_update"] != 270000 || demo["process"] != full["process"]+270000+135000 {
		t.Errorf("self times: all %v, -m demo %v", full, demo)
	}
}

// TestRecordCLIErrors checks the errors of record that need a live
// process: --tid of no thread, -N that excludes everything, an existing
// recording without -f, a missing directory, -o - with -- CMD.
func TestRecordCLIErrors(t *testing.T) {
	testtarget.RequireRoot(t)
	tp := testtarget.Start(t, testtarget.Build(t, testtarget.Workload, testtarget.ClangNop5), "-t", "1")
	if _, err := tp.Expect("ready", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	pid := strconv.Itoa(tp.Pid())
	dir := t.TempDir()
	existing := filepath.Join(dir, "old.data")
	if err := os.WriteFile(existing, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"record", "-p", pid, "--tid", "999999999", "-o", filepath.Join(dir, "a")}, "process " + pid + " has no thread 999999999"},
		{[]string{"record", "-p", pid, "--tid", pid + ",999999998", "-o", filepath.Join(dir, "a")}, "has no thread 999999998"},
		{[]string{"record", "--tid", "5", "-o", filepath.Join(dir, "a"), "--", "/bin/true"}, "--tid needs -p PID"},
		{[]string{"record", "-p", pid, "-N", "*", "-o", filepath.Join(dir, "a")}, "nothing to trace: -N * excludes every function ("},
		{[]string{"record", "-p", pid, "-F", "work_*", "-N", "work_*", "-o", filepath.Join(dir, "a")}, "excludes every function selected by -F work_* (7 functions)"},
		{[]string{"record", "-p", pid, "-o", existing}, existing + " already exists: give -f to overwrite it"},
		{[]string{"record", "-p", pid, "-o", "/nonexistent/dir/x.data"}, "directory /nonexistent/dir does not exist"},
		{[]string{"record", "-o", "-", "--", "/bin/true"}, "-o - cannot be used with -- CMD"},
	} {
		_, _, err := runCLI(t, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v, want one that says %q", tc.args, err, tc.want)
		}
		if err != nil && strings.Count(err.Error(), "create") > 1 {
			t.Errorf("%v: error repeats itself: %v", tc.args, err)
		}
	}
	if b, _ := os.ReadFile(existing); string(b) != "keep me" {
		t.Errorf("the existing recording was overwritten: %q", b)
	}
	if _, err := os.Stat(filepath.Join(dir, "a")); err == nil {
		t.Errorf("a failed record left a recording")
	}
	// A link at the output: one "create", the path, and what to do.
	link := filepath.Join(dir, "link.data")
	if err := os.Symlink("/etc/passwd", link); err != nil {
		t.Fatal(err)
	}
	_, _, err := runCLI(t, "record", "-p", pid, "-f", "-o", link, "-d", "10ms")
	if err == nil || strings.Count(err.Error(), "create") != 1 || !strings.Contains(err.Error(), "create "+link+": is a symbolic link") {
		t.Errorf("record -o LINK: %v", err)
	}
	testtarget.CheckText(t, tp.Pid())

	// -f overwrites, and info shows the -F, -N and -m of the recording.
	// A run every 200 ms, so that one comes after the attach however
	// long it takes on a loaded machine.
	stopRuns := make(chan struct{})
	go func() {
		for {
			select {
			case <-stopRuns:
				return
			case <-time.After(200 * time.Millisecond):
				_ = tp.Send("run 1")
			}
		}
	}()
	_, stderr, err := runCLI(t, "record", "-p", pid, "-f", "-o", existing, "-F", "work_*", "-N", "work_leaf", "-m", "workload", "-d", "1s")
	close(stopRuns)
	if _, err := tp.Expect("done ", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if err != nil {
		t.Fatalf("record -f: %v\n%s", err, stderr)
	}
	if !strings.Contains(stderr, "tracing 6 functions") || !strings.Contains(stderr, " 1 thread in ") {
		t.Errorf("record stderr:\n%s", stderr)
	}
	info, _, err := runCLI(t, "info", existing)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(info, "recorded with:           functions work_*; excluding work_leaf; modules workload\n") {
		t.Errorf("info lacks the patterns:\n%s", info)
	}
}

// TestRecordToStdout pipes record -o - into replay -i -.
func TestRecordToStdout(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := livetraceBinary(t)
	tp := testtarget.Start(t, testtarget.Build(t, testtarget.Workload, testtarget.ClangNop5), "-t", "1")
	if _, err := tp.Expect("ready", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	rec := exec.Command(bin, "record", "-p", strconv.Itoa(tp.Pid()), "-F", "work_leaf", "-d", "1500ms", "-o", "-")
	rep := exec.Command(bin, "report", "--json", "-i", "-")
	pipe, err := rec.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	rep.Stdin = pipe
	var recErr, repOut, repErr strings.Builder
	rec.Stderr = &recErr
	rep.Stdout, rep.Stderr = &repOut, &repErr
	if err := rec.Start(); err != nil {
		t.Fatal(err)
	}
	if err := rep.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(600 * time.Millisecond)
	if err := tp.Send("run 3"); err != nil {
		t.Fatal(err)
	}
	if _, err := tp.Expect("done ", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := rec.Wait(); err != nil {
		t.Fatalf("record: %v\n%s", err, recErr.String())
	}
	if err := rep.Wait(); err != nil {
		t.Fatalf("report: %v\n%s", err, repErr.String())
	}
	if !strings.Contains(recErr.String(), "wrote standard output") {
		t.Errorf("record stderr:\n%s", recErr.String())
	}
	if !strings.Contains(repOut.String(), `"function": "work_leaf"`) {
		t.Errorf("report of the piped recording:\n%s", repOut.String())
	}
	testtarget.CheckText(t, tp.Pid())
}

// TestVersion checks --version.
func TestVersion(t *testing.T) {
	out, _, err := runCLI(t, "--version")
	if err != nil || !strings.HasPrefix(out, "livetrace version ") {
		t.Errorf("--version: %v %q", err, out)
	}
}

// inTerminal runs the shell command line under a pseudo-terminal
// (script(1)), with input fed to it after a second, and returns all that
// the terminal showed, and how the command ended.
func inTerminal(t *testing.T, line, input string) (string, error) {
	t.Helper()
	script, err := exec.LookPath("script")
	if err != nil {
		testtarget.SkipOrFatal(t, "script(1) (util-linux) is needed to run livetrace in a terminal")
	}
	feed := exec.Command("sh", "-c", "sleep 1; printf '"+input+"'; sleep 2")
	cmd := exec.Command(script, "-qec", line, "/dev/null")
	pipe, err := feed.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdin = pipe
	if err := feed.Start(); err != nil {
		t.Fatal(err)
	}
	defer feed.Process.Kill()
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestRecordTerminal checks that record -- CMD draws no status line over
// CMD's output on a terminal (nor its Ctrl-C hint, wrong there), while
// record -p does draw one.
func TestRecordTerminal(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := livetraceBinary(t)
	work := testtarget.Build(t, testtarget.Workload, testtarget.ClangNop5)
	dir := t.TempDir()
	out, err := inTerminal(t, bin+" record -F 'work_*' -o "+filepath.Join(dir, "cmd.data")+" -- "+work+" -t 1", `run 2\nquit\n`)
	if err != nil || !strings.Contains(out, "done {") || !strings.Contains(out, "livetrace: tracing 7 functions") {
		t.Fatalf("record -- CMD in a terminal:\n%q", out)
	}
	if strings.Contains(out, "Ctrl-C") || strings.Contains(out, "\x1b[K") {
		t.Errorf("record -- CMD drew a status line:\n%q", out)
	}
	tp := testtarget.Start(t, work, "-t", "1")
	if _, err := tp.Expect("ready", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	out, err = inTerminal(t, bin+" record -p "+strconv.Itoa(tp.Pid())+" -d 1500ms -o "+filepath.Join(dir, "p.data"), "")
	if err != nil || !strings.Contains(out, "(Ctrl-C to stop)") {
		t.Errorf("record -p in a terminal drew no status line: %v\n%q", err, out)
	}
	// A binary recording is not written to a terminal, nor read from one.
	out, err = inTerminal(t, bin+" record -p "+strconv.Itoa(tp.Pid())+" -d 100ms -o -", "")
	if err == nil || !strings.Contains(out, "standard output, which is a terminal") {
		t.Errorf("record -o - to a terminal: %v\n%q", err, out)
	}
	out, err = inTerminal(t, bin+" replay -", "")
	if err == nil || !strings.Contains(out, "read standard input: it is a terminal") {
		t.Errorf("replay - from a terminal: %v\n%q", err, out)
	}
}

// complete runs the completion that the shell scripts call, and returns
// the candidates (without descriptions).
func complete(t *testing.T, args ...string) []string {
	t.Helper()
	out, _, err := runCLI(t, append([]string{"__complete"}, args...)...)
	if err != nil {
		t.Fatalf("__complete %v: %v", args, err)
	}
	var got []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if strings.HasPrefix(l, ":") {
			break // the directive
		}
		name, _, _ := strings.Cut(l, "\t")
		got = append(got, name)
	}
	return got
}

// TestCompletion checks the shell completion scripts and the values they
// complete: subcommands, flags, --format, --sort, PIDs, modules, thread
// ids, and function names of the -p process or of list's FILE.
func TestCompletion(t *testing.T) {
	for _, sh := range []string{"bash", "zsh", "fish"} {
		out, _, err := runCLI(t, "completion", sh)
		if err != nil || !strings.Contains(out, "__complete") {
			t.Errorf("completion %s: %v\n%.200s", sh, err, out)
		}
	}
	eq := func(what string, got, want []string) {
		t.Helper()
		if strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("%s: %q, want %q", what, got, want)
		}
	}
	eq("subcommands re", complete(t, "re"), []string{"record", "replay", "report", "restore"})
	eq("export --format", complete(t, "export", "--format", ""), []string{"chrome", "folded", "pprof", "flamegraph", "perfetto"})
	eq("report --sort", complete(t, "report", "--sort", ""), []string{"calls", "name", "total", "self", "avg", "min", "max"})
	if got := complete(t, "record", "--g"); !slices.Contains(got, "--graph") {
		t.Errorf("record --g: %q", got)
	}

	testtarget.RequireRoot(t)
	work := testtarget.Build(t, testtarget.Workload, testtarget.ClangNop5)
	tp := testtarget.Start(t, work, "-t", "2")
	if _, err := tp.Expect("ready", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	pid := strconv.Itoa(tp.Pid())
	if got := complete(t, "record", "-p", pid[:1]); !slices.Contains(got, pid) || slices.Contains(got, "2") {
		t.Errorf("record -p %s: %d candidates, want the target %s and no kernel thread", pid[:1], len(got), pid)
	}
	eq("record -F work_", complete(t, "record", "-p", pid, "-F", "work_"), []string{"work_exit_inner", "work_exit_thread", "work_fork", "work_leaf", "work_nested", "work_pattern", "work_recurse"})
	if got := complete(t, "record", "-p", pid, "-m", "libc.so.6", "-F", "mallo"); !slices.Contains(got, "malloc") || slices.Contains(got, "work_leaf") {
		t.Errorf("record -m libc.so.6 -F mallo: %q", got)
	}
	if got := complete(t, "record", "-p", pid, "-m", ""); !slices.Contains(got, "libc.so.6") || !slices.Contains(got, "workload") {
		t.Errorf("record -m: %q", got)
	}
	if got := complete(t, "record", "-p", pid, "--tid", ""); len(got) != 3 || !slices.Contains(got, pid) {
		t.Errorf("record --tid: %q, want the 3 threads", got)
	}
	eq("list FILE work_n", complete(t, "list", work, "work_n"), []string{"work_nested"})
}

// TestSecondsFlag: -d takes a bare number as seconds, as timeout(1)
// does, or a Go duration, and refuses the rest saying what it takes.
func TestSecondsFlag(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		err  string
	}{
		{"5", 5 * time.Second, ""},
		{"1.5", 1500 * time.Millisecond, ""},
		{"500ms", 500 * time.Millisecond, ""},
		{"2m", 2 * time.Minute, ""},
		{"x", 0, "give a number of seconds or a number with a unit"},
		{"5 s", 0, "give a number of seconds"},
		{"NaN", 0, "no number of seconds"},
		{"1e300", 0, "no number of seconds"},
	} {
		var d seconds
		err := d.Set(tc.in)
		switch {
		case tc.err == "" && (err != nil || time.Duration(d) != tc.want):
			t.Errorf("-d %q: %v, %v; want %v", tc.in, time.Duration(d), err, tc.want)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("-d %q: error %v, want one that says %q", tc.in, err, tc.err)
		}
	}
}
