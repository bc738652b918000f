package proc

import (
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// The tracer's own breakpoint: an INT3 written over a one-byte `ret` (the
// dynamic loader's r_brk, internal/session/dlopen.go). A thread that hits
// it stops in a SIGTRAP signal-delivery-stop; instead of passing the trap
// to the trap handler, proc parks the thread there (roleParked, its rip
// back on the INT3, see hitBreakpoint) and calls the breakpoint's handler
// on a goroutine of its own, so that the handler may use the ptrace thread
// (read the target, run patch batches) while the thread waits.
// [Process.Unpark] then emulates the `ret` (rip = [rsp], rsp += 8) and
// lets the thread go with the SIGTRAP suppressed.
//
// A parked thread is in a ptrace-stop that nobody else resumes: StopAll
// counts it as stopped, ResumeAll leaves it, a batch's EachThread inspects
// it where it is, and a Remote borrows it only when no other thread can
// serve (a single-threaded program), after emulating its `ret` in the
// registers it gets back (retDone). Detach emulates the `ret` of
// a thread still parked before it lets it go. A trap reported after the
// breakpoint was cleared (the thread executed the INT3 before the byte
// went back, and its SIGTRAP was dequeued later) has its `ret` emulated
// at once. If the tracer dies, the agent's SIGTRAP backstop emulates the
// `ret` (lt_sigtrap).

// BreakpointHandler is called, on a goroutine of its own, when thread tid
// hits the breakpoint. The thread stays parked until [Process.Unpark].
type BreakpointHandler func(tid int)

// SetBreakpoint makes addr, where the caller has written (or is about to
// write) an INT3 over a `ret`, the tracer's breakpoint: a thread that hits
// it is parked and h is called. A nil h clears the handler: later hits
// (late reports of traps taken before the INT3 was removed) only have
// their `ret` emulated. There is one breakpoint per process.
func (p *Process) SetBreakpoint(addr uint64, h BreakpointHandler) {
	p.do(func() {
		p.bpAddr, p.bpFn = addr, h
	})
}

// SetBreakpointFilter installs f (nil removes it): at each hit of the
// breakpoint, f is called first, on the ptrace thread, and a thread for
// which it returns false is not parked: its `ret` is emulated and it runs
// on at once, without a hand-off to the handler's goroutine. f may call
// ReadMem but nothing that needs the ptrace thread.
func (p *Process) SetBreakpointFilter(f func(tid int) bool) {
	p.do(func() { p.bpFilter = f })
}

// Unpark lets thread tid, parked at the breakpoint, return from it: its
// `ret` is emulated and it runs on (or stays held if a StopAll is in
// force) with the SIGTRAP suppressed. A thread that is no longer parked
// (gone, or let go by Detach) is ignored.
func (p *Process) Unpark(tid int) error {
	return p.doErr(func() error {
		t := p.threads[tid]
		if t == nil || t.role != roleParked || !p.live(t) {
			return nil
		}
		err := p.emulateRet(t)
		if p.holdAll {
			t.role = roleHeld
			return err
		}
		t.role = roleFree
		p.rearm(t)
		p.resume(t, 0)
		return err
	})
}

// Parked returns the threads parked at the breakpoint now.
func (p *Process) Parked() []int {
	var tids []int
	p.do(func() {
		for tid, t := range p.threads {
			if t.role == roleParked {
				tids = append(tids, tid)
			}
		}
	})
	return tids
}

// hitBreakpoint handles a SIGTRAP of an INT3 (si_code SI_KERNEL) if it is
// the breakpoint's, and reports whether it was.
func (p *Process) hitBreakpoint(t *thread) bool {
	if p.bpAddr == 0 {
		return false
	}
	var regs unix.PtraceRegs
	if err := unix.PtraceGetRegs(t.tid, &regs); err != nil || regs.Rip-1 != p.bpAddr {
		return false
	}
	// Back onto the INT3 before anything else: a tracer that dies while
	// the thread sits one past it would leave it to run the bytes after
	// r_brk's `ret` (the kernel drops the SIGTRAP, see TrapHandler). On
	// the INT3 it traps again, and the agent's handler returns for it.
	regs.Rip = p.bpAddr
	if err := p.setRegs(t, &regs); err != nil {
		return false
	}
	if p.bpFn == nil || (t.role != roleFree && t.role != roleHeld) || (p.bpFilter != nil && !p.bpFilter(t.tid)) {
		// Cleared, a thread we cannot park (a borrowed or stepping
		// thread does not run the loader), or one the filter lets go:
		// just return.
		if err := p.emulateRet(t); err != nil {
			return false
		}
		if t.role == roleBorrowed || t.role == roleStepping {
			p.reissue(t)
		} else {
			p.rearm(t)
			p.resume(t, 0)
		}
		return true
	}
	// Parked on the INT3 itself (above): if the tracer dies now, the
	// kernel drops the SIGTRAP with the ptrace-stop and the thread runs
	// the INT3 again; the agent's backstop returns for it (lt_sigtrap).
	t.role = roleParked
	fn, tid := p.bpFn, t.tid
	go fn(tid)
	return true
}

// emulateRet makes t, stopped on the breakpoint's INT3 or one past it,
// return as the `ret` the INT3 replaced would have (unless a Remote did
// already, see retDone).
func (p *Process) emulateRet(t *thread) error {
	if t.retDone {
		t.retDone = false
		return nil
	}
	var regs unix.PtraceRegs
	if err := unix.PtraceGetRegs(t.tid, &regs); err != nil {
		if errors.Is(err, unix.ESRCH) {
			return nil
		}
		return fmt.Errorf("read registers of thread %d: %w", t.tid, err)
	}
	if !p.atBreakpoint(regs.Rip) {
		return fmt.Errorf("thread %d is at %#x, not at the breakpoint at %#x", t.tid, regs.Rip, p.bpAddr)
	}
	if err := p.returnFrom(&regs); err != nil {
		return fmt.Errorf("thread %d: %w", t.tid, err)
	}
	return p.setRegs(t, &regs)
}

// atBreakpoint reports whether a thread at rip is about to run the `ret`
// the breakpoint replaced: parked on the INT3, or just past it.
func (p *Process) atBreakpoint(rip uint64) bool {
	return p.bpAddr != 0 && (rip == p.bpAddr || rip-1 == p.bpAddr)
}

// returnFrom changes regs as the `ret` that the breakpoint's INT3 replaced
// would: rip = [rsp], rsp += 8.
func (p *Process) returnFrom(regs *unix.PtraceRegs) error {
	var ret [8]byte
	if err := p.mem.Read(regs.Rsp, ret[:]); err != nil {
		return fmt.Errorf("read the return address: %w", err)
	}
	regs.Rip = binary.LittleEndian.Uint64(ret[:])
	regs.Rsp += 8
	return nil
}
