package main

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/livetrace/livetrace/internal/testtarget"
)

// TestRecordLibcMalloc runs `livetrace record -p PID -m libc.so.6 -F
// malloc -F qsort` on a running program: the stock libc has no compiler
// NOPs, so both are relocating sites. qsort's count is exact; malloc's is
// at least the program's (libc mallocs too).
func TestRecordLibcMalloc(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := livetraceBinary(t)
	tp := testtarget.Start(t, testtarget.Build(t, testtarget.LibcCalls, testtarget.ClangNop5, testtarget.NoSites()), "-t", "2")
	if _, err := tp.Expect("ready", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := testtarget.RunWorkload(tp, 1, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "rec.data")
	cmd, stderr, said := startTracing(t, bin, "record", "-p", strconv.Itoa(tp.Pid()), "-m", "libc.so.6", "-F", "malloc", "-F", "qsort", "-o", out)
	if !strings.Contains(said, "tracing 2 functions") {
		t.Errorf("record says %q, want 2 functions", said)
	}
	want, err := testtarget.RunWorkload(tp, 500, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = cmd.Process.Signal(syscall.SIGINT)
	rest := make([]byte, 1<<16)
	n, _ := stderr.Read(rest)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("record: %v\n%s%s", err, said, rest[:n])
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
	calls := map[string]uint64{}
	for _, r := range rows {
		calls[r.Function] = r.Calls
	}
	if calls["qsort"] != want["qsort"] {
		t.Errorf("qsort: report says %d calls, the program counted %d", calls["qsort"], want["qsort"])
	}
	if calls["malloc"] < want["malloc"] || calls["malloc"] > want["malloc"]+100 {
		t.Errorf("malloc: report says %d calls, the program counted %d", calls["malloc"], want["malloc"])
	}
	testtarget.CheckText(t, tp.Pid())
}

// TestRecordStrippedNameless: record -F of a process whose program is a
// stripped PIE that names no function (as Debian's memcached) traces what
// the globs match elsewhere and says that the program's own functions
// cannot be selected, and how to get their names.
func TestRecordStrippedNameless(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := livetraceBinary(t)
	exe := buildStrippedPIE(t, "#include <unistd.h>\nstatic int f(int x) { return x * 3; }\nint main(int c, char **v) { (void)v; for (;;) pause(); return f(c); }\n")
	dir := t.TempDir()
	pid := startPaused(t, exe)
	t.Setenv("LIVETRACE_DEBUG_DIR", "-")
	_, stderr, err := runCLIBin(bin, "record", "-p", strconv.Itoa(pid), "-F", "pause", "-d", "0.2s", "-o", filepath.Join(dir, "rec.data"))
	if err != nil {
		t.Fatalf("record: %v\n%s", err, stderr)
	}
	if want := exe + " is stripped and names no function: -F cannot select its functions"; !strings.Contains(stderr, want) || !strings.Contains(stderr, "tracing 1 function") {
		t.Errorf("record says %q; want %q and 1 function (libc's pause)", stderr, want)
	}
}

// TestRecordStrippedNoMatch: -F naming no function of a stripped program
// that exports some (as postgres does: its extensions call them) says no
// function matches and that the program names only those it exports,
// not that it has no sites; with --follow the process is followed
// without tracing it, saying which globs matched nothing.
func TestRecordStrippedNoMatch(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := livetraceBinary(t)
	exe := buildStrippedPIE(t, `#include <unistd.h>
__attribute__((noinline)) static int hidden_step(int x) { return x * 3; }
__attribute__((noinline)) int exported_step(int x) { return hidden_step(x) + 1; }
int main(int c, char **v) { (void)v; for (;;) { pause(); c = exported_step(c); } return c; }
`, "-rdynamic")
	p := startPaused(t, exe)
	t.Setenv("LIVETRACE_DEBUG_DIR", "-")
	dir := t.TempDir()
	pid := strconv.Itoa(p)
	_, stderr, err := runCLIBin(bin, "record", "-p", pid, "-F", "hidden_step", "-d", "0.2s", "-o", filepath.Join(dir, "a.data"))
	for _, want := range []string{"no function matches hidden_step", exe + " is stripped and names only the functions it exports", "-dbgsym"} {
		if err == nil || !strings.Contains(stderr, want) {
			t.Errorf("record -F hidden_step: %v, %q; want it to say %q", err, stderr, want)
		}
	}
	_, stderr, err = runCLIBin(bin, "record", "-p", pid, "--follow", "-F", "hidden_step", "-d", "0.2s", "-o", filepath.Join(dir, "b.data"))
	if err != nil || !strings.Contains(stderr, "tracing nothing in PID "+pid+" (no function matches hidden_step); following") || strings.Contains(stderr, "dlopen") {
		t.Errorf("record --follow -F hidden_step: %v\n%s", err, stderr)
	}
	testtarget.CheckText(t, p)
}

// startPaused starts exe, a program that waits in pause(), killed at the
// test's end, and gives it time to get there.
func startPaused(t *testing.T, exe string) int {
	t.Helper()
	p := exec.Command(exe)
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Process.Kill(); _ = p.Wait() })
	time.Sleep(200 * time.Millisecond)
	return p.Process.Pid
}
