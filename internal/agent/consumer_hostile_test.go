package agent

import (
	"testing"
)

// TestConsumerForgedTIDs: a target writes chunk headers with tids of
// threads it does not have. With a TID filter, only the chunks of known
// threads are delivered (records and lost counts); the others are counted
// in Counters.Foreign, the filter is asked once per chunk, and every
// chunk goes back to the pool.
func TestConsumerForgedTIDs(t *testing.T) {
	cfg := Config{Chunks: 8, ChunkRecords: 4}
	mem, c := newShared(t, cfg)
	known := map[uint32]bool{100: true, 101: true}
	asked := 0
	c.SetTIDFilter(func(tid uint32) bool { asked++; return known[tid] })
	p := &producer{mem: mem, c: c}
	rec := Record{TSC: 1, Kind: KindEntry}

	delivered := map[uint32]int{}
	lost := map[uint32]uint32{}
	fn := func(tid, l uint32, recs []Record) {
		delivered[tid] += len(recs)
		lost[tid] += l
	}
	const rounds = 1000
	forged := uint32(1 << 20)
	for r := 0; r < rounds; r++ {
		for i := 0; i < int(cfg.Chunks); i++ {
			tid := forged
			forged++
			if i == 0 {
				tid = 100
			}
			p.chunk(i, ChunkFull, tid, 7, rec, rec, rec)
		}
		// An owned chunk of a forged thread, delivered by Drain, and
		// retired.
		if _, err := c.Poll(fn); err != nil {
			t.Fatal(err)
		}
		p.chunk(1, ChunkOwned, forged, 9, rec, rec)
		forged++
		if _, err := c.Drain(fn); err != nil {
			t.Fatal(err)
		}
		if _, err := c.RetireChunk(c.hdr(1), fn); err != nil {
			t.Fatal(err)
		}
	}
	if len(delivered) != 1 || delivered[100] != 3*rounds || lost[100] != 7*rounds {
		t.Errorf("delivered %v (lost %v), want only tid 100's %d records", delivered, lost, 3*rounds)
	}
	wantForeign := uint64(rounds * ((cfg.Chunks-1)*3 + 2))
	if got := c.Counters().Foreign; got != wantForeign {
		t.Errorf("Foreign = %d, want %d", got, wantForeign)
	}
	// Once per chunk delivered or dropped (Drain and RetireChunk do not
	// ask again for a chunk whose records were all dropped).
	if max := rounds * (cfg.Chunks + 1); asked > max {
		t.Errorf("the filter was asked %d times for %d chunks", asked, max)
	}
	for i := uint64(0); i < c.nchunks; i++ {
		if st := *c.u32(c.hdr(i) + ChunkHdrStateOff); st != ChunkFree {
			t.Errorf("chunk %d left in state %d", i, st)
		}
	}
}

// FuzzConsumerTIDFilter is FuzzConsumer with a filter that refuses every
// odd tid: whatever the memory holds, no chunk of a refused tid is
// delivered.
func FuzzConsumerTIDFilter(f *testing.F) {
	cfg := Config{Chunks: 3, ChunkRecords: 4}
	seed := alignedBuf(SharedSize(cfg))
	InitShared(seed, cfg)
	f.Add([]byte{2, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0})
	f.Add([]byte{2, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0})
	f.Fuzz(func(t *testing.T, body []byte) {
		if len(body) > 256 {
			return
		}
		mem := alignedBuf(len(seed))
		copy(mem, seed)
		for off := SharedHdrPage; off < len(mem) && len(body) > 0; off += len(body) * 7 {
			copy(mem[off:], body)
		}
		c, err := NewConsumer(mem)
		if err != nil {
			t.Fatal(err)
		}
		c.SetTIDFilter(func(tid uint32) bool { return tid%2 == 0 })
		fn := func(tid, lost uint32, recs []Record) {
			if tid%2 != 0 {
				t.Fatalf("delivered a chunk of refused tid %d", tid)
			}
		}
		for i := 0; i < 2; i++ {
			c.Poll(fn)
			c.Drain(fn)
		}
		c.RetireChunk(c.chunkOff, fn)
	})
}
