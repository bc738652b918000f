package tracefile

import (
	"encoding/binary"
	"hash/crc32"
	"math"
	"math/bits"
	"slices"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// The byte layout; docs/FORMAT.md describes it field by field.
const (
	magic      = "LVTRACE\x00"
	endMagic   = "LVTREND\x00"
	headerSize = 16
	// blockHeaderSize is the size of the header in front of every block.
	blockHeaderSize = 24
	trailerSize     = 40

	blockEvents = "EVNT"
	blockMeta   = "META"
	// blockIndex (version 2) follows the final metadata block: one
	// indexEntrySize entry per event block, in file order.
	blockIndex     = "INDX"
	indexEntrySize = 32

	codecNone = 0
	codecZstd = 1
	// codecS2 is S2 (a Snappy extension, github.com/klauspost/compress/s2)
	// block format: several times cheaper than zstd's fastest level, which
	// matters for event blocks written while a target produces tens of
	// millions of events per second. The metadata stays zstd.
	codecS2 = 2

	// BlockEvents is the number of events the writer puts in one block.
	BlockEvents = 1 << 16

	// Limits the reader enforces on every block (the writer stays well
	// inside them).
	maxBlockEventCount = 1 << 20
	maxEventBlockRaw   = 16 << 20
	maxMetaRaw         = 512 << 20
	maxIndexRaw        = 512 << 20
	// maxRatio caps raw/stored of a compressed block, so that a small file
	// cannot make the reader allocate a lot. The writer stores a block
	// uncompressed when zstd would exceed it.
	maxRatio = 64

	// Limits on the metadata.
	maxModules = 1 << 16
	maxFuncs   = 1 << 24
	maxSymbols = 1 << 26
	maxThreads = 1 << 22

	// Event encoding: a header byte, then varints.
	evKindMask  = 0x03
	evHasTID    = 0x04
	evHasCaller = 0x08
	evHasArgs   = 0x10
	evReserved  = 0xe0
	// minEventSize and maxEventSize bound the encoded size of one event.
	minEventSize = 4
	maxEventSize = 1 + binary.MaxVarintLen64 + binary.MaxVarintLen32 + binary.MaxVarintLen32 + 3 + binary.MaxVarintLen64 +
		2 + MaxArgs
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// blockHeader is the decoded form of the 24 bytes in front of a block.
type blockHeader struct {
	typ    string // blockEvents or blockMeta
	codec  uint8
	count  uint32 // events in an event block; 0 in a meta block
	raw    uint32 // uncompressed payload length
	stored uint32 // payload bytes in the file
	crc    uint32 // CRC-32C of header bytes 0..19 and the stored payload
}

func (h *blockHeader) put(b []byte) {
	copy(b[0:4], h.typ)
	b[4] = h.codec
	b[5], b[6], b[7] = 0, 0, 0
	binary.LittleEndian.PutUint32(b[8:], h.count)
	binary.LittleEndian.PutUint32(b[12:], h.raw)
	binary.LittleEndian.PutUint32(b[16:], h.stored)
	binary.LittleEndian.PutUint32(b[20:], h.crc)
}

func parseBlockHeader(b []byte) blockHeader {
	return blockHeader{
		typ:    string(b[0:4]),
		codec:  b[4],
		count:  binary.LittleEndian.Uint32(b[8:]),
		raw:    binary.LittleEndian.Uint32(b[12:]),
		stored: binary.LittleEndian.Uint32(b[16:]),
		crc:    binary.LittleEndian.Uint32(b[20:]),
	}
}

// blockCRC computes the checksum of a block: its header without the CRC
// field, then its stored payload.
func blockCRC(hdr []byte, payload []byte) uint32 {
	c := crc32.Update(0, castagnoli, hdr[:20])
	return crc32.Update(c, castagnoli, payload)
}

// trailer is the decoded form of the last 40 bytes of a finished file.
type trailer struct {
	metaOff    uint64
	metaSize   uint64
	events     uint64
	eventBlock uint32
}

func (t *trailer) put(b []byte) {
	binary.LittleEndian.PutUint64(b[0:], t.metaOff)
	binary.LittleEndian.PutUint64(b[8:], t.metaSize)
	binary.LittleEndian.PutUint64(b[16:], t.events)
	binary.LittleEndian.PutUint32(b[24:], t.eventBlock)
	binary.LittleEndian.PutUint32(b[28:], crc32.Checksum(b[:28], castagnoli))
	copy(b[32:], endMagic)
}

// appendEvent encodes ev after prev (the previous event of the same block,
// or the zero Event for the first one).
func appendEvent(b []byte, prev, ev *Event, first bool) []byte {
	h := byte(ev.Kind) & evKindMask
	if first || ev.TID != prev.TID {
		h |= evHasTID
	}
	if ev.Caller != 0 {
		h |= evHasCaller
	}
	if ev.Args != "" {
		h |= evHasArgs
	}
	// The fields are written into room made once, not appended one by
	// one: the tracer encodes every event it records here (tens of
	// millions a second).
	n := len(b)
	if cap(b)-n < maxEventSize {
		b = slices.Grow(b, maxEventSize)
	}
	p := b[n : n+maxEventSize]
	p[0] = h
	i := 1
	d := int64(ev.TSC - prev.TSC)
	i += putUvarint(p[i:], uint64(d<<1)^uint64(d>>63)) // binary.PutVarint's zigzag
	if h&evHasTID != 0 {
		i += putUvarint(p[i:], uint64(ev.TID))
	}
	i += putUvarint(p[i:], uint64(ev.Func))
	i += putUvarint(p[i:], uint64(ev.Depth))
	if h&evHasCaller != 0 {
		i += putUvarint(p[i:], ev.Caller)
	}
	b = b[:n+i]
	if h&evHasArgs != 0 {
		b = binary.AppendUvarint(b, uint64(len(ev.Args)))
		b = append(b, ev.Args...)
	}
	return b
}

// putUvarint is binary.PutUvarint, with the one-byte case inline.
func putUvarint(p []byte, x uint64) int {
	if x < 0x80 {
		p[0] = byte(x)
		return 1
	}
	return binary.PutUvarint(p, x)
}

// decodeEvents decodes exactly count events from b and appends them to evs.
// It checks every field; the error says what is wrong (without ErrCorrupt),
// and evs then ends with the events before the bad one.
//
// It fills the events in place (an event takes at least 4 bytes of b, which
// bounds what it allocates ahead): readers decode every event of a
// recording here, on the critical path of export and report.
func decodeEvents(evs []Event, b []byte, count int) ([]Event, string) {
	evs, _, msg := decodeEventsInfo(evs, b, count)
	return evs, msg
}

// eventsInfo is what decodeEventsInfo learns of the events it decodes, in
// the same pass: the range of their TSCs (lo > hi without events), whether
// they are in the order of [CompareEvents], and their largest function.
type eventsInfo struct {
	lo, hi  uint64
	sorted  bool
	maxFunc uint32 // the largest Func
}

// decodeEventsInfo is decodeEvents, which also returns the eventsInfo of
// the events it decoded.
func decodeEventsInfo(evs []Event, b []byte, count int) ([]Event, eventsInfo, string) {
	evs = slices.Grow(evs, min(count, len(b)/4))
	var (
		tsc uint64
		tid uint32
		// Whether the events so far are out of order.
		unsorted bool
	)
	in := eventsInfo{lo: math.MaxUint64}
	for i := 0; i < count; i++ {
		if len(b) >= 8 && i > 0 {
			// The common event: flags without a thread id or values,
			// a timestamp step of one byte, a function of one or two
			// and a depth of one, read in one load.
			x := binary.LittleEndian.Uint64(b)
			h := byte(x)
			fn, depth, size := uint32(byte(x>>16)), uint16(byte(x>>24)), 4
			if x&0x800000 != 0 {
				fn, depth, size = fn&0x7f|uint32(byte(x>>24))<<7, uint16(byte(x>>32)), 5
			}
			if x&0x8000 == 0 && fn < 1<<14 && depth < 0x80 && h&(evReserved|evHasTID|evHasArgs) == 0 &&
				(h&evKindMask == byte(KindEntry) || h&evKindMask == byte(KindExit)) {
				ptsc := tsc
				tsc += uint64(int64(byte(x>>8)>>1) ^ -int64(byte(x>>8)&1))
				unsorted = unsorted || tsc < ptsc
				in.lo, in.hi = min(in.lo, tsc), max(in.hi, tsc)
				b = b[size:]
				var caller uint64
				if h&evHasCaller != 0 {
					v, n := uvarintLong(b)
					if n <= 0 || v == 0 {
						return evs, in, "bad caller address"
					}
					caller = v
					b = b[n:]
				}
				if len(evs) == cap(evs) {
					evs = slices.Grow(evs, 1)
				}
				evs = evs[:len(evs)+1]
				ev := &evs[len(evs)-1]
				ev.TSC, ev.TID, ev.Kind, ev.Func, ev.Depth, ev.Caller, ev.Args = tsc, tid, Kind(h&evKindMask), fn, depth, caller, ""
				in.maxFunc = max(in.maxFunc, fn)
				continue
			}
		}
		if len(b) == 0 {
			return evs, in, "fewer events than its header says"
		}
		h := b[0]
		b = b[1:]
		if h&evReserved != 0 {
			return evs, in, "event with reserved flag bits set"
		}
		kind := Kind(h & evKindMask)
		if kind != KindEntry && kind != KindExit {
			return evs, in, "event of unknown kind"
		}
		var d int64
		if len(b) > 0 && b[0] < 0x80 {
			// A one-byte varint (the common case), zigzag decoded.
			d = int64(b[0]>>1) ^ -int64(b[0]&1)
			b = b[1:]
		} else {
			u, n := uvarint(b)
			if n <= 0 {
				return evs, in, "bad timestamp varint"
			}
			d = int64(u>>1) ^ -int64(u&1)
			b = b[n:]
		}
		ptsc, ptid := tsc, tid
		tsc += uint64(d)
		if h&evHasTID != 0 {
			v, n := uvarint(b)
			if n <= 0 || v > 0xffffffff {
				return evs, in, "bad thread id"
			}
			tid = uint32(v)
			b = b[n:]
		} else if i == 0 {
			return evs, in, "first event without thread id"
		}
		unsorted = unsorted || i > 0 && (tsc < ptsc || tsc == ptsc && tid < ptid)
		in.lo, in.hi = min(in.lo, tsc), max(in.hi, tsc)
		// The function and the depth: one byte each, mostly (uvarint,
		// by hand: it is too big to inline).
		var fn, depth uint64
		var n int
		if len(b) > 0 && b[0] < 0x80 {
			fn, n = uint64(b[0]), 1
		} else {
			fn, n = uvarintLong(b)
		}
		if n <= 0 || fn > 0xffffffff {
			return evs, in, "bad function index"
		}
		b = b[n:]
		if len(b) > 0 && b[0] < 0x80 {
			depth, n = uint64(b[0]), 1
		} else {
			depth, n = uvarintLong(b)
		}
		if n <= 0 || depth > 0xffff {
			return evs, in, "bad depth"
		}
		b = b[n:]
		var caller uint64
		if h&evHasCaller != 0 {
			v, n := uvarintLong(b) // an address: several bytes
			if n <= 0 || v == 0 {
				return evs, in, "bad caller address"
			}
			caller = v
			b = b[n:]
		}
		var args string
		if h&evHasArgs != 0 {
			v, n := uvarint(b)
			if n <= 0 || v == 0 || v > MaxArgs || v > uint64(len(b)-n) {
				return evs, in, "bad argument values"
			}
			args = string(b[n : n+int(v)])
			b = b[n+int(v):]
		}
		if len(evs) == cap(evs) {
			evs = slices.Grow(evs, 1)
		}
		evs = evs[:len(evs)+1]
		ev := &evs[len(evs)-1]
		ev.TSC, ev.TID, ev.Kind, ev.Func, ev.Depth, ev.Caller, ev.Args = tsc, tid, kind, uint32(fn), uint16(depth), caller, args
		in.maxFunc = max(in.maxFunc, uint32(fn))
	}
	if len(b) != 0 {
		return evs, in, "trailing bytes after its events"
	}
	in.sorted = !unsorted
	return evs, in, ""
}

// sortEventRuns sorts evs stably in the order of [CompareEvents], as
// slices.SortStableFunc does, by merging its sorted runs pairwise, pass
// after pass, with the scratch of bufs. A block of the live tracer holds a
// run per chunk of a thread, so that a block of several threads sorts in a
// few passes (slices.SortStableFunc took 55% of the CPU of a perfetto
// export of 3 threads).
func sortEventRuns(evs []Event, bufs *blockBufs) {
	less := func(a, b *Event) bool { return a.TSC < b.TSC || a.TSC == b.TSC && a.TID < b.TID }
	runs := append(bufs.runs[:0], 0) // where each run starts, then len(evs)
	for i := 1; i < len(evs); i++ {
		if less(&evs[i], &evs[i-1]) {
			runs = append(runs, i)
		}
	}
	runs = append(runs, len(evs))
	bufs.runs = runs
	if len(runs) <= 2 {
		return
	}
	if cap(bufs.sort) < len(evs) {
		bufs.sort = make([]Event, len(evs))
	}
	src, dst := evs, bufs.sort[:len(evs)]
	for len(runs) > 2 {
		// Merge runs j and j+1 into dst; a last odd run is copied.
		k := 1
		for j := 0; j+1 < len(runs); j += 2 {
			lo, mid, hi := runs[j], runs[j+1], runs[j+1]
			if j+2 < len(runs) {
				hi = runs[j+2]
			}
			a, b, out := src[lo:mid], src[mid:hi], dst[lo:lo]
			for len(a) > 0 && len(b) > 0 {
				// Ties take a's first: stable.
				if less(&b[0], &a[0]) {
					out, b = append(out, b[0]), b[1:]
				} else {
					out, a = append(out, a[0]), a[1:]
				}
			}
			out = append(out, a...)
			_ = append(out, b...)
			runs[k] = hi
			k++
		}
		runs = runs[:k]
		src, dst = dst, src
	}
	if &src[0] != &evs[0] {
		copy(evs, src)
	}
	// (The scratch keeps the values of one block alive until the next
	// sort: memory bounded by a block, and no pass to clear it.)
}

// uvarint is binary.Uvarint, inlined for one byte.
func uvarint(b []byte) (uint64, int) {
	if len(b) > 0 && b[0] < 0x80 {
		return uint64(b[0]), 1
	}
	return uvarintLong(b)
}

// uvarintLong is binary.Uvarint, without a loop for up to 8 bytes: one
// load, and the 7-bit groups gathered with shifts.
func uvarintLong(b []byte) (uint64, int) {
	if len(b) >= 8 {
		x := binary.LittleEndian.Uint64(b)
		if last := ^x & 0x8080808080808080; last != 0 {
			// The first byte without the continuation bit ends it.
			n := bits.TrailingZeros64(last)/8 + 1
			x &= (1<<(8*n) - 1) & 0x7f7f7f7f7f7f7f7f // n = 8: a shift of 64 makes it all ones
			// Gather the 7-bit groups pairwise: 14 bits in each 16,
			// 28 in each 32, then 56.
			x = x>>1&0x3f803f803f803f80 | x&0x007f007f007f007f
			x = x>>2&0x0fffc0000fffc000 | x&0x00003fff00003fff
			x = x>>4&0x00fffffff0000000 | x&0x000000000fffffff
			return x, n
		}
	}
	return binary.Uvarint(b)
}

var (
	encOnce sync.Once
	encoder *zstd.Encoder
	encErr  error
	decOnce sync.Once
	decoder *zstd.Decoder
	decErr  error
)

// zstdEncoder returns the shared encoder; EncodeAll is safe for concurrent
// use.
func zstdEncoder() (*zstd.Encoder, error) {
	encOnce.Do(func() {
		encoder, encErr = zstd.NewWriter(nil,
			zstd.WithEncoderConcurrency(1),
			zstd.WithEncoderCRC(false), // the block CRC covers the payload
			zstd.WithEncoderLevel(zstd.SpeedFastest))
	})
	return encoder, encErr
}

// zstdDecoder returns the shared decoder. It decodes at most cap(dst)
// bytes, so the caller bounds every allocation.
func zstdDecoder() (*zstd.Decoder, error) {
	decOnce.Do(func() {
		decoder, decErr = zstd.NewReader(nil,
			zstd.WithDecoderConcurrency(1),
			zstd.WithDecoderLowmem(true),
			zstd.WithDecodeAllCapLimit(true),
			zstd.WithDecoderMaxMemory(maxMetaRaw),
			zstd.WithDecoderMaxWindow(maxMetaRaw))
	})
	return decoder, decErr
}

// indexEntry describes one event block in the index (version 2).
type indexEntry struct {
	off    uint64 // offset of the block header
	count  uint32 // events in the block
	stored uint32 // payload bytes in the file (the block is 24 + stored bytes)
	minTSC uint64 // smallest TSC of the block's events
	maxTSC uint64 // largest TSC of the block's events
}

func (e *indexEntry) put(b []byte) {
	binary.LittleEndian.PutUint64(b[0:], e.off)
	binary.LittleEndian.PutUint32(b[8:], e.count)
	binary.LittleEndian.PutUint32(b[12:], e.stored)
	binary.LittleEndian.PutUint64(b[16:], e.minTSC)
	binary.LittleEndian.PutUint64(b[24:], e.maxTSC)
}

func parseIndexEntry(b []byte) indexEntry {
	return indexEntry{
		off:    binary.LittleEndian.Uint64(b[0:]),
		count:  binary.LittleEndian.Uint32(b[8:]),
		stored: binary.LittleEndian.Uint32(b[12:]),
		minTSC: binary.LittleEndian.Uint64(b[16:]),
		maxTSC: binary.LittleEndian.Uint64(b[24:]),
	}
}
