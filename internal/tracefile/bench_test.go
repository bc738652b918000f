package tracefile_test

import (
	"io"
	"testing"

	"github.com/livetrace/livetrace/internal/tracefile"
)

// BenchmarkWriteEvents measures the cost per event of streaming a
// graph-mode-like event stream (two threads, nested calls).
func BenchmarkWriteEvents(b *testing.B) {
	evs := make([]tracefile.Event, 4096)
	tsc := uint64(1 << 40)
	for i := range evs {
		tsc += uint64(20 + i%37)
		k := tracefile.KindEntry
		if i%2 == 1 {
			k = tracefile.KindExit
		}
		evs[i] = tracefile.Event{TSC: tsc, TID: uint32(1000 + i%2), Kind: k, Func: uint32(i % 50), Depth: uint16(i % 6)}
		if k == tracefile.KindEntry {
			evs[i].Caller = 0x555555554000 + uint64(i%300)*16
		}
	}
	w, err := tracefile.NewWriter(io.Discard)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(evs)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := w.WriteEvents(evs); err != nil {
			b.Fatal(err)
		}
	}
}
