package session

import (
	"encoding/binary"
	"io"
	"slices"
	"testing"

	"github.com/livetrace/livetrace/internal/agent"
	"github.com/livetrace/livetrace/internal/tracefile"
)

// decodeChunk is a chunk of thread 1 with events of a plain site, events
// of a site that captures one argument, an exit, and the corrupt records
// a hostile target could write: a site out of range, and a value group
// whose spec is not the site's.
func decodeChunk() []byte {
	var raw []byte
	rec := func(r agent.Record) { b := agent.EncodeRecord(r); raw = append(raw, b[:]...) }
	value := func(spec uint32, v uint64) {
		raw = binary.LittleEndian.AppendUint64(raw, uint64(spec)|8<<32)
		raw = binary.LittleEndian.AppendUint64(raw, uint64(agent.KindData)<<62|8)
		raw = binary.LittleEndian.AppendUint64(raw, v)
		raw = binary.LittleEndian.AppendUint64(raw, 0)
	}
	tsc := uint64(1 << 40)
	for i := 0; i < 50; i++ {
		tsc += 60
		rec(agent.Record{TSC: tsc, Kind: agent.KindEntry, Site: 0, CallerDelta: -200, CallerKnown: true})
		rec(agent.Record{TSC: tsc + 1, Kind: agent.KindEntry, Site: 1})
		value(1, uint64(i))
		rec(agent.Record{TSC: tsc + 2, Kind: agent.KindExit, Site: 0, Depth: 1})
	}
	rec(agent.Record{TSC: tsc + 3, Kind: agent.KindEntry, Site: 9})
	rec(agent.Record{TSC: tsc + 4, Kind: agent.KindEntry, Site: 1})
	value(2, 7)
	return raw
}

// TestDecodeRaw: what OnRaw counts and Decode makes of a chunk are the
// events and the count the recording path gets from it, and its corrupt
// records are counted once.
func TestDecodeRaw(t *testing.T) {
	newSession := func() *Session {
		w, err := tracefile.NewWriter(io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		s := &Session{w: w, lost: map[uint32]uint64{}, threads: map[uint32]string{1: "worker"}, sel: make([]selected, 3)}
		s.sel[1].capture.spec = 1
		return s
	}
	raw := decodeChunk()

	want := newSession()
	var events []tracefile.Event
	want.opts.OnEvents = func(evs []tracefile.Event, _ string) { events = append(events, evs...) }
	want.opts.Discard = true
	if err := want.deliverRaw(1, 0, raw); err != nil {
		t.Fatal(err)
	}
	if len(events) != 150 || want.events.Load() != 150 || want.badRecords.Load() != 2 {
		t.Fatalf("recording path: %d events (counted %d), %d corrupt records; want 150, 2", len(events), want.events.Load(), want.badRecords.Load())
	}

	s := newSession()
	var copies [][]byte
	var counts []int
	s.opts.OnRaw = func(tid uint32, b []byte, n int, thread string) {
		if tid != 1 || thread != "worker" {
			t.Errorf("OnRaw(%d, %q), want thread 1, worker", tid, thread)
		}
		copies, counts = append(copies, slices.Clone(b)), append(counts, n)
	}
	if err := s.deliverRaw(1, 0, raw); err != nil {
		t.Fatal(err)
	}
	if len(copies) != 1 || counts[0] != 150 || s.events.Load() != 150 || s.badRecords.Load() != 2 {
		t.Fatalf("OnRaw: %d calls, counts %v, %d events counted, %d corrupt records; want one call of 150 events, 2 corrupt", len(copies), counts, s.events.Load(), s.badRecords.Load())
	}
	got := s.Decode(1, copies[0], nil)
	if !slices.Equal(got, events) {
		t.Errorf("Decode made %d events, the recording path %d; first %+v and %+v", len(got), len(events), got[0], events[0])
	}
	if s.badRecords.Load() != 2 {
		t.Errorf("%d corrupt records after Decode, want them counted once (2)", s.badRecords.Load())
	}
	if got[1].Args == "" || got[0].Caller == 0 {
		t.Errorf("decoded events lost their values or callers: %+v %+v", got[0], got[1])
	}
}
