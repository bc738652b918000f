package proc

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Remote is one thread of the target, held in a ptrace-stop, on which the
// tracer runs system calls as if the target had made them (mmap, memfd_create,
// membarrier, ...). Get one with HoldRemote and give it back with Release.
//
// The thread's registers are saved when it is held and restored at Release,
// with the kernel's syscall-restart rule applied by hand (see Release), so a
// thread that was blocked in nanosleep, read or futex carries on as if
// nothing had happened.
//
// A Remote is safe for concurrent use, but its calls run one at a time.
type Remote struct {
	p      *Process
	t      *thread
	saved  unix.PtraceRegs
	ran    bool // at least one syscall ran: the thread sits at a syscall-exit stop
	closed bool
	inline bool // obtained in a Batch: methods run on the ptrace thread directly
	parked bool // the thread was parked at the breakpoint: it goes back there
}

// run runs fn on the ptrace thread: directly for a Remote of a Batch,
// which is already there.
func (r *Remote) run(fn func() error) error {
	if r.inline {
		return fn()
	}
	return r.p.doErr(fn)
}

// Syscall numbers the tracer runs in targets (x86-64).
const (
	SysMmap         = unix.SYS_MMAP
	SysMprotect     = unix.SYS_MPROTECT
	SysMunmap       = unix.SYS_MUNMAP
	SysClose        = unix.SYS_CLOSE
	SysMadvise      = unix.SYS_MADVISE
	SysMemfdCreate  = unix.SYS_MEMFD_CREATE
	SysMembarrier   = unix.SYS_MEMBARRIER
	SysRtSigaction  = unix.SYS_RT_SIGACTION
	SysGetpid       = unix.SYS_GETPID
	SysFtruncate    = unix.SYS_FTRUNCATE
	SysRestartSys   = unix.SYS_RESTART_SYSCALL
	sysInsnLen      = 2 // `syscall` is 0f 05
	errRestartSys   = 512
	errRestartNoInt = 513
	errRestartNoHnd = 514
	errRestartBlock = 516
)

// HoldRemote picks a thread, stops it, and holds it for remote system
// calls. It prefers a thread that is running in user space, then one blocked
// in a system call that the kernel restarts transparently; it never uses a
// thread stopped by job control.
func (p *Process) HoldRemote() (*Remote, error) { return p.holdRemote(0) }

// holdRemote is HoldRemote; a non-zero tid forces the choice of thread
// (for tests).
func (p *Process) holdRemote(tid int) (*Remote, error) {
	var r *Remote
	err := p.doErr(func() error {
		var err error
		r, err = p.holdRemoteLocked(tid)
		return err
	})
	if err != nil {
		return nil, err
	}
	return r, nil
}

// holdRemoteLocked is holdRemote on the ptrace thread.
func (p *Process) holdRemoteLocked(tid int) (*Remote, error) {
	if err := p.goneErr(); err != nil {
		return nil, err
	}
	if p.sysInsn == 0 {
		addr, err := findSyscallInsn(p.pid, p.mem)
		if err != nil {
			return nil, err
		}
		p.sysInsn = addr
	}
	var cands []*thread
	if tid != 0 {
		if t := p.threads[tid]; t != nil && t.role != roleBorrowed && t.role != roleStepping && t.role != roleExeced {
			cands = []*thread{t}
		}
	} else {
		t0 := time.Now()
		cands = p.remoteCandidates()
		if debugTiming {
			fmt.Fprintf(os.Stderr, "proc: hold: %d candidates in %v\n", len(cands), time.Since(t0))
		}
	}
	t0 := time.Now()
	defer func() {
		if debugTiming {
			fmt.Fprintf(os.Stderr, "proc: hold: stopped in %v\n", time.Since(t0))
		}
	}()
	strict := 0
	tried := map[int]bool{}
	for k := 0; k < len(cands); k++ {
		t := cands[k]
		tried[t.tid] = true
		wasFree := t.role == roleFree
		p.interrupt(t)
		err := p.waitBlocking(t, func() bool { return !p.live(t) || t.state == stopped }, 5*time.Second)
		if err != nil {
			return nil, err
		}
		// A fork, vfork or clone event stop is inside that system call,
		// which completes (and writes rax) when the thread resumes: a
		// remote syscall run from there would run the fork again. Let
		// it finish; the pending interrupt stops it again at once.
		for n := 0; n < 8 && p.live(t) && t.state == stopped && t.kind == stopEvent; n++ {
			p.resume(t, 0)
			p.interrupt(t)
			if err := p.waitBlocking(t, func() bool { return !p.live(t) || t.state == stopped }, 5*time.Second); err != nil {
				return nil, err
			}
		}
		if !p.live(t) || t.kind == stopEvent {
			continue
		}
		if t.kind == stopGroup {
			if wasFree && !p.holdAll {
				t.role = roleFree
				p.listen(t)
			}
			continue
		}
		if seccompStrict(p.pid, t.tid) {
			// Strict mode kills a thread on any system call but read,
			// write, exit and sigreturn. A thread enters it itself, so
			// one stopped here cannot enter it before we are done: the
			// check at attach (which a thread may have passed a moment
			// before it called prctl) is made again on the thread
			// borrowed.
			strict++
			if wasFree && !p.holdAll {
				t.role = roleFree
				p.fixInterrupted(t)
				p.resume(t, 0)
			}
			if tid == 0 && strict == 1 {
				// The candidates were the likeliest few: every
				// other thread may serve as well.
				for _, o := range p.threads {
					if !tried[o.tid] && o.role != roleBorrowed && o.role != roleStepping && o.role != roleExeced && !o.exiting {
						cands = append(cands, o)
						tried[o.tid] = true
					}
				}
			}
			continue
		}
		r := &Remote{p: p, t: t, parked: t.role == roleParked}
		if err := unix.PtraceGetRegs(t.tid, &r.saved); err != nil {
			if errors.Is(err, unix.ESRCH) {
				continue
			}
			return nil, fmt.Errorf("read registers of thread %d: %w", t.tid, err)
		}
		if r.parked && !t.retDone && p.atBreakpoint(r.saved.Rip) {
			// The registers it gets back after each syscall (and
			// from the agent if the tracer dies) are those after
			// the breakpoint's `ret`: its SIGTRAP, suppressed by
			// the first PTRACE_SYSCALL, would not be there to
			// return for it.
			if err := p.returnFrom(&r.saved); err != nil {
				continue
			}
			t.retDone = true
		}
		t.role = roleBorrowed
		p.lastRemote = t.tid
		return r, nil
	}
	if strict > 0 {
		return nil, fmt.Errorf("pid %d: %w: every thread livetrace could use is in seccomp strict mode, where any system call livetrace made in it would kill it", p.pid, ErrSeccomp)
	}
	if p.exiting() {
		return nil, p.awaitExit()
	}
	return nil, fmt.Errorf("no thread of pid %d can run a system call (all stopped by job control?)", p.pid)
}

// seccompStrict reports whether thread tid is in seccomp strict mode (the
// Seccomp line of its status is 1).
func seccompStrict(pid, tid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/status", pid, tid))
	if err != nil {
		return false
	}
	i := bytes.Index(b, []byte("\nSeccomp:"))
	if i < 0 {
		return false
	}
	v := b[i+len("\nSeccomp:"):]
	if j := bytes.IndexByte(v, '\n'); j >= 0 {
		v = v[:j]
	}
	return string(bytes.TrimSpace(v)) == "1"
}

// remoteProbe is the most threads whose /proc syscall file remoteCandidates
// reads on one hold: with thousands of threads, reading them all on every
// hold is what a batch would spend its time on.
const remoteProbe = 16

// remoteCandidates orders threads by how harmless it is to borrow them,
// cheaply: a thread we hold stopped already wins at once; otherwise the
// thread borrowed last (if still a candidate) and a few others are scored
// (see remoteScore), the first idle one ending the search. The leader
// comes last among equals: its tid is the one an exec by another thread
// takes over (see setRegs). The other threads follow, unscored, as
// fallbacks.
func (p *Process) remoteCandidates() []*thread {
	ok := func(t *thread) bool {
		return t != nil && !t.exiting && (t.role == roleFree || t.role == roleHeld) && t.state != listening &&
			!(t.state == stopped && t.kind == stopGroup)
	}
	var best *thread
	for _, t := range p.threads {
		if ok(t) && t.state == stopped && (best == nil || best.tid == p.pid) {
			best = t
		}
	}
	if best != nil {
		return []*thread{best}
	}
	type cand struct {
		t     *thread
		score int
	}
	var scored []cand
	seen := map[int]bool{}
	try := func(t *thread) bool {
		if !ok(t) || seen[t.tid] {
			return false
		}
		seen[t.tid] = true
		s := 2 * p.remoteScore(t)
		if t.tid == p.pid {
			s++
		}
		scored = append(scored, cand{t, s})
		return s == 2 // idle in a restartable syscall, not the leader
	}
	done := try(p.threads[p.lastRemote])
	var rest []*thread
	for _, t := range p.threads {
		if done || len(scored) >= remoteProbe {
			if ok(t) && !seen[t.tid] {
				rest = append(rest, t)
			}
			continue
		}
		done = try(t)
	}
	sort.SliceStable(scored, func(i, j int) bool { return scored[i].score < scored[j].score })
	out := make([]*thread, 0, len(scored)+len(rest))
	for _, c := range scored {
		out = append(out, c.t)
	}
	out = append(out, rest...)
	// Last, threads parked at the breakpoint (breakpoint.go): in a
	// single-threaded process the one that called dlopen is the only
	// one there is. It is borrowed from its SIGTRAP signal-delivery-stop,
	// which suppresses that SIGTRAP (the breakpoint's, which Unpark
	// would suppress too), and goes back to being parked at Release.
	for _, t := range p.threads {
		if t.role == roleParked && t.state == stopped && p.live(t) {
			out = append(out, t)
		}
	}
	return out
}

// exiting reports whether every thread has reported PTRACE_EVENT_EXIT
// (thread.exiting): the process is going (killed, or exit_group).
func (p *Process) exiting() bool {
	for _, t := range p.threads {
		if !t.exiting {
			return false
		}
	}
	return true
}

// awaitExit waits for the exit status of a process whose threads are all
// exiting, and returns the error that says it is gone.
func (p *Process) awaitExit() error {
	_ = p.waitFor(func() bool { return p.goneErr() != nil }, 5*time.Second)
	if err := p.goneErr(); err != nil {
		return err
	}
	return fmt.Errorf("pid %d: %w (its exit status did not come yet)", p.pid, ErrExited)
}

// remoteScore: 0 already stopped by us; 1 blocked in a syscall that the
// kernel restarts transparently (the thread is idle: borrowing it delays
// nothing); 2 running in user space (it stalls while we hold it); 3 anything
// else; 4 blocked in a syscall that returns EINTR when interrupted even
// without a signal handler (epoll_wait and friends; man 2 ptrace, BUGS; see
// undoEINTR).
func (p *Process) remoteScore(t *thread) int {
	if t.state == stopped {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/syscall", p.pid, t.tid))
	if err != nil {
		return 3
	}
	f := strings.Fields(string(b))
	if len(f) == 0 || f[0] == "running" || f[0] == "-1" {
		return 2
	}
	nr, err := strconv.Atoi(f[0])
	if err != nil {
		return 3
	}
	switch nr {
	case unix.SYS_EPOLL_WAIT, unix.SYS_EPOLL_PWAIT, unix.SYS_EPOLL_PWAIT2, unix.SYS_INOTIFY_INIT:
		return 4
	case unix.SYS_NANOSLEEP, unix.SYS_CLOCK_NANOSLEEP, unix.SYS_FUTEX, unix.SYS_READ, unix.SYS_WRITE,
		unix.SYS_POLL, unix.SYS_PPOLL, unix.SYS_WAIT4, unix.SYS_ACCEPT, unix.SYS_ACCEPT4,
		unix.SYS_RECVFROM, unix.SYS_RECVMSG, unix.SYS_PAUSE, unix.SYS_RT_SIGSUSPEND:
		return 1
	}
	return 3
}

// Tid returns the ID of the held thread.
func (r *Remote) Tid() int { return r.t.tid }

// Syscall runs system call nr with up to six arguments in the target and
// returns its raw result (a negative errno on failure, as the kernel
// returns it).
func (r *Remote) Syscall(nr uint64, args ...uint64) (uint64, error) {
	if len(args) > 6 {
		return 0, fmt.Errorf("syscall %d: %d arguments, at most 6", nr, len(args))
	}
	var ret uint64
	t0 := time.Now()
	defer func() {
		if debugTiming {
			fmt.Fprintf(os.Stderr, "proc: remote syscall %d: %v\n", nr, time.Since(t0))
		}
	}()
	err := r.run(func() error {
		if r.closed {
			return errors.New("remote thread already released")
		}
		var err error
		ret, err = r.syscallLocked(nr, args)
		if err != nil {
			return err
		}
		// A seccomp filter that traps the call (SECCOMP_RET_TRAP)
		// leaves a SIGSYS pending, which the thread would dequeue once
		// given back: flush it now with a harmless call, during which
		// handle drops it (it is ours). Such a call returns its own
		// number (the kernel rolls rax back to orig_rax before it
		// raises the SIGSYS: kernel/seccomp.c, syscall_rollback), so
		// only then is the thread's status read: that read took 90 µs
		// on a loaded VM, for each of the injection's ten calls.
		for i := 0; i < 3 && trapped(ret, nr) && sigPending(r.p.pid, r.t.tid, unix.SIGSYS); i++ {
			if _, err := r.syscallLocked(SysGetpid, nil); err != nil {
				return err
			}
		}
		return nil
	})
	return ret, err
}

// trapped reports whether a remote syscall nr that returned ret may have
// been trapped by a seccomp filter (SECCOMP_RET_TRAP), which leaves rax
// as the call's number.
func trapped(ret, nr uint64) bool { return ret == nr }

// syscallLocked runs one remote syscall, on the ptrace thread.
func (r *Remote) syscallLocked(nr uint64, args []uint64) (uint64, error) {
	var ret uint64
	err := func() error {
		p, t := r.p, r.t
		if !p.live(t) {
			return fmt.Errorf("remote syscall in pid %d: %w", p.pid, p.staleErr(t))
		}
		regs := r.saved
		regs.Rip = p.sysInsn
		if g := p.gadget; g != nil {
			back := p.restoreRegs(t.tid, r.saved, true)
			if err := g.Save(t.tid, &back); err != nil {
				return fmt.Errorf("remote syscall in pid %d: %w", p.pid, err)
			}
			regs.Rip = g.Insn
		}
		regs.Rax = nr
		// orig_rax = -1: the kernel must not apply its restart logic to
		// the thread's own interrupted syscall while we borrow it.
		regs.Orig_rax = ^uint64(0)
		var a [6]uint64
		copy(a[:], args)
		regs.Rdi, regs.Rsi, regs.Rdx, regs.R10, regs.R8, regs.R9 = a[0], a[1], a[2], a[3], a[4], a[5]
		if err := p.setRegs(t, &regs); err != nil {
			return fmt.Errorf("remote syscall in pid %d: %w", p.pid, err)
		}
		r.ran = true
		// Two stops: syscall-enter, then syscall-exit. Stops in between
		// (signals, which are held, group-stops, a stale interrupt) are
		// answered by handle, which issues PTRACE_SYSCALL again.
		for i := 0; i < 2; i++ {
			t.op = unix.PTRACE_SYSCALL
			if err := unix.PtraceSyscall(t.tid, 0); err != nil {
				t.op = 0
				return fmt.Errorf("remote syscall in pid %d: resume thread %d: %w", p.pid, t.tid, err)
			}
			t.state, t.kind = running, 0
			err := p.waitBlocking(t, func() bool {
				return !p.live(t) || t.state == stopped && t.kind == stopSyscall
			}, 10*time.Second)
			t.op = 0
			if err != nil {
				return fmt.Errorf("remote syscall %d in pid %d: %w", nr, p.pid, err)
			}
			if !p.live(t) {
				return fmt.Errorf("remote syscall in pid %d: %w", p.pid, p.staleErr(t))
			}
		}
		var out unix.PtraceRegs
		if err := unix.PtraceGetRegs(t.tid, &out); err != nil {
			return fmt.Errorf("remote syscall in pid %d: read registers: %w", p.pid, err)
		}
		ret = out.Rax
		// Give the thread its own registers back at once, not only at
		// Release: if the tracer dies while it holds the thread between
		// two syscalls, the kernel lets the thread go from here, and it
		// must find itself intact.
		back := p.restoreRegs(t.tid, r.saved, true)
		if err := p.setRegs(t, &back); err != nil {
			return fmt.Errorf("remote syscall in pid %d: restore registers: %w", p.pid, err)
		}
		return nil
	}()
	return ret, err
}

// SyscallOK runs Syscall and turns a negative errno into an error.
func (r *Remote) SyscallOK(name string, nr uint64, args ...uint64) (uint64, error) {
	ret, err := r.Syscall(nr, args...)
	if err != nil {
		return 0, err
	}
	if e := int64(ret); e < 0 && e >= -4095 {
		return 0, fmt.Errorf("%s in pid %d: %w", name, r.p.pid, unix.Errno(-e))
	}
	return ret, nil
}

// Release puts the thread's registers back and lets it run (unless StopAll
// holds every thread).
//
// If a remote syscall ran, the thread now sits at a syscall-exit stop, where
// the kernel runs no restart logic on resume: restoring the registers of a
// thread that was interrupted in nanosleep would hand it -ERESTART_RESTARTBLOCK
// (errno 516) as a return value. So the rule of arch/x86/kernel/signal.c
// (arch_do_signal_or_restart, "Did we come from a system call?") is applied
// here, as CRIU's compel does: for -ERESTARTSYS, -ERESTARTNOINTR and
// -ERESTARTNOHAND, rax = orig_rax and rip -= 2; for -ERESTART_RESTARTBLOCK,
// rax = __NR_restart_syscall and rip -= 2. The thread then re-enters its
// syscall as soon as it runs; restart_syscall continues a nanosleep or a
// futex wait with its original deadline.
func (r *Remote) Release() error {
	return r.run(func() error {
		if r.closed {
			return nil
		}
		r.closed = true
		p, t := r.p, r.t
		if !p.live(t) {
			// Exited, or replaced by an exec: the registers saved from
			// the old image must never reach the new one.
			if t.gen != p.gen {
				return fmt.Errorf("release thread %d of pid %d: %w; its saved registers were not written back", t.tid, p.pid, ErrExec)
			}
			return nil
		}
		regs := p.restoreRegs(t.tid, r.saved, r.ran)
		if g := p.gadget; g != nil && r.ran && g.Clear != nil {
			_ = g.Clear(t.tid)
		}
		if err := p.setRegs(t, &regs); err != nil {
			p.giveBack(t)
			if r.parked {
				t.role = roleParked
			}
			return fmt.Errorf("restore registers of thread %d: %w", t.tid, err)
		}
		p.giveBack(t)
		if r.parked {
			t.role = roleParked // stays stopped until Unpark
			return nil
		}
		if !p.holdAll {
			t.role = roleFree
			p.resume(t, 0)
		}
		return nil
	})
}

// restoreRegs returns the registers a borrowed thread must get back:
// saved, with our EINTR undone and, if a remote syscall ran (the thread
// then sits at a syscall-exit stop), the kernel's restart rule applied.
func (p *Process) restoreRegs(tid int, saved unix.PtraceRegs, ran bool) unix.PtraceRegs {
	regs := saved
	p.undoEINTR(tid, &regs)
	if ran && int64(regs.Orig_rax) >= 0 {
		switch int64(regs.Rax) {
		case -errRestartSys, -errRestartNoInt, -errRestartNoHnd:
			regs.Rax = regs.Orig_rax
			regs.Rip -= sysInsnLen
		case -errRestartBlock:
			regs.Rax = SysRestartSys
			regs.Rip -= sysInsnLen
		}
	}
	return regs
}

// Gadget makes remote syscalls survive the tracer's death. Insn is the
// address of `syscall; int3` in code the tracer put in the target, whose
// SIGTRAP handler knows it: before each remote syscall, Save writes where
// that handler can find them the registers the borrowed thread must get
// back. If the tracer dies (SIGKILL, OOM) while the thread runs the
// syscall, the kernel detaches the thread, it executes the int3, and the
// handler puts its registers back: the thread carries on as if never
// borrowed. Clear is called when the thread is given back normally.
type Gadget struct {
	Insn  uint64
	Save  func(tid int, regs *unix.PtraceRegs) error
	Clear func(tid int) error
}

// SetSyscallGadget makes remote syscalls go through g (nil: through a
// `syscall` of the vDSO, which leaves a borrowed thread stranded if the
// tracer dies mid-call).
func (p *Process) SetSyscallGadget(g *Gadget) { p.do(func() { p.gadget = g }) }

// findSyscallInsn finds a `syscall` instruction (0f 05) in the target's
// vDSO, falling back to any executable file mapping. The tracer never points
// a thread at bytes it wrote into live text.
func findSyscallInsn(pid int, mem *Mem) (uint64, error) {
	maps, err := ReadMaps(pid)
	if err != nil {
		return 0, err
	}
	var vdso, other []Mapping
	for _, m := range maps {
		if !m.Exec() || m.End-m.Start > 64<<20 {
			continue
		}
		switch {
		case m.Path == "[vdso]":
			vdso = append(vdso, m)
		case m.FileBacked():
			other = append(other, m)
		}
	}
	for _, m := range append(vdso, other...) {
		buf := make([]byte, m.End-m.Start)
		if mem.Read(m.Start, buf) != nil {
			continue
		}
		if i := bytes.Index(buf, []byte{0x0f, 0x05}); i >= 0 {
			return m.Start + uint64(i), nil
		}
	}
	return 0, fmt.Errorf("no syscall instruction found in pid %d", pid)
}

// undoEINTR makes a thread that our interrupt knocked out of epoll_wait
// re-enter it instead of seeing EINTR.
//
// Most blocking syscalls return -ERESTART* when a ptrace interrupt wakes
// them, and the kernel restarts them transparently. epoll_wait and
// epoll_pwait return -EINTR even when no signal handler runs (man 2 ptrace,
// BUGS), so a tracer that merely stops the thread makes the application see
// a spurious EINTR. When the thread has no signal pending that could have
// caused the EINTR, we rewind it to the syscall instruction with rax =
// orig_rax, which re-enters the call. Its relative timeout then starts over:
// the call may return later than it would have, never earlier.
func (p *Process) undoEINTR(tid int, regs *unix.PtraceRegs) {
	switch int64(regs.Orig_rax) {
	case unix.SYS_EPOLL_WAIT, unix.SYS_EPOLL_PWAIT, unix.SYS_EPOLL_PWAIT2:
	default:
		return
	}
	if int64(regs.Rax) != -int64(unix.EINTR) || anySignalPending(p.pid, tid) {
		return
	}
	regs.Rax = regs.Orig_rax
	regs.Rip -= sysInsnLen
}

// anySignalPending reports whether any signal that the thread does not
// block is pending for it or for its process.
func anySignalPending(pid, tid int) bool {
	m, err := threadMasks(pid, tid)
	return err != nil || m.pending()&^m.blk != 0
}
