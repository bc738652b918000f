package proc

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

func (p *Process) idle() {
	if p.detached {
		// A followed child of p may still be attached (follow.go).
		if q := p.liveMember(); q != nil {
			q.idle()
		}
		return
	}
	if p.reapN(idleReap) {
		// The pass hit its bound: more may be pending, and no SIGCHLD
		// will come for statuses that are already queued.
		select {
		case p.ex.wake <- struct{}{}:
		default:
		}
	}
}

// Bounds of one reap pass. With thousands of threads hitting INT3s,
// statuses arrive as fast as they are handled (and each wait4(-1) walks the
// list of every tracee), so a pass that ran until none is pending would
// never end: a waiter would never check its condition or deadline again,
// and a request queued for the ptrace thread would never run. An idle pass
// (no request waiting) is shorter still, so that requests go first.
const (
	reapLimit = 256
	idleReap  = 32
)

// reap handles pending wait statuses without blocking, at most reapLimit
// of them. It reports whether it stopped at that bound (more may be
// pending).
//
// __WNOTHREAD restricts the wait to children and tracees of this very
// thread, the ptrace thread: so it never steals the exit status of a child
// that some other part of the program started with os/exec from another
// thread (newExecutor picks a thread that has no children of its own).
func (p *Process) reap() bool { return p.reapN(reapLimit) }

func (p *Process) reapN(limit int) bool {
	for n := limit; n > 0; n-- {
		if !p.reapOne(-1) {
			return false
		}
	}
	return true
}

// reapOne handles one pending wait status of tid (-1: of any tracee)
// without blocking, and reports whether there was one.
func (p *Process) reapOne(tid int) bool {
	for {
		var ws unix.WaitStatus
		got, err := unix.Wait4(tid, &ws, unix.WALL|unix.WNOHANG|unix.WNOTHREAD, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil || got <= 0 {
			return false
		}
		p.handle(got, ws)
		return true
	}
}

// waitFor handles stops until cond holds, the target is gone, or the
// timeout passes. Each round handles a bounded number of stops, then
// checks cond and the deadline again.
func (p *Process) waitFor(cond func() bool, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	tick := time.NewTimer(time.Millisecond)
	defer tick.Stop()
	backoff := 50 * time.Microsecond
	for {
		more := p.reap()
		if cond() {
			return nil
		}
		if err := p.goneErr(); err != nil {
			return err
		}
		if time.Now().After(deadline) {
			p.dumpThreads("timeout")
			return ErrTimeout
		}
		if more {
			continue
		}
		// SIGCHLD wakes us for every tracee stop; the timer is only a
		// safety net against a lost wake-up. Inside a batch no SIGCHLD
		// comes for stops (quietstops.go): poll.
		if quiet.on.Load() {
			backoff = 50 * time.Microsecond
		}
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

// goneErr returns ErrExec or ErrExited once the image we attached to is
// gone, nil before.
func (p *Process) goneErr() error {
	switch {
	case p.execed:
		return ErrExec
	case p.exited:
		return ErrExited
	}
	return nil
}

func (p *Process) dumpThreads(why string) {
	if !debugStops {
		return
	}
	for _, t := range p.threads {
		st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/stat", p.pid, t.tid))
		fmt.Fprintf(os.Stderr, "proc: %s: tid %d state %d kind %d role %d op %d: %s\n", why, t.tid, t.state, t.kind, t.role, t.op, st)
	}
}

// waitBlocking is waitFor for a condition that a stop of thread t is
// certain to bring soon (the syscall-exit stop of a remote membarrier,
// say): it blocks in wait4 instead of waiting for SIGCHLD, which cuts the
// latency of every stop handled meanwhile, such as INT3 hits during a
// batch, from tens of microseconds to a few. Each round first takes t's own
// status, so that thousands of other threads trapping cannot starve it,
// then checks cond and the deadline after every status handled.
func (p *Process) waitBlocking(t *thread, cond func() bool, timeout time.Duration) error {
	if p.grp != nil && len(p.grp.members) > 1 {
		// Followed processes (follow.go) share this thread: a blocking
		// wait4 could wait for a status that only comes once another
		// member's request has run.
		return p.waitFor(cond, timeout)
	}
	deadline := time.Now().Add(timeout)
	for n := 0; !cond(); n++ {
		if err := p.goneErr(); err != nil {
			if cond() {
				return nil
			}
			return err
		}
		if n&63 == 63 && time.Now().After(deadline) {
			p.dumpThreads("timeout")
			return ErrTimeout
		}
		if p.reapOne(t.tid) {
			continue
		}
		var ws unix.WaitStatus
		tid, err := unix.Wait4(-1, &ws, unix.WALL|unix.WNOTHREAD, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return p.waitFor(cond, time.Until(deadline))
		}
		p.handle(tid, ws)
	}
	return nil
}

// handle acts on one wait status. What it does depends on the stop and on
// the role of the thread (see role):
//
//	stop                     free        held        borrowed/stepping       execed
//	-----------------------  ----------  ----------  ----------------------  ------
//	exit, killed             forget      forget      forget (Remote fails)   forget
//	PTRACE_EVENT_EXEC        every thread of the old image is dropped; the
//	                         leader's tid is a new thread, execed
//	syscall-stop             resume      keep        borrowed: the Remote's   keep
//	                                                 stop; stepping: keep
//	interrupt (EVENT_STOP)   resume      keep        reissue op               keep
//	group-stop (EVENT_STOP)  LISTEN      keep        note jobStop, reissue    keep
//	CLONE/FORK/VFORK, other  note child, resume      note child, reissue      keep
//	events                   (held: keep)
//	EVENT_EXIT               exit handler, resume (the thread is dying)
//	SIGTRAP of a step        deliver     deliver     stepping: step done      -
//	SIGTRAP of our INT3      trap handler, resume    trap handler, reissue    -
//	SIGTRAP of breakpoint    park (breakpoint.go)    emulate ret, reissue     -
//	other signal             deliver     deliver     hold (requeued later)    -
//
// "keep" leaves the thread in its stop. "reissue" restarts the request in
// flight (PTRACE_SYSCALL for a remote syscall, PTRACE_SINGLESTEP) with no
// signal. A held thread that runs always has a PTRACE_INTERRUPT pending, so
// a signal delivered to it leaves it stopped again on the handler's first
// instruction. A signal dequeued by a borrowed or stepping thread would run
// its handler on registers the tracer set, so it is taken off (its siginfo
// kept) and queued again when the thread is given back (requeue).
func (p *Process) handle(tid int, ws unix.WaitStatus) {
	if debugStops {
		fmt.Fprintf(os.Stderr, "proc: tid %d status %#x\n", tid, uint32(ws))
	}
	t := p.threads[tid]
	if t == nil {
		if q := p.route(tid); q != nil {
			q.handle(tid, ws) // a thread of a followed child (follow.go)
			return
		}
		if kind, ok := p.children[tid]; ok || !p.isOurThread(tid) {
			p.handleChild(tid, ws, kind)
			return
		}
		// A new thread whose first stop arrived before its parent's
		// PTRACE_EVENT_CLONE.
		t = p.newThread(tid)
	}
	if ws.Exited() || ws.Signaled() {
		p.dropThread(t)
		if tid == p.pid {
			// The kernel reports the leader last, once the whole
			// thread group is gone.
			p.exitStatus = ws
			p.exited = true
			p.markExited()
		}
		return
	}
	if !ws.Stopped() {
		return
	}
	wasListening := t.state == listening
	t.state = stopped
	t.exiting = false
	sig := ws.StopSignal()
	event := int(uint32(ws) >> 16) // not ws.TrapCause(): it is -1 unless the stop signal is SIGTRAP
	switch {
	case event == unix.PTRACE_EVENT_EXEC:
		p.onExec()
	case sig == unix.SIGTRAP|0x80:
		t.kind = stopSyscall
		switch t.role {
		case roleFree:
			// Nobody asked for syscall stops here; let it go.
			p.resume(t, 0)
		case roleStepping:
			p.reissue(t)
		}
		// borrowed: the stop the Remote waits for.
	case event == unix.PTRACE_EVENT_STOP:
		switch sig {
		case unix.SIGSTOP, unix.SIGTSTP, unix.SIGTTIN, unix.SIGTTOU:
			// Group-stop (job control). Answer with PTRACE_LISTEN so
			// the thread stays stopped until SIGCONT, exactly as if
			// it were not traced (man 2 ptrace, "Group-stop").
			t.kind = stopGroup
			p.jobStop = sig
			switch t.role {
			case roleFree:
				p.listen(t)
			case roleBorrowed, roleStepping:
				// It cannot stay in the group-stop now; it joins it
				// again when given back (see giveBack).
				t.jobStop = sig
				p.reissue(t)
			}
		default:
			// Our PTRACE_INTERRUPT, the first stop of a new thread, or
			// the wake-up of a LISTENing thread (SIGCONT).
			if wasListening {
				p.jobStop = 0
			}
			t.kind = stopInterrupt
			p.afterStop(t)
		}
	case event == unix.PTRACE_EVENT_CLONE || event == unix.PTRACE_EVENT_FORK || event == unix.PTRACE_EVENT_VFORK:
		t.kind = stopEvent
		if msg, err := unix.PtraceGetEventMsg(tid); err == nil {
			p.noteChild(int(msg), event)
		}
		p.afterStop(t)
	case event == unix.PTRACE_EVENT_EXIT:
		t.kind = stopEvent
		if p.threadExit != nil {
			p.threadExit(tid)
		}
		p.resume(t, 0) // whatever its role: it is dying
		t.exiting = true
	case event != 0:
		t.kind = stopEvent
		p.afterStop(t)
	default:
		t.kind = stopSignal
		p.handleSignal(t, sig)
	}
}

// afterStop answers a stop that ends nothing we wait for: a free thread
// runs on, a borrowed or stepping one gets its request again, a held or
// execed one stays.
func (p *Process) afterStop(t *thread) {
	switch t.role {
	case roleFree:
		p.resume(t, 0)
	case roleHeld:
		if t.drain {
			p.resume(t, 0) // still to dequeue its signal (drainTraps)
		}
	case roleBorrowed, roleStepping:
		if t.op != 0 {
			p.reissue(t)
		}
	}
}

// handleSignal acts on a signal-delivery-stop of t.
func (p *Process) handleSignal(t *thread, sig unix.Signal) {
	info, err := getSiginfoRaw(t.tid)
	if err != nil {
		// ESRCH: killed meanwhile; its exit status follows.
		if t.role == roleFree || t.role == roleHeld {
			p.resume(t, int(sig))
		}
		return
	}
	p.restoreQueued(t, &info)
	si := info.head()
	// A step's SIGTRAP is TRAP_TRACE; an INT3's is SI_KERNEL. A thread
	// stopped just after our INT3, with the SIGTRAP not yet dequeued,
	// dequeues it at its first step: that one is the trap handler's.
	if sig == unix.SIGTRAP && si.code != siKernel && t.role == roleStepping && t.op == unix.PTRACE_SINGLESTEP {
		t.kind = stopStep
		t.op = 0
		return
	}
	if sig == unix.SIGTRAP && si.code == siKernel && p.hitBreakpoint(t) {
		return
	}
	if sig == unix.SIGTRAP && si.code == siKernel && p.trap != nil && p.handleTrap(t) {
		p.traps++
		if t.role == roleBorrowed || t.role == roleStepping {
			p.reissue(t)
		} else {
			p.rearm(t)
			p.resume(t, 0)
		}
		return
	}
	switch t.role {
	case roleBorrowed, roleStepping:
		if t.role == roleBorrowed && sig == unix.SIGSYS && si.code == sysSeccomp {
			// Our own remote syscall was refused by the target's
			// seccomp filter (SECCOMP_RET_TRAP): the caller sees
			// the error; the application's SIGSYS handler must not
			// see a call it never made.
			p.sigs.Ours++
			p.reissue(t)
			return
		}
		p.sigs.Held++
		t.held = append(t.held, info)
		p.reissue(t)
	default:
		// Not ours: pass it on. A held thread still has our
		// PTRACE_INTERRUPT pending, so it stops again right after the
		// signal is delivered, on the handler's first instruction.
		p.sigs.Delivered++
		p.rearm(t)
		p.resume(t, int(sig))
	}
}

// rearm gives a draining thread (see drainTraps), which runs without a
// pending interrupt so that it dequeues its signals, the interrupt that
// stops it again once the signal at hand is delivered.
func (p *Process) rearm(t *thread) {
	if t.drain && t.role != roleFree {
		_ = unix.PtraceInterrupt(t.tid)
		t.drain = false
	}
}

// restoreQueued puts back the original siginfo of a signal that requeue
// queued again, when its thread dequeues it.
func (p *Process) restoreQueued(t *thread, info *heldSignal) {
	if len(t.queued) == 0 || info.head().code != siQueue {
		return
	}
	pid, cookie := info.value()
	orig, ok := t.queued[cookie]
	if !ok || int(pid) != os.Getpid() {
		return
	}
	delete(t.queued, cookie)
	if setSiginfo(t.tid, &orig) == nil {
		*info = orig
		p.sigs.Restored++
	}
}

// reissue restarts the request in flight of a borrowed or stepping thread
// after a stop that did not end it, without a signal.
func (p *Process) reissue(t *thread) {
	if t.state != stopped || !p.live(t) {
		return
	}
	var err error
	switch t.op {
	case unix.PTRACE_SYSCALL:
		err = unix.PtraceSyscall(t.tid, 0)
	case unix.PTRACE_SINGLESTEP:
		// A trap of ours emulated during a step moved the thread: the
		// step now runs the instruction there (a keep stub's pushf,
		// say), which stepOut must know.
		var regs unix.PtraceRegs
		if unix.PtraceGetRegs(t.tid, &regs) == nil {
			t.stepRip, t.stepSP = regs.Rip, regs.Rsp
		}
		err = unix.PtraceSingleStep(t.tid)
	default:
		return
	}
	if err != nil && !errors.Is(err, unix.ESRCH) {
		return
	}
	t.state = running
	t.kind = 0
}

// requeue queues again the signals taken off t while it was borrowed or
// stepping, now that it is given back with its own registers: each goes
// back to the thread with a cookie, and its original siginfo is put back
// when the thread dequeues it (restoreQueued). A standard signal that is
// pending already is merged by the kernel, as it would have been.
func (p *Process) requeue(t *thread) {
	if len(t.held) == 0 {
		return
	}
	for _, info := range t.held {
		if !p.live(t) {
			p.sigs.Dropped++
			continue
		}
		p.cookies++
		c := p.cookies
		if err := queueCookie(p.pid, t.tid, info.head().signo, c); err != nil {
			p.sigs.Dropped++
			continue
		}
		if t.queued == nil {
			t.queued = map[uint64]heldSignal{}
		}
		t.queued[c] = info
		p.sigs.Requeued++
	}
	t.held = nil
}

// giveBack ends the borrowing or stepping of t: its held signals are
// queued again and, if it took part in a group-stop meanwhile that is
// still in force, it is sent the stop signal again to rejoin it.
func (p *Process) giveBack(t *thread) {
	t.op = 0
	if t.role == roleBorrowed || t.role == roleStepping {
		t.role = roleHeld
	}
	p.requeue(t)
	if t.jobStop != 0 && p.jobStop != 0 && p.live(t) {
		_ = unix.Tgkill(p.pid, t.tid, p.jobStop)
	}
	t.jobStop = 0
}

// onExec handles PTRACE_EVENT_EXEC. The image we patched is gone, and with
// it every thread but the one that called exec, which now runs the new
// image under the leader's tid. Every thread object of the old image is
// dropped (a Remote or a stepping loop that still holds one finds it not
// live and writes nothing), and the leader's tid gets a new one, of a new
// generation. Writes through our /proc/PID/mem fail from now on, by design.
// The new thread stays stopped here, in the new image's first instant,
// until Detach lets it go: a running tracee could not be detached.
func (p *Process) onExec() {
	for _, t := range p.threads {
		p.dropThread(t)
	}
	p.gen++
	t := p.newThread(p.pid)
	t.state, t.kind, t.role = stopped, stopEvent, roleExeced
	p.execed = true
	if p.exec != nil {
		// The new image is followed (follow.go): handed over before
		// Exited says the old one is gone.
		p.adoptExec()
	}
	p.markExited()
}

// noteChild records a new child of t: a thread of the process, or a forked
// (or cloned) child to hand to the fork handler.
func (p *Process) noteChild(child, event int) {
	if event == unix.PTRACE_EVENT_CLONE && p.threads[child] == nil && taskExists(p.pid, child) {
		// The child's own stops, even its exit, may have been reaped
		// before this event: add it only if it still exists (a zombie
		// counts; its exit status follows).
		p.newThread(child)
		return
	}
	if event == unix.PTRACE_EVENT_CLONE && taskExists(p.pid, child) {
		return
	}
	if _, seen := p.children[child]; !seen {
		p.children[child] = event
	}
	if g := p.grp; g != nil {
		if ws, ok := g.early[child]; ok {
			// Its first stop came before this event, which names its
			// parent (follow.go): handle it now.
			delete(g.early, child)
			p.handleChild(child, ws, event)
		}
	}
}

// handleTrap offers a SIGTRAP to the trap handler.
func (p *Process) handleTrap(t *thread) bool {
	return p.offerTrap(t.tid, func(regs *unix.PtraceRegs) error { return p.setRegs(t, regs) })
}

// offerTrap offers the SIGTRAP of task tid, in its stop, to the trap
// handler; set writes its registers.
func (p *Process) offerTrap(tid int, set func(*unix.PtraceRegs) error) bool {
	var regs unix.PtraceRegs
	if err := unix.PtraceGetRegs(tid, &regs); err != nil {
		return false
	}
	orig, claimed := regs, false
	claim := func() error {
		on := orig
		on.Rip--
		if err := set(&on); err != nil {
			return err
		}
		claimed = true
		return nil
	}
	if !p.trap(tid, &regs, claim) {
		if claimed {
			_ = set(&orig)
		}
		return false
	}
	return set(&regs) == nil
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

// handleChild handles a stop of a child (auto-attached through
// PTRACE_O_TRACEFORK/VFORK/CLONE) that is not a thread of the process: let
// the fork handler clean its memory, then detach it. A child that shares
// the parent's memory (vfork, or clone with CLONE_VM but not CLONE_THREAD)
// is detached without the handler: restoring its text would restore the
// parent's, and silently stop tracing it. It runs the patched text, which
// the agent serves.
func (p *Process) handleChild(pid int, ws unix.WaitStatus, kind int) {
	if p.sharedKids[pid] {
		p.handleShared(pid, ws)
		return
	}
	if ws.Exited() || ws.Signaled() {
		delete(p.children, pid)
		return
	}
	if !ws.Stopped() {
		return
	}
	if _, ok := p.children[pid]; !ok && p.follow != nil {
		// Its first stop came before its parent's fork event: only that
		// event says which followed process forked it (its PPid is
		// init's once a daemon's middle child has exited). It waits in
		// this stop until then (follow.go).
		g := p.groupOf()
		if g.early == nil {
			g.early = map[int]unix.WaitStatus{}
		}
		g.early[pid] = ws
		return
	}
	if kind == 0 {
		kind = unix.PTRACE_EVENT_FORK
	}
	if p.follow != nil {
		shared := kind == unix.PTRACE_EVENT_VFORK || p.sharesMemory(pid)
		if p.adopt(pid, ws, shared) {
			delete(p.children, pid)
			return
		}
	}
	if kind != unix.PTRACE_EVENT_VFORK && p.fork != nil && !p.sharesMemory(pid) {
		if m, err := OpenMem(pid); err == nil {
			p.fork(pid, m)
			m.Close()
		}
	}
	sig := 0
	if s := ws.StopSignal(); uint32(ws)>>16 == 0 && s != unix.SIGTRAP && s != unix.SIGSTOP {
		sig = int(s)
	}
	delete(p.children, pid)
	if kind == unix.PTRACE_EVENT_VFORK || p.sharesMemory(pid) {
		p.keepShared(pid, sig) // sharedkids.go
		return
	}
	detachChild(pid, sig)
}

// detachChild detaches child pid and sends it sig, the signal of its
// stop, if not 0.
func detachChild(pid, sig int) {
	_ = unix.PtraceDetach(pid)
	if sig != 0 {
		_ = unix.Kill(pid, unix.Signal(sig))
	}
}

// kcmpVM is KCMP_VM of kcmp(2): do two tasks share their address space?
const kcmpVM = 1

// sharesMemory reports whether child shares the target's address space
// (clone with CLONE_VM). Without kcmp (a kernel built without
// CONFIG_KCMP) it answers no, and the child is handled as a fork.
func (p *Process) sharesMemory(child int) bool {
	r, _, e := unix.Syscall6(unix.SYS_KCMP, uintptr(p.pid), uintptr(child), kcmpVM, 0, 0, 0)
	if e == 0 {
		return r == 0
	}
	return false
}
