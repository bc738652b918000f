// Package tsc reads the x86-64 time-stamp counter and pairs it with
// CLOCK_MONOTONIC, so that the rdtsc timestamps the agent writes in the
// target can be turned into nanoseconds.
//
// The TSC is one clock for all processes on the machine: on CPUs with an
// invariant, synchronized TSC (constant_tsc and nonstop_tsc in
// /proc/cpuinfo, which Linux requires before it uses the TSC as its
// clocksource), rdtsc in the tracer and in the target count the same ticks.
package tsc

import (
	"time"

	"golang.org/x/sys/unix"
)

// Read returns the time-stamp counter (rdtsc).
func Read() uint64

// Pair is one simultaneous reading of the TSC and CLOCK_MONOTONIC.
type Pair struct {
	TSC   uint64
	Mono  uint64 // CLOCK_MONOTONIC in nanoseconds
	Error time.Duration
}

// Sample takes several (CLOCK_MONOTONIC, rdtsc, CLOCK_MONOTONIC) readings
// and returns the one with the tightest bracket, the midpoint of the two
// clock readings paired with the counter.
func Sample() Pair {
	best := Pair{Error: time.Hour}
	for i := 0; i < 16; i++ {
		a := mono()
		t := Read()
		b := mono()
		if d := time.Duration(b - a); d < best.Error {
			best = Pair{TSC: t, Mono: a + (b-a)/2, Error: d}
		}
	}
	return best
}

func mono() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Sec)*1e9 + uint64(ts.Nsec)
}

// Hz estimates the TSC frequency from two pairs.
func Hz(a, b Pair) uint64 {
	if b.TSC <= a.TSC || b.Mono <= a.Mono {
		return 0
	}
	return uint64(float64(b.TSC-a.TSC) * 1e9 / float64(b.Mono-a.Mono))
}
