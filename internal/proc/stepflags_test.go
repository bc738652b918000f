package proc

import (
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
	testtarget.RequireRoot(t)
	bin := testtarget.Build(t, testtarget.KeepRegs, testtarget.ClangNop5, testtarget.PIE(true))
	tp := startAs(t, nil, bin)
	tp.expect(t, "ready", 10*time.Second)
	tp.send(t, "spin")
	tp.expect(t, "spinning", 10*time.Second)
	base := loadBase(t, tp.pid(), bin)
	lo := base + symbolOffset(t, bin, "kr_flags_region")
	hi := base + symbolOffset(t, bin, "kr_flags_region_end")
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
	time.Sleep(50 * time.Millisecond)
	tp.send(t, "run 1")
	if l := tp.expect(t, "done", 10*time.Second); !strings.HasPrefix(l, "done 1 bad 0 wrong 0") {
		t.Fatalf("after the steps: %q", l)
	}
	t.Logf("stepped out of the pushf region %d times", inside)
}
