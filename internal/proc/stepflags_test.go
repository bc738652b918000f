package proc

import (
	"golang.org/x/sys/unix"
	"strings"
	"testing"
	"time"

	"github.com/livetrace/livetrace/internal/testtarget"
)

// TestStepOverPushf single-steps a thread out of a region that starts with
// pushfq and ends with popfq, then detaches. A step over the pushfq pushes
// the flags with the trap flag the step set; if that word went back into
// the thread's flags at the popfq, the thread would run with TF set after
// the detach and die of SIGTRAP at its next instruction (a stock
// redis-server did, stepped out of a keep stub at detach).
func TestStepOverPushf(t *testing.T) {
	tp, lo, hi := startSpinner(t)
	inside := 0
	for round := 0; round < 40 && inside < 10; round++ {
		p, err := Attach(tp.pid())
		if err != nil {
			t.Fatal(err)
		}
		if err := p.StopAll(); err != nil {
			t.Fatal(err)
		}
		ips, err := p.StoppedIPs()
		if err != nil {
			t.Fatal(err)
		}
		for tid, ip := range ips {
			if ip < lo || ip >= hi+2 {
				continue
			}
			if ip >= hi {
				// On the jmp back: step onto the pushfq first.
				if err := p.SingleStepOut(tid, ip, ip+1, 2); err != nil {
					t.Fatal(err)
				}
			}
			inside++
			if err := p.SingleStepOut(tid, lo, hi, 200); err != nil {
				t.Fatal(err)
			}
		}
		if err := p.ResumeAll(); err != nil {
			t.Fatal(err)
		}
		if err := p.Detach(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if inside == 0 {
		t.Fatal("the spinning thread was never stopped in its pushf region")
	}
	// Alive, and answering: a thread left with TF would have killed it.
	checkAnswers(t, tp)
	t.Logf("stepped out of the pushf region %d times", inside)
}

// TestStepTrapThenPushf: a step that runs into an INT3 of ours, whose trap
// handler sends the thread on to a pushf (a relocated function's jmp to
// its keep stub, which starts with pushf), runs that pushf under TF too:
// the step is issued again from there (reissue), and the flags it pushes
// must lose TF as well. A TestSQLiteLive run in graph mode died of SIGTRAP
// right after a keep stub's popf. Here the INT3 replaces the fixture's jmp
// back to its pushfq, and the handler does the jmp.
func TestStepTrapThenPushf(t *testing.T) {
	tp, lo, hi := startSpinner(t)
	p, err := Attach(tp.pid())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Detach()
	// The spinning thread may be elsewhere at a stop (starting, or
	// preempted in the kernel): stop them all again until it is in.
	spinner := 0
	var ips map[int]uint64
	for round := 0; round < 200 && spinner == 0; round++ {
		if round > 0 {
			if err := p.ResumeAll(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(time.Millisecond)
		}
		if err := p.StopAll(); err != nil {
			t.Fatal(err)
		}
		if ips, err = p.StoppedIPs(); err != nil {
			t.Fatal(err)
		}
		for tid, ip := range ips {
			if ip >= lo && ip < hi+2 {
				spinner = tid
			}
		}
	}
	if spinner == 0 {
		t.Fatalf("no thread stopped in the spinning loop [%#x, %#x) in 200 tries: %v", lo, hi+2, ips)
	}
	// Onto the jmp back, then the INT3 there.
	if err := p.SingleStepOut(spinner, lo, hi, 200); err != nil {
		t.Fatal(err)
	}
	var orig [1]byte
	if err := p.ReadMem(hi, orig[:]); err != nil {
		t.Fatal(err)
	}
	if err := p.WriteMem(hi, []byte{0xcc}); err != nil {
		t.Fatal(err)
	}
	trapped := 0
	p.SetTrapHandler(func(tid int, regs *unix.PtraceRegs, claim func() error) bool {
		if regs.Rip-1 != hi || claim() != nil {
			return false
		}
		trapped++
		regs.Rip = lo // the jmp
		return true
	})
	if err := p.SingleStepOut(spinner, hi, hi+1, 4); err != nil {
		t.Fatal(err)
	}
	p.SetTrapHandler(nil)
	if err := p.WriteMem(hi, orig[:]); err != nil {
		t.Fatal(err)
	}
	if trapped != 1 {
		t.Fatalf("the step took the INT3 %d times, want once", trapped)
	}
	if err := p.ResumeAll(); err != nil {
		t.Fatal(err)
	}
	if err := p.Detach(); err != nil {
		t.Fatal(err)
	}
	// Alive, and answering: the popf of a pushed TF would have killed it.
	checkAnswers(t, tp)
}

// startSpinner starts the keepregs fixture with its spinning thread and
// returns it with the bounds of the thread's pushfq..popfq region: lo is
// the pushfq, hi the jmp back to it.
func startSpinner(t *testing.T) (tp *target, lo, hi uint64) {
	t.Helper()
	testtarget.RequireRoot(t)
	bin := testtarget.Build(t, testtarget.KeepRegs, testtarget.ClangNop5, testtarget.PIE(true))
	tp = startAs(t, nil, bin)
	tp.expect(t, "ready", 10*time.Second)
	tp.send(t, "spin")
	tp.expect(t, "spinning", 10*time.Second)
	base := loadBase(t, tp.pid(), bin)
	return tp, base + symbolOffset(t, bin, "kr_flags_region"), base + symbolOffset(t, bin, "kr_flags_region_end")
}

// checkAnswers checks that the keepregs fixture still runs a round right.
func checkAnswers(t *testing.T, tp *target) {
	t.Helper()
	time.Sleep(50 * time.Millisecond)
	tp.send(t, "run 1")
	if l := tp.expect(t, "done", 10*time.Second); !strings.HasPrefix(l, "done 1 bad 0 wrong 0") {
		t.Fatalf("after the steps: %q", l)
	}
}
