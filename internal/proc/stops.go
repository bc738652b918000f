package proc

import (
	"fmt"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

func (p *Process) idle() {
	if !p.detached {
		p.reap()
	}
}

// reap handles every pending wait status without blocking. It reports
// whether it handled any.
//
// __WNOTHREAD restricts the wait to children and tracees of this very
// thread, the ptrace thread: so it never steals the exit status of a child
// that some other part of the program started with os/exec.
func (p *Process) reap() bool {
	any := false
	for {
		var ws unix.WaitStatus
		tid, err := unix.Wait4(-1, &ws, unix.WALL|unix.WNOHANG|unix.WNOTHREAD, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil || tid <= 0 {
			return any
		}
		any = true
		p.handle(tid, ws)
	}
}

// waitFor handles stops until cond holds, the target is gone, or the
// timeout passes.
func (p *Process) waitFor(cond func() bool, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	tick := time.NewTimer(time.Millisecond)
	defer tick.Stop()
	backoff := 50 * time.Microsecond
	for {
		p.reap()
		if cond() {
			return nil
		}
		if p.exited || p.execed {
			if p.execed {
				return ErrExec
			}
			return ErrExited
		}
		if time.Now().After(deadline) {
			if debugStops {
				for _, t := range p.threads {
					st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/stat", p.pid, t.tid))
					fmt.Fprintf(os.Stderr, "proc: timeout: tid %d state %d kind %d want %v remote %v stepping %v: %s\n", t.tid, t.state, t.kind, t.want, t.remote, t.stepping, st)
				}
			}
			return ErrTimeout
		}
		// SIGCHLD wakes us for every tracee stop; the timer is only a
		// safety net against a lost wake-up.
		tick.Reset(backoff)
		select {
		case <-p.ex.wake:
		case <-tick.C:
			if backoff < 5*time.Millisecond {
				backoff *= 2
			}
		}
	}
}

// waitBlocking is waitFor for a condition that a tracee stop is certain
// to satisfy soon (the syscall-exit stop of a remote membarrier, say): it
// blocks in wait4 instead of waiting for SIGCHLD, which cuts the latency of
// every stop handled meanwhile, such as INT3 hits during a batch, from tens
// of microseconds to a few. A wait4 that blocks longer than timeout is
// not interrupted; the caller's condition must be one that a stop brings.
func (p *Process) waitBlocking(cond func() bool, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if p.exited || p.execed {
			return p.waitFor(cond, 0)
		}
		if time.Now().After(deadline) {
			return ErrTimeout
		}
		var ws unix.WaitStatus
		tid, err := unix.Wait4(-1, &ws, unix.WALL|unix.WNOTHREAD, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return p.waitFor(cond, timeout)
		}
		p.handle(tid, ws)
		p.reap()
	}
	return nil
}

// handle acts on one wait status.
func (p *Process) handle(tid int, ws unix.WaitStatus) {
	if debugStops {
		fmt.Fprintf(os.Stderr, "proc: tid %d status %#x\n", tid, uint32(ws))
	}
	t := p.threads[tid]
	if t == nil {
		if kind, ok := p.children[tid]; ok || !p.isOurThread(tid) {
			p.handleChild(tid, ws, kind)
			return
		}
		// A new thread whose first stop arrived before its parent's
		// PTRACE_EVENT_CLONE.
		t = &thread{tid: tid, want: p.holdAll}
		p.threads[tid] = t
	}
	if ws.Exited() || ws.Signaled() {
		delete(p.threads, tid)
		if tid == p.pid {
			// The kernel reports the leader last, once the whole
			// thread group is gone.
			p.exitStatus = ws
			p.markExited()
		}
		return
	}
	if !ws.Stopped() {
		return
	}
	t.state = stopped
	sig := ws.StopSignal()
	event := int(uint32(ws) >> 16) // not ws.TrapCause(): it is -1 unless the stop signal is SIGTRAP
	switch {
	case sig == unix.SIGTRAP|0x80:
		t.kind = stopSyscall
		if !t.remote {
			// Nobody asked for syscall stops here; let it go.
			p.resume(t, 0)
		}
	case event == unix.PTRACE_EVENT_STOP:
		switch sig {
		case unix.SIGSTOP, unix.SIGTSTP, unix.SIGTTIN, unix.SIGTTOU:
			// Group-stop (job control). Answer with PTRACE_LISTEN so
			// the thread stays stopped until SIGCONT, exactly as if
			// it were not traced (man 2 ptrace, "Group-stop").
			t.kind = stopGroup
			if !t.want {
				p.listen(t)
			}
		default:
			// Our PTRACE_INTERRUPT, the first stop of a new thread, or
			// the wake-up of a LISTENing thread.
			t.kind = stopInterrupt
			if !t.want {
				p.resume(t, 0)
			}
		}
	case event == unix.PTRACE_EVENT_CLONE || event == unix.PTRACE_EVENT_FORK || event == unix.PTRACE_EVENT_VFORK:
		t.kind = stopEvent
		msg, err := unix.PtraceGetEventMsg(tid)
		if err == nil {
			child := int(msg)
			if event == unix.PTRACE_EVENT_CLONE {
				// The child's own stops, even its exit, may have been
				// reaped before this event: add it only if it still
				// exists (a zombie counts; its exit status follows).
				if p.threads[child] == nil && taskExists(p.pid, child) {
					p.threads[child] = &thread{tid: child, want: p.holdAll}
				}
			} else if _, seen := p.children[child]; !seen {
				p.children[child] = int(event)
			}
		}
		if !t.want {
			p.resume(t, 0)
		}
	case event == unix.PTRACE_EVENT_EXEC:
		// The image we patched is gone. Writes through our
		// /proc/PID/mem fail from now on, by design. The thread stays
		// stopped here, in the new image's first instant, until Detach
		// lets it go: a running tracee could not be detached (every
		// other thread is gone, and the stop is reported under the
		// thread group's leader ID).
		t.kind = stopEvent
		t.want = true
		p.execed = true
		p.markExited()
	case event == unix.PTRACE_EVENT_EXIT:
		t.kind = stopEvent
		if p.threadExit != nil {
			p.threadExit(tid)
		}
		p.resume(t, 0)
	case event != 0:
		t.kind = stopEvent
		p.resume(t, 0)
	default:
		// Signal-delivery-stop.
		if sig == unix.SIGTRAP && t.stepping {
			t.kind = stopEvent
			return
		}
		if sig == unix.SIGTRAP && p.trap != nil && p.handleTrap(t) {
			p.traps++
			p.resume(t, 0)
			return
		}
		// Not ours: pass it on unchanged. A thread we want stopped
		// still has our PTRACE_INTERRUPT pending, so it stops again
		// right after the signal is delivered.
		p.resume(t, int(sig))
	}
}

// handleTrap offers a SIGTRAP to the trap handler.
func (p *Process) handleTrap(t *thread) bool {
	si, err := getSiginfo(t.tid)
	if err != nil || si.code != siKernel {
		return false
	}
	var regs unix.PtraceRegs
	if err := unix.PtraceGetRegs(t.tid, &regs); err != nil {
		return false
	}
	if !p.trap(t.tid, &regs) {
		return false
	}
	if err := unix.PtraceSetRegs(t.tid, &regs); err != nil {
		return false
	}
	return true
}

// isOurThread reports whether tid belongs to the target's thread group.
func (p *Process) isOurThread(tid int) bool {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", tid))
	if err != nil {
		// Gone already: a thread of ours that exited, most likely.
		return true
	}
	return statusField(status, "Tgid") == strconv.Itoa(p.pid)
}

// handleChild handles a stop of a forked child (auto-attached through
// PTRACE_O_TRACEFORK/VFORK): let the fork handler clean its memory, then
// detach it.
func (p *Process) handleChild(pid int, ws unix.WaitStatus, kind int) {
	if ws.Exited() || ws.Signaled() {
		delete(p.children, pid)
		return
	}
	if !ws.Stopped() {
		return
	}
	if kind == 0 {
		kind = unix.PTRACE_EVENT_FORK
	}
	if kind == unix.PTRACE_EVENT_FORK && p.fork != nil {
		if m, err := OpenMem(pid); err == nil {
			p.fork(pid, m)
			m.Close()
		}
	}
	sig := 0
	if s := ws.StopSignal(); uint32(ws)>>16 == 0 && s != unix.SIGTRAP && s != unix.SIGSTOP {
		sig = int(s)
	}
	_ = unix.PtraceDetach(pid)
	if sig != 0 {
		_ = unix.Kill(pid, unix.Signal(sig))
	}
	delete(p.children, pid)
}
