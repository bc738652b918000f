package report

import (
	"slices"

	"github.com/livetrace/livetrace/internal/tracefile"
)

// pfFrame is an open call of graphSlices.
type pfFrame struct {
	fn    uint32
	depth uint16
	shown bool
}

// pfThread is a thread of graphSlices: its open calls and, once its track
// is described, the constant parts of its slice packets.
type pfThread struct {
	tid   uint32
	keep  bool // the thread filter keeps it
	stack []pfFrame
	// begin[:n] is what follows the timestamp in the packet of a slice
	// begin on the thread's track, up to the name: the sequence id and
	// flags, the TrackEvent's tag and length (a placeholder, set per
	// event), type and track. end[:n] is all that follows the timestamp
	// in the packet of a slice end without annotations. n is 0 until the
	// track is described. Arrays, so that a packet copies them in one
	// move.
	begin, end [16]byte
	n          int
}

// describe describes th's track if needed and sets th.begin and th.end to
// the bytes plainEvent writes for it, th.begin for events of type typ
// (typeSliceBegin; typeInstant in entry mode).
func (p *perfettoWriter) describe(th *pfThread, typ byte) {
	uuid := p.track(th.tid)
	b := append(make([]byte, 0, len(th.begin)), byte(pfSequenceID<<3), perfettoSeq, byte(pfSequenceFlags<<3), seqNeedsIncState,
		byte(pfTrackEvent<<3|2), 0, byte(pfEventType<<3), typ, byte(pfEventTrackUUID<<3))
	// uuid < 2^33 (track): 5 bytes at most, 14 in all.
	b = appendUvarint(b, uuid)
	th.n = copy(th.begin[:], b)
	b[5] = byte(len(b) - 6)
	b[7] = typeSliceEnd
	copy(th.end[:], b)
}

// pfNanos is the varint of the last timestamp that putNanosFull encoded:
// the next ones, mostly a few microseconds later, differ only in its first
// two bytes, which sliceBegin and sliceEnd write over a copy of it.
type pfNanos struct {
	hi    uint64   // ns >> 14 (^0 before the first)
	bytes [16]byte // the varint, then zeros
	n     int      // its length, at least 3 (ns >= 2^14)
}

// putNanosFull writes the varint of ns at the start of w (16 bytes or
// more; it may write zeros after the varint), returns its length, and
// remembers it in p.ts if it has 3 bytes or more. sliceBegin and sliceEnd
// call it only when the bytes from the third on differ from p.ts's.
func (p *perfettoWriter) putNanosFull(w []byte, ns int64) int {
	var b [16]byte
	k := 0
	v := uint64(ns)
	for ; v >= 0x80; v >>= 7 {
		b[k] = byte(v) | 0x80
		k++
	}
	b[k] = byte(v)
	k++
	*(*[16]byte)(w) = b
	if k >= 3 {
		p.ts = pfNanos{hi: uint64(ns) >> 14, bytes: b, n: k}
	}
	return k
}

// pfMaxPlain is more than the bytes of the packet of a plain slice begin
// or end: 2 of packet header, 11 of timestamp, 16 of th.begin, 11 of
// name, 2+1+10+2+10 of annotation.
const pfMaxPlain = 80

// plainRoom returns p.out with room for a plain packet after its end.
func (p *perfettoWriter) plainRoom() []byte {
	if cap(p.out)-len(p.out) < pfMaxPlain {
		p.out = slices.Grow(p.out, pfMaxPlain)
	}
	return p.out
}

// sliceBegin writes the packet of a slice begin (or of an instant, after
// describe(th, typeInstant)) of the function whose name is interned as
// iid, on th's described track, with a debug annotation of interned name
// aiid and value viid if aiid is not 0: the bytes of event, without
// its work per event.
func (p *perfettoWriter) sliceBegin(th *pfThread, ns int64, iid, aiid, viid uint64) {
	b := p.plainRoom()
	at := len(b)
	w := b[at : at+pfMaxPlain]
	w[0], w[2] = byte(pfTracePacket<<3|2), byte(pfTimestamp<<3)
	k := 3
	if v := uint64(ns); v>>14 == p.ts.hi {
		// Only the first two bytes differ from p.ts's (which has 3
		// or more, so both have their continuation bit).
		*(*[16]byte)(w[3:19]) = p.ts.bytes
		w[3], w[4] = byte(v)|0x80, byte(v>>7)|0x80
		k += p.ts.n
	} else {
		k += p.putNanosFull(w[3:19], ns)
	}
	te := k + 5 // the TrackEvent's length
	*(*[16]byte)(w[k:]) = th.begin
	k += th.n
	w[k] = byte(pfEventNameIID << 3)
	k++
	for ; iid >= 0x80 && k < pfMaxPlain-1; iid >>= 7 {
		w[k] = byte(iid) | 0x80
		k++
	}
	w[k] = byte(iid)
	k++
	if aiid != 0 {
		// A debug annotation of interned name and value, as event writes it.
		w[k], w[k+2] = byte(pfEventAnnotations<<3|2), byte(pfAnnotNameIID<<3)
		ann := k + 1
		k += 3
		for ; aiid >= 0x80 && k < pfMaxPlain-16; aiid >>= 7 {
			w[k] = byte(aiid) | 0x80
			k++
		}
		w[k], w[k+1], w[k+2] = byte(aiid), byte(pfAnnotStringIID<<3|0x80), byte(pfAnnotStringIID>>4) // a two-byte tag
		k += 3
		for ; viid >= 0x80 && k < pfMaxPlain-1; viid >>= 7 {
			w[k] = byte(viid) | 0x80
			k++
		}
		w[k] = byte(viid)
		k++
		w[ann] = byte(k - ann - 1)
	}
	// Both lengths are below 128 (61 bytes at most): one byte each.
	w[te] = byte(k - te - 1)
	w[1] = byte(k - 2)
	p.out = b[:at+k]
	if at+k >= pfFlushAt {
		p.flush()
	}
}

// sliceEnd writes the packet of a slice end without annotations on th's
// described track.
func (p *perfettoWriter) sliceEnd(th *pfThread, ns int64) {
	b := p.plainRoom()
	at := len(b)
	w := b[at : at+pfMaxPlain]
	w[0], w[2] = byte(pfTracePacket<<3|2), byte(pfTimestamp<<3)
	k := 3
	if v := uint64(ns); v>>14 == p.ts.hi {
		// Only the first two bytes differ from p.ts's (which has 3
		// or more, so both have their continuation bit).
		*(*[16]byte)(w[3:19]) = p.ts.bytes
		w[3], w[4] = byte(v)|0x80, byte(v>>7)|0x80
		k += p.ts.n
	} else {
		k += p.putNanosFull(w[3:19], ns)
	}
	*(*[16]byte)(w[k:]) = th.end
	k += th.n
	w[1] = byte(k - 2)
	p.out = b[:at+k]
	if at+k >= pfFlushAt {
		p.flush()
	}
}

// graphSlices writes the slices of a graph-mode stream without a duration
// filter, in one pass: a call shows if it passes the thread, function and
// depth filters, which its entry tells. It builds the calls as the engine
// does (engine.event: the same exits lost, orphans and unfinished calls,
// closed in the same order), keeping of each open call only what the
// slice's end needs: the engine's bookkeeping for the other readers cost
// more than the export itself.
//
// The events of nearly every call, without captured values, on a
// described track with its name interned, go through sliceBegin and
// sliceEnd; the others through event.
func (p *perfettoWriter) graphSlices(s *tracefile.Stream, f Filter) error {
	conv := s.Clock.Converter()
	threads := map[uint32]*pfThread{}
	var (
		th    *pfThread
		stack []pfFrame // th's, saved in it when another thread comes
		last  int64     // the time of the last event
	)
	// end writes the end of call fr of th, which was not shown if its
	// status ("" for an exit) or its return value make it a plain end.
	end := func(th *pfThread, fr pfFrame, ns int64, status, ret string) {
		if status == "" && ret == "" {
			if th.n == 0 {
				p.describe(th, typeSliceBegin)
			}
			p.sliceEnd(th, ns)
			return
		}
		p.extra = argsMap(p.meta, fr.fn, ret, true)
		if status != "" {
			p.event(ns, th.tid, typeSliceEnd, -1, "status", status)
		} else {
			p.event(ns, th.tid, typeSliceEnd, -1, "", "")
		}
	}
	maxDepth := f.MaxDepth
	if maxDepth == 0 {
		maxDepth = 1 << 16 // no limit: depths are uint16
	}
	allFuncs := f.Funcs == nil
	for {
		b, ok := s.NextBatch()
		if !ok {
			break
		}
		for i := range b {
			ev := &b[i]
			now := conv.Nanos(ev.TSC)
			last = now
			if th == nil || ev.TID != th.tid {
				if th != nil {
					th.stack = stack
				}
				if th = threads[ev.TID]; th == nil {
					th = &pfThread{tid: ev.TID, keep: f.keepTID(ev.TID)}
					threads[ev.TID] = th
				}
				stack = th.stack
			}
			switch ev.Kind {
			case tracefile.KindEntry:
				for len(stack) > 0 && stack[len(stack)-1].depth >= ev.Depth {
					fr := stack[len(stack)-1]
					stack = stack[:len(stack)-1]
					if fr.shown {
						end(th, fr, now, "exit lost", "")
					}
				}
				fr := pfFrame{fn: ev.Func, depth: ev.Depth, shown: th.keep && int(ev.Depth) < maxDepth && (allFuncs || f.keepFunc(ev.Func))}
				stack = append(stack, fr)
				if fr.shown {
					if fn := int(ev.Func); ev.Args == "" && fn < len(p.iids) && p.iids[fn] != 0 {
						if th.n == 0 {
							p.describe(th, typeSliceBegin)
						}
						p.sliceBegin(th, now, p.iids[fn], 0, 0)
					} else {
						p.extra = argsMap(p.meta, ev.Func, ev.Args, false)
						p.event(now, ev.TID, typeSliceBegin, int64(ev.Func), "", "")
					}
				}
			case tracefile.KindExit:
				for len(stack) > 0 && stack[len(stack)-1].depth > ev.Depth {
					fr := stack[len(stack)-1]
					stack = stack[:len(stack)-1]
					if fr.shown {
						end(th, fr, now, "exit lost", "")
					}
				}
				if n := len(stack); n > 0 && stack[n-1].depth == ev.Depth {
					fr := stack[n-1]
					stack = stack[:n-1]
					switch {
					case !fr.shown:
					case fr.fn == ev.Func && ev.Args == "" && th.n != 0:
						p.sliceEnd(th, now)
					case fr.fn != ev.Func:
						// Both the exit of fr and the entry of this
						// exit were lost.
						end(th, fr, now, "exit lost", "")
					default:
						end(th, fr, now, "", ev.Args)
					}
				}
			}
		}
	}
	if th != nil {
		th.stack = stack
	}
	if err := s.Err(); err != nil {
		return err
	}
	// What still runs at the end, thread by thread in the order of their
	// ids.
	tids := make([]uint32, 0, len(threads))
	for tid := range threads {
		tids = append(tids, tid)
	}
	slices.Sort(tids)
	for _, tid := range tids {
		th := threads[tid]
		for n := len(th.stack); n > 0; n-- {
			if fr := th.stack[n-1]; fr.shown {
				end(th, fr, last, "unfinished", "")
			}
		}
	}
	return nil
}
