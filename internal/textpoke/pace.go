package textpoke

import (
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Pacing. The threads of a batch run boosted (apply), and the target's
// busy threads wait behind them: a boosted thread that works for 10 ms
// keeps a calling thread off its CPU for 10 ms, since a thread of normal
// priority gets the CPU back only when the boosted one sleeps. So every
// thread of a batch that works on (verify, the passes) sleeps paceNap
// once in every paceSlot of the clock. The slots are the clock's, shared
// by all threads: two threads of a batch that the scheduler put on one CPU
// (it often does: one wakes the other) sleep together, instead of handing
// the CPU to each other. A calling thread then waits about one slot, not
// the whole batch, for a ~5% longer batch. See docs/DESIGN-NOTES.md, "The
// batch, ninth round".
const (
	paceSlot = time.Millisecond
	paceNap  = 50 * time.Microsecond
	// pumpNap is how long the ptrace thread sleeps, while it waits for the
	// partner's runs, between two looks for stops.
	pumpNap = 20 * time.Microsecond
)

// pacer paces one thread's loop: call pace between two pieces of work.
type pacer struct{ slot int64 }

func (pc *pacer) pace() {
	now := time.Now().UnixNano()
	slot := now / int64(paceSlot)
	switch {
	case pc.slot == 0:
		pc.slot = slot // the first piece: the thread just started
		return
	case slot == pc.slot:
		return
	}
	pc.slot = slot
	// Until paceNap past the slot's start, with the other threads; a
	// thread that comes late (it waited for the CPU) still sleeps a little.
	wake := slot*int64(paceSlot) + int64(paceNap)
	nap(time.Duration(max(wake-now, int64(paceNap)/2)))
}

// nap sleeps d in the kernel without the Go scheduler: the thread keeps
// its P, and a boosted thread wakes on time (a timer of the runtime is
// served by a thread of normal priority first).
func nap(d time.Duration) {
	ts := unix.NsecToTimespec(int64(d))
	_, _, _ = unix.RawSyscall(unix.SYS_NANOSLEEP, uintptr(unsafe.Pointer(&ts)), 0, 0)
}

// The partner waits for each pass on a futex, not on a channel: the Go
// scheduler hands a goroutine locked to its thread over through another
// thread of normal priority, which beside the target's busy threads waited
// for a CPU for up to 9 ms, while the ptrace thread did the pass alone.
const (
	futexWaitPrivate = 0 | 128 // FUTEX_WAIT | FUTEX_PRIVATE_FLAG
	futexWakePrivate = 1 | 128 // FUTEX_WAKE | FUTEX_PRIVATE_FLAG
	// partnerWait bounds one futex wait of the partner, which keeps its P
	// meanwhile: a collection that stops the world waits for it that long
	// at most.
	partnerWait = 250 * time.Microsecond
)

// futexWait sleeps while *w == val, at most d.
func futexWait(w *atomic.Uint32, val uint32, d time.Duration) {
	ts := unix.NsecToTimespec(int64(d))
	_, _, _ = unix.RawSyscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(w)), futexWaitPrivate, uintptr(val), uintptr(unsafe.Pointer(&ts)), 0, 0)
}

// futexWake wakes the thread waiting on w, if any.
func futexWake(w *atomic.Uint32) {
	_, _, _ = unix.RawSyscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(w)), futexWakePrivate, 1, 0, 0, 0)
}
