package proc

import (
	"os"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/livetrace/livetrace/internal/testtarget"
)

// TestBoost checks the boosts of nice.go as root: every thread real-time
// while boosted, the early boost taken over by BoostAll and ended by its
// restore, either boost ended by itself after maxRealTime, BoostCaller's
// nice value, and every thread back to its policy and nice value
// afterwards; RealTime follows the calling thread's policy.
func TestBoost(t *testing.T) {
	testtarget.RequireRoot(t)
	runtime.LockOSThread() // RealTime is about this goroutine's thread
	defer runtime.UnlockOSThread()
	before := testtarget.ThreadPolicies(t, os.Getpid())
	for tid, pol := range before {
		if pol != unix.SCHED_NORMAL {
			t.Fatalf("thread %d has policy %d before any boost", tid, pol)
		}
	}
	nice := func(tid int) int {
		p, err := unix.Getpriority(unix.PRIO_PROCESS, tid)
		if err != nil {
			t.Fatal(err)
		}
		return 20 - p
	}
	self := unix.Gettid()
	nice0 := nice(self)
	allRT := func(when string) {
		t.Helper()
		for tid, pol := range testtarget.ThreadPolicies(t, os.Getpid()) {
			if pol != unix.SCHED_FIFO {
				t.Errorf("%s: thread %d has policy %d, want SCHED_FIFO", when, tid, pol)
			}
		}
		if !RealTime() {
			t.Errorf("%s: RealTime() = false", when)
		}
	}
	noneRT := func(when string) {
		t.Helper()
		for tid, pol := range testtarget.ThreadPolicies(t, os.Getpid()) {
			if pol != unix.SCHED_NORMAL {
				t.Errorf("%s: thread %d has policy %d, want SCHED_NORMAL", when, tid, pol)
			}
		}
		if RealTime() {
			t.Errorf("%s: RealTime() = true", when)
		}
		if n := nice(self); n != nice0 {
			t.Errorf("%s: nice %d, want %d", when, n, nice0)
		}
	}

	BoostEarly(-10)
	allRT("after BoostEarly")
	restore := BoostAll(-10)
	allRT("after BoostAll")
	EndEarlyBoost() // taken over: does nothing
	allRT("after EndEarlyBoost, with BoostAll holding the boost")
	restore()
	noneRT("after BoostAll's restore")
	restore()
	noneRT("after a second restore")

	BoostEarly(-10)
	allRT("after BoostEarly")
	EndEarlyBoost()
	noneRT("after EndEarlyBoost")

	// However long the attach, the boost ends by itself.
	restore = BoostAll(-10)
	allRT("after BoostAll")
	time.Sleep(maxRealTime + 200*time.Millisecond)
	noneRT("maxRealTime after BoostAll")
	restore()
	BoostEarly(-10)
	allRT("after BoostEarly")
	time.Sleep(maxRealTime + 200*time.Millisecond)
	noneRT("maxRealTime after BoostEarly")
	EndEarlyBoost()

	// BoostCaller sets a nice value only.
	done := BoostCaller(-10)
	a, err := unix.SchedGetAttr(unix.Gettid(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if a.Policy != unix.SCHED_NORMAL || a.Nice != -10 {
		t.Errorf("BoostCaller: policy %d nice %d, want SCHED_NORMAL at nice -10", a.Policy, a.Nice)
	}
	done()
	runtime.LockOSThread()
	noneRT("after BoostCaller's restore")
	runtime.UnlockOSThread()
}
