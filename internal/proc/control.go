package proc

import (
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// resume restarts a stopped thread, injecting sig.
func (p *Process) resume(t *thread, sig int) {
	if t.state != stopped || !p.live(t) {
		return
	}
	if t.kind == stopGroup && sig == 0 {
		p.listen(t)
		return
	}
	err := unix.PtraceCont(t.tid, sig)
	if err != nil && !errors.Is(err, unix.ESRCH) {
		return
	}
	// ESRCH: the thread was killed while stopped; its exit status follows.
	t.state = running
	t.kind = 0
}

func (p *Process) listen(t *thread) {
	_, _, e := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_LISTEN, uintptr(t.tid), 0, 0, 0, 0)
	if e != 0 && e != unix.ESRCH {
		return
	}
	t.state = listening
}

// interrupt asks a thread to stop and marks it held (a held thread that
// runs always has an interrupt pending).
func (p *Process) interrupt(t *thread) {
	if t.role == roleFree {
		t.role = roleHeld
	}
	if t.state == stopped {
		return
	}
	// ESRCH: the thread is gone; its exit status follows.
	_ = unix.PtraceInterrupt(t.tid)
}

// setRegs writes regs into t, which must be a live thread in a
// ptrace-stop. It is the only way registers are written.
//
// The leader's tid is special: when another thread calls exec, the kernel
// kills the leader, even in a ptrace-stop we hold, and gives its tid to
// the exec'ing thread, which then reports PTRACE_EVENT_EXEC under it. Until
// we reap that stop, our thread object for the leader looks live. So for
// the leader the stop is checked with PTRACE_GETSIGINFO right before the
// write, and again right after: a thread in the exec stop stays there
// until we resume it, so if it is not there after the write, the write did
// not reach the new image. If it is, the write may have: the new image
// must never run registers of the old one (the attacker chose them, and the
// new program may be setuid: docs/DESIGN-NOTES.md, "Signals and remote
// syscalls"), so the process is killed.
func (p *Process) setRegs(t *thread, regs *unix.PtraceRegs) error {
	if !p.live(t) {
		return p.staleErr(t)
	}
	leader := t.tid == p.pid && t.role != roleExeced
	if leader && inExecStop(t.tid) {
		p.reapUntilExec()
		return fmt.Errorf("write registers of thread %d: %w", t.tid, ErrExec)
	}
	err := unix.PtraceSetRegs(t.tid, regs)
	if leader && inExecStop(t.tid) {
		_ = unix.Kill(p.pid, unix.SIGKILL)
		p.reapUntilExec()
		return fmt.Errorf("pid %d called exec while the tracer wrote the registers of its leader: killed it, so that the new program cannot run the old one's registers: %w", p.pid, ErrExec)
	}
	if err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("write registers of thread %d: %w", t.tid, err)
	}
	return nil
}

// staleErr explains why t is not live.
func (p *Process) staleErr(t *thread) error {
	if p.execed || (t != nil && t.gen != p.gen) {
		return fmt.Errorf("thread %d belongs to an image that exec replaced: %w", t.tid, ErrExec)
	}
	return fmt.Errorf("thread %d is gone: %w", t.tid, ErrExited)
}

// reapUntilExec handles pending stops until the PTRACE_EVENT_EXEC that the
// leader is known to be in has been handled (bounded: the stop is there).
func (p *Process) reapUntilExec() {
	for i := 0; i < 10000 && !p.execed; i++ {
		if !p.reapOne(p.pid) && !p.reapOne(-1) {
			time.Sleep(10 * time.Microsecond)
		}
	}
}

// StopAll interrupts every thread and waits until all of them are stopped.
// Threads created meanwhile are held too. It returns when every thread is in
// a ptrace-stop, that is, at an instruction boundary in user space or inside
// the kernel, and none of them runs user code until ResumeAll.
func (p *Process) StopAll() error {
	return p.doErr(func() error { return p.stopAll() })
}

func (p *Process) stopAll() error {
	p.holdAll = true
	for _, t := range p.threads {
		p.interrupt(t)
	}
	err := p.waitFor(func() bool {
		for tid, t := range p.threads {
			if !t.want() {
				p.interrupt(t)
			}
			if t.state != stopped && !t.exiting {
				if !taskExists(p.pid, tid) {
					// Gone without a wait status we could see.
					p.dropThread(t)
					continue
				}
				return false
			}
		}
		return true
	}, 10*time.Second)
	if err == nil && len(p.threads) > 0 && p.exiting() {
		// Nothing to stop: the process is going.
		return p.awaitExit()
	}
	return err
}

// taskExists reports whether thread tid of process pid still exists (as a
// zombie, too).
func taskExists(pid, tid int) bool {
	_, err := os.Stat(fmt.Sprintf("/proc/%d/task/%d", pid, tid))
	return err == nil
}

// ResumeAll resumes every thread that StopAll held.
func (p *Process) ResumeAll() error {
	return p.doErr(func() error {
		p.resumeAll()
		return nil
	})
}

func (p *Process) resumeAll() {
	p.holdAll = false
	for _, t := range p.threads {
		if t.role != roleHeld {
			continue // free already, borrowed by a Remote, or execed
		}
		t.role = roleFree
		if t.state == stopped {
			p.fixInterrupted(t)
			p.resume(t, 0)
		}
	}
}

// StoppedIPs returns the instruction pointer of every thread; only valid
// between StopAll and ResumeAll.
func (p *Process) StoppedIPs() (map[int]uint64, error) {
	ips := map[int]uint64{}
	err := p.EditRegs(func(tid int, regs *unix.PtraceRegs) bool {
		ips[tid] = regs.Rip
		return false
	})
	return ips, err
}

// EditRegs calls fn with the registers of every stopped thread and writes
// back those for which fn returns true. Only valid between StopAll and
// ResumeAll.
func (p *Process) EditRegs(fn func(tid int, regs *unix.PtraceRegs) bool) error {
	return p.doErr(func() error {
		if err := p.goneErr(); err != nil {
			return err
		}
		for tid, t := range p.threads {
			if t.exiting {
				continue
			}
			if t.state != stopped {
				return fmt.Errorf("thread %d is not stopped", tid)
			}
			var regs unix.PtraceRegs
			if err := unix.PtraceGetRegs(tid, &regs); err != nil {
				if errors.Is(err, unix.ESRCH) {
					continue
				}
				return fmt.Errorf("read registers of thread %d: %w", tid, err)
			}
			if fn(tid, &regs) {
				if err := p.setRegs(t, &regs); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

// SingleStepOut single-steps thread tid (stopped, between StopAll and
// ResumeAll) until its rip leaves [lo, hi), at most max steps. Signals that
// arrive meanwhile are held and queued again afterwards, so that no signal
// frame returns into [lo, hi).
func (p *Process) SingleStepOut(tid int, lo, hi uint64, max int) error {
	return p.doErr(func() error {
		t := p.threads[tid]
		if t == nil {
			return nil
		}
		if t.role != roleHeld || t.state != stopped {
			return fmt.Errorf("single-step thread %d: it is not held stopped", tid)
		}
		return p.stepOut(t, lo, hi, max)
	})
}

// stepOut single-steps t, held and stopped, until its program counter is
// outside [lo, hi), at most max times; on the ptrace thread.
//
// The trap flag the steps set must not leak into the thread: a pushf
// executed under a step pushes the flags with TF set, and the popf that
// restores them later (a keep stub's, lt_return_keep's, or the program's
// own) would set TF for good after we detach, and the next instruction
// would kill the thread with SIGTRAP. So after a step over a pushf, TF is
// cleared in the pushed word, and when the steps end, in the thread's
// flags, unless the thread had TF set itself before the first step.
func (p *Process) stepOut(t *thread, lo, hi uint64, max int) error {
	tid := t.tid
	t.role = roleStepping
	defer p.giveBack(t)
	ownTF := -1 // the thread's TF before the first step: 0, 1, or unknown
	defer func() {
		if ownTF != 0 || !p.live(t) {
			return
		}
		var regs unix.PtraceRegs
		if unix.PtraceGetRegs(tid, &regs) == nil && regs.Eflags&flagTF != 0 {
			regs.Eflags &^= flagTF
			_ = unix.PtraceSetRegs(tid, &regs)
		}
	}()
	for i := 0; i < max; i++ {
		if !p.live(t) {
			return nil
		}
		var regs unix.PtraceRegs
		if err := unix.PtraceGetRegs(tid, &regs); err != nil {
			return nil
		}
		if ownTF < 0 {
			ownTF = 0
			if regs.Eflags&flagTF != 0 {
				ownTF = 1
			}
		}
		if regs.Rip < lo || regs.Rip >= hi {
			return nil
		}
		t.stepRip, t.stepSP = regs.Rip, regs.Rsp
		t.op = unix.PTRACE_SINGLESTEP // the step's SIGTRAP is ours
		if err := unix.PtraceSingleStep(tid); err != nil {
			t.op = 0
			return nil
		}
		t.state, t.kind = running, 0
		err := p.waitFor(func() bool { return !p.live(t) || t.state == stopped && t.kind == stopStep }, 5*time.Second)
		t.op = 0
		if err != nil {
			return err
		}
		// The instruction the step ran: where it was issued from, or,
		// when it hit an INT3 of ours, where the trap handler sent the
		// thread (reissue). A TestSQLiteLive run in graph mode died of
		// SIGTRAP after a keep stub's popf: its pushf had run under a
		// reissued step, with TF set.
		if ownTF == 0 && p.live(t) && p.isPushf(t.stepRip) {
			p.clearPushedTF(tid, t.stepSP)
		}
	}
	return fmt.Errorf("thread %d did not leave [%#x, %#x) in %d steps", tid, lo, hi, max)
}

// flagTF is the trap flag of rflags.
const flagTF = 0x100

// isPushf reports whether the instruction at pc is pushf (9c, after any
// legacy or REX prefixes).
func (p *Process) isPushf(pc uint64) bool {
	var b [15]byte
	if p.mem.Read(pc, b[:]) != nil {
		// Near the end of a mapping: a shorter read.
		if p.mem.Read(pc, b[:1]) != nil {
			return false
		}
	}
	for _, c := range b {
		switch {
		case c == 0x9c:
			return true
		case c == 0x66 || c == 0xf2 || c == 0xf3 || c == 0x2e || c == 0x36 || c == 0x3e || c == 0x26 || c == 0x64 || c == 0x65 || c&0xf0 == 0x40:
			continue
		default:
			return false
		}
	}
	return false
}

// clearPushedTF clears TF in the flags a pushf just pushed below oldSP.
func (p *Process) clearPushedTF(tid int, oldSP uint64) {
	var regs unix.PtraceRegs
	if unix.PtraceGetRegs(tid, &regs) != nil || regs.Rsp >= oldSP || oldSP-regs.Rsp > 8 {
		return
	}
	// pushfw (66 9c) pushes 2 bytes, pushfq 8: TF is in the low word.
	var w [2]byte
	if p.mem.Read(regs.Rsp, w[:]) != nil || w[1]&(flagTF>>8) == 0 {
		return
	}
	w[1] &^= flagTF >> 8
	_ = p.mem.Write(regs.Rsp+1, w[1:])
}
