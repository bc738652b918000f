// Package proc controls a live process with ptrace: it seizes every thread,
// keeps them running, stops and resumes them on demand, handles the stops the
// kernel reports (new threads, signals, job control, exits, exec), runs
// system calls inside the target and reads and writes its memory.
//
// Every ptrace request runs on one OS thread (see executor). A Process is
// safe for concurrent use.
package proc

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ptraceOptions are set on every seized thread. There is deliberately no
// PTRACE_O_EXITKILL: if the tracer dies, the target must live on (the agent's
// SIGTRAP backstop covers any INT3 left in its text).
const ptraceOptions = unix.PTRACE_O_TRACESYSGOOD |
	unix.PTRACE_O_TRACECLONE |
	unix.PTRACE_O_TRACEFORK |
	unix.PTRACE_O_TRACEVFORK |
	unix.PTRACE_O_TRACEEXEC |
	unix.PTRACE_O_TRACEEXIT

// TrapHandler is called on the ptrace thread when a thread of the target
// stops with a SIGTRAP raised by an INT3 (si_code SI_KERNEL). regs holds the
// thread's registers; rip is one past the INT3. If the handler returns true,
// the trap is ours: regs (as modified) are written back and the signal is
// suppressed. Otherwise the SIGTRAP is passed on to the application
// unchanged. The handler may call ReadMem and WriteMem but nothing that
// needs the ptrace thread.
type TrapHandler func(tid int, regs *unix.PtraceRegs) bool

// ThreadExitHandler is called on the ptrace thread when a thread of the
// target is about to exit (PTRACE_EVENT_EXIT). The thread is stopped and
// runs no more user code.
type ThreadExitHandler func(tid int)

// ForkHandler is called on the ptrace thread when the target forks. The
// child is stopped and still attached; mem is a handle on the child's
// memory, valid only during the call. After the call, the child is detached.
// vfork children share the parent's memory and are detached without a
// call.
type ForkHandler func(childPID int, mem *Mem)

type threadState uint8

const (
	running   threadState = iota // running, or blocked in the kernel
	stopped                      // in a ptrace-stop that we hold
	listening                    // group-stopped, answered with PTRACE_LISTEN
)

type stopKind uint8

const (
	stopInterrupt stopKind = iota + 1 // PTRACE_EVENT_STOP with SIGTRAP
	stopGroup                         // PTRACE_EVENT_STOP with a stop signal
	stopSyscall                       // syscall-enter or syscall-exit stop
	stopEvent                         // another PTRACE_EVENT_* stop
)

// thread is one seized thread. Only touched on the ptrace thread.
type thread struct {
	tid   int
	state threadState
	kind  stopKind
	// want says we asked this thread to stop (PTRACE_INTERRUPT) and want
	// to hold it when it does.
	want bool
	// remote says a remote syscall is under way on this thread.
	remote bool
	// stepping says we single-step this thread: its SIGTRAP is ours.
	stepping bool
}

// Process is a process whose threads are all seized with ptrace.
type Process struct {
	pid  int
	ex   *executor
	mem  *Mem
	comm string

	// Everything below is only touched on the ptrace thread.
	threads    map[int]*thread
	holdAll    bool // hold every thread, including new ones, when it stops
	exited     bool
	exitStatus unix.WaitStatus
	execed     bool
	children   map[int]int // forked child pid -> PTRACE_EVENT_FORK or _VFORK
	detached   bool

	trap       TrapHandler
	threadExit ThreadExitHandler
	fork       ForkHandler
	traps      int // SIGTRAPs handled by trap

	sysInsn uint64  // address of a `syscall` instruction in the target
	gadget  *Gadget // see SetSyscallGadget

	// A process started by Launch is parked at its entry point, which
	// holds `jmp .` instead of entryOrig until Release.
	entry     uint64
	entryOrig [2]byte
	parked    bool

	mu          sync.Mutex // guards exitedCh, finalStatus and finalExec
	exitedCh    chan struct{}
	finalStatus unix.WaitStatus
	finalExec   bool
}

// Attach seizes every thread of process pid with PTRACE_SEIZE, without
// stopping any of them, and opens its memory. It rescans /proc/PID/task until
// no new thread shows up, so that threads created during the attach are not
// missed (PTRACE_O_TRACECLONE catches every thread created after a seize).
func Attach(pid int) (*Process, error) {
	if err := checkPID(pid); err != nil {
		return nil, err
	}
	p := &Process{
		pid:      pid,
		comm:     commOf(pid),
		threads:  map[int]*thread{},
		children: map[int]int{},
		exitedCh: make(chan struct{}),
	}
	mem, err := OpenMem(pid)
	if err != nil {
		return nil, err
	}
	p.mem = mem
	p.ex = newExecutor(p.idle)
	var aerr error
	p.ex.run(func() { aerr = p.seizeAll() })
	if aerr != nil {
		p.ex.run(func() { p.detachAll() })
		p.ex.stop()
		p.mem.Close()
		return nil, aerr
	}
	return p, nil
}

func (p *Process) seizeAll() error {
	for round := 0; ; round++ {
		tids, err := listTasks(p.pid)
		if err != nil {
			if len(p.threads) == 0 {
				return fmt.Errorf("no process with pid %d: %w", p.pid, ErrNoProcess)
			}
			return err
		}
		added := 0
		for _, tid := range tids {
			if p.threads[tid] != nil {
				continue
			}
			err := seize(tid)
			switch {
			case err == nil:
				p.threads[tid] = &thread{tid: tid}
				added++
			case errors.Is(err, unix.ESRCH):
				// The thread exited between readdir and seize.
			case errors.Is(err, unix.EPERM):
				if t := tracerOf(p.pid); t != 0 && len(p.threads) == 0 {
					return fmt.Errorf("attach to pid %d: it is already traced by pid %d (%s); detach the other tracer (gdb, strace, ...) first: %w",
						p.pid, t, commOf(t), ErrAlreadyTraced)
				}
				return fmt.Errorf("attach to pid %d: %w: run as root or with CAP_SYS_PTRACE (and check /proc/sys/kernel/yama/ptrace_scope)", p.pid, ErrPermission)
			default:
				return fmt.Errorf("seize thread %d of pid %d: %w", tid, p.pid, err)
			}
		}
		if len(p.threads) == 0 {
			return fmt.Errorf("no process with pid %d: %w", p.pid, ErrNoProcess)
		}
		if added == 0 {
			return nil
		}
		if round > 1000 {
			return fmt.Errorf("attach to pid %d: its thread list never settled", p.pid)
		}
	}
}

func seize(tid int) error {
	_, _, e := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_SEIZE, uintptr(tid), 0, ptraceOptions, 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

// listTasks returns the thread IDs in /proc/PID/task.
func listTasks(pid int) ([]int, error) {
	d, err := os.Open(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return nil, err
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return nil, err
	}
	tids := make([]int, 0, len(names))
	for _, n := range names {
		if tid, err := strconv.Atoi(n); err == nil {
			tids = append(tids, tid)
		}
	}
	sort.Ints(tids)
	return tids, nil
}

// Pid returns the process ID.
func (p *Process) Pid() int { return p.pid }

// Comm returns the command name of the process at attach time.
func (p *Process) Comm() string { return p.comm }

// Mem returns the handle on the target's memory, opened at attach.
func (p *Process) Mem() *Mem { return p.mem }

// ReadMem reads len(buf) bytes at addr in the target.
func (p *Process) ReadMem(addr uint64, buf []byte) error { return p.mem.Read(addr, buf) }

// WriteMem writes data at addr in the target. The write is not atomic with
// respect to the target's threads.
func (p *Process) WriteMem(addr uint64, data []byte) error { return p.mem.Write(addr, data) }

// Exited returns a channel that is closed when the target has exited or
// called exec.
func (p *Process) Exited() <-chan struct{} { return p.exitedCh }

// ExitStatus returns the target's wait status once Exited is closed.
func (p *Process) ExitStatus() (status unix.WaitStatus, execed bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.finalStatus, p.finalExec
}

// SetTrapHandler installs h (nil removes it).
func (p *Process) SetTrapHandler(h TrapHandler) { p.do(func() { p.trap = h }) }

// SetThreadExitHandler installs h (nil removes it).
func (p *Process) SetThreadExitHandler(h ThreadExitHandler) { p.do(func() { p.threadExit = h }) }

// SetForkHandler installs h (nil removes it).
func (p *Process) SetForkHandler(h ForkHandler) { p.do(func() { p.fork = h }) }

// Traps returns how many SIGTRAPs the trap handler has claimed.
func (p *Process) Traps() (n int) {
	p.do(func() { n = p.traps })
	return n
}

// Threads returns the IDs of the threads now seized.
func (p *Process) Threads() []int {
	var tids []int
	p.do(func() {
		for tid := range p.threads {
			tids = append(tids, tid)
		}
	})
	sort.Ints(tids)
	return tids
}

// do runs fn on the ptrace thread. After Detach it does nothing.
func (p *Process) do(fn func()) bool { return p.ex.run(fn) }

// doErr runs fn on the ptrace thread and returns its error, or
// ErrDetached.
func (p *Process) doErr(fn func() error) error {
	var err error
	if !p.do(func() {
		if p.detached {
			err = ErrDetached
			return
		}
		err = fn()
	}) {
		return ErrDetached
	}
	return err
}

// Pump handles every stop the kernel has reported so far. It is called
// automatically whenever a SIGCHLD arrives; callers rarely need it.
func (p *Process) Pump() { p.do(p.idle) }

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

func (p *Process) markExited() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.finalStatus, p.finalExec = p.exitStatus, p.execed
	select {
	case <-p.exitedCh:
	default:
		close(p.exitedCh)
	}
}

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

// sigPending reports whether sig is pending for thread tid, either for the
// thread (SigPnd) or for the whole process (ShdPnd).
func sigPending(pid, tid int, sig unix.Signal) bool {
	m, err := threadMasks(pid, tid)
	return err == nil && m.pending()&sigBit(sig) != 0
}

// SignalMasks reports, for every thread, whether it blocks sig (SigBlk)
// and whether the process ignores it (SigIgn).
func SignalMasks(pid int, sig unix.Signal) (blocked, ignored bool, err error) {
	tids, err := listTasks(pid)
	if err != nil {
		return false, false, fmt.Errorf("list threads of pid %d: %w", pid, err)
	}
	bit := sigBit(sig)
	for _, tid := range tids {
		m, err := threadMasks(pid, tid)
		if err != nil {
			continue // the thread is gone
		}
		blocked = blocked || m.blk&bit != 0
		ignored = ignored || m.ign&bit != 0
	}
	return blocked, ignored, nil
}

// masks are the signal sets of one thread from /proc/PID/task/TID/status.
type masks struct{ pnd, shdPnd, blk, ign uint64 }

// pending is the set of signals pending for the thread or its process.
func (m masks) pending() uint64 { return m.pnd | m.shdPnd }

func sigBit(sig unix.Signal) uint64 { return 1 << (uint(sig) - 1) }

// threadMasks reads the signal sets of thread tid of process pid.
func threadMasks(pid, tid int) (masks, error) {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/status", pid, tid))
	if err != nil {
		return masks{}, err
	}
	var m masks
	for _, f := range []struct {
		name string
		v    *uint64
	}{{"SigPnd", &m.pnd}, {"ShdPnd", &m.shdPnd}, {"SigBlk", &m.blk}, {"SigIgn", &m.ign}} {
		if *f.v, err = strconv.ParseUint(statusField(status, f.name), 16, 64); err != nil {
			return masks{}, fmt.Errorf("parse %s of thread %d: %w", f.name, tid, err)
		}
	}
	return m, nil
}

var debugStops = os.Getenv("LIVETRACE_DEBUG_PTRACE") != ""

const siKernel = 0x80 // SI_KERNEL: si_code of the SIGTRAP an INT3 raises

type siginfo struct {
	signo, errno, code int32
}

func getSiginfo(tid int) (siginfo, error) {
	var buf [128]byte
	_, _, e := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_GETSIGINFO, uintptr(tid), 0, uintptr(unsafe.Pointer(&buf[0])), 0, 0)
	if e != 0 {
		return siginfo{}, e
	}
	le := func(i int) int32 {
		return int32(uint32(buf[i]) | uint32(buf[i+1])<<8 | uint32(buf[i+2])<<16 | uint32(buf[i+3])<<24)
	}
	return siginfo{signo: le(0), errno: le(4), code: le(8)}, nil
}
