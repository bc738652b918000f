package proc

import (
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Pacing. The threads of a patch batch run boosted (nice -10, or
// real-time in the attach), and the target's busy threads wait behind them:
// a boosted thread that works for 10 ms keeps a calling thread off its CPU
// for 10 ms, since a thread of normal priority gets that CPU back only when
// the boosted one sleeps. So a batch's loops that work on (verify, the
// live passes, laying out the runs, merging a fresh trap table) sleep PaceNap
// once in every PaceSlot of the clock. The slots are the clock's, shared by
// all threads: two tracer threads on one CPU (the scheduler often puts them
// there: one wakes the other) sleep together, instead of handing the CPU to
// each other. A calling thread then waits about one slot, not the whole
// loop, for a loop about 5% longer.
//
// Only a batch that runs at a nice value paces, not the attach's, which
// runs real-time. The attach's parse and relocation planning, paced the
// same way, made Debian's redis-server answer a PING later during the
// attach, not sooner: each sleep lets the kernel pull a runnable thread
// onto the idle CPU, where the real-time tracer preempts it again 50 µs
// later. See docs/DESIGN-NOTES.md, "The batch, ninth round".
const (
	PaceSlot = time.Millisecond
	PaceNap  = 50 * time.Microsecond
)

// A Pacer paces one loop on one thread: call Pace between two pieces of
// work of well under a slot.
type Pacer struct {
	slot int64
}

// Pace sleeps if a slot of the clock began since the last call, unless
// the thread runs real-time.
func (pc *Pacer) Pace() {
	if d := pc.next(time.Now().UnixNano()); d > 0 && !RealTime() {
		Nap(d)
	}
}

// next returns how long a call at now (ns of the clock) sleeps.
func (pc *Pacer) next(now int64) time.Duration {
	slot := now / int64(PaceSlot)
	switch {
	case pc.slot == 0:
		pc.slot = slot // the loop's first piece
		return 0
	case slot == pc.slot:
		return 0
	}
	pc.slot = slot
	// Until PaceNap past the slot's start, with the other threads; a
	// thread that comes late (it waited for the CPU) still sleeps a little.
	wake := slot*int64(PaceSlot) + int64(PaceNap)
	return time.Duration(max(wake-now, int64(PaceNap)/2))
}

// Nap sleeps d in the kernel without the Go scheduler: the thread keeps
// its P, and a boosted thread wakes on time (a timer of the runtime is
// served by a thread of normal priority first, which waits for a CPU
// behind the target's threads).
func Nap(d time.Duration) {
	ts := unix.NsecToTimespec(int64(d))
	_, _, _ = unix.RawSyscall(unix.SYS_NANOSLEEP, uintptr(unsafe.Pointer(&ts)), 0, 0)
}

// Sleep sleeps d in the kernel on the calling thread, as Nap does, but
// as a system call the Go scheduler knows of, so that a stop of the world
// does not wait for it: for naps of milliseconds, on a locked thread that
// must wake on time (the record loop, which empties the shared buffer).
func Sleep(d time.Duration) {
	ts := unix.NsecToTimespec(int64(d))
	_ = unix.Nanosleep(&ts, nil) // EINTR: awake early
}
