package agent

import (
	"encoding/binary"
	"fmt"
	"slices"
	"sync/atomic"
	"unsafe"
)

// Consumer reads records out of the shared memory the agent writes. The
// target is untrusted: the header is validated once by [NewConsumer] and
// never read again for the layout, every count is clamped, and a hostile
// target can at worst make the consumer deliver garbage records.
//
// A Consumer is not safe for concurrent use.
type Consumer struct {
	mem       []byte
	chunkOff  uint64
	chunkSize uint64
	nchunks   uint64
	records   uint64
	consumed  []uint32 // records of each chunk already delivered
	started   []bool   // chunk's lost count already delivered
	recs      []Record
	corrupt   uint64
	order     []chunkRef
	seenOwned []uint64
	rawFn     func(tid uint32, lostBefore uint32, raw []byte) // set during PollRaw/DrainRaw
	accept    func(tid uint32) bool                           // see SetTIDFilter
	deferred  []uint32                                        // poll: owners of chunks left for the next round
	foreign   uint64
	// The publication counter when the last scan began (scanned: there
	// was one): a poll that finds it unchanged, with nothing deferred,
	// has nothing new to look for (see poll).
	lastSeq uint64
	scanned bool
}

type chunkRef struct {
	seq uint64
	idx uint64
}

// Counters are the shared counters of the agent plus the consumer's own.
// The agent's are as untrusted as the rest of its memory.
type Counters struct {
	Seq       uint64 // chunks published so far
	Lost      uint64 // events dropped because no chunk was free
	Overflow  uint64 // graph-mode frames not traced: shadow stack full
	TableFull uint64 // events dropped because the thread table was full
	Reentered uint64 // events dropped: the agent was re-entered by a signal handler
	Threads   uint64 // thread slots claimed
	Traps     uint64 // SIGTRAPs emulated by the backstop handler
	JITCalls  uint64 // graph-mode calls not traced: their return address is in no module (CodeTable)
	Corrupt   uint64 // chunks with an impossible header (consumer side)
	Foreign   uint64 // records dropped: their chunk names a thread the target does not have (consumer side)
}

// NewConsumer validates the header of mem, the tracer's mapping of a shared
// memfd formatted by [InitShared], and returns a Consumer for it. mem must
// stay mapped while the Consumer is used.
func NewConsumer(mem []byte) (*Consumer, error) {
	if len(mem) < SharedHdrPage {
		return nil, fmt.Errorf("open shared memory: %w: %d bytes", ErrBadShared, len(mem))
	}
	if uintptr(unsafe.Pointer(&mem[0]))%8 != 0 {
		return nil, fmt.Errorf("open shared memory: %w: not 8-byte aligned", ErrBadShared)
	}
	le := binary.LittleEndian
	if m := le.Uint32(mem[SharedHdrMagicOff:]); m != Magic {
		return nil, fmt.Errorf("open shared memory: %w: magic %#x", ErrBadShared, m)
	}
	if v := le.Uint32(mem[SharedHdrVersionOff:]); v != Version {
		return nil, fmt.Errorf("open shared memory: %w: version %d, want %d", ErrBadShared, v, Version)
	}
	c := &Consumer{
		mem:       mem,
		chunkOff:  le.Uint64(mem[SharedHdrChunkOffOff:]),
		chunkSize: le.Uint64(mem[SharedHdrChunkSizeOff:]),
		nchunks:   le.Uint64(mem[SharedHdrNchunksOff:]),
		records:   uint64(le.Uint32(mem[SharedHdrChunkRecordsOff:])),
	}
	size := uint64(len(mem))
	switch {
	case c.records == 0 || c.records > maxChunkRecords:
		return nil, fmt.Errorf("open shared memory: %w: %d records per chunk", ErrBadShared, c.records)
	case c.chunkSize%8 != 0 || c.chunkSize < SizeofChunkHdr+c.records*SizeofRecord || c.chunkSize > 1<<32:
		return nil, fmt.Errorf("open shared memory: %w: chunk size %d", ErrBadShared, c.chunkSize)
	case c.nchunks == 0 || c.nchunks > maxChunks:
		return nil, fmt.Errorf("open shared memory: %w: %d chunks", ErrBadShared, c.nchunks)
	case c.chunkOff%8 != 0 || c.chunkOff < SharedHdrPage || c.chunkOff > size ||
		(size-c.chunkOff)/c.chunkSize < c.nchunks:
		return nil, fmt.Errorf("open shared memory: %w: chunk pool at %d does not fit in %d bytes", ErrBadShared, c.chunkOff, size)
	}
	c.consumed = make([]uint32, c.nchunks)
	c.started = make([]bool, c.nchunks)
	return c, nil
}

func (c *Consumer) u32(off uint64) *uint32 { return (*uint32)(unsafe.Pointer(&c.mem[off])) }
func (c *Consumer) u64(off uint64) *uint64 { return (*uint64)(unsafe.Pointer(&c.mem[off])) }

func (c *Consumer) hdr(idx uint64) uint64 { return c.chunkOff + idx*c.chunkSize }

// Poll delivers every published (FULL) chunk, oldest first, and returns
// them to the pool. For each chunk fn gets the owner's tid, the number of
// events that thread dropped just before the chunk, and its records; recs
// is only valid during the call. Poll returns the number of records
// delivered. Its work is bounded by the pool size.
func (c *Consumer) Poll(fn func(tid uint32, lostBefore uint32, recs []Record)) (int, error) {
	return c.poll(fn, false)
}

// Drain is [Consumer.Poll] that also delivers the records written so far to
// OWNED chunks, without freeing them: their remaining records come with a
// later Poll or Drain. Call it when the target is stopped or gone, or to
// flush threads that write slowly. Records of one thread are delivered in
// order across any sequence of Poll and Drain calls.
func (c *Consumer) Drain(fn func(tid uint32, lostBefore uint32, recs []Record)) (int, error) {
	return c.poll(fn, true)
}

func (c *Consumer) poll(fn func(uint32, uint32, []Record), owned bool) (int, error) {
	// Every chunk is published with a number from the shared counter,
	// taken just before its FULL store: an unchanged counter means no
	// chunk was published since the last scan, and an idle target costs
	// one load a poll instead of two passes over the chunk headers. The
	// one miss is a thread preempted between taking its number and its
	// store, after the last scan looked at its chunk: that chunk waits
	// for the next publication or the next drain (owned, at most
	// drainEvery later in internal/session), never lost or reordered.
	seq := atomic.LoadUint64(c.u64(SharedHdrSeqOff))
	if !owned && c.scanned && seq == c.lastSeq && len(c.deferred) == 0 {
		return 0, nil
	}
	c.lastSeq, c.scanned = seq, true
	c.order = c.order[:0]
	c.seenOwned = c.seenOwned[:0]
	c.deferred = c.deferred[:0]
	// A thread's records must come out in order, and a scan is no
	// snapshot: a thread can publish its chunk A behind the scan and then
	// B ahead of it. So a second scan follows: publication numbers (seq)
	// are in publication order, and every chunk of B's thread published
	// before B was FULL before B was, so the second scan finds it. Chunks
	// published up to the newest the first scan found (seq <= limit) go
	// out now, sorted by seq; newer ones wait for the next round, and so
	// does the partial delivery of an OWNED chunk of their thread, which
	// must not overtake them.
	var limit uint64
	for i := uint64(0); i < c.nchunks; i++ {
		h := c.hdr(i)
		if atomic.LoadUint32(c.u32(h+ChunkHdrStateOff)) == ChunkFull {
			seq := atomic.LoadUint64(c.u64(h + ChunkHdrSeqOff))
			c.order = append(c.order, chunkRef{seq: seq, idx: i})
			limit = max(limit, seq)
		}
	}
	first := len(c.order)
	for i := uint64(0); i < c.nchunks; i++ {
		h := c.hdr(i)
		switch atomic.LoadUint32(c.u32(h + ChunkHdrStateOff)) {
		case ChunkFull:
			if slices.ContainsFunc(c.order[:first], func(r chunkRef) bool { return r.idx == i }) {
				continue
			}
			if seq := atomic.LoadUint64(c.u64(h + ChunkHdrSeqOff)); seq <= limit {
				c.order = append(c.order, chunkRef{seq: seq, idx: i})
			} else {
				c.deferred = append(c.deferred, atomic.LoadUint32(c.u32(h+ChunkHdrTidOff)))
			}
		case ChunkOwned:
			if owned && !slices.Contains(c.deferred, atomic.LoadUint32(c.u32(h+ChunkHdrTidOff))) {
				c.seenOwned = append(c.seenOwned, i)
			}
		}
	}
	if len(c.deferred) > 0 {
		k := 0
		for _, i := range c.seenOwned {
			if !slices.Contains(c.deferred, atomic.LoadUint32(c.u32(c.hdr(i)+ChunkHdrTidOff))) {
				c.seenOwned[k] = i
				k++
			}
		}
		c.seenOwned = c.seenOwned[:k]
	}
	slices.SortFunc(c.order, func(a, b chunkRef) int {
		if a.seq != b.seq {
			if a.seq < b.seq {
				return -1
			}
			return 1
		}
		if a.idx < b.idx {
			return -1
		}
		return 1
	})
	n := 0
	for _, r := range c.order {
		n += c.deliver(r.idx, fn)
		c.free(r.idx)
	}
	for _, i := range c.seenOwned {
		n += c.deliver(i, fn)
	}
	return n, nil
}

// deliver hands fn the undelivered records of chunk idx.
func (c *Consumer) deliver(idx uint64, fn func(uint32, uint32, []Record)) int {
	h := c.hdr(idx)
	count := uint64(atomic.LoadUint32(c.u32(h + ChunkHdrCountOff)))
	if count > c.records {
		c.corrupt++
		count = c.records
	}
	from := uint64(c.consumed[idx])
	if from > count {
		from = count
	}
	lost := uint32(0)
	if !c.started[idx] {
		lost = atomic.LoadUint32(c.u32(h + ChunkHdrLostOff))
	}
	if count == from && (c.started[idx] || lost == 0) {
		return 0
	}
	tid := atomic.LoadUint32(c.u32(h + ChunkHdrTidOff))
	if c.accept != nil && !c.accept(tid) {
		c.consumed[idx] = uint32(count)
		c.started[idx] = true
		c.foreign += count - from
		return 0
	}
	base := h + SizeofChunkHdr
	raw := c.mem[base+from*SizeofRecord : base+count*SizeofRecord]
	c.consumed[idx] = uint32(count)
	c.started[idx] = true
	if c.rawFn != nil {
		c.rawFn(tid, lost, raw)
	} else {
		c.recs = c.recs[:0]
		for i := 0; i+SizeofRecord <= len(raw); i += SizeofRecord {
			c.recs = append(c.recs, DecodeRecord(raw[i:]))
		}
		fn(tid, lost, c.recs)
	}
	return int(count - from)
}

// PollRaw is [Consumer.Poll] that hands fn the records undecoded: raw is
// a multiple of SizeofRecord bytes, straight from the shared memory (decode
// each with [DecodeRecord]), and only valid during the call. It saves a
// copy on the tracer's hottest path.
func (c *Consumer) PollRaw(fn func(tid uint32, lostBefore uint32, raw []byte)) (int, error) {
	c.rawFn = fn
	defer func() { c.rawFn = nil }()
	return c.poll(nil, false)
}

// DrainRaw is [Consumer.Drain] with raw records (see [Consumer.PollRaw]).
func (c *Consumer) DrainRaw(fn func(tid uint32, lostBefore uint32, raw []byte)) (int, error) {
	c.rawFn = fn
	defer func() { c.rawFn = nil }()
	return c.poll(nil, true)
}

func (c *Consumer) free(idx uint64) {
	c.consumed[idx] = 0
	c.started[idx] = false
	atomic.StoreUint32(c.u32(c.hdr(idx)+ChunkHdrStateOff), ChunkFree)
}

// RetireChunk delivers the undelivered records of the OWNED chunk at
// offset off (a [ThreadSlot.Chunk] of an exited thread) and returns the
// chunk to the pool. Call it only when the owner can no longer run, after
// or before retiring its thread slot. An offset that is not a chunk of
// the pool is an error.
func (c *Consumer) RetireChunk(off uint64, fn func(tid uint32, lostBefore uint32, recs []Record)) (int, error) {
	if off < c.chunkOff || (off-c.chunkOff)%c.chunkSize != 0 || (off-c.chunkOff)/c.chunkSize >= c.nchunks {
		return 0, fmt.Errorf("retire chunk at %#x: %w: not a chunk of the pool", off, ErrBadShared)
	}
	idx := (off - c.chunkOff) / c.chunkSize
	if atomic.LoadUint32(c.u32(off+ChunkHdrStateOff)) != ChunkOwned {
		return 0, nil // already published (Poll delivers it) or free
	}
	n := c.deliver(idx, fn)
	c.free(idx)
	return n, nil
}

// RetireChunkRaw is [Consumer.RetireChunk] with raw records (see
// [Consumer.PollRaw]).
func (c *Consumer) RetireChunkRaw(off uint64, fn func(tid uint32, lostBefore uint32, raw []byte)) (int, error) {
	c.rawFn = fn
	defer func() { c.rawFn = nil }()
	return c.RetireChunk(off, nil)
}

// SetTIDFilter makes the consumer deliver only the chunks whose owner
// accept returns true for. The owner's tid comes from the target's memory:
// a target can write any tid there, and a tracer that keeps a record per
// thread would grow without bound. The records of a chunk accept refuses
// (and its lost count) are dropped and counted in [Counters.Foreign].
// accept is called during Poll, Drain and RetireChunk, at most once per
// chunk and call. nil accepts every tid.
func (c *Consumer) SetTIDFilter(accept func(tid uint32) bool) { c.accept = accept }

// Counters returns the agent's shared counters and the consumer's own.
func (c *Consumer) Counters() Counters {
	ld := func(off uint64) uint64 { return atomic.LoadUint64(c.u64(off)) }
	return Counters{
		Seq:       ld(SharedHdrSeqOff),
		Lost:      ld(SharedHdrLostOff),
		Overflow:  ld(SharedHdrOverflowOff),
		TableFull: ld(SharedHdrTableFullOff),
		Reentered: ld(SharedHdrReenteredOff),
		Threads:   ld(SharedHdrThreadsOff),
		Traps:     ld(SharedHdrTrapsOff),
		JITCalls:  ld(SharedHdrJitCallsOff),
		Corrupt:   c.corrupt,
		Foreign:   c.foreign,
	}
}
