package tracefile

import (
	"encoding/binary"
	"math/rand/v2"
	"slices"
	"testing"
)

// TestUvarint checks uvarint against binary.Uvarint on the varints of
// every length, non-minimal ones, overlong and truncated ones, with and
// without bytes after them.
func TestUvarint(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var inputs [][]byte
	for bitsN := 0; bitsN <= 64; bitsN++ {
		for k := 0; k < 20; k++ {
			v := rng.Uint64() >> (64 - bitsN)
			if bitsN == 0 {
				v = 0
			}
			b := binary.AppendUvarint(nil, v)
			inputs = append(inputs, b, append(b, 0x80, 0x81, 0x7f, 1, 2, 3, 4, 5, 6, 7), b[:len(b)-1])
		}
	}
	for k := 0; k < 20000; k++ {
		b := make([]byte, rng.IntN(14))
		for i := range b {
			b[i] = byte(rng.Uint32())
			if rng.IntN(3) > 0 {
				b[i] |= 0x80
			}
		}
		inputs = append(inputs, b)
	}
	inputs = append(inputs, []byte{0x80, 0}, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f},
		[]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1}, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2})
	for _, b := range inputs {
		wv, wn := binary.Uvarint(b)
		if v, n := uvarint(b); v != wv || n != wn {
			t.Fatalf("uvarint(% x) = %d, %d; binary.Uvarint gives %d, %d", b, v, n, wv, wn)
		}
		if v, n := uvarintLong(b); v != wv || n != wn {
			t.Fatalf("uvarintLong(% x) = %d, %d; binary.Uvarint gives %d, %d", b, v, n, wv, wn)
		}
	}
}

// TestDecodeEventsInfo checks the events that decodeEventsInfo decodes,
// and the range, order and largest function it finds, on random blocks:
// in order, with equal timestamps, and out of order, with fields of one
// byte and more, callers and values or not.
func TestDecodeEventsInfo(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for round := 0; round < 2000; round++ {
		evs := make([]Event, 1+rng.IntN(40))
		tsc := rng.Uint64() >> rng.IntN(64)
		for i := range evs {
			switch rng.IntN(12) {
			case 0:
				tsc -= uint64(rng.IntN(100)) // out of order, or wrapping
			case 1, 2, 3:
				// The same timestamp.
			default:
				tsc += uint64(rng.IntN(100))
			}
			evs[i] = Event{TSC: tsc, TID: uint32(1 + rng.IntN(3)), Kind: KindEntry + Kind(rng.IntN(2)),
				Func: uint32(rng.IntN(4)) << rng.IntN(30), Depth: uint16(rng.IntN(300))}
			if rng.IntN(2) == 0 {
				evs[i].Caller = rng.Uint64() >> rng.IntN(64)
			}
			if rng.IntN(10) == 0 {
				evs[i].Args = "\x01abc"[:1+rng.IntN(4)]
			}
		}
		if round%2 == 0 {
			slices.SortStableFunc(evs, CompareEvents)
		}
		var raw []byte
		var prev Event
		for i := range evs {
			raw = appendEvent(raw, &prev, &evs[i], i == 0)
			prev = evs[i]
		}
		got, info, msg := decodeEventsInfo(nil, raw, len(evs))
		if msg != "" || !slices.Equal(got, evs) {
			t.Fatalf("round %d: decoded %v (%q), want %v", round, got, msg, evs)
		}
		lo, hi := tscRange(evs)
		maxFunc := slices.MaxFunc(evs, func(a, b Event) int { return int(a.Func) - int(b.Func) }).Func
		if sorted := slices.IsSortedFunc(evs, CompareEvents); info != (eventsInfo{lo: lo, hi: hi, sorted: sorted, maxFunc: maxFunc}) {
			t.Fatalf("round %d: %+v, want lo %d hi %d sorted %v maxFunc %d", round, info, lo, hi, sorted, maxFunc)
		}
	}
}

// TestSortEventRuns checks sortEventRuns against slices.SortStableFunc on
// random blocks: sorted, of a few sorted runs (the chunks of several
// threads), and shuffled, with many equal keys (the stable order shows in
// Func, the position before the sort).
func TestSortEventRuns(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	var bufs blockBufs
	for round := 0; round < 3000; round++ {
		n := rng.IntN(300)
		evs := make([]Event, n)
		runs := 1 + rng.IntN(12)
		tsc := make([]uint64, runs)
		for i := range evs {
			r := i * runs / max(n, 1) // the run of event i
			switch round % 3 {
			case 0: // one run
				r = 0
			case 2: // shuffled
				r = rng.IntN(runs)
			}
			tsc[r] += uint64(rng.IntN(3))
			evs[i] = Event{TSC: tsc[r], TID: uint32(rng.IntN(3)), Func: uint32(i), Args: "x"[:rng.IntN(2)]}
		}
		want := slices.Clone(evs)
		slices.SortStableFunc(want, CompareEvents)
		sortEventRuns(evs, &bufs)
		if !slices.Equal(evs, want) {
			t.Fatalf("round %d: %v, want %v", round, evs, want)
		}
	}
}

// BenchmarkDecodeEvents decodes a block of graph-mode events shaped like
// those of bench/bigrec (a traced leaf called at full speed).
func BenchmarkDecodeEvents(b *testing.B) {
	var raw []byte
	var prev Event
	tsc := uint64(1 << 40)
	for i := 0; i < BlockEvents/2; i++ {
		tsc += 45 + uint64(i%7)
		ev := Event{TSC: tsc, TID: 1000, Kind: KindEntry, Func: 2, Depth: 2, Caller: 0x555555555231}
		raw = appendEvent(raw, &prev, &ev, i == 0)
		prev = ev
		tsc += 15
		ev = Event{TSC: tsc, TID: 1000, Kind: KindExit, Func: 2, Depth: 2}
		raw = appendEvent(raw, &prev, &ev, false)
		prev = ev
	}
	evs := make([]Event, 0, BlockEvents)
	b.SetBytes(BlockEvents) // "MB/s" are millions of events per second
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var msg string
		if evs, msg = decodeEvents(evs[:0], raw, BlockEvents); msg != "" {
			b.Fatal(msg)
		}
	}
}

// BenchmarkNanos converts the increasing timestamps of events a few tens
// of ticks apart, as the readers do.
func BenchmarkNanos(b *testing.B) {
	c := Clock{TSC0: 1 << 40, Mono0: 1e9, TSC1: 1<<40 + 3_400_000_123, Mono1: 1e9 + 1_133_333_374}
	cv := c.Converter()
	tsc := c.TSC0
	var sum int64
	for i := 0; i < b.N; i++ {
		tsc += 15 + uint64(i&63)
		sum += cv.Nanos(tsc)
	}
	if sum == 42 {
		b.Log(sum)
	}
}
