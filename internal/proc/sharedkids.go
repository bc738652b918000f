package proc

import (
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// Children that share the process's memory.
//
// A vfork child, and a posix_spawn one (glibc clones it with CLONE_VM and
// CLONE_VFORK, on a stack of its own), runs in the process's address space
// until it calls exec or exits: its text is the process's, patched or
// being patched. It is no thread of the process, and posix_spawn's child
// resets every handled signal to its default action before it calls
// anything, the agent's SIGTRAP handler included. Detached at its first
// stop, as every child was, such a child that met a batch's INT3 died of
// SIGTRAP: a JVM's ProcessBuilder failed ("Failed to exec spawn helper:
// signal 5") in one of four recordings of libc, and a C program that
// posix_spawns /bin/true in a loop lost a child in 40 attaches and detaches
// of libc. So such a child stays traced until it calls exec or exits: its
// INT3s stop it, and the trap handler emulates them as a thread's (the
// memory is the same). Holding it in its first stop for the length of a
// batch instead hung the batch: its parent waits for it in vfork,
// uninterruptibly, and the batch waited for the parent to stop.

// keepShared starts tracing child pid, in its first stop, which shares
// p's memory: it runs on, traced, until it calls exec or exits. sig is
// the signal of the stop to deliver (0: none).
func (p *Process) keepShared(pid, sig int) {
	if p.sharedKids == nil {
		p.sharedKids = map[int]bool{}
	}
	p.sharedKids[pid] = true
	if unix.PtraceCont(pid, sig) != nil {
		delete(p.sharedKids, pid)
	}
}

// handleShared handles a stop ws of child pid, traced by keepShared.
func (p *Process) handleShared(pid int, ws unix.WaitStatus) {
	if ws.Exited() || ws.Signaled() {
		delete(p.sharedKids, pid)
		return
	}
	if !ws.Stopped() {
		return
	}
	switch ev := int(uint32(ws) >> 16); {
	case ev == unix.PTRACE_EVENT_EXEC:
		// Its own address space now: nothing of ours in it.
		delete(p.sharedKids, pid)
		_ = unix.PtraceDetach(pid)
		return
	case ev == unix.PTRACE_EVENT_STOP && ws.StopSignal() != unix.SIGTRAP:
		// A group-stop (a SIGSTOP to the child): stay in it, as an
		// untraced child would.
		_, _, _ = unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_LISTEN, uintptr(pid), 0, 0, 0, 0)
		return
	case ev != 0:
		// Its exit, or a child of its own (which the kernel attaches
		// too, and which comes here as a new child).
		_ = unix.PtraceCont(pid, 0)
		return
	}
	sig := int(ws.StopSignal())
	if sig == int(unix.SIGTRAP) && p.int3(pid) && p.sharedTrap(pid) {
		sig = 0
	}
	_ = unix.PtraceCont(pid, sig)
}

// int3 reports whether the SIGTRAP stop of child pid was raised by an
// INT3 (SI_KERNEL), not sent or a single step's.
func (p *Process) int3(pid int) bool {
	si, err := getSiginfo(pid)
	return err == nil && si.code == siKernel
}

// sharedTrap offers the SIGTRAP of child pid to the trap handler, as
// handleTrap does a thread's.
func (p *Process) sharedTrap(pid int) bool {
	if p.trap == nil {
		return false
	}
	return p.offerTrap(pid, func(regs *unix.PtraceRegs) error { return unix.PtraceSetRegs(pid, regs) })
}

// detachShared detaches every child keepShared traces: each is stopped
// first, since only a stopped tracee can be detached. One that does not
// stop within a second stays traced, and the kernel lets it go when the
// tracer exits.
func (p *Process) detachShared() {
	for pid := range p.sharedKids {
		sig, ok := p.stopShared(pid)
		delete(p.sharedKids, pid)
		if ok {
			detachChild(pid, sig)
		}
	}
}

// visitShared is EachThread's visit of the children keepShared traces:
// each is stopped, shown to fn, single-stepped out of the range fn
// returns (at most maxSteps steps), and resumed, as a thread is. A child
// runs the process's text like a thread, so it may be inside a region a
// batch is about to rewrite. Their stops are waited for pid by pid: the
// process's own stops wait meanwhile.
func (p *Process) visitShared(maxSteps int, fn func(tid int, regs *unix.PtraceRegs) (lo, hi uint64, err error)) error {
	for pid := range p.sharedKids {
		sig, ok := p.stopShared(pid)
		if !ok {
			continue
		}
		pend, err := p.inspectShared(pid, maxSteps, fn)
		if pend != 0 {
			sig = pend
		}
		if p.sharedKids[pid] {
			_ = unix.PtraceCont(pid, sig)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// waitShared waits up to a second for the next stop of child pid and
// acts on what ends it (its exit, its exec: it is forgotten, and ok is
// false) and on our INT3s (emulated, then waited on). It returns the
// stop's signal to deliver when it is resumed.
func (p *Process) waitShared(pid int) (ws unix.WaitStatus, sig int, ok bool) {
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); {
		got, err := unix.Wait4(pid, &ws, unix.WALL|unix.WNOHANG, nil)
		if err == unix.EINTR || (err == nil && got == 0) {
			time.Sleep(50 * time.Microsecond)
			continue
		}
		if err != nil || ws.Exited() || ws.Signaled() {
			delete(p.sharedKids, pid)
			return ws, 0, false
		}
		if !ws.Stopped() {
			continue
		}
		switch ev := int(uint32(ws) >> 16); ev {
		case unix.PTRACE_EVENT_EXEC:
			delete(p.sharedKids, pid)
			_ = unix.PtraceDetach(pid)
			return ws, 0, false
		case 0:
			s := int(ws.StopSignal())
			switch {
			case s != int(unix.SIGTRAP):
				return ws, s, true
			case !p.int3(pid):
				return ws, 0, true // a single step's
			case p.sharedTrap(pid):
				return ws, 0, true // ours, emulated
			}
			return ws, s, true
		default:
			return ws, 0, true
		}
	}
	return ws, 0, false
}

// stopShared stops child pid with PTRACE_INTERRUPT.
func (p *Process) stopShared(pid int) (sig int, ok bool) {
	if unix.PtraceInterrupt(pid) != nil {
		delete(p.sharedKids, pid)
		return 0, false
	}
	ws, sig, ok := p.waitShared(pid)
	if ok && uint32(ws)>>16 != unix.PTRACE_EVENT_STOP {
		// Stopped by something else first (a signal, our INT3): the
		// interrupt's stop follows when it runs on, and handleShared
		// resumes it from there.
		return sig, true
	}
	return sig, ok
}

// inspectShared is inspect for child pid, stopped. It returns a signal
// that came while it stepped, to deliver when the child runs on.
func (p *Process) inspectShared(pid, maxSteps int, fn func(tid int, regs *unix.PtraceRegs) (lo, hi uint64, err error)) (pend int, err error) {
	for round := 0; ; round++ {
		var regs unix.PtraceRegs
		if err := unix.PtraceGetRegs(pid, &regs); err != nil {
			return pend, nil // gone
		}
		lo, hi, err := fn(pid, &regs)
		if err != nil || lo >= hi {
			return pend, err
		}
		if round > 0 {
			return pend, fmt.Errorf("child %d (it shares the process's memory) is still in [%#x, %#x) after single-stepping", pid, lo, hi)
		}
		for n := 0; n < maxSteps && regs.Rip >= lo && regs.Rip < hi; n++ {
			if unix.PtraceSingleStep(pid) != nil {
				return pend, nil
			}
			_, sig, ok := p.waitShared(pid)
			if !ok {
				return pend, nil
			}
			if sig != 0 {
				pend = sig
			}
			if unix.PtraceGetRegs(pid, &regs) != nil {
				return pend, nil
			}
		}
	}
}
