package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/livetrace/livetrace/internal/testtarget"
	"github.com/livetrace/livetrace/internal/tracefile"
)

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// livetraceBinary builds the livetrace command once per test run.
func livetraceBinary(t *testing.T) string { return livetraceBinaryB(t) }

func livetraceBinaryB(t testing.TB) string {
	t.Helper()
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "livetrace-bin")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "livetrace")
		// As the Makefile builds it.
		cmd := exec.Command("go", "build", "-o", binPath, ".")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		out, err := cmd.CombinedOutput()
		if err != nil {
			binErr = err
			binPath = string(out)
		}
	})
	if binErr != nil {
		t.Fatalf("build livetrace: %v\n%s", binErr, binPath)
	}
	return binPath
}

func TestRecordLive(t *testing.T) {
	testtarget.RequireRoot(t)
	tp := testtarget.Start(t, testtarget.Build(t, testtarget.Workload, testtarget.ClangNop5), "-t", "2")
	if _, err := tp.Expect("ready", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "rec.data")
	line := ""
	stderr := recordDuring(t, []string{"-p", strconv.Itoa(tp.Pid()), "-F", "work_*", "-d", "1500ms", "-o", out}, func() {
		line = sendExpect(t, tp, "run 5", "done ")
	})
	if !strings.Contains(stderr, "livetrace: tracing 7 functions in PID "+strconv.Itoa(tp.Pid())) {
		t.Errorf("stderr lacks the tracing line:\n%s", stderr)
	}
	var want map[string]uint64
	if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "done ")), &want); err != nil {
		t.Fatal(err)
	}
	stdout, _, err := runCLI(t, "report", "--json", "-i", out)
	if err != nil {
		t.Fatal(err)
	}
	var rows []struct {
		Function string `json:"function"`
		Calls    uint64 `json:"calls"`
	}
	if err := json.Unmarshal([]byte(stdout), &rows); err != nil {
		t.Fatal(err)
	}
	got := map[string]uint64{}
	for _, r := range rows {
		got[r.Function] = r.Calls
	}
	for _, fn := range []string{"work_leaf", "work_nested", "work_recurse"} {
		if got[fn] != want[fn] {
			t.Errorf("%s: report says %d calls, the program counted %d", fn, got[fn], want[fn])
		}
	}
	testtarget.CheckText(t, tp.Pid())
}

// recordDuring runs record with args and calls during 700 ms after it
// started (attached, on the machines here), then returns record's
// standard error once it has ended, failing t if it failed.
func recordDuring(t *testing.T, args []string, during func()) string {
	t.Helper()
	done := make(chan error, 1)
	var stderr string
	go func() {
		_, e, err := runCLI(t, append([]string{"record"}, args...)...)
		stderr = e
		done <- err
	}()
	time.Sleep(700 * time.Millisecond)
	during()
	if err := <-done; err != nil {
		t.Fatalf("record: %v\n%s", err, stderr)
	}
	return stderr
}

// sendExpect sends cmd to the fixture and returns its reply, the line
// that starts with prefix.
func sendExpect(t *testing.T, tp *testtarget.Process, cmd, prefix string) string {
	t.Helper()
	if err := tp.Send(cmd); err != nil {
		t.Fatal(err)
	}
	line, err := tp.Expect(prefix, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return line
}

func TestRecordCommand(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := livetraceBinary(t)
	work := testtarget.Build(t, testtarget.Workload, testtarget.GccMcount)
	out := filepath.Join(t.TempDir(), "rec.data")
	cmd := exec.Command(bin, "record", "-o", out, "--", work, "-t", "3")
	cmd.Stdin = strings.NewReader("run 7\nquit\n")
	stdout, err := cmd.Output()
	if err != nil {
		t.Fatalf("record -- CMD: %v", err)
	}
	var want map[string]uint64
	for _, l := range strings.Split(string(stdout), "\n") {
		if strings.HasPrefix(l, "done ") {
			if err := json.Unmarshal([]byte(l[5:]), &want); err != nil {
				t.Fatal(err)
			}
		}
	}
	if want == nil {
		t.Fatalf("the command's output lost: %q", stdout)
	}
	rec, err := tracefile.Read(out)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]uint64{}
	for _, ev := range rec.Events {
		got[rec.Funcs[ev.Func].Name]++
	}
	for fn, n := range want {
		if got[fn] != n {
			t.Errorf("%s: recorded %d, counted %d", fn, got[fn], n)
		}
	}
	if got["main"] != 1 {
		t.Errorf("main recorded %d times, want 1: tracing must start before the program's own code", got["main"])
	}
}

func TestRecordCommandExitStatus(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := livetraceBinary(t)
	work := testtarget.Build(t, testtarget.Workload, testtarget.ClangNop5)
	cmd := exec.Command(bin, "record", "-o", filepath.Join(t.TempDir(), "rec.data"), "--", work, "-t", "0")
	cmd.Stdin = strings.NewReader("bogus\n")
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	}
	// workload -t 0 refuses to start; record exits like the command.
	direct := exec.Command(work, "-t", "0")
	direct.Stdin = strings.NewReader("bogus\n")
	derr := direct.Run()
	dcode := 0
	if ee, ok := derr.(*exec.ExitError); ok {
		dcode = ee.ExitCode()
	}
	if code != dcode {
		t.Fatalf("record exited %d, the command alone exits %d", code, dcode)
	}
}

// TestRecordSIGINT interrupts record at random moments of its attach and
// patch phase, on a program with 20,000 functions: the program must live
// on with its text byte-identical, and record must exit cleanly.
func TestRecordSIGINT(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := livetraceBinary(t)
	stress := testtarget.Build(t, testtarget.Stress, testtarget.ClangNop5, testtarget.Funcs(20000))
	tp := startHammering(t, stress)
	for _, delay := range []time.Duration{5 * time.Millisecond, 20 * time.Millisecond, 40 * time.Millisecond, 60 * time.Millisecond, 90 * time.Millisecond, 150 * time.Millisecond} {
		cmd := exec.Command(bin, "record", "-p", strconv.Itoa(tp.Pid()), "-o", filepath.Join(t.TempDir(), "rec.data"))
		var errb strings.Builder
		cmd.Stderr = &errb
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(delay)
		_ = cmd.Process.Signal(syscall.SIGINT)
		if err := cmd.Wait(); err != nil {
			// A SIGINT that arrives before the Go runtime has even
			// started main kills livetrace, before it touched anything.
			var ee *exec.ExitError
			killedEarly := errors.As(err, &ee) && ee.ProcessState.Sys().(syscall.WaitStatus).Signal() == syscall.SIGINT && errb.Len() == 0
			if !killedEarly {
				t.Fatalf("SIGINT after %v: %v\n%s", delay, err, errb.String())
			}
		}
		testtarget.CheckText(t, tp.Pid())
	}
	if err := tp.Send("stop"); err != nil {
		t.Fatal(err)
	}
	if _, err := tp.Expect("stopped", 30*time.Second); err != nil {
		t.Fatalf("the program did not survive: %v", err)
	}
}

func TestRecordErrors(t *testing.T) {
	testtarget.RequireRoot(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"record"}, "-p PID"},
		{[]string{"record", "-p", "-3"}, "positive"},
		{[]string{"record", "-p", "999999999"}, "no process with pid 999999999"},
		{[]string{"record", "-p", "2"}, "kernel thread"},
		{[]string{"record", "-p", "1", "--", "ls"}, "not both"},
		{[]string{"record", "--", "/nonexistent/prog"}, "/nonexistent/prog"},
	} {
		_, _, err := runCLI(t, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v, want one that says %q", tc.args, err, tc.want)
		}
	}
	tp := testtarget.Start(t, testtarget.Build(t, testtarget.Workload, testtarget.ClangNop5), "-t", "1")
	if _, err := tp.Expect("ready", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	_, _, err := runCLI(t, "record", "-p", strconv.Itoa(tp.Pid()), "-F", "work_leef", "-o", filepath.Join(t.TempDir(), "x"))
	if err == nil || !strings.Contains(err.Error(), "work_leaf") {
		t.Errorf("misspelled function: %v, want the closest name work_leaf", err)
	}

	// A process whose main thread called pthread_exit: its /proc/PID/maps
	// is empty, and it used to be called a zombie waiting for its parent.
	sl := testtarget.Start(t, testtarget.Build(t, testtarget.Sleeper, testtarget.ClangNop5), "exit-main")
	if _, err := sl.Expect("ready", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	sl.WaitMainThreadExited(t)
	pid := strconv.Itoa(sl.Pid())
	for _, args := range [][]string{{"record", "-p", pid, "-o", filepath.Join(t.TempDir(), "x")}, {"list", "-p", pid}} {
		_, _, err := runCLI(t, args...)
		if want := "pid " + pid + "'s main thread has exited (pthread_exit) while 1 other thread(s) run on"; err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%v: error %v, want one that says %q", args, err, want)
		}
	}
	if err := sl.Send("echo alive"); err != nil {
		t.Fatal(err)
	}
	if _, err := sl.Expect("echo alive", 10*time.Second); err != nil {
		t.Fatalf("the process does not answer: %v", err)
	}
}

// TestRecordKilled kills record with SIGKILL while it injects and patches,
// at moments after the agent is in (the few syscalls before that are a
// known window, see docs/DESIGN-NOTES.md): nothing can clean up then, but
// the target must survive. The agent's SIGTRAP handler emulates any INT3
// left in the text, and gives a thread borrowed for a remote syscall its
// registers back.
func TestRecordKilled(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := livetraceBinary(t)
	stress := testtarget.Build(t, testtarget.Stress, testtarget.ClangNop5, testtarget.Funcs(20000))
	for _, delay := range []time.Duration{0, 2 * time.Millisecond, 5 * time.Millisecond, 10 * time.Millisecond, 20 * time.Millisecond, 40 * time.Millisecond} {
		tp := testtarget.Start(t, stress, "-t", "2")
		if _, err := tp.Expect("ready", 30*time.Second); err != nil {
			t.Fatal(err)
		}
		if err := testtarget.HammerStress(tp, 10*time.Second); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "record", "-p", strconv.Itoa(tp.Pid()), "-o", filepath.Join(t.TempDir(), "rec.data"))
		cmd.Env = append(os.Environ(), "LIVETRACE_DEBUG_TIMING=1")
		stderr, err := cmd.StderrPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "agent and backstop in") {
				break
			}
		}
		time.Sleep(delay)
		_ = cmd.Process.Kill()
		go io.Copy(io.Discard, stderr)
		_ = cmd.Wait()
		time.Sleep(100 * time.Millisecond)
		if _, _, err := testtarget.StopStress(tp, 30*time.Second); err != nil {
			t.Fatalf("killed %v after the agent went in: the target did not survive: %v (exit: %v)", delay, err, tp.Wait())
		}
		tp.Kill()
	}
}

// TestRecordTargetDiesInDetach kills the target while record detaches from
// it: nothing is left to restore, so record must end as it does when the
// target exits on its own, with status 0, no error about the vanished
// memory, and a complete recording.
func TestRecordTargetDiesInDetach(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := livetraceBinary(t)
	stress := testtarget.Build(t, testtarget.Stress, testtarget.ClangNop5, testtarget.Funcs(20000))
	for _, delay := range []time.Duration{0, 2 * time.Millisecond, 5 * time.Millisecond, 10 * time.Millisecond, 20 * time.Millisecond, 40 * time.Millisecond} {
		tp := startHammering(t, stress)
		out := filepath.Join(t.TempDir(), "rec.data")
		cmd := exec.Command(bin, "record", "--graph", "-p", strconv.Itoa(tp.Pid()), "-o", out)
		var errb strings.Builder
		cmd.Stderr = &errb
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(30 * time.Second)
		for !strings.Contains(errb.String(), "tracing ") && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		time.Sleep(100 * time.Millisecond)
		_ = cmd.Process.Signal(syscall.SIGINT)
		time.Sleep(delay)
		tp.Kill()
		if err := cmd.Wait(); err != nil {
			t.Fatalf("target killed %v after SIGINT: record: %v\n%s", delay, err, errb.String())
		}
		if s := errb.String(); strings.Contains(s, "EOF") || strings.Contains(s, "no thread of pid") {
			t.Errorf("target killed %v after SIGINT: record reports the vanished memory:\n%s", delay, s)
		}
		if o, err := exec.Command(bin, "info", "-i", out).CombinedOutput(); err != nil {
			t.Fatalf("target killed %v after SIGINT: the recording does not read: %v\n%s", delay, err, o)
		}
	}
}

// startHammering starts the stress fixture with 2 threads calling its
// functions all along.
func startHammering(t *testing.T, stress string) *testtarget.Process {
	t.Helper()
	tp := testtarget.Start(t, stress, "-t", "2")
	if _, err := tp.Expect("ready", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := testtarget.HammerStress(tp, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	return tp
}
