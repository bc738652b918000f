package proc

import (
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/livetrace/livetrace/internal/testtarget"
	"golang.org/x/sys/unix"
)

// sigchldFlags returns the flags of SIGCHLD's action in this process.
func sigchldFlags(t *testing.T) uint64 {
	t.Helper()
	var act kernelSigaction
	if _, _, e := syscall.RawSyscall6(syscall.SYS_RT_SIGACTION, uintptr(syscall.SIGCHLD), 0, uintptr(unsafe.Pointer(&act)), 8, 0, 0); e != 0 {
		t.Fatal(e)
	}
	return act.flags
}

// taskState returns the state letter of thread tid of pid (R, S, t...).
func taskState(pid, tid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/stat", pid, tid))
	if err != nil {
		return ""
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return ""
	}
	return s[i+2 : i+3]
}

// TestQuietStops checks that a batch silences the SIGCHLD of tracee stops
// only while it runs, and that a stop which came in that window, with no
// signal to announce it, is still handled once the batch ends: a worker of
// the target that gets a signal during the batch must run again after it,
// though no other stop follows to wake the ptrace thread.
func TestQuietStops(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := testtarget.Build(t, testtarget.Signals, testtarget.ClangNop5)
	tp := startAs(t, nil, bin, "-t", "2")
	tp.expect(t, "ready", 10*time.Second)
	tp.send(t, "hammer")
	tp.expect(t, "hammering", 10*time.Second)
	p, err := Attach(tp.pid())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Detach()
	if sigchldFlags(t)&saNoCldStop != 0 {
		t.Fatal("SA_NOCLDSTOP set before any batch")
	}
	var worker int
	for _, tid := range p.Threads() {
		if tid != tp.pid() {
			worker = tid
		}
	}
	if worker == 0 {
		t.Fatal("no worker thread")
	}
	err = p.Batch(func(b *Batch) error {
		if sigchldFlags(t)&saNoCldStop == 0 {
			t.Error("SA_NOCLDSTOP not set during a batch")
		}
		// SIGWINCH is ignored by default, but a tracee stops for it.
		if err := unix.Tgkill(tp.pid(), worker, unix.SIGWINCH); err != nil {
			return err
		}
		deadline := time.Now().Add(5 * time.Second)
		for taskState(tp.pid(), worker) != "t" {
			if time.Now().After(deadline) {
				return fmt.Errorf("worker %d never stopped for its signal", worker)
			}
			time.Sleep(time.Millisecond)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if sigchldFlags(t)&saNoCldStop != 0 {
		t.Fatal("SA_NOCLDSTOP still set after the batch")
	}
	deadline := time.Now().Add(2 * time.Second)
	for taskState(tp.pid(), worker) == "t" {
		if time.Now().After(deadline) {
			t.Fatalf("worker %d still in its signal stop 2 s after the batch", worker)
		}
		time.Sleep(time.Millisecond)
	}
	if err := p.Detach(); err != nil {
		t.Fatal(err)
	}
	tp.send(t, "stop")
	tp.expect(t, "stopped", 30*time.Second)
}
