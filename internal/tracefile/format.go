package tracefile

import (
	"encoding/binary"
	"hash/crc32"
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
	b = append(b, h)
	b = binary.AppendVarint(b, int64(ev.TSC-prev.TSC))
	if h&evHasTID != 0 {
		b = binary.AppendUvarint(b, uint64(ev.TID))
	}
	b = binary.AppendUvarint(b, uint64(ev.Func))
	b = binary.AppendUvarint(b, uint64(ev.Depth))
	if h&evHasCaller != 0 {
		b = binary.AppendUvarint(b, ev.Caller)
	}
	if h&evHasArgs != 0 {
		b = binary.AppendUvarint(b, uint64(len(ev.Args)))
		b = append(b, ev.Args...)
	}
	return b
}

// decodeEvents decodes exactly count events from b and appends them to evs.
// It checks every field; the error says what is wrong (without ErrCorrupt).
func decodeEvents(evs []Event, b []byte, count int) ([]Event, string) {
	var prev Event
	for i := 0; i < count; i++ {
		if len(b) == 0 {
			return evs, "fewer events than its header says"
		}
		h := b[0]
		b = b[1:]
		if h&evReserved != 0 {
			return evs, "event with reserved flag bits set"
		}
		ev := Event{Kind: Kind(h & evKindMask), TID: prev.TID}
		if ev.Kind != KindEntry && ev.Kind != KindExit {
			return evs, "event of unknown kind"
		}
		var d int64
		if len(b) > 0 && b[0] < 0x80 {
			// A one-byte varint (the common case), zigzag decoded.
			d = int64(b[0]>>1) ^ -int64(b[0]&1)
			b = b[1:]
		} else {
			var n int
			if d, n = binary.Varint(b); n <= 0 {
				return evs, "bad timestamp varint"
			}
			b = b[n:]
		}
		ev.TSC = prev.TSC + uint64(d)
		if h&evHasTID != 0 {
			v, n := uvarint(b)
			if n <= 0 || v > 0xffffffff {
				return evs, "bad thread id"
			}
			ev.TID = uint32(v)
			b = b[n:]
		} else if i == 0 {
			return evs, "first event without thread id"
		}
		v, n := uvarint(b)
		if n <= 0 || v > 0xffffffff {
			return evs, "bad function index"
		}
		ev.Func = uint32(v)
		b = b[n:]
		v, n = uvarint(b)
		if n <= 0 || v > 0xffff {
			return evs, "bad depth"
		}
		ev.Depth = uint16(v)
		b = b[n:]
		if h&evHasCaller != 0 {
			v, n := uvarint(b)
			if n <= 0 || v == 0 {
				return evs, "bad caller address"
			}
			ev.Caller = v
			b = b[n:]
		}
		if h&evHasArgs != 0 {
			v, n := uvarint(b)
			if n <= 0 || v == 0 || v > MaxArgs || v > uint64(len(b)-n) {
				return evs, "bad argument values"
			}
			ev.Args = string(b[n : n+int(v)])
			b = b[n+int(v):]
		}
		evs = append(evs, ev)
		prev = ev
	}
	if len(b) != 0 {
		return evs, "trailing bytes after its events"
	}
	return evs, ""
}

// uvarint is binary.Uvarint with a fast path for one byte.
func uvarint(b []byte) (uint64, int) {
	if len(b) > 0 && b[0] < 0x80 {
		return uint64(b[0]), 1
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
