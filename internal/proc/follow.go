package proc

import (
	"fmt"
	"os"
	"strconv"

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
	if tgid == p.pid || ppid == p.pid {
		return nil
	}
	for _, q := range p.grp.members {
		if q != p && !q.detached && (q.pid == tgid || q.pid == ppid) {
			return q
		}
	}
	return nil
}

// adopt offers child pid, in its first stop ws, to the follow handler. It
// reports whether the child is followed now (it then runs on).
func (p *Process) adopt(pid int, ws unix.WaitStatus) bool {
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
	}
	t := c.newThread(pid)
	t.state = stopped
	h := p.follow(c)
	if h == nil {
		mem.Close()
		return false
	}
	c.trap, c.threadExit, c.fork, c.follow = h.Trap, h.ThreadExit, h.Fork, h.Follow
	g.members = append(g.members, c)
	// The first stop, handled as the child's own: a free thread runs on.
	c.handle(pid, ws)
	return true
}
