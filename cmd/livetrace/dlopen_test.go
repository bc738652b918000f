package main

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/livetrace/livetrace/internal/session"
	"github.com/livetrace/livetrace/internal/testtarget"
)

// TestDlopenTracerKilled kills record with SIGKILL while the target loads
// and unloads a library from two threads (internal/session/dlopen.go): the
// INT3 on the loader's r_brk stays behind, sometimes with a thread stopped
// on it. The target must finish its rounds (the agent's SIGTRAP backstop
// returns from r_brk in place of the tracer), `livetrace restore` must put
// r_brk's `ret` back with the rest, and the text and mappings must be as
// before.
func TestDlopenTracerKilled(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := livetraceBinary(t)
	exe := testtarget.Build(t, testtarget.Dlopen, testtarget.ClangNop5)
	t.Setenv("MALLOC_ARENA_MAX", "1") // no arena appears later as a new mapping
	tp := testtarget.Start(t, exe)
	if _, err := tp.Expect("ready", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	run := func(rounds int) string {
		if err := tp.Send(fmt.Sprintf("run %d", rounds)); err != nil {
			t.Fatal(err)
		}
		l, err := tp.Expect("done ", 60*time.Second)
		if err != nil {
			t.Fatalf("the target did not finish its rounds: %v (stderr: %s, exit: %v)", err, tp.Stderr(), tp.Wait())
		}
		return l
	}
	run(1)
	snap := testtarget.TakeSnapshot(t, tp.Pid())
	pid := strconv.Itoa(tp.Pid())
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 2))
	for i := range 4 {
		errPath := filepath.Join(t.TempDir(), "stderr")
		ef, err := os.Create(errPath)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "record", "-p", pid, "-F", "plug_*", "-F", "round_done", "-o", filepath.Join(t.TempDir(), "rec.data"))
		cmd.Env = append(os.Environ(), "LIVETRACE_DEBUG_TIMING=1")
		cmd.Stderr = ef
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		ef.Close()
		t0 := time.Now()
		for {
			b, _ := os.ReadFile(errPath)
			if strings.Contains(string(b), "session: checkpoint") {
				break
			}
			if time.Since(t0) > 30*time.Second {
				_ = cmd.Process.Kill()
				t.Fatalf("record did not attach in 30s:\n%s", b)
			}
			time.Sleep(time.Millisecond)
		}
		const rounds = 200
		if err := tp.Send(fmt.Sprintf("run %d", rounds)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(rng.IntN(200)) * time.Millisecond)
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = waitTimeout(cmd, closedChan, 60*time.Second)
		l, err := tp.Expect("done ", 60*time.Second)
		if err != nil {
			t.Fatalf("kill %d: the target did not finish its rounds: %v (stderr: %s, exit: %v)", i, err, tp.Stderr(), tp.Wait())
		}
		if want := fmt.Sprintf("done plug_outer=%d ", 2*rounds*5); !strings.HasPrefix(l, want) {
			t.Errorf("kill %d: the target says %q, want %q...", i, l, want)
		}
		o, err := session.FindOrphan(tp.Pid())
		if err != nil || o == nil {
			t.Fatalf("kill %d: no agent left to restore (%v)", i, err)
		}
		out, stderr, err := runCLIBin(bin, "restore", "-p", pid)
		if err != nil || !strings.Contains(out, "the loader's r_brk") {
			t.Fatalf("kill %d: restore: %v\n%s%s", i, err, out, stderr)
		}
		t.Logf("kill %d: %s; %s", i, strings.TrimSpace(l), strings.TrimSpace(out))
		testtarget.CheckText(t, tp.Pid())
		snap.CheckSame(t, tp.Pid())
		if t.Failed() {
			t.FailNow()
		}
		run(3)
	}
}
