package proc

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/livetrace/livetrace/internal/testtarget"
	"golang.org/x/sys/unix"
)

// TestBatchSharedChild puts an INT3 over the NOP5 site of a function that
// a vfork child calls with SIGTRAP at its default action, as posix_spawn's
// child runs (a batch's INT3s killed such children: a JVM's
// ProcessBuilder failed). The child must stay traced, so that its INT3 is
// the trap handler's to emulate, as a thread's: it exits 7, whether it was
// made while the INT3 was there or before, and the handler saw its trap.
//
// Followed (record --follow), the child is a process of its own whose
// trap handler the follow handler gives: the same test, with the handler
// given there, and no EachThread (a followed child is not the target's).
func TestBatchSharedChild(t *testing.T) {
	testtarget.RequireRoot(t)
	for _, followed := range []bool{false, true} {
		t.Run(map[bool]string{false: "traced", true: "followed"}[followed], func(t *testing.T) {
			testSharedChild(t, followed)
		})
	}
}

func testSharedChild(t *testing.T, followed bool) {
	tp := testtarget.Start(t, testtarget.Build(t, testtarget.VforkChild, testtarget.ClangNop5))
	line, err := tp.Expect("ready ", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	target, err := strconv.ParseUint(strings.TrimPrefix(strings.TrimSpace(strings.TrimPrefix(line, "ready ")), "0x"), 16, 64)
	if err != nil {
		t.Fatalf("bad line %q", line)
	}
	p, err := Attach(tp.Pid())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Detach()
	orig := make([]byte, 1)
	if err := p.ReadMem(target, orig); err != nil {
		t.Fatal(err)
	}
	// The trap handler emulates the site's NOP5, as textpoke's emulates
	// the instruction of a site, and notes who trapped.
	trapped := make(chan int, 16)
	handler := func(tid int, regs *unix.PtraceRegs, claim func() error) bool {
		if regs.Rip-1 != target || claim() != nil {
			return false
		}
		regs.Rip = target + 5
		select {
		case trapped <- tid:
		default:
		}
		return true
	}
	p.SetTrapHandler(handler)
	if followed {
		p.SetFollowHandler(func(c *Process) *Handlers {
			if !c.SharesMemory() {
				return nil
			}
			return &Handlers{Trap: handler}
		})
	}
	// trapWhile writes an INT3 over vf_target in a batch, calls start,
	// handles stops for 200 ms, and writes the byte back.
	trapWhile := func(start func()) {
		t.Helper()
		err := p.Batch(func(b *Batch) error {
			if err := b.Write(target, []byte{0xcc}); err != nil {
				return err
			}
			start()
			for end := time.Now().Add(200 * time.Millisecond); time.Now().Before(end); {
				b.Pump()
				time.Sleep(time.Millisecond)
			}
			return b.Write(target, orig)
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	child := func(what string) {
		t.Helper()
		got, err := tp.Expect("child ", 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if strings.TrimSpace(got) != "child exit=7" {
			t.Errorf("a child made %s: %q, want child exit=7 (it met the batch's INT3 untraced)", what, got)
		}
		select {
		case tid := <-trapped:
			if tid == tp.Pid() {
				t.Errorf("a child made %s: the trap was the parent's", what)
			}
		default:
			t.Errorf("a child made %s: the trap handler saw no trap", what)
		}
	}

	trapWhile(func() {
		if err := tp.Send("go 0"); err != nil {
			t.Error(err)
		}
	})
	child("during the batch")

	if err := tp.Send("go 100"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(30 * time.Millisecond) // it spins, detached, in the program's text
	trapWhile(func() {})
	child("before the batch")
	if followed {
		return
	}

	// A batch's EachThread visits the child as it visits a thread, and
	// steps it out of the range asked: it may be inside a region about
	// to be rewritten.
	if err := tp.Send("go 300"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	var seen []uint64 // the child's pcs, as fn saw them
	err = p.Batch(func(b *Batch) error {
		return b.EachThread(100, func(tid int, regs *unix.PtraceRegs) (lo, hi uint64, err error) {
			if tid == tp.Pid() {
				return 0, 0, nil
			}
			seen = append(seen, regs.Rip)
			if len(seen) == 1 {
				return regs.Rip, regs.Rip + 1, nil
			}
			return 0, 0, nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(seen) != 2 || seen[0] == seen[1] {
		t.Errorf("EachThread saw the child at %#x, want two visits, stepped off the first pc", seen)
	}
	if got, err := tp.Expect("child ", 10*time.Second); err != nil || strings.TrimSpace(got) != "child exit=7" {
		t.Errorf("the child visited: %q, %v; want child exit=7", got, err)
	}
}
