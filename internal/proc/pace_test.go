package proc

import (
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// sleepsDuring returns how many times the calling thread gave up its CPU
// of its own accord (voluntary context switches) while it ran loop.
func sleepsDuring(t *testing.T, loop func()) int64 {
	t.Helper()
	var before, after unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_THREAD, &before); err != nil {
		t.Fatal(err)
	}
	loop()
	if err := unix.Getrusage(unix.RUSAGE_THREAD, &after); err != nil {
		t.Fatal(err)
	}
	return after.Nvcsw - before.Nvcsw
}

// busyPaced works for d, calling pc.Pace between pieces of about 20 µs,
// and returns how many of those calls came in a slot of the clock that
// began since the call before: the sleeps the pacer owes. On a loaded
// machine the loop, preempted, may see only some of the slots of d go by.
func busyPaced(pc *Pacer, d time.Duration) (newSlots int) {
	end := time.Now().Add(d)
	last := int64(-1)
	for time.Now().Before(end) {
		for spin := time.Now().Add(20 * time.Microsecond); time.Now().Before(spin); {
		}
		slot := time.Now().UnixNano() / int64(PaceSlot)
		if last >= 0 && slot != last {
			newSlots++
		}
		last = slot
		pc.Pace()
	}
	return newSlots
}

// TestPacer checks that a paced loop sleeps about once a slot, and not
// at all while real-time.
//
// The thread's voluntary context switches count the pacer's sleeps, and
// also the runtime's: the Go scheduler preempts a goroutine that runs for
// 10 ms, and a thread locked to it then sleeps until the goroutine is
// scheduled again, as it does at each stop of the world of a collection.
// On a loaded machine those came on top of the pacer's (a fresh-clone CI
// run: 13 slots seen, 17 sleeps), so each check is given three tries: a
// pacer that does not sleep, or sleeps at every call, fails all three.
func TestPacer(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if RealTime() {
		t.Skip("the test runs real-time: its pacer would not sleep")
	}
	const slots, tries = 20, 3
	var n int64
	var seen int
	for try := 0; try < tries; try++ {
		var pc Pacer
		n = sleepsDuring(t, func() { seen = busyPaced(&pc, slots*PaceSlot) })
		// One sleep a slot the loop saw begin (give or take the one its
		// clock and the pacer's tell apart at a slot's edge), and about
		// one a slot on a machine that let the loop run.
		if d := n - int64(seen); d >= -2 && d <= 2 {
			break
		}
		if try == tries-1 {
			t.Errorf("a loop paced for %d slots saw %d of them begin and slept %d times, want one sleep each (%d tries)", slots, seen, n, tries)
		}
	}
	if seen < slots/2 {
		t.Logf("the loop saw only %d of %d slots begin: a loaded machine", seen, slots)
	}
	// The same work unpaced: the sleeps counted above are the pacer's.
	spin := func() {
		for end := time.Now().Add(slots * PaceSlot); time.Now().Before(end); {
		}
	}
	for try := 0; try < tries; try++ {
		if n = sleepsDuring(t, spin); n <= 2 {
			break
		}
		if try == tries-1 {
			t.Errorf("an unpaced loop slept %d times, want none (%d tries)", n, tries)
		}
	}
	// Real-time (the attach), where root may set it: no sleeps.
	restore := BoostAll(-10)
	defer restore()
	if !RealTime() {
		return // no real-time here (no CAP_SYS_NICE, or a cgroup without real-time runtime)
	}
	for try := 0; try < tries; try++ {
		var pc Pacer
		if n = sleepsDuring(t, func() { busyPaced(&pc, slots*PaceSlot) }); n <= 2 {
			break
		}
		if try == tries-1 {
			t.Errorf("a loop paced real-time slept %d times, want none (%d tries)", n, tries)
		}
	}
}

// TestPacerSlots checks when a pacer sleeps, and that pacers on two
// threads wake together: PaceNap past the start of the slot.
func TestPacerSlots(t *testing.T) {
	const slot, nap = int64(PaceSlot), PaceNap
	base := 1000 * slot
	var a, b Pacer
	for _, c := range []struct {
		pc   *Pacer
		now  int64
		want time.Duration
	}{
		{&a, base + 10, 0},                   // the first call
		{&a, base + slot - 1, 0},             // the same slot
		{&a, base + slot + 1000, nap - 1000}, // a new one: until its start + nap
		{&b, base + 5000, 0},
		{&b, base + slot + 3000, nap - 3000},      // the same wake-up as a's
		{&a, base + 2*slot + int64(nap), nap / 2}, // late: still a little
		{&a, base + 5*slot, nap},                  // slots skipped: one sleep
	} {
		if got := c.pc.next(c.now); got != c.want {
			t.Errorf("next(slot start %+d ns) = %v, want %v", c.now-c.now/slot*slot, got, c.want)
		}
	}
}
