package tsc

import (
	"testing"
	"time"
)

func TestSampleAdvances(t *testing.T) {
	a := Sample()
	time.Sleep(20 * time.Millisecond)
	b := Sample()
	if b.TSC <= a.TSC || b.Mono <= a.Mono {
		t.Fatalf("clocks did not advance: %+v %+v", a, b)
	}
	hz := Hz(a, b)
	if hz < 100e6 || hz > 10e9 {
		t.Fatalf("TSC frequency %d Hz is implausible", hz)
	}
}

func BenchmarkRead(b *testing.B) {
	for i := 0; i < b.N; i++ {
		Read()
	}
}
