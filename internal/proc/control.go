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
	if t.state != stopped {
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

// interrupt asks a running thread to stop.
func (p *Process) interrupt(t *thread) {
	t.want = true
	if t.state == stopped {
		return
	}
	// ESRCH: the thread is gone; its exit status follows.
	_ = unix.PtraceInterrupt(t.tid)
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
	return p.waitFor(func() bool {
		for tid, t := range p.threads {
			if !t.want {
				p.interrupt(t)
			}
			if t.state != stopped {
				if !taskExists(p.pid, tid) {
					// Gone without a wait status we could see.
					delete(p.threads, tid)
					continue
				}
				return false
			}
		}
		return true
	}, 10*time.Second)
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
		t.want = false
		if t.state == stopped && !t.remote {
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
		for tid, t := range p.threads {
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
				if err := unix.PtraceSetRegs(tid, &regs); err != nil && !errors.Is(err, unix.ESRCH) {
					return fmt.Errorf("write registers of thread %d: %w", tid, err)
				}
			}
		}
		return nil
	})
}

// SingleStepOut single-steps thread tid (stopped, between StopAll and
// ResumeAll) until its rip leaves [lo, hi), at most max steps.
func (p *Process) SingleStepOut(tid int, lo, hi uint64, max int) error {
	return p.doErr(func() error {
		t := p.threads[tid]
		if t == nil {
			return nil
		}
		for i := 0; i < max; i++ {
			var regs unix.PtraceRegs
			if err := unix.PtraceGetRegs(tid, &regs); err != nil {
				return nil
			}
			if regs.Rip < lo || regs.Rip >= hi {
				return nil
			}
			t.stepping = true // the step's SIGTRAP is ours
			if err := unix.PtraceSingleStep(tid); err != nil {
				t.stepping = false
				return nil
			}
			t.state = running
			err := p.waitFor(func() bool { return t.state == stopped || p.threads[tid] == nil }, 5*time.Second)
			t.stepping = false
			if err != nil {
				return err
			}
		}
		return fmt.Errorf("thread %d did not leave [%#x, %#x) in %d steps", tid, lo, hi, max)
	})
}
