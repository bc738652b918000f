package session

import (
	"runtime/debug"
	"sync"
)

// attachGCPercent is the GOGC the tracer runs with while it attaches, from
// parsing the target's modules (discover) to its first events: parsing a program of 10,000 functions and
// its libc allocates about 15-25 MB of short-lived data, and at the
// default of 100 the collector ran several cycles during it, about a
// quarter of its CPU time (docs/DESIGN-NOTES.md, "Where the patch and
// attach time goes"). The live heap after it is a few MB, so the peak
// stays small; the cycle the parse's garbage calls for comes after the
// first events, not in the middle of the injection.
const attachGCPercent = 400

var relaxedGC struct {
	sync.Mutex
	n    int // sessions in discover
	prev int // the GOGC to restore when n drops to 0
}

// relaxGC raises GOGC to attachGCPercent until the returned function is
// called. Safe for concurrent use: the first caller raises it, the last
// one restores it.
func relaxGC() (restore func()) {
	relaxedGC.Lock()
	if relaxedGC.n == 0 {
		relaxedGC.prev = debug.SetGCPercent(attachGCPercent)
		if relaxedGC.prev < 0 || relaxedGC.prev > attachGCPercent {
			// GOGC=off, or higher already: keep it.
			debug.SetGCPercent(relaxedGC.prev)
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
			}
			relaxedGC.Unlock()
		})
	}
}
