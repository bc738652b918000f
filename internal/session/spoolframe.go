package session

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/livetrace/livetrace/internal/agent"
)

// The spool's frame codec. The loop that empties the shared buffer writes
// every chunk it takes into the spool; raw, a chunk is 16 bytes a record,
// and at full speed that is about 1 GB of page cache a second, more than
// this kind of machine allocates for long (see docs/DESIGN-NOTES.md, "A
// consumer that keeps up"). In a hot loop a record differs from one of the
// few records before it only by its timestamp, a little later: the codec
// keeps the last three record metas (kind, depth, site, caller) and writes
// a record as the slot of its meta and its TSC delta, one byte when the
// delta is below 63 ticks. It is lossless for any bytes: what the target
// wrote is only checked by the converter.
//
// A record is one of:
//
//	0b ss dddddd            meta in slot s (0-2); TSC delta d (0-62), or
//	                        63 + a uvarint that follows
//	0xC0 meta(8) uvarint    a new meta, which replaces slot `next` (round
//	                        robin); the TSC delta follows
//	0xC1 tsc(8) meta(8)     a record as is, the state unchanged: a data
//	                        record (captured values, not a TSC and a meta)
//	0xC2 tsc(8) meta(8)     a record as is whose TSC is far from the last
//	                        (the first of a frame, a clock that went back):
//	                        the last TSC, and slot `next` as for 0xC0
//
// Slots start at 0, the last TSC at 0, next at slot 0, in every frame: a
// frame is decoded on its own.
const (
	spoolSlots    = 3
	spoolDeltaMax = 63      // in the header byte: a uvarint follows
	spoolNewMeta  = 0xC0    // a new meta
	spoolRawRec   = 0xC1    // a record as is
	spoolFarRec   = 0xC2    // a record as is, the new last TSC and meta
	spoolFarTSC   = 1 << 35 // TSC deltas from this on are written as is
	recordSize    = agent.SizeofRecord
	maxEncodedRec = 1 + 8 + 10 // the largest encoded record (a new meta, a 10-byte delta)
)

// The codec's state is the last three metas, m0-m2, and the slot the
// next new one takes: three variables, not an array indexed by next, so
// that the compiler keeps them in registers; these two helpers take and
// return them by value, and the compiler inlines them (go test -bench
// SpoolFrame, alternating with the code written out in each loop: no
// slower).

// takeSlot puts a new meta in slot next, round robin.
func takeSlot(m0, m1, m2 uint64, next int, meta uint64) (uint64, uint64, uint64, int) {
	switch next {
	case 0:
		m0 = meta
	case 1:
		m1 = meta
	default:
		m2 = meta
	}
	if next++; next == spoolSlots {
		next = 0
	}
	return m0, m1, m2, next
}

// slotMeta returns the meta in slot i (0-2).
func slotMeta(m0, m1, m2 uint64, i byte) uint64 {
	switch i {
	case 0:
		return m0
	case 1:
		return m1
	}
	return m2
}

// encodeSpoolFrame appends the compact form of raw, whole 16-byte records,
// to dst. It gives up and returns (dst, false) as soon as the encoding is
// not smaller than raw: the caller then stores raw as is.
//
// It runs on the loop that empties the shared buffer, for every record,
// so it is written for the compiler: the slots are three variables, kept
// in registers (an array indexed by next lived on the stack, and the
// loop took 2.6-2.8 ns a record, against 0.2 for a copy); a record of a
// known meta and a short delta is one compare per slot and one store,
// with no check of the kind (a slot never holds a data record's meta) and
// no check of the limit, which only the longer forms test: the buffer
// has room for one more byte a record beyond it.
func encodeSpoolFrame(dst, raw []byte) ([]byte, bool) {
	if len(raw)%recordSize != 0 {
		return dst, false
	}
	start := len(dst)
	limit := start + len(raw)
	// Room for the whole encoding, so that the loop appends without
	// growing: the long forms stop at limit, and from there the short
	// one adds at most a byte a record (spoolFrameRoom).
	if room := spoolFrameRoom(len(raw)); cap(dst)-start < room {
		dst = append(dst[:cap(dst)], make([]byte, room-(cap(dst)-start))...)
	}
	b := dst[:cap(dst)]
	w := start
	var m0, m1, m2 uint64 // the slots
	next := 0
	prev := uint64(0)
	le := binary.LittleEndian
	for i := 0; i+recordSize <= len(raw); i += recordSize {
		rec := raw[i : i+recordSize : i+recordSize]
		tsc, meta := le.Uint64(rec[0:8]), le.Uint64(rec[8:16])
		d := tsc - prev
		// The usual record first: a known meta, a short delta.
		if d < spoolDeltaMax {
			switch meta {
			case m0:
				b[w] = byte(d)
				w++
				prev = tsc
				continue
			case m1:
				b[w] = 1<<6 | byte(d)
				w++
				prev = tsc
				continue
			case m2:
				b[w] = 2<<6 | byte(d)
				w++
				prev = tsc
				continue
			}
		}
		if w >= limit {
			return dst[:start], false
		}
		if meta>>62 == agent.KindData {
			b[w] = spoolRawRec
			copy(b[w+1:w+1+recordSize], rec)
			w += 1 + recordSize
			continue
		}
		prev = tsc
		if d >= spoolFarTSC {
			b[w] = spoolFarRec
			copy(b[w+1:w+1+recordSize], rec)
			w += 1 + recordSize
		} else {
			var s byte
			switch meta {
			case m0:
				s = 0
			case m1:
				s = 1
			case m2:
				s = 2
			default:
				b[w] = spoolNewMeta
				le.PutUint64(b[w+1:], meta)
				w = putUvarint(b, w+9, d)
				s = 3
			}
			if s < spoolSlots {
				b[w] = s<<6 | spoolDeltaMax
				w = putUvarint(b, w+1, d-spoolDeltaMax)
				continue
			}
		}
		// A new meta (0xC0, 0xC2) takes slot next.
		m0, m1, m2, next = takeSlot(m0, m1, m2, next, meta)
	}
	if w >= limit {
		return dst[:start], false
	}
	return b[:w], true
}

// spoolFrameRoom is the room encodeSpoolFrame needs beyond dst's length
// to encode n bytes of records without allocating.
func spoolFrameRoom(n int) int { return n + n/recordSize + maxEncodedRec }

// putUvarint writes v at b[w:] and returns the offset after it.
func putUvarint(b []byte, w int, v uint64) int {
	for v >= 0x80 {
		b[w] = byte(v) | 0x80
		v >>= 7
		w++
	}
	b[w] = byte(v)
	return w + 1
}

var errSpoolFrame = errors.New("corrupt spool frame")

// decodeSpoolFrame appends the n records that enc encodes to dst. Like the
// encoder, it keeps the slots in three variables.
func decodeSpoolFrame(dst, enc []byte, n int) ([]byte, error) {
	start := len(dst)
	if cap(dst)-start < n*recordSize {
		dst = append(dst[:cap(dst)], make([]byte, n*recordSize-(cap(dst)-start))...)
	}
	out := dst[start : start+n*recordSize]
	var m0, m1, m2 uint64 // the slots
	next := 0
	prev := uint64(0)
	le := binary.LittleEndian
	r := 0
	for k := 0; k < n; k++ {
		if r >= len(enc) {
			return dst[:start], fmt.Errorf("%w: %d of %d records", errSpoolFrame, k, n)
		}
		o := out[k*recordSize : k*recordSize+recordSize : k*recordSize+recordSize]
		h := enc[r]
		r++
		var meta uint64
		if d := uint64(h & 63); h < spoolSlots<<6 && d != spoolDeltaMax {
			// The usual record: a slot and a short delta.
			meta = slotMeta(m0, m1, m2, h>>6)
			prev += d
			le.PutUint64(o[0:8], prev)
			le.PutUint64(o[8:16], meta)
			continue
		}
		switch {
		case h == spoolRawRec:
			if len(enc)-r < recordSize {
				return dst[:start], fmt.Errorf("%w: record %d cut short", errSpoolFrame, k)
			}
			copy(o, enc[r:r+recordSize])
			r += recordSize
			continue
		case h == spoolFarRec:
			if len(enc)-r < recordSize {
				return dst[:start], fmt.Errorf("%w: record %d cut short", errSpoolFrame, k)
			}
			prev, meta = le.Uint64(enc[r:]), le.Uint64(enc[r+8:])
			r += recordSize
			m0, m1, m2, next = takeSlot(m0, m1, m2, next, meta)
		case h == spoolNewMeta:
			if len(enc)-r < 8 {
				return dst[:start], fmt.Errorf("%w: record %d cut short", errSpoolFrame, k)
			}
			meta = le.Uint64(enc[r:])
			r += 8
			m0, m1, m2, next = takeSlot(m0, m1, m2, next, meta)
			d, m := binary.Uvarint(enc[r:])
			if m <= 0 {
				return dst[:start], fmt.Errorf("%w: record %d: bad delta", errSpoolFrame, k)
			}
			r += m
			prev += d
		case h>>6 < spoolSlots: // a slot and a long delta
			meta = slotMeta(m0, m1, m2, h>>6)
			x, m := binary.Uvarint(enc[r:])
			if m <= 0 {
				return dst[:start], fmt.Errorf("%w: record %d: bad delta", errSpoolFrame, k)
			}
			r += m
			prev += spoolDeltaMax + x
		default:
			return dst[:start], fmt.Errorf("%w: record %d: header %#x", errSpoolFrame, k, h)
		}
		le.PutUint64(o[0:8], prev)
		le.PutUint64(o[8:16], meta)
	}
	if r != len(enc) {
		return dst[:start], fmt.Errorf("%w: %d bytes after %d records", errSpoolFrame, len(enc)-r, n)
	}
	return dst[:start+n*recordSize], nil
}
