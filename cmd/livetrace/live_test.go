package main

import (
	"bufio"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/livetrace/livetrace/internal/testtarget"
)

// liveRun starts `livetrace live ARGS` on a workload, runs the workload's
// pattern n times while live is attached, and collects the lines live
// prints until every call has shown (the test fails if they do not show
// while live is still attached). Then it stops live with SIGINT.
func liveRun(t *testing.T, n int, done func(lines []string, want map[string]uint64) bool, args ...string) (lines []string, want map[string]uint64, stderr string) {
	t.Helper()
	tp := testtarget.Start(t, testtarget.Build(t, testtarget.Workload, testtarget.ClangNop5), "-t", "2")
	if _, err := tp.Expect("ready", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := testtarget.RunWorkload(tp, 1, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	bin := livetraceBinary(t)
	cmd := exec.Command(bin, append([]string{"live", "-p", strconv.Itoa(tp.Pid())}, args...)...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	errPipe, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	errs := make(chan string, 1)
	ready := make(chan struct{})
	go func() {
		var b strings.Builder
		sc := bufio.NewScanner(errPipe)
		signalled := false
		for sc.Scan() {
			b.WriteString(sc.Text() + "\n")
			if !signalled && strings.Contains(sc.Text(), "tracing ") {
				signalled = true
				close(ready)
			}
		}
		if !signalled {
			close(ready)
		}
		errs <- b.String()
	}()
	select {
	case <-ready:
	case <-time.After(30 * time.Second):
		t.Fatal("live did not start tracing")
	}
	want, err = testtarget.RunWorkload(tp, n, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 1024)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			got <- sc.Text()
		}
		close(got)
	}()
	deadline := time.After(10 * time.Second)
collect:
	for !done(lines, want) {
		select {
		case l, ok := <-got:
			if !ok {
				break collect
			}
			lines = append(lines, l)
		case <-deadline:
			// What live says at its end (events, lost, threads) tells a
			// consumer that missed them from a printer that skipped them.
			_ = cmd.Process.Signal(syscall.SIGINT)
			said := ""
			select {
			case said = <-errs:
			case <-time.After(10 * time.Second):
			}
			t.Fatalf("the calls did not all show while live was attached (the program counted %v); got:\n%s\nlive said:\n%s", want, strings.Join(lines, "\n"), said)
		}
	}
	_ = cmd.Process.Signal(syscall.SIGINT)
	for l := range got {
		lines = append(lines, l)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("live: %v\n%s", err, <-errs)
	}
	stderr = <-errs
	testtarget.CheckText(t, tp.Pid())
	return lines, want, stderr
}

func countLines(lines []string, sub string) uint64 {
	n := uint64(0)
	for _, l := range lines {
		if strings.Contains(l, sub) {
			n++
		}
	}
	return n
}

// TestLiveGraph: in graph mode, every call shows while live is attached,
// nested as in replay: work_pattern opens a block and closes it with its
// duration, work_leaf is folded into one line.
func TestLiveGraph(t *testing.T) {
	testtarget.RequireRoot(t)
	lines, want, _ := liveRun(t, 3, func(lines []string, want map[string]uint64) bool {
		return want != nil && countLines(lines, "} /* work_pattern */") == want["work_pattern"]
	}, "-F", "work_*", "--graph")
	if got := countLines(lines, "work_leaf();"); got != want["work_leaf"] {
		t.Errorf("work_leaf: %d folded lines, the program made %d calls\n%s", got, want["work_leaf"], strings.Join(lines, "\n"))
	}
	if !strings.HasPrefix(lines[0], "# tracer: function_graph (livetrace live)") {
		t.Errorf("header %q", lines[0])
	}
}

// TestLiveEntryRecords: in entry mode live prints ftrace function-tracer
// lines with the caller, and with -o records the same calls.
func TestLiveEntryRecords(t *testing.T) {
	testtarget.RequireRoot(t)
	out := filepath.Join(t.TempDir(), "live.data")
	lines, want, stderr := liveRun(t, 2, func(lines []string, want map[string]uint64) bool {
		return want != nil && countLines(lines, ": work_leaf <- ") == want["work_leaf"]
	}, "-F", "work_*", "-o", out)
	if !strings.Contains(stderr, "wrote "+out) {
		t.Errorf("stderr does not name the recording:\n%s", stderr)
	}
	rep, _, err := runCLI(t, "report", "--json", "-i", out)
	if err != nil {
		t.Fatal(err)
	}
	var rows []struct {
		Function string `json:"function"`
		Calls    uint64 `json:"calls"`
	}
	if err := json.Unmarshal([]byte(rep), &rows); err != nil {
		t.Fatal(err)
	}
	recorded := uint64(0)
	for _, r := range rows {
		if r.Function == "work_leaf" {
			recorded = r.Calls
		}
	}
	if recorded != want["work_leaf"] {
		t.Errorf("the recording holds %d work_leaf calls, live printed %d", recorded, want["work_leaf"])
	}
	if got := countLines(lines, ": work_leaf <- work_"); got != want["work_leaf"] {
		t.Errorf("work_leaf lines name no caller: %d of %d", got, want["work_leaf"])
	}
}

// TestLiveValuesUndecoded: without -o live takes the records undecoded and
// decodes those it prints (session.Options.OnRaw): every call still shows,
// with its argument and its caller.
func TestLiveValuesUndecoded(t *testing.T) {
	testtarget.RequireRoot(t)
	leaf := regexp.MustCompile(`: work_leaf\((\d+)\) <- work_(pattern|nested)\+0x[0-9a-f]+$`)
	lines, want, _ := liveRun(t, 2, func(lines []string, want map[string]uint64) bool {
		return want != nil && countLines(lines, ": work_leaf(") == want["work_leaf"]
	}, "-F", "work_*", "-A", "work_leaf@arg1/d")
	n := uint64(0)
	for _, l := range lines {
		if leaf.MatchString(l) {
			n++
		}
	}
	if n != want["work_leaf"] || countLines(lines, ": work_nested <- work_pattern+") != want["work_nested"] {
		t.Errorf("%d work_leaf lines with a value and a caller, want %d; %d work_nested lines, want %d:\n%s",
			n, want["work_leaf"], countLines(lines, ": work_nested <- work_pattern+"), want["work_nested"], strings.Join(lines, "\n"))
	}
}
