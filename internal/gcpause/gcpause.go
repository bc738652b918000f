package session

import (
	"runtime/debug"
	"sync"
)

// While the tracer attaches, from parsing the target's modules (discover)
// to its first events, the collector is off, under a memory limit:
// parsing a program of 10,000 functions and its libc allocates about 15-25
// MB of short-lived data, and at the default GOGC of 100 the collector ran
// several cycles during it, about a quarter of its CPU time
// (docs/DESIGN-NOTES.md, "Where the patch and attach time goes"); at 400
// it still ran one during the patch (6.5 ms of marking beside the batch).
// The live heap after it is a few MB, so the peak stays small; the cycle
// the parse's garbage calls for comes after the first events. The limit
// (attachHeapLimit) makes a program far bigger than that collect as it
// goes rather than grow the heap without bound.
const attachHeapLimit = 512 << 20

var relaxedGC struct {
	sync.Mutex
	n         int   // sessions in discover
	prev      int   // the GOGC to restore when n drops to 0
	prevLimit int64 // the memory limit to restore
}

// relaxGC turns the collector off, under attachHeapLimit, until the
// returned function is called. Safe for concurrent use: the first caller
// relaxes it, the last one restores it.
func relaxGC() (restore func()) {
	relaxedGC.Lock()
	if relaxedGC.n == 0 {
		relaxedGC.prevLimit = debug.SetMemoryLimit(-1)
		relaxedGC.prev = debug.SetGCPercent(-1)
		if relaxedGC.prev < 0 {
			// GOGC=off already: the user's memory limit rules.
		} else {
			debug.SetMemoryLimit(min(relaxedGC.prevLimit, attachHeapLimit))
		}
	}
	relaxedGC.n++
	relaxedGC.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			relaxedGC.Lock()
			relaxedGC.n--
			if relaxedGC.n == 0 {
				debug.SetGCPercent(relaxedGC.prev)
				debug.SetMemoryLimit(relaxedGC.prevLimit)
			}
			relaxedGC.Unlock()
		})
	}
}
