package gcpause

import (
	"math"
	"runtime/debug"
	"sync"
	"testing"
)

// TestRelaxGC checks that the collector is off, under HeapLimit,
// while any caller holds Relax, and that GOGC and the memory limit come
// back to their values when the last one is done, however the calls
// interleave; and that a lower memory limit of the user's is kept.
func TestRelaxGC(t *testing.T) {
	orig := debug.SetGCPercent(100)
	defer debug.SetGCPercent(orig)
	origLimit := debug.SetMemoryLimit(math.MaxInt64)
	defer debug.SetMemoryLimit(origLimit)
	check := func(what string, gogc int, limit int64) {
		t.Helper()
		g := debug.SetGCPercent(gogc)
		l := debug.SetMemoryLimit(-1)
		if g != gogc || l != limit {
			t.Fatalf("%s: GOGC %d and memory limit %d, want %d and %d", what, g, l, gogc, limit)
		}
	}
	a := Relax()
	b := Relax()
	check("relaxed", -1, HeapLimit)
	a()
	a() // idempotent
	check("one caller left", -1, HeapLimit)
	b()
	check("after the last caller", 100, math.MaxInt64)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 100 {
				Relax()()
			}
		}()
	}
	wg.Wait()
	check("after concurrent callers", 100, math.MaxInt64)
	// A lower limit of the user's is kept, and restored.
	debug.SetMemoryLimit(64 << 20)
	c := Relax()
	check("relaxed under a 64 MiB limit", -1, 64<<20)
	c()
	check("after relaxing under a 64 MiB limit", 100, 64<<20)
}

// TestPercent: the GOGC outside relaxed stretches, inside one too, and
// below 0 when the collector is off for good.
func TestPercent(t *testing.T) {
	orig := debug.SetGCPercent(150)
	defer debug.SetGCPercent(orig)
	if p := Percent(); p != 150 {
		t.Errorf("Percent() = %d, want 150", p)
	}
	restore := Relax()
	if p := Percent(); p != 150 {
		t.Errorf("relaxed: Percent() = %d, want 150 (the value to restore)", p)
	}
	restore()
	debug.SetGCPercent(-1)
	if p := Percent(); p >= 0 {
		t.Errorf("GOGC off: Percent() = %d, want below 0", p)
	}
}
