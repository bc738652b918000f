// Package gcpause turns the Go collector off, under a memory limit, for
// the stretches where the tracer must take as little CPU as it can from
// the target: while it attaches, and while a batch rewrites the text.
//
// While the tracer attaches, from parsing the target's modules (discover)
// to its first events: parsing a program of 10,000 functions and its libc allocates about 15-25
// MB of short-lived data, and at the default GOGC of 100 the collector ran
// several cycles during it, about a quarter of its CPU time
// (docs/DESIGN-NOTES.md, "Where the patch and attach time goes"); at 400
// it still ran one during the patch (6.5 ms of marking beside the batch).
// The live heap after it is a few MB, so the peak stays small; the cycle
// the parse's garbage calls for comes after the first events. The limit
// (HeapLimit) makes a program far bigger than that collect as it goes
// rather than grow the heap without bound.
//
// While a batch of the patch engine runs (internal/textpoke): a batch of
// 100,000 sites allocates little, but the heap the tracer holds then
// (sites, symbols, the trap table) is large, and a cycle that starts
// during the batch takes a CPU for its mark worker, and write barriers on
// every pointer the batch stores, on a machine whose CPUs the target's
// threads already keep busy.
package gcpause

import (
	"runtime/debug"
	"runtime/metrics"
	"sync"
)

// HeapLimit is the memory limit while the collector is off.
const HeapLimit = 512 << 20

var relaxedGC struct {
	sync.Mutex
	n         int   // callers in a relaxed stretch
	prev      int   // the GOGC to restore when n drops to 0
	prevLimit int64 // the memory limit to restore
}

// Relax turns the collector off, under HeapLimit, until the returned
// function is called (once or more). Safe for concurrent use: the first
// caller relaxes it, the last one restores it. A cycle that is marking
// when the first caller comes finishes first.
func Relax() (restore func()) {
	relaxedGC.Lock()
	if relaxedGC.n == 0 {
		relaxedGC.prevLimit = debug.SetMemoryLimit(-1)
		relaxedGC.prev = debug.SetGCPercent(-1)
		if relaxedGC.prev < 0 {
			// GOGC=off already: the user's memory limit rules.
		} else {
			debug.SetMemoryLimit(min(relaxedGC.prevLimit, HeapLimit))
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

// Percent returns the GOGC that applies outside the relaxed stretches:
// the value the last Relax will restore, or the current one. A caller
// that collects by itself while the collector is relaxed paces itself by
// it; below 0 (GOGC=off) it does not collect.
func Percent() int {
	relaxedGC.Lock()
	defer relaxedGC.Unlock()
	if relaxedGC.n > 0 {
		return relaxedGC.prev
	}
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 100
	}
	return int(int64(s[0].Value.Uint64()))
}
