package session

import (
	"bytes"
	"encoding/binary"
	"math/rand"
	"testing"

	"github.com/livetrace/livetrace/internal/agent"
)

// hotLoopRecords returns n records as one thread calling a traced leaf in
// a loop writes them: in graph mode an entry and an exit per call, a few
// dozen ticks apart, with a data record now and then (captured values)
// and a TSC that sometimes jumps (preemption).
func hotLoopRecords(n int, graph bool, rng *rand.Rand) []byte {
	raw := make([]byte, 0, n*agent.SizeofRecord)
	tsc := uint64(1) << 40
	entry := uint64(agent.KindEntry)<<62 | 1<<54 | 7<<32 | 0x1234
	exit := uint64(agent.KindExit)<<62 | 1<<54 | 7<<32
	for len(raw) < n*agent.SizeofRecord {
		tsc += 20 + uint64(rng.Intn(40))
		if rng.Intn(1000) == 0 {
			tsc += uint64(rng.Intn(1 << 20))
		}
		raw = binary.LittleEndian.AppendUint64(raw, tsc)
		raw = binary.LittleEndian.AppendUint64(raw, entry)
		if rng.Intn(500) == 0 && len(raw) < n*agent.SizeofRecord {
			raw = binary.LittleEndian.AppendUint64(raw, rng.Uint64())
			raw = binary.LittleEndian.AppendUint64(raw, uint64(agent.KindData)<<62|rng.Uint64()>>2)
		}
		if graph && len(raw) < n*agent.SizeofRecord {
			tsc += 10 + uint64(rng.Intn(20))
			raw = binary.LittleEndian.AppendUint64(raw, tsc)
			raw = binary.LittleEndian.AppendUint64(raw, exit)
		}
	}
	return raw
}

// TestSpoolFrameRoundTrip encodes frames of hot-loop records, random bytes
// and edge cases, and checks that each decodes to the same bytes, and that
// hot-loop records take at most 2.5 bytes each.
func TestSpoolFrameRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	random := make([]byte, 4096*agent.SizeofRecord)
	rng.Read(random)
	back := make([]byte, 0, 64)
	for _, tsc := range []uint64{100, 50, 1<<64 - 1, 0, 1 << 35, 1<<35 - 1, 1<<35 + 7} {
		back = binary.LittleEndian.AppendUint64(back, tsc)
		back = binary.LittleEndian.AppendUint64(back, tsc*3)
	}
	frames := []struct {
		name    string
		raw     []byte
		maxRate float64 // encoded bytes per record, 0: any
	}{
		{"entry", hotLoopRecords(4096, false, rng), 2.5},
		{"graph", hotLoopRecords(4096, true, rng), 2.5},
		{"one record", hotLoopRecords(1, false, rng), 0},
		{"random", random, 0},
		{"tsc back and far", back, 0},
		{"zeros", make([]byte, 4096*agent.SizeofRecord), 1},
	}
	var enc, dec []byte
	for _, f := range frames {
		var ok bool
		enc, ok = encodeSpoolFrame(enc[:0], f.raw)
		n := len(f.raw) / agent.SizeofRecord
		if !ok {
			if f.maxRate != 0 {
				t.Errorf("%s: not encoded", f.name)
			}
			continue
		}
		if len(enc) >= len(f.raw) {
			t.Errorf("%s: encoded in %d bytes, not fewer than raw %d", f.name, len(enc), len(f.raw))
		}
		rate := float64(len(enc)) / float64(n)
		t.Logf("%s: %d records in %d bytes (%.2f a record)", f.name, n, len(enc), rate)
		if f.maxRate != 0 && rate > f.maxRate {
			t.Errorf("%s: %.2f bytes a record, want at most %.1f", f.name, rate, f.maxRate)
		}
		var err error
		dec, err = decodeSpoolFrame(dec[:0], enc, n)
		if err != nil {
			t.Fatalf("%s: %v", f.name, err)
		}
		if !bytes.Equal(dec, f.raw) {
			t.Fatalf("%s: decoded frame differs from the records put", f.name)
		}
		// Cut short, or with a byte too many: an error, no panic.
		if _, err := decodeSpoolFrame(nil, enc[:len(enc)-1], n); err == nil {
			t.Errorf("%s: a frame cut short decodes without an error", f.name)
		}
		if _, err := decodeSpoolFrame(nil, append(enc, 0), n); err == nil {
			t.Errorf("%s: a frame with a byte too many decodes without an error", f.name)
		}
	}
	// Not a whole number of records: left as is.
	if _, ok := encodeSpoolFrame(nil, make([]byte, 17)); ok {
		t.Error("17 bytes encoded")
	}
}

// TestSpoolFrameRoom: with spoolFrameRoom bytes free, as the spool gives
// it, the encoder allocates nothing, for any mix of records (a frame
// that grew its buffer cost the loop an allocation of the chunk's size
// each time: 48 ns a record where 1.2 was measured alone).
func TestSpoolFrameRoom(t *testing.T) {
	rng := rand.New(rand.NewSource(5))
	random := make([]byte, 4096*agent.SizeofRecord)
	rng.Read(random)
	for name, raw := range map[string][]byte{
		"entry":  hotLoopRecords(4096, false, rng),
		"graph":  hotLoopRecords(4096, true, rng),
		"random": random,
	} {
		dst := make([]byte, 0, spoolFrameRoom(len(raw)))
		if n := testing.AllocsPerRun(10, func() { encodeSpoolFrame(dst, raw) }); n != 0 {
			t.Errorf("%s: %.0f allocations a frame, want 0", name, n)
		}
	}
}

// FuzzSpoolFrameDecode feeds the decoder arbitrary frames: errors, never a
// panic, and what decodes encodes back to a frame that decodes the same.
func FuzzSpoolFrameDecode(f *testing.F) {
	rng := rand.New(rand.NewSource(2))
	enc, _ := encodeSpoolFrame(nil, hotLoopRecords(64, true, rng))
	f.Add(enc, 64)
	f.Add([]byte{0xC1}, 1)
	f.Add([]byte{0x3f, 0xff}, 1)
	f.Fuzz(func(t *testing.T, enc []byte, n int) {
		if n < 0 || n > 1<<12 {
			return
		}
		dec, err := decodeSpoolFrame(nil, enc, n)
		if err != nil {
			return
		}
		enc2, ok := encodeSpoolFrame(nil, dec)
		if !ok {
			return
		}
		dec2, err := decodeSpoolFrame(nil, enc2, n)
		if err != nil || !bytes.Equal(dec, dec2) {
			t.Fatalf("re-encoded frame: %v", err)
		}
	})
}

// FuzzSpoolFrameEncode encodes arbitrary records: a frame is either left
// raw or smaller than raw, and decodes to the very bytes put, whatever
// mix of short and long forms brings the encoding near its limit.
func FuzzSpoolFrameEncode(f *testing.F) {
	rng := rand.New(rand.NewSource(4))
	f.Add(hotLoopRecords(64, true, rng))
	f.Add(hotLoopRecords(64, false, rng))
	f.Add(make([]byte, 64*agent.SizeofRecord))
	f.Fuzz(func(t *testing.T, raw []byte) {
		raw = raw[:len(raw)/agent.SizeofRecord*agent.SizeofRecord]
		enc, ok := encodeSpoolFrame([]byte{0xAA}, raw)
		if !ok {
			if len(enc) != 1 || enc[0] != 0xAA {
				t.Fatalf("a frame left raw changed dst to %x", enc)
			}
			return
		}
		if len(enc)-1 >= len(raw) {
			t.Fatalf("%d records encoded in %d bytes, not fewer than raw", len(raw)/agent.SizeofRecord, len(enc)-1)
		}
		dec, err := decodeSpoolFrame(nil, enc[1:], len(raw)/agent.SizeofRecord)
		if err != nil || !bytes.Equal(dec, raw) {
			t.Fatalf("decoded frame differs from the records put (%v)", err)
		}
	})
}

// BenchmarkSpoolFrame measures encoding a full chunk of hot-loop records on
// the consumer's loop against copying it, and decoding it on the
// converter.
func BenchmarkSpoolFrame(b *testing.B) {
	for _, graph := range []bool{false, true} {
		name := "entry"
		if graph {
			name = "graph"
		}
		raw := hotLoopRecords(agent.DefaultChunkRecords, graph, rand.New(rand.NewSource(3)))
		n := len(raw) / agent.SizeofRecord
		enc, _ := encodeSpoolFrame(nil, raw)
		b.Run("encode/"+name, func(b *testing.B) {
			buf := make([]byte, 0, spoolFrameRoom(len(raw)))
			for i := 0; i < b.N; i++ {
				buf, _ = encodeSpoolFrame(buf[:0], raw)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/record")
			b.ReportMetric(float64(len(buf))/float64(n), "bytes/record")
		})
		b.Run("copy/"+name, func(b *testing.B) {
			buf := make([]byte, len(raw))
			for i := 0; i < b.N; i++ {
				copy(buf, raw)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/record")
		})
		b.Run("decode/"+name, func(b *testing.B) {
			buf := make([]byte, 0, len(raw))
			for i := 0; i < b.N; i++ {
				buf, _ = decodeSpoolFrame(buf[:0], enc, n)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/record")
		})
	}
}
