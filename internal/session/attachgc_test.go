package session

import (
	"runtime/debug"
	"sync"
	"testing"
)

// TestRelaxGC checks that GOGC is raised while any caller holds relaxGC
// and comes back to its value when the last one is done, however the
// calls interleave, and that a higher GOGC is left alone.
func TestRelaxGC(t *testing.T) {
	orig := debug.SetGCPercent(100)
	defer debug.SetGCPercent(orig)
	a := relaxGC()
	b := relaxGC()
	if got := debug.SetGCPercent(attachGCPercent); got != attachGCPercent {
		t.Fatalf("GOGC %d while relaxed, want %d", got, attachGCPercent)
	}
	a()
	a() // idempotent
	if got := debug.SetGCPercent(attachGCPercent); got != attachGCPercent {
		t.Fatalf("GOGC %d with one caller left, want %d", got, attachGCPercent)
	}
	b()
	if got := debug.SetGCPercent(100); got != 100 {
		t.Fatalf("GOGC %d after the last caller, want 100", got)
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 100 {
				relaxGC()()
			}
		}()
	}
	wg.Wait()
	if got := debug.SetGCPercent(1000); got != 100 {
		t.Fatalf("GOGC %d after concurrent callers, want 100", got)
	}
	// GOGC 1000 now: relaxGC must not lower it.
	c := relaxGC()
	if got := debug.SetGCPercent(1000); got != 1000 {
		t.Fatalf("GOGC %d while relaxed from 1000, want 1000", got)
	}
	c()
	if got := debug.SetGCPercent(100); got != 1000 {
		t.Fatalf("GOGC %d after relaxing from 1000, want 1000", got)
	}
}
