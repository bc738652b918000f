package session

import (
	"encoding/binary"
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

// BenchmarkDeliverRawArgs is BenchmarkDeliverRaw for a site that captures
// one argument (record -A f@arg1), as live's latency benchmark traces it:
// each event is three records, and its Args a string of its own, handed
// to OnEvents as live takes it.
func BenchmarkDeliverRawArgs(b *testing.B) {
	w, err := tracefile.NewWriter(io.Discard)
	if err != nil {
		b.Fatal(err)
	}
	var kept []tracefile.Event
	s := &Session{w: w, lost: map[uint32]uint64{}, threads: map[uint32]string{1: "x"}, sel: make([]selected, 10)}
	s.opts.OnEvents = func(evs []tracefile.Event, _ string) { kept = append(kept[:0], evs...) }
	s.sel[1].capture.spec = 1
	n := deliverArgsChunks(b, s)
	if len(kept) != n || kept[0].Args == "" {
		b.Fatalf("%d events with values %q, want %d with values", len(kept), kept[0].Args, n)
	}
}

// BenchmarkOnRawArgs is BenchmarkDeliverRawArgs for a reader that takes
// the records undecoded (OnRaw, live without -o): the poll loop's cost is
// then counting the events and their corrupt records, and the reader's
// copy.
func BenchmarkOnRawArgs(b *testing.B) {
	s := &Session{lost: map[uint32]uint64{}, threads: map[uint32]string{1: "x"}, sel: make([]selected, 10)}
	s.sel[1].capture.spec = 1
	var kept []byte
	events := 0
	s.opts.OnRaw = func(_ uint32, raw []byte, n int, _ string) { kept = append(kept[:0], raw...); events = n }
	n := deliverArgsChunks(b, s)
	if events != n || len(kept) != len(argsChunk()) {
		b.Fatalf("%d events counted, %d bytes handed over; want %d events", events, len(kept), n)
	}
}

// deliverArgsChunks runs s.deliverRaw over an argsChunk b.N times,
// reports the cost an event and returns the chunk's number of events.
func deliverArgsChunks(b *testing.B, s *Session) int {
	raw := argsChunk()
	n := len(raw) / (3 * agent.SizeofRecord)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := s.deliverRaw(1, 0, raw); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/event")
	return n
}

// argsChunk is a chunk of 4,096 records of events that carry one argument:
// three records each.
func argsChunk() []byte {
	raw := make([]byte, 0, 4096*agent.SizeofRecord)
	tsc := uint64(1 << 40)
	for len(raw)+3*agent.SizeofRecord <= cap(raw) {
		tsc += 60
		r := agent.EncodeRecord(agent.Record{TSC: tsc, Kind: agent.KindEntry, Site: 1, CallerDelta: -200, CallerKnown: true})
		raw = append(raw, r[:]...)
		raw = binary.LittleEndian.AppendUint64(raw, 1|8<<32)
		raw = binary.LittleEndian.AppendUint64(raw, uint64(agent.KindData)<<62|8)
		raw = binary.LittleEndian.AppendUint64(raw, tsc)
		raw = binary.LittleEndian.AppendUint64(raw, 0)
	}
	return raw
}
