package proc

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/livetrace/livetrace/internal/testtarget"
	"golang.org/x/sys/unix"
)

// TestExecWhileBorrowed is the attack of a target that calls exec while
// the tracer holds its leader for remote syscalls: the kernel gives the
// leader's tid to the exec'ing thread, and a tracer that then writes back
// the registers it saved from the old image makes the new program (which
// may be a setuid one) start wherever the attacker parked the leader. The
// target runs as nobody. The registers saved before the exec must never be
// written: Release fails with ErrExec and the new program runs normally
// from its own entry point.
func TestExecWhileBorrowed(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := testtarget.Build(t, testtarget.SignalsExec, testtarget.ClangNop5)
	for _, ran := range []bool{false, true} {
		t.Run(fmt.Sprintf("syscall-ran=%v", ran), func(t *testing.T) {
			tp := startAs(t, nobody, bin)
			var leader, worker int
			if _, err := fmt.Sscanf(tp.expect(t, "ready", 10*time.Second), "ready %d %d", &leader, &worker); err != nil {
				t.Fatal(err)
			}
			testtarget.WaitSyscall(t, tp.pid(), leader, unix.SYS_NANOSLEEP, unix.SYS_CLOCK_NANOSLEEP)
			p, err := Attach(tp.pid())
			if err != nil {
				t.Fatal(err)
			}
			defer p.Detach()
			r, err := p.holdRemote(leader)
			if err != nil {
				t.Fatal(err)
			}
			if ran {
				if ret, err := r.Syscall(SysGetpid); err != nil || int(ret) != leader {
					t.Fatalf("remote getpid = %d, %v", ret, err)
				}
			}
			// The worker execs; the kernel kills the held leader and
			// the new image stops in PTRACE_EVENT_EXEC under its tid.
			tp.send(t, "exec")
			waitExeced(t, leader)
			time.Sleep(50 * time.Millisecond) // let the tracer reap the stop, or not
			if ran {
				if _, err := r.Syscall(SysGetpid); !errors.Is(err, ErrExec) {
					t.Errorf("remote syscall after exec: %v, want ErrExec", err)
				}
			}
			err = r.Release()
			if !errors.Is(err, ErrExec) {
				t.Errorf("Release after exec: %v, want ErrExec", err)
			}
			select {
			case <-p.Exited():
			case <-time.After(5 * time.Second):
				t.Fatal("the exec was not noticed")
			}
			if _, execed := p.ExitStatus(); !execed {
				t.Error("ExitStatus does not report the exec")
			}
			if err := p.Detach(); err != nil {
				t.Logf("detach after exec: %v", err)
			}
			// The new program runs from its own entry point: it prints
			// and exits 0. Registers of the old image would crash it
			// (or worse).
			if l := tp.expect(t, "execd", 10*time.Second); l != fmt.Sprintf("execd %d", leader) {
				t.Errorf("new image said %q", l)
			}
			if err := tp.wait(10 * time.Second); err != nil {
				t.Fatalf("the exec'd program did not exit cleanly: %v", err)
			}
		})
	}
}

// waitExeced waits until pid runs the new image (its command line says
// "execd").
func waitExeced(t *testing.T, pid int) {
	t.Helper()
	for i := 0; i < 500; i++ {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if strings.Contains(string(b), "execd") {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("pid %d never ran the new image", pid)
}

// TestCloneVMChildIsNotAFork checks that a clone(CLONE_VM) child that is
// not a thread is not handed to the fork handler, which would restore the
// original text in the memory it shares with the parent and so silently
// stop tracing the parent; a real fork child still is.
func TestCloneVMChildIsNotAFork(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := testtarget.Build(t, testtarget.SignalsExec, testtarget.ClangNop5)
	tp := startAs(t, nobody, bin)
	tp.expect(t, "ready", 10*time.Second)
	p, err := Attach(tp.pid())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Detach()
	var forks []int
	p.SetForkHandler(func(child int, m *Mem) { forks = append(forks, child) })

	tp.send(t, "clonevm 10")
	if l := tp.expect(t, "clonevm", 10*time.Second); l != "clonevm 0" {
		t.Fatalf("clone(CLONE_VM) child: %q", l)
	}
	p.Pump()
	var n int
	p.do(func() { n = len(forks) })
	if n != 0 {
		t.Fatalf("the fork handler ran for a clone(CLONE_VM) child (pids %v): it would restore the parent's text", forks)
	}
	tp.send(t, "fork 10")
	if l := tp.expect(t, "fork", 10*time.Second); l != "fork 0" {
		t.Fatalf("fork child: %q", l)
	}
	p.Pump()
	p.do(func() { n = len(forks) })
	if n != 1 {
		t.Fatalf("fork handler ran %d times for one fork, want 1", n)
	}
	if err := p.Detach(); err != nil {
		t.Fatal(err)
	}
	tp.send(t, "call 1")
	tp.expect(t, "called 1", 10*time.Second)
}
