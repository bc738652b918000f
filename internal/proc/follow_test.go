package proc

import (
	"testing"
	"time"

	"github.com/livetrace/livetrace/internal/testtarget"
)

// TestFollowFork follows a forked child and a clone(CLONE_VM) child: each
// becomes a Process of the group with its parent's pid as Parent, the
// clone one marked as sharing memory; the fork handler does not run for a
// followed child; each child's exit closes its Exited; the parent can
// detach before its children, and the children after it.
func TestFollowFork(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := testtarget.Build(t, testtarget.SignalsExec, testtarget.ClangNop5)
	tp := startAs(t, nobody, bin)
	tp.expect(t, "ready", 10*time.Second)
	p, err := Attach(tp.pid())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Detach()
	var kids []*Process
	var forks int
	p.SetForkHandler(func(int, *Mem) { forks++ })
	p.SetFollowHandler(func(c *Process) *Handlers {
		kids = append(kids, c)
		return &Handlers{}
	})
	tp.send(t, "fork 10")
	if l := tp.expect(t, "fork", 10*time.Second); l != "fork 0" {
		t.Fatalf("fork child: %q", l)
	}
	tp.send(t, "clonevm 10")
	if l := tp.expect(t, "clonevm", 10*time.Second); l != "clonevm 0" {
		t.Fatalf("clone(CLONE_VM) child: %q", l)
	}
	p.Pump()
	var n, f int
	p.do(func() { n, f = len(kids), forks })
	if n != 2 || f != 0 {
		t.Fatalf("%d children followed, fork handler ran %d times; want 2 and 0", n, f)
	}
	for i, c := range kids {
		if c.Parent() != tp.pid() || c.SharesMemory() != (i == 1) {
			t.Errorf("child %d (pid %d): parent %d, shares memory %v", i, c.Pid(), c.Parent(), c.SharesMemory())
		}
		select {
		case <-c.Exited():
		case <-time.After(10 * time.Second):
			t.Fatalf("child %d (pid %d) exited, but its Exited is not closed", i, c.Pid())
		}
	}
	var pending int
	if pending = p.PendingChildren(); pending != 0 {
		t.Errorf("%d children still pending", pending)
	}
	// The parent first: the ptrace thread must go on for the children.
	if err := p.Detach(); err != nil {
		t.Fatal(err)
	}
	for _, c := range kids {
		if err := c.Detach(); err != nil {
			t.Errorf("detach child %d: %v", c.Pid(), err)
		}
	}
	tp.send(t, "call 1")
	tp.expect(t, "called 1", 10*time.Second)
}
