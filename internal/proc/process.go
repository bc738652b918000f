// Package proc controls a live process with ptrace: it seizes every thread,
// keeps them running, stops and resumes them on demand, handles the stops the
// kernel reports (new threads, signals, job control, exits, exec), runs
// system calls inside the target and reads and writes its memory.
//
// Every ptrace request runs on one OS thread (see executor). A Process is
// safe for concurrent use.
package proc

import (
	"sort"
	"sync"

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
