package tracefile

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"slices"
	"testing"
)

// streamFile writes threads whose events arrive in batches of random
// sizes, interleaved, flushed into many small blocks whose time ranges
// overlap, with equal TSCs across threads and within a thread. It returns
// the file and the events in the order a reader must give them.
func streamFile(t *testing.T, version uint16, seed uint64) ([]byte, []Event) {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 1))
	var buf bytes.Buffer
	w, err := newWriter(&buf, version)
	if err != nil {
		t.Fatal(err)
	}
	meta := Meta{Mode: ModeGraph, PID: 1, Funcs: []Func{{Name: "a", Module: -1}, {Name: "b", Module: -1}, {Name: "c", Module: -1}}}
	if err := w.Checkpoint(meta); err != nil {
		t.Fatal(err)
	}
	const threads = 5
	var pending [threads][]Event
	tsc := [threads]uint64{}
	for th := range pending {
		tsc[th] = 1000
		for i := 0; i < 2000; i++ {
			tsc[th] += uint64(rng.IntN(3)) // 0: equal timestamps
			pending[th] = append(pending[th], Event{TSC: tsc[th], TID: uint32(100 + th), Kind: Kind(1 + rng.IntN(2)), Func: uint32(rng.IntN(3)), Depth: uint16(i % 7)})
		}
	}
	var all []Event
	for {
		live := 0
		for th := range pending {
			if len(pending[th]) == 0 {
				continue
			}
			live++
			n := min(len(pending[th]), 1+rng.IntN(300))
			if err := w.WriteEvents(pending[th][:n]); err != nil {
				t.Fatal(err)
			}
			all = append(all, pending[th][:n]...)
			pending[th] = pending[th][n:]
			if rng.IntN(3) == 0 {
				if err := w.Flush(); err != nil {
					t.Fatal(err)
				}
			}
		}
		if live == 0 {
			break
		}
	}
	if err := w.Close(meta); err != nil {
		t.Fatal(err)
	}
	slices.SortStableFunc(all, CompareEvents)
	return buf.Bytes(), all
}

func drain(t *testing.T, s *Stream) []Event {
	t.Helper()
	var out []Event
	for {
		ev, ok := s.Next()
		if !ok {
			break
		}
		out = append(out, ev)
	}
	if err := s.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestStreamOrder checks that a stream gives the events of Read, in the
// same order, for version 1 and 2 files, in full and in time ranges, and
// after Rewind.
func TestStreamOrder(t *testing.T) {
	for _, version := range []uint16{1, 2} {
		for seed := uint64(1); seed <= 4; seed++ {
			data, want := streamFile(t, version, seed)
			rec, err := ReadFrom(bytes.NewReader(data), int64(len(data)))
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(rec.Events, want) {
				t.Fatalf("v%d: Read order differs from a stable sort", version)
			}
			s, err := NewStream(bytes.NewReader(data), int64(len(data)), StreamOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if s.FirstTSC != want[0].TSC || s.LastTSC != want[len(want)-1].TSC || s.Total != uint64(len(want)) {
				t.Errorf("v%d: first/last/total = %d/%d/%d", version, s.FirstTSC, s.LastTSC, s.Total)
			}
			if got := drain(t, s); !slices.Equal(got, want) {
				t.Fatalf("v%d seed %d: stream gives %d events, differing from Read's %d", version, seed, len(got), len(want))
			}
			s.Rewind()
			if got := drain(t, s); !slices.Equal(got, want) {
				t.Fatalf("v%d: after Rewind the stream differs", version)
			}
			lo, hi := want[len(want)/3].TSC, want[len(want)/2].TSC
			s, err = NewStream(bytes.NewReader(data), int64(len(data)), StreamOptions{MinTSC: lo, MaxTSC: hi})
			if err != nil {
				t.Fatal(err)
			}
			var sub []Event
			for _, ev := range want {
				if ev.TSC >= lo && ev.TSC <= hi {
					sub = append(sub, ev)
				}
			}
			if got := drain(t, s); !slices.Equal(got, sub) {
				t.Fatalf("v%d: range [%d, %d] gives %d events, want %d", version, lo, hi, len(got), len(sub))
			}
		}
	}
}

// countingReader counts the bytes read.
type countingReader struct {
	r *bytes.Reader
	n int64
}

func (c *countingReader) ReadAt(b []byte, off int64) (int, error) {
	n, err := c.r.ReadAt(b, off)
	c.n += int64(n)
	return n, err
}

// TestStreamSeekReadsLittle checks that a narrow time range of a version 2
// recording reads a small part of the file: the index spares the rest.
func TestStreamSeekReadsLittle(t *testing.T) {
	var buf bytes.Buffer
	w, err := NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	meta := Meta{Mode: ModeEntry, Funcs: []Func{{Name: "f", Module: -1}}}
	evs := make([]Event, 1000)
	for blk := 0; blk < 100; blk++ {
		for i := range evs {
			evs[i] = Event{TSC: uint64(blk*1000 + i), TID: 7, Kind: KindEntry}
		}
		if err := w.WriteEvents(evs); err != nil {
			t.Fatal(err)
		}
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(meta); err != nil {
		t.Fatal(err)
	}
	cr := &countingReader{r: bytes.NewReader(buf.Bytes())}
	s, err := NewStream(cr, int64(buf.Len()), StreamOptions{MinTSC: 50_000, MaxTSC: 50_999})
	if err != nil {
		t.Fatal(err)
	}
	got := drain(t, s)
	if len(got) != 1000 || got[0].TSC != 50_000 {
		t.Fatalf("got %d events from %d", len(got), got[0].TSC)
	}
	if cr.n > int64(buf.Len())/10 {
		t.Errorf("read %d of %d bytes for 1%% of the events", cr.n, buf.Len())
	}
}

// TestStreamRecover checks that a stream of a cut recording fails as
// truncated, and with Recover gives the events of RecoverFrom.
func TestStreamRecover(t *testing.T) {
	data, _ := streamFile(t, 2, 9)
	cut := data[:len(data)*2/3]
	s, err := NewStream(bytes.NewReader(cut), int64(len(cut)), StreamOptions{})
	if !errors.Is(err, ErrTruncated) {
		t.Fatalf("cut file: err = %v", err)
	}
	s, err = NewStream(bytes.NewReader(cut), int64(len(cut)), StreamOptions{Recover: true})
	if err != nil {
		t.Fatal(err)
	}
	r2, err := RecoverFrom(bytes.NewReader(cut), int64(len(cut)))
	if err != nil {
		t.Fatal(err)
	}
	if got := drain(t, s); !slices.Equal(got, r2.Events) || !s.Recovered {
		t.Fatalf("recovered stream: %d events, Recover: %d", len(got), len(r2.Events))
	}
}

// TestNanosConverter checks that the converter gives Clock.Nanos's results
// for increasing, repeated, decreasing and huge timestamps, for each kind
// of clock.
func TestNanosConverter(t *testing.T) {
	clocks := []Clock{
		{TSC0: 1 << 40, Mono0: 1e9, TSC1: 1<<40 + 3e10, Mono1: 1e9 + 1e10},
		{TSC0: 1000, Mono0: 5, TSC1: 1000 + 7, Mono1: 5 + 1e12},
		{TSC0: 1000, Mono0: 1, TSCHz: 2_400_000_017},
		{TSC0: 50, Mono0: 1 << 62},
		{TSC0: 3, Mono0: 2, TSC1: 1 << 63, Mono1: 1 << 63},
		// bench/bigrec's; and dens around the limits of the division
		// by multiplication (4, 2^12, 2^51) and powers of two.
		{TSC0: 1 << 40, Mono0: 1e9, TSC1: 1<<40 + 3_400_000_123, Mono1: 1e9 + 1_133_333_374},
		{TSC0: 10, Mono0: 7, TSC1: 13, Mono1: 7 + 1e9},
		{TSC0: 10, Mono0: 7, TSC1: 14, Mono1: 7 + 5},
		{TSC0: 10, Mono0: 7, TSC1: 15, Mono1: 7 + 3},
		{TSC0: 10, Mono0: 7, TSC1: 10 + 4095, Mono1: 7 + 1e6},
		{TSC0: 10, Mono0: 7, TSC1: 10 + 4096, Mono1: 7 + 4097},
		{TSC0: 10, Mono0: 7, TSC1: 10 + 4097, Mono1: 7 + 12345},
		{TSC0: 10, Mono0: 7, TSC1: 10 + 1<<40, Mono1: 7 + 1<<38 + 1},
		{TSC0: 10, Mono0: 7, TSC1: 10 + 1<<51 - 1, Mono1: 7 + 1<<20},
		{TSC0: 10, Mono0: 7, TSC1: 10 + 1<<51, Mono1: 7 + 1<<50 + 3},
		{TSC0: 10, Mono0: 7, TSC1: 10 + 2_999_999_999, Mono1: 7},
		{TSC0: 1000, Mono0: 1, TSCHz: 3},
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for ci, c := range clocks {
		cv := c.Converter()
		tsc := c.TSC0 - 100
		for i := 0; i < 200000; i++ {
			switch rng.IntN(50) {
			case 0:
				tsc -= uint64(rng.IntN(1000))
			case 1:
				tsc = rng.Uint64()
			case 2:
			default:
				tsc += uint64(rng.IntN(200))
			}
			if got, want := cv.Nanos(tsc), c.Nanos(tsc); got != want {
				t.Fatalf("clock %d, tsc %d: converter %d, Clock.Nanos %d", ci, tsc, got, want)
			}
		}
	}
}

// TestStreamRecoverDrops checks that a recovered stream leaves out the
// events whose function the last checkpoint does not know, as Recover.
func TestStreamRecoverDrops(t *testing.T) {
	var buf bytes.Buffer
	w, err := NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	meta := Meta{Mode: ModeEntry, Funcs: []Func{{Name: "a", Module: -1}, {Name: "b", Module: -1}}}
	if err := w.Checkpoint(meta); err != nil {
		t.Fatal(err)
	}
	var evs []Event
	for i := 0; i < 300; i++ {
		evs = append(evs, Event{TSC: uint64(1000 + i), TID: 5, Kind: KindEntry, Func: uint32(i % 3)})
	}
	if err := w.WriteEvents(evs); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	// Cut after the events: the final metadata, which knows c, is lost.
	n := buf.Len()
	meta.Funcs = append(meta.Funcs, Func{Name: "c", Module: -1})
	if err := w.Close(meta); err != nil {
		t.Fatal(err)
	}
	cut := buf.Bytes()[:n+10]
	want, err := RecoverFrom(bytes.NewReader(cut), int64(len(cut)))
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewStream(bytes.NewReader(cut), int64(len(cut)), StreamOptions{Recover: true})
	if err != nil {
		t.Fatal(err)
	}
	got := drain(t, s)
	if !slices.Equal(got, want.Events) || s.Dropped != want.Dropped || s.Dropped != 100 || s.Total != 200 {
		t.Fatalf("stream: %d events, %d dropped, total %d; Recover: %d events, %d dropped", len(got), s.Dropped, s.Total, len(want.Events), want.Dropped)
	}
}
