package session

import (
	"io"
	"testing"

	"github.com/livetrace/livetrace/internal/agent"
	"github.com/livetrace/livetrace/internal/tracefile"
)

// BenchmarkDeliverRaw measures the tracer's cost per event from raw
// shared-memory records to compressed file blocks (the consumer's hot path
// after PollRaw).
func BenchmarkDeliverRaw(b *testing.B) {
	w, err := tracefile.NewWriter(io.Discard)
	if err != nil {
		b.Fatal(err)
	}
	s := &Session{w: w, lost: map[uint32]uint64{}, threads: map[uint32]string{1: "x"}, sel: make([]selected, 10)}
	raw := make([]byte, 0, 4096*agent.SizeofRecord)
	tsc := uint64(1 << 40)
	for i := 0; i < 4096; i++ {
		tsc += 60
		r := agent.EncodeRecord(agent.Record{TSC: tsc, Kind: agent.KindEntry, Site: uint32(i % 3), CallerDelta: -200, CallerKnown: true})
		raw = append(raw, r[:]...)
	}
	b.SetBytes(int64(len(raw)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := s.deliverRaw(1, 0, raw); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*4096), "ns/event")
}
