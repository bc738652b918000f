package proc

import (
	"fmt"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// Following forked children (record --follow).
//
// A child forked by a seized process is auto-attached to the ptrace thread
// (PTRACE_O_TRACEFORK), and ptrace requests for it can only come from that
// thread. A followed child therefore becomes a Process of its own that
// shares its parent's executor: the processes of one family form a group,
// and whichever of them reaps a wait status hands it to the member the
// thread belongs to. The executor ends when the last member detaches.

// Handlers are the handlers of a followed child, installed before it runs
// its first instruction.
type Handlers struct {
	Trap       TrapHandler
	ThreadExit ThreadExitHandler
	Fork       ForkHandler
	Follow     FollowHandler
	Exec       ExecHandler
}

// FollowHandler is called on the ptrace thread when a process that has one
// forks (not a vfork, nor a clone that shares its memory): child is a new
// Process for the forked child, seized and stopped in its first stop, with
// its memory open. Returning nil lets it go as without a follow handler
// (the fork handler cleans it, then it is detached). Returning handlers
// keeps it: they are installed, and the child then runs. The handler may
// read and write child's memory (child.Mem) but must not call anything
// that needs the ptrace thread.
type FollowHandler func(child *Process) *Handlers

// SetFollowHandler installs h (nil removes it).
func (p *Process) SetFollowHandler(h FollowHandler) { p.do(func() { p.follow = h }) }

// Parent returns the pid of the followed process this one was forked
// from, 0 for a process that was attached or launched.
func (p *Process) Parent() int { return p.ppid }

// group is the processes that share one executor. Only touched on the
// ptrace thread.
type group struct {
	members []*Process
	// early holds the first stop of children whose fork event has not
	// been reaped yet: they wait in it until it is (noteChild).
	early map[int]unix.WaitStatus
}

// groupOf returns p's group, making one if needed.
func (p *Process) groupOf() *group {
	if p.grp == nil {
		p.grp = &group{members: []*Process{p}}
	}
	return p.grp
}

// leave removes p from its group and reports whether it was the last
// member that had not detached: then the executor can stop.
func (p *Process) leave() bool {
	if p.grp == nil {
		return true
	}
	last := true
	for _, q := range p.grp.members {
		if q != p && !q.detached {
			last = false
		}
	}
	if last {
		// A child whose parent never reported its fork (killed in the
		// event stop): let it go.
		for pid := range p.grp.early {
			_ = unix.PtraceDetach(pid)
		}
		p.grp.early = nil
	}
	return last
}

// liveMember returns a member of p's group that has not detached, or nil.
func (p *Process) liveMember() *Process {
	if p.grp == nil {
		return nil
	}
	for _, q := range p.grp.members {
		if !q.detached {
			return q
		}
	}
	return nil
}

// route returns the other member of p's group that thread tid belongs to,
// or nil: a thread it knows, a child it waits for, a thread of its thread
// group, or a new child of it whose fork event has not been reaped yet.
func (p *Process) route(tid int) *Process {
	if p.grp == nil || len(p.grp.members) < 2 {
		return nil
	}
	for _, q := range p.grp.members {
		if q == p || q.detached {
			continue
		}
		if q.threads[tid] != nil {
			return q
		}
		if _, ok := q.children[tid]; ok {
			return q
		}
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", tid))
	if err != nil {
		return nil
	}
	tgid, _ := strconv.Atoi(statusField(status, "Tgid"))
	ppid, _ := strconv.Atoi(statusField(status, "PPid"))
	// A thread's PPid is its process's parent: the thread group first.
	if tgid == p.pid {
		return nil
	}
	for _, q := range p.grp.members {
		if q != p && !q.detached && q.pid == tgid {
			return q
		}
	}
	if ppid == p.pid {
		return nil
	}
	for _, q := range p.grp.members {
		if q != p && !q.detached && q.pid == ppid {
			return q
		}
	}
	return nil
}

// adopt offers child pid, in its first stop ws, to the follow handler. It
// reports whether the child is followed now (it then runs on). shared says
// it shares p's memory (vfork, clone(CLONE_VM)).
func (p *Process) adopt(pid int, ws unix.WaitStatus, shared bool) bool {
	mem, err := OpenMem(pid)
	if err != nil {
		return false
	}
	g := p.groupOf()
	c := &Process{
		pid:      pid,
		ppid:     p.pid,
		ex:       p.ex,
		grp:      g,
		mem:      mem,
		comm:     commOf(pid),
		threads:  map[int]*thread{},
		children: map[int]int{},
		exitedCh: make(chan struct{}),
		sysInsn:  p.sysInsn, // the same address space, copied
		shared:   shared,
	}
	t := c.newThread(pid)
	t.state = stopped
	h := p.follow(c)
	if h == nil {
		mem.Close()
		return false
	}
	c.trap, c.threadExit, c.fork, c.follow, c.exec = h.Trap, h.ThreadExit, h.Fork, h.Follow, h.Exec
	g.members = append(g.members, c)
	// The first stop, handled as the child's own: a free thread runs on.
	c.handle(pid, ws)
	return true
}

// ExecHandler is called on the ptrace thread when a process that has one
// calls exec: img is a new Process for the new image (the same pid),
// seized, whose thread runs the dynamic loader and then waits at the
// program's entry point (parked like a [Launch]ed process: see WaitParked
// and Release); formerTID is the thread that called exec (the pid unless a
// thread other than the leader did; the kernel gave it the pid). The old
// Process is gone (its Exited is closed); Detach it as usual. The handler
// must not call anything that needs the ptrace thread.
type ExecHandler func(img *Process, formerTID int)

// SetExecHandler installs h (nil removes it: an exec ends the process
// for the tracer, which holds the new image in its first instant until
// Detach).
func (p *Process) SetExecHandler(h ExecHandler) { p.do(func() { p.exec = h }) }

// SharesMemory reports whether the process is a followed vfork child (or
// a clone(CLONE_VM) one), which shares its parent's memory until it calls
// exec or exits: nothing may be written into it.
func (p *Process) SharesMemory() bool { return p.shared }

// adoptExec makes a Process of the image that the thread that reported
// PTRACE_EVENT_EXEC (now the leader, stopped there) runs, parks it at its
// entry point and hands it to the exec handler. It reports whether it did;
// if not, the caller keeps the old behavior.
func (p *Process) adoptExec() bool {
	former := p.pid
	if msg, err := unix.PtraceGetEventMsg(p.pid); err == nil && msg != 0 {
		former = int(msg)
	}
	mem, err := OpenMem(p.pid)
	if err != nil {
		return false
	}
	entry, err := auxEntry(p.pid)
	var orig [2]byte
	if err == nil {
		err = mem.Read(entry, orig[:])
	}
	if err == nil {
		// The new image's own memory (mem was opened after the exec).
		err = mem.Write(entry, []byte{0xeb, 0xfe})
	}
	if err != nil {
		mem.Close()
		return false
	}
	g := p.groupOf()
	n := &Process{
		pid:       p.pid,
		ppid:      p.ppid,
		ex:        p.ex,
		grp:       g,
		mem:       mem,
		comm:      commOf(p.pid),
		threads:   map[int]*thread{},
		children:  map[int]int{},
		exitedCh:  make(chan struct{}),
		entry:     entry,
		entryOrig: orig,
		parked:    true,
	}
	t := n.newThread(p.pid)
	t.state, t.kind = stopped, stopEvent
	g.members = append(g.members, n)
	// The old image lets go of the tid: its statuses are the new one's.
	if old := p.threads[p.pid]; old != nil {
		p.dropThread(old)
	}
	p.exec(n, former)
	n.resume(t, 0)
	return true
}

// WaitParked waits until the parked thread of an image handed to an
// ExecHandler has reached the program's entry point (every library the
// program links is loaded then), or timeout. It returns ErrExited if the
// process exited or called exec again first.
func (p *Process) WaitParked(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		var at bool
		err := p.doErr(func() error {
			if !p.parked {
				at = true
				return nil
			}
			var regs unix.PtraceRegs
			t := p.threads[p.pid]
			if t == nil || !p.live(t) {
				return p.goneErr()
			}
			wasFree := t.role == roleFree
			p.interrupt(t)
			if err := p.waitBlocking(t, func() bool { return !p.live(t) || t.state == stopped }, time.Second); err != nil {
				return err
			}
			if !p.live(t) {
				if err := p.goneErr(); err != nil {
					return err
				}
				return ErrExited
			}
			if err := unix.PtraceGetRegs(t.tid, &regs); err == nil && regs.Rip == p.entry {
				at = true
			}
			if wasFree {
				t.role = roleFree
				p.fixInterrupted(t)
				p.resume(t, 0)
			}
			return nil
		})
		if err != nil {
			return err
		}
		if at {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pid %d did not reach its entry point within %v", p.pid, timeout)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// PendingChildren returns how many children the process forked that have
// not been handed to the follow or fork handler yet (their first stop is
// still to come): a follower must not think the family has ended.
func (p *Process) PendingChildren() (n int) {
	p.do(func() { n = len(p.children) })
	return n
}
