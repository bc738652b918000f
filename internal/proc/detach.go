package proc

import (
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// Detach releases every thread: it stops them all, lets pending SIGTRAPs of
// ours be handled (see DrainTraps), and detaches each with PTRACE_DETACH,
// re-injecting signals that belong to the application. It also closes the
// memory handle and ends the ptrace thread. Detach is idempotent.
func (p *Process) Detach() error {
	var err error
	last := true
	if !p.do(func() {
		if p.detached {
			last = false // the first Detach saw to the executor
			return
		}
		if !p.exited && !p.execed {
			t0 := time.Now()
			err = p.stopAll()
			t1 := time.Now()
			if err == nil {
				err = p.drainTraps()
			}
			if debugTiming {
				fmt.Fprintf(os.Stderr, "proc: detach: stop %v drain %v\n", t1.Sub(t0), time.Since(t1))
			}
			if p.parked {
				// Never leave `jmp .` behind.
				if werr := p.mem.Write(p.entry, p.entryOrig[:]); err == nil {
					err = werr
				}
				p.parked = false
			}
		}
		p.detachAll()
		last = p.leave()
	}) {
		return nil
	}
	if last {
		p.ex.stop() // no followed process (follow.go) still needs it
	}
	p.mem.Close()
	p.markExited()
	return err
}

// fixInterrupted undoes the EINTR our interrupt may have caused in a thread
// that it stopped (see undoEINTR); call it before resuming or detaching.
func (p *Process) fixInterrupted(t *thread) {
	if t.state != stopped || t.kind != stopInterrupt || !p.live(t) {
		return
	}
	var regs unix.PtraceRegs
	if unix.PtraceGetRegs(t.tid, &regs) != nil {
		return
	}
	before := regs
	if p.undoEINTR(t.tid, &regs); regs != before {
		_ = p.setRegs(t, &regs)
	}
}

func (p *Process) detachAll() {
	p.detachShared()
	for tid, t := range p.threads {
		if t.exiting {
			// It cannot be detached (it never stops again); a main
			// thread that exited alone stays traced by us, a zombie,
			// until the group exits, and the kernel lets it go when
			// this process exits (exit_ptrace).
			continue
		}
		if t.state != stopped {
			// Not in a ptrace-stop: PTRACE_DETACH needs one.
			p.interrupt(t)
			_ = p.waitFor(func() bool { return !p.live(t) || t.state == stopped }, time.Second)
			if !p.live(t) {
				continue
			}
		}
		if t.role == roleParked {
			// Still at the breakpoint: return from it first (unless a
			// Remote did, see retDone).
			_ = p.emulateRet(t)
		}
		p.fixInterrupted(t)
		if err := unix.PtraceDetach(tid); errors.Is(err, unix.ESRCH) && taskExists(p.pid, tid) {
			// It left the stop we thought it in (a resume raced with
			// an exec, see setRegs): stop it again, then detach.
			if debugTiming {
				fmt.Fprintf(os.Stderr, "proc: detach %d: ESRCH, kind %d role %d op %d drain %v\n", tid, t.kind, t.role, t.op, t.drain)
			}
			_ = unix.PtraceInterrupt(tid)
			t.state = running
			_ = p.waitFor(func() bool { return !p.live(t) || t.state == stopped }, time.Second)
			_ = unix.PtraceDetach(tid)
		}
	}
	// A thread that reported its exit (resumed to die) stays ours until
	// its exit status is read: unread, it lingers as a zombie in
	// /proc/PID/task for as long as this tracer lives, and when the
	// process ends its parent cannot reap it (the kernel reports a
	// leader only once its other threads are released). They die at
	// once; read their statuses. A leader that exited alone is not
	// reported before the group ends (see thread.exiting).
	_ = p.waitFor(func() bool {
		for tid, t := range p.threads {
			if t.exiting && tid != p.pid && p.live(t) {
				return false
			}
		}
		return true
	}, 2*time.Second)
	for _, t := range p.threads {
		p.dropThread(t)
	}
	p.detached = true
}

// drainTraps makes sure no SIGTRAP raised by one of our INT3s is still
// queued on a thread: once detached, it would kill the process. It also
// lets threads dequeue the signals that requeue queued again, so that they
// get their original siginfo (restoreQueued) rather than our cookie. All
// threads are stopped. Such a thread is interrupted and resumed; it then
// reports the signal-delivery stop (handled by the trap handler, or passed
// on if it is the application's), and stops again for our interrupt.
func (p *Process) drainTraps() error {
	for round := 0; round < 10; round++ {
		var draining []*thread
		for tid, t := range p.threads {
			if t.role != roleHeld || t.state != stopped {
				continue
			}
			trap := sigDeliverable(p.pid, tid, unix.SIGTRAP)
			if !trap && !p.queuedPending(t) {
				continue
			}
			// No interrupt pending: one would stop the thread before
			// it dequeues anything. handle gives it one (rearm) at its
			// signal-delivery stop.
			t.drain = true
			p.resume(t, 0)
			draining = append(draining, t)
		}
		if len(draining) == 0 {
			return nil
		}
		done := func() bool {
			for _, t := range draining {
				if p.live(t) && (t.drain || t.state != stopped) {
					return false
				}
			}
			return true
		}
		if err := p.waitFor(done, 2*time.Second); err != nil {
			if !errors.Is(err, ErrTimeout) {
				return err
			}
			// The signal went elsewhere (a process-wide one that another
			// thread took): stop the thread anyway.
			for _, t := range draining {
				if p.live(t) && t.drain {
					t.drain = false
					p.interrupt(t)
					_ = unix.PtraceInterrupt(t.tid)
				}
			}
			if err := p.waitFor(done, 5*time.Second); err != nil {
				return err
			}
		}
	}
	return fmt.Errorf("signals stay pending in pid %d", p.pid)
}

// queuedPending reports whether a signal that requeue queued to t is still
// pending and deliverable. Entries whose signal is no longer pending (the
// kernel merged it with one already pending) are forgotten.
func (p *Process) queuedPending(t *thread) bool {
	if len(t.queued) == 0 {
		return false
	}
	m, err := threadMasks(p.pid, t.tid)
	if err != nil {
		return false
	}
	deliverable := false
	for c, info := range t.queued {
		bit := sigBit(unix.Signal(info.head().signo))
		switch {
		case m.pnd&bit == 0:
			delete(t.queued, c)
		case m.blk&bit == 0:
			deliverable = true
		}
	}
	return deliverable
}
