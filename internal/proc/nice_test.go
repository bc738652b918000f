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

// TestShortSlice checks ShortSlice as root: the slice set while the nice
// value of BoostCaller stays, the default slice and nice value back after
// both restores, and a real-time thread left alone.
func TestShortSlice(t *testing.T) {
	testtarget.RequireRoot(t)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	self := unix.Gettid()
	attr := func() *unix.SchedAttr {
		t.Helper()
		a, err := unix.SchedGetAttr(self, 0)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	a0 := attr()
	unboost := BoostCaller(-10)
	unslice := ShortSlice(BatchSlice)
	if a := attr(); a.Runtime != uint64(BatchSlice) || a.Nice != -10 || a.Policy != unix.SCHED_NORMAL {
		t.Errorf("ShortSlice: slice %d ns nice %d policy %d, want %d ns at nice -10, SCHED_NORMAL", a.Runtime, a.Nice, a.Policy, BatchSlice)
	}
	unslice()
	unboost()
	if a := attr(); a.Runtime != a0.Runtime || a.Nice != a0.Nice {
		t.Errorf("after the restores: slice %d ns nice %d, want %d ns nice %d", a.Runtime, a.Nice, a0.Runtime, a0.Nice)
	}

	// Real-time (the attach): left alone, and so after its restore.
	restore := BoostAll(-10)
	rt := attr()
	if rt.Policy != unix.SCHED_FIFO {
		t.Fatalf("BoostAll: policy %d", rt.Policy)
	}
	unslice = ShortSlice(BatchSlice)
	if a := attr(); *a != *rt {
		t.Errorf("ShortSlice on a real-time thread changed %+v to %+v", *rt, *a)
	}
	unslice()
	if a := attr(); *a != *rt {
		t.Errorf("ShortSlice's restore on a real-time thread changed %+v to %+v", *rt, *a)
	}
	restore()
	if a := attr(); a.Policy != unix.SCHED_NORMAL || a.Runtime != a0.Runtime {
		t.Errorf("after BoostAll's restore: policy %d slice %d ns", a.Policy, a.Runtime)
	}
}
