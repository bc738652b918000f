package proc

import (
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// Detach releases every thread: it stops them all, lets pending SIGTRAPs of
// ours be handled (see DrainTraps), and detaches each with PTRACE_DETACH,
// re-injecting signals that belong to the application. It also closes the
// memory handle and ends the ptrace thread. Detach is idempotent.
func (p *Process) Detach() error {
	var err error
	if !p.do(func() {
		if p.detached {
			return
		}
		if !p.exited && !p.execed {
			err = p.stopAll()
			if err == nil {
				err = p.drainTraps()
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
	}) {
		return nil
	}
	p.ex.stop()
	p.mem.Close()
	p.markExited()
	return err
}

// fixInterrupted undoes the EINTR our interrupt may have caused in a thread
// that it stopped (see undoEINTR); call it before resuming or detaching.
func (p *Process) fixInterrupted(t *thread) {
	if t.state != stopped || t.kind != stopInterrupt {
		return
	}
	var regs unix.PtraceRegs
	if unix.PtraceGetRegs(t.tid, &regs) != nil {
		return
	}
	before := regs
	if p.undoEINTR(t.tid, &regs); regs != before {
		_ = unix.PtraceSetRegs(t.tid, &regs)
	}
}

func (p *Process) detachAll() {
	for tid, t := range p.threads {
		if t.state == stopped {
			p.fixInterrupted(t)
			_ = unix.PtraceDetach(tid)
		} else {
			// Not in a ptrace-stop: PTRACE_DETACH needs one.
			_ = unix.PtraceInterrupt(tid)
			_ = p.waitFor(func() bool { return p.threads[tid] == nil || p.threads[tid].state == stopped }, time.Second)
			p.fixInterrupted(t)
			_ = unix.PtraceDetach(tid)
		}
	}
	p.threads = map[int]*thread{}
	p.detached = true
}

// drainTraps makes sure no SIGTRAP raised by one of our INT3s is still
// queued on a thread: once detached, it would kill the process. All threads
// are stopped. A thread with SIGTRAP pending is resumed; it then reports the
// signal-delivery stop (handled by the trap handler, or passed on if it is
// the application's), and stops again for our pending interrupt.
func (p *Process) drainTraps() error {
	for round := 0; round < 100; round++ {
		pending := 0
		for tid, t := range p.threads {
			if sigPending(p.pid, tid, unix.SIGTRAP) {
				pending++
				t.want = true
				p.interrupt(t)
				p.resume(t, 0)
			}
		}
		if pending == 0 {
			return nil
		}
		if err := p.waitFor(func() bool {
			for _, t := range p.threads {
				if t.state != stopped {
					return false
				}
			}
			return true
		}, 5*time.Second); err != nil {
			return err
		}
	}
	return fmt.Errorf("SIGTRAP stays pending in pid %d", p.pid)
}
