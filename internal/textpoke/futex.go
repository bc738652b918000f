package textpoke

import (
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// pumpNap is how long the ptrace thread sleeps, while it waits for the
// partner's runs, between two looks for stops.
const pumpNap = 20 * time.Microsecond

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
