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

// encodeSpoolFrame appends the compact form of raw, whole 16-byte records,
// to dst. It gives up and returns (dst, false) as soon as the encoding is
// not smaller than raw: the caller then stores raw as is.
func encodeSpoolFrame(dst, raw []byte) ([]byte, bool) {
	if len(raw)%recordSize != 0 {
		return dst, false
	}
	start := len(dst)
	limit := start + len(raw)
	// Room for the whole encoding, so that the loop appends without
	// growing: it stops at limit.
	if cap(dst)-start < len(raw)+maxEncodedRec {
		dst = append(dst[:cap(dst)], make([]byte, len(raw)+maxEncodedRec-(cap(dst)-start))...)
	}
	b := dst[:cap(dst)]
	w := start
	var slots [spoolSlots]uint64
	next := 0
	prev := uint64(0)
	le := binary.LittleEndian
	for r := raw; len(r) >= recordSize; r = r[recordSize:] {
		if w >= limit {
			return dst[:start], false
		}
		tsc, meta := le.Uint64(r[0:8]), le.Uint64(r[8:16])
		d := tsc - prev
		// The usual record first: a known meta, a short delta.
		if d < spoolDeltaMax {
			s := byte(3)
			switch meta {
			case slots[0]:
				s = 0
			case slots[1]:
				s = 1
			case slots[2]:
				s = 2
			}
			if s < 3 && meta>>62 != agent.KindData {
				b[w] = s<<6 | byte(d)
				w++
				prev = tsc
				continue
			}
		}
		if meta>>62 == agent.KindData {
			b[w] = spoolRawRec
			copy(b[w+1:w+1+recordSize], r[:recordSize])
			w += 1 + recordSize
			continue
		}
		prev = tsc
		if d >= spoolFarTSC {
			b[w] = spoolFarRec
			copy(b[w+1:w+1+recordSize], r[:recordSize])
			w += 1 + recordSize
			slots[next] = meta
			next++
			if next == spoolSlots {
				next = 0
			}
			continue
		}
		var s byte
		switch meta {
		case slots[0]:
			s = 0
		case slots[1]:
			s = 1
		case slots[2]:
			s = 2
		default:
			b[w] = spoolNewMeta
			le.PutUint64(b[w+1:], meta)
			w += 9
			slots[next] = meta
			next++
			if next == spoolSlots {
				next = 0
			}
			w = putUvarint(b, w, d)
			continue
		}
		b[w] = s<<6 | spoolDeltaMax
		w = putUvarint(b, w+1, d-spoolDeltaMax)
	}
	if w >= limit {
		return dst[:start], false
	}
	return b[:w], true
}

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

// decodeSpoolFrame appends the n records that enc encodes to dst.
func decodeSpoolFrame(dst, enc []byte, n int) ([]byte, error) {
	start := len(dst)
	if cap(dst)-start < n*recordSize {
		dst = append(dst[:cap(dst)], make([]byte, n*recordSize-(cap(dst)-start))...)
	}
	out := dst[start : start+n*recordSize]
	var slots [spoolSlots]uint64
	next := 0
	prev := uint64(0)
	le := binary.LittleEndian
	r := 0
	for k := 0; k < n; k++ {
		if r >= len(enc) {
			return dst[:start], fmt.Errorf("%w: %d of %d records", errSpoolFrame, k, n)
		}
		h := enc[r]
		r++
		var meta uint64
		switch {
		case h == spoolRawRec:
			if len(enc)-r < recordSize {
				return dst[:start], fmt.Errorf("%w: record %d cut short", errSpoolFrame, k)
			}
			copy(out[k*recordSize:], enc[r:r+recordSize])
			r += recordSize
			continue
		case h == spoolFarRec:
			if len(enc)-r < recordSize {
				return dst[:start], fmt.Errorf("%w: record %d cut short", errSpoolFrame, k)
			}
			prev, meta = le.Uint64(enc[r:]), le.Uint64(enc[r+8:])
			r += recordSize
			slots[next] = meta
			next++
			if next == spoolSlots {
				next = 0
			}
		case h == spoolNewMeta:
			if len(enc)-r < 8 {
				return dst[:start], fmt.Errorf("%w: record %d cut short", errSpoolFrame, k)
			}
			meta = le.Uint64(enc[r:])
			r += 8
			slots[next] = meta
			next++
			if next == spoolSlots {
				next = 0
			}
			d, m := binary.Uvarint(enc[r:])
			if m <= 0 {
				return dst[:start], fmt.Errorf("%w: record %d: bad delta", errSpoolFrame, k)
			}
			r += m
			prev += d
		case h>>6 < spoolSlots:
			meta = slots[h>>6]
			d := uint64(h & 63)
			if d == spoolDeltaMax {
				x, m := binary.Uvarint(enc[r:])
				if m <= 0 {
					return dst[:start], fmt.Errorf("%w: record %d: bad delta", errSpoolFrame, k)
				}
				r += m
				d += x
			}
			prev += d
		default:
			return dst[:start], fmt.Errorf("%w: record %d: header %#x", errSpoolFrame, k, h)
		}
		le.PutUint64(out[k*recordSize:], prev)
		le.PutUint64(out[k*recordSize+8:], meta)
	}
	if r != len(enc) {
		return dst[:start], fmt.Errorf("%w: %d bytes after %d records", errSpoolFrame, len(enc)-r, n)
	}
	return dst[:start+n*recordSize], nil
}
