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
//
// The handler calls claim as soon as it knows the INT3 is its own, before
// it emulates anything: claim puts the thread back onto the INT3. A tracer
// that dies while a thread sits in a SIGTRAP's signal-delivery-stop does
// not get the signal delivered: the kernel drops it and the thread runs on
// from where it stopped (docs/DESIGN-NOTES.md, "A tracer killed with
// SIGKILL must not strand a borrowed thread"). One past the INT3, that is
// the middle of a site's instruction, or the bytes after the loader's
// r_brk; on the INT3, it traps again, and the agent's SIGTRAP handler
// emulates the instruction. If the handler claims and then returns false,
// the thread is given its rip back before the signal is passed on.
type TrapHandler func(tid int, regs *unix.PtraceRegs, claim func() error) bool

// ThreadExitHandler is called on the ptrace thread when a thread of the
// target is about to exit (PTRACE_EVENT_EXIT). The thread is stopped and
// runs no more user code.
type ThreadExitHandler func(tid int)

// ForkHandler is called on the ptrace thread when the target forks. The
// child is stopped and still attached; mem is a handle on the child's
// memory, valid only during the call. After the call, the child is detached.
// vfork children, and clone(CLONE_VM) children that are not threads, share
// the parent's memory (and so its patched text, which the agent serves) and
// are detached without a call.
type ForkHandler func(childPID int, mem *Mem)

// threadState is what a thread is doing as far as the kernel told us.
type threadState uint8

const (
	running   threadState = iota // running, or blocked in the kernel
	stopped                      // in a ptrace-stop that we hold
	listening                    // group-stopped, answered with PTRACE_LISTEN
)

// stopKind is the ptrace-stop a stopped thread is in.
type stopKind uint8

const (
	stopInterrupt stopKind = iota + 1 // PTRACE_EVENT_STOP with SIGTRAP
	stopGroup                         // PTRACE_EVENT_STOP with a stop signal
	stopSyscall                       // syscall-enter or syscall-exit stop
	stopEvent                         // another PTRACE_EVENT_* stop
	stopSignal                        // signal-delivery-stop
	stopStep                          // the SIGTRAP that ends a single step
)

// role is what the tracer does with a thread. Together with the stop the
// kernel reports, it decides what the tracer does next: see handle in
// stops.go for the table. The roles form a small state machine:
//
//	free --interrupt--> held --holdRemote--> borrowed --Release--> held or free
//	                    held --SingleStepOut--> stepping --done--> held
//	                    held --ResumeAll--> free
//	free or held --breakpoint--> parked --Unpark--> free (held under StopAll)
//	any  --PTRACE_EVENT_EXEC--> (dropped; the leader becomes a new thread, execed)
type role uint8

const (
	// roleFree: the application's thread. Stops are answered at once and
	// its signals are delivered unchanged.
	roleFree role = iota
	// roleHeld: we asked it to stop (a PTRACE_INTERRUPT is pending while it
	// runs) and keep it stopped once it is. Its signals are delivered; the
	// pending interrupt stops it again on the handler's first instruction.
	roleHeld
	// roleBorrowed: held, and a Remote runs system calls on it with the
	// tracer's registers. Its signals are taken off and kept in held, to
	// be queued again at Release: delivered now, they would run a handler
	// on the tracer's registers.
	roleBorrowed
	// roleStepping: held, and single-stepped by SingleStepOut. Its signals
	// are kept like a borrowed thread's: delivered now, they would leave a
	// signal frame whose return address is inside the range stepped out of.
	roleStepping
	// roleExeced: the thread that reported PTRACE_EVENT_EXEC, the first
	// instant of the new image. It stays in that stop until Detach, and
	// nothing of the old image (registers, signals) is ever written to it.
	roleExeced
	// roleParked: stopped at the tracer's breakpoint (breakpoint.go),
	// in its SIGTRAP signal-delivery-stop, until Unpark or Detach
	// emulates the `ret` the INT3 replaced. Nothing else resumes it.
	roleParked
)

// heldSignal is a signal taken off a borrowed or stepping thread: its
// siginfo as the kernel reported it.
type heldSignal [siginfoSize]byte

// thread is one seized thread. Only touched on the ptrace thread.
type thread struct {
	tid   int
	gen   uint64 // exec generation of the image this thread runs (Process.gen)
	gone  bool   // exited, or dropped by an exec: never touch it again
	state threadState
	kind  stopKind
	role  role
	// op is the resume request in flight for a borrowed or stepping
	// thread (unix.PTRACE_SYSCALL or unix.PTRACE_SINGLESTEP), 0 when none:
	// a stop that does not end it is answered by issuing it again.
	op int
	// stepRip and stepSP are where the last single step was issued from
	// (stepOut, or reissue after a trap of ours emulated meanwhile): the
	// instruction it ran, for the pushf check of stepOut.
	stepRip, stepSP uint64
	// held are the signals taken off the thread while borrowed or
	// stepping, in arrival order; queued maps the cookie of each one
	// queued again (see requeue) to its original siginfo.
	held   []heldSignal
	queued map[uint64]heldSignal
	// jobStop is the stop signal of a group-stop the thread took part in
	// while borrowed or stepping (and so could not stay in).
	jobStop unix.Signal
	// drain says the thread, held, runs without a pending interrupt so
	// that it dequeues a pending signal (see drainTraps).
	drain bool
	// retDone says a parked thread has returned from the breakpoint
	// already (its `ret` emulated when a Remote borrowed it).
	retDone bool
	// exiting: the thread reported PTRACE_EVENT_EXIT and will never stop
	// again. Its wait status follows, except for a main thread that
	// exits alone (pthread_exit): that one stays a zombie, listed in
	// /proc/PID/task, until the last thread exits. Nothing waits for it
	// to stop, holds it or detaches it; a later stop of its tid is
	// another task's (an exec's new main thread), and clears it.
	exiting bool
}

// want reports whether we hold the thread: it must not run free.
func (t *thread) want() bool { return t.role != roleFree }

// Process is a process whose threads are all seized with ptrace.
type Process struct {
	pid  int
	ex   *executor
	mem  *Mem
	comm string

	// Everything below is only touched on the ptrace thread.
	threads    map[int]*thread
	gen        uint64      // exec generation: PTRACE_EVENT_EXECs seen
	holdAll    bool        // hold every thread, including new ones, when it stops
	jobStop    unix.Signal // stop signal of the group-stop in force, 0 if none
	cookies    uint64      // last cookie of a requeued signal (see requeue)
	lastRemote int         // tid of the thread borrowed last
	sigs       SignalStats
	exited     bool
	exitStatus unix.WaitStatus
	execed     bool
	children   map[int]int // forked child pid -> PTRACE_EVENT_FORK or _VFORK
	detached   bool
	// sharedKids are the children that share p's memory (vfork,
	// posix_spawn, clone(CLONE_VM)), traced until they exec or exit
	// (sharedkids.go).
	sharedKids map[int]bool

	trap       TrapHandler
	threadExit ThreadExitHandler
	fork       ForkHandler
	follow     FollowHandler // see follow.go
	grp        *group        // processes sharing ex (follow.go); nil: p alone
	ppid       int           // followed parent (follow.go), 0 if none
	exec       ExecHandler   // follow.go
	shared     bool          // a followed vfork child (follow.go)
	traps      int           // SIGTRAPs handled by trap

	// bpAddr is the tracer's breakpoint (0: none), bpFn its handler
	// (nil: cleared) and bpFilter its filter, see breakpoint.go.
	bpAddr   uint64
	bpFn     BreakpointHandler
	bpFilter func(tid int) bool

	sysInsn uint64  // address of a `syscall` instruction in the target
	gadget  *Gadget // see SetSyscallGadget

	// A process started by Launch is parked at its entry point, which
	// holds `jmp .` instead of entryOrig until Release.
	entry     uint64
	entryOrig [2]byte
	parked    bool

	mu          sync.Mutex // guards exitedCh, finalStatus, finalExec and finalEnded
	exitedCh    chan struct{}
	finalStatus unix.WaitStatus
	finalExec   bool
	finalEnded  bool // exited or exec'd, not merely detached
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
// called exec, or has been detached.
func (p *Process) Exited() <-chan struct{} { return p.exitedCh }

// Ended reports whether the target has exited or called exec, as opposed
// to being detached while it runs on (both close Exited).
func (p *Process) Ended() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.finalEnded
}

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

// Lend runs fn on the ptrace thread if that thread is idle now, and
// returns without waiting for fn: a caller with work to share (the verify
// pass of a batch, internal/textpoke) lends the idle thread a part. It
// reports whether fn was taken; a busy thread (handling stops, running
// another request) or a detached process takes nothing. fn must not call
// the Process's methods that run on the ptrace thread, and must not wait
// for anything that does: while it runs, stops wait for it.
func (p *Process) Lend(fn func()) bool { return p.ex.try(fn) }

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

// Pump handles the stops the kernel has reported so far (at most a bounded
// number: with thousands of threads trapping, more keep coming). Stops are
// handled automatically whenever a SIGCHLD arrives; callers rarely need it.
func (p *Process) Pump() {
	p.do(func() {
		if !p.detached {
			p.reap()
		}
	})
}

func (p *Process) markExited() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.finalStatus, p.finalExec = p.exitStatus, p.execed
	p.finalEnded = p.exited || p.execed
	select {
	case <-p.exitedCh:
	default:
		close(p.exitedCh)
	}
}

// SignalStats counts what the tracer did with the target's signals.
type SignalStats struct {
	// Delivered counts signals passed on to the application at once.
	Delivered int
	// Held counts signals taken off a borrowed or single-stepped thread,
	// which could not take them then.
	Held int
	// Requeued counts held signals queued again to their thread once it
	// was given back, and Restored those of them whose original siginfo
	// was put back when the thread dequeued them.
	Requeued, Restored int
	// Dropped counts held signals that could not be queued again (the
	// thread was gone, or the process called exec).
	Dropped int
	// Ours counts signals that our own remote syscalls raised (a SIGSYS
	// of the target's seccomp filter), suppressed.
	Ours int
}

// SignalStats returns what the tracer did with the target's signals so
// far.
func (p *Process) SignalStats() (s SignalStats) {
	p.do(func() { s = p.sigs })
	return s
}

// newThread adds a thread of the current image, held if holdAll says so.
func (p *Process) newThread(tid int) *thread {
	t := &thread{tid: tid, gen: p.gen}
	if p.holdAll {
		t.role = roleHeld
	}
	p.threads[tid] = t
	return t
}

// dropThread forgets t for good.
func (p *Process) dropThread(t *thread) {
	t.gone = true
	if p.threads[t.tid] == t {
		delete(p.threads, t.tid)
	}
	if n := len(t.held) + len(t.queued); n > 0 {
		p.sigs.Dropped += n
		t.held, t.queued = nil, nil
	}
}

// live reports whether t is a thread of the image the process runs now:
// not exited, and not a thread of an image that an exec replaced. Nothing
// is ever written to, or resumed in, a thread that is not live.
func (p *Process) live(t *thread) bool {
	return t != nil && !t.gone && t.gen == p.gen && p.threads[t.tid] == t
}
