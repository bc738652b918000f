package report

import (
	"fmt"
	"io"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/livetrace/livetrace/internal/tracefile"
)

// Field numbers of Perfetto's trace protos (protos/perfetto/trace/ in the
// Perfetto sources: trace.proto, trace_packet.proto,
// track_event/track_event.proto, track_event/track_descriptor.proto,
// track_event/thread_descriptor.proto, track_event/process_descriptor.proto,
// track_event/debug_annotation.proto, interned_data/interned_data.proto).
const (
	pfTracePacket = 1 // Trace.packet

	pfTimestamp        = 8  // TracePacket.timestamp
	pfSequenceID       = 10 // TracePacket.trusted_packet_sequence_id
	pfTrackEvent       = 11 // TracePacket.track_event
	pfInternedData     = 12 // TracePacket.interned_data
	pfSequenceFlags    = 13 // TracePacket.sequence_flags
	pfTrackDescriptor  = 60 // TracePacket.track_descriptor
	seqIncrementalDone = 1  // SEQ_INCREMENTAL_STATE_CLEARED
	seqNeedsIncState   = 2  // SEQ_NEEDS_INCREMENTAL_STATE

	pfEventType        = 9  // TrackEvent.type
	pfEventNameIID     = 10 // TrackEvent.name_iid
	pfEventTrackUUID   = 11 // TrackEvent.track_uuid
	pfEventAnnotations = 4  // TrackEvent.debug_annotations
	typeSliceBegin     = 1  // TrackEvent.TYPE_SLICE_BEGIN
	typeSliceEnd       = 2  // TrackEvent.TYPE_SLICE_END
	typeInstant        = 3  // TrackEvent.TYPE_INSTANT

	pfAnnotNameIID   = 1  // DebugAnnotation.name_iid
	pfAnnotString    = 6  // DebugAnnotation.string_value
	pfAnnotStringIID = 17 // DebugAnnotation.string_value_iid

	pfTrackUUID    = 1 // TrackDescriptor.uuid
	pfTrackProcess = 3 // TrackDescriptor.process
	pfTrackThread  = 4 // TrackDescriptor.thread
	pfTrackParent  = 5 // TrackDescriptor.parent_uuid
	pfProcPID      = 1 // ProcessDescriptor.pid
	pfProcName     = 6 // ProcessDescriptor.process_name
	pfThreadPID    = 1 // ThreadDescriptor.pid
	pfThreadTID    = 2 // ThreadDescriptor.tid
	pfThreadName   = 5 // ThreadDescriptor.thread_name

	pfInternedEventNames  = 2  // InternedData.event_names
	pfInternedAnnotNames  = 3  // InternedData.debug_annotation_names
	pfInternedAnnotValues = 29 // InternedData.debug_annotation_string_values
	pfInternedIID         = 1  // EventName.iid, DebugAnnotationName.iid, InternedString.iid
	pfInternedName        = 2  // EventName.name, DebugAnnotationName.name
	pfInternedStr         = 2  // InternedString.str

	// maxInternedValues caps the annotation values interned (callers);
	// further ones are written in full.
	maxInternedValues = 1 << 16
	// maxCallerCache caps the caller addresses whose interned name the
	// entry-mode export remembers (many addresses share a name).
	maxCallerCache = 1 << 18

	// perfettoSeq is the trusted_packet_sequence_id of every packet: the
	// file is one sequence.
	perfettoSeq = 1
	// processUUID is the track of the process; thread tracks are
	// threadUUIDBase + tid (small numbers make small varints).
	processUUID    = 1
	threadUUIDBase = 2
)

// perfettoWriter writes TracePackets one by one, appending them to out,
// which goes to w whenever it holds pfFlushAt bytes.
type perfettoWriter struct {
	w   io.Writer
	out []byte
	// full takes buffers to the goroutine that writes them to w; it
	// returns them in free, and closes wdone when full is closed. werr
	// is the first write error (read after wdone).
	full, free chan []byte
	wdone      chan struct{}
	werr       error
	// wb, if not nil, is the writeback of w (the writing goroutine's).
	wb     *writeback
	meta   *tracefile.Meta
	names  map[uint32]string
	pkt    []byte // the packet being built
	hdr    []byte // its field header
	sub    []byte // a nested message being built
	sub2   []byte
	tracks map[uint32]bool
	// pids maps threads to processes (record --follow); procs are the
	// process tracks described, by pid.
	pids  map[uint32]int
	procs map[int]uint64
	// iids maps a function to its interned name id (0: not yet).
	iids    []uint64
	nextIID uint64
	annots  map[string]uint64
	values  map[string]uint64
	// Buffers.
	interned, sub3 []byte
	// The track of the last event.
	lastTID  uint32
	lastUUID uint64
	haveLast bool
	// te are the first bytes of a TrackEvent of each type on track
	// teUUID (plainEvent).
	te     [4][]byte
	teUUID uint64
	teOK   bool
	// ts is the last timestamp of sliceBegin and sliceEnd.
	ts pfNanos
	// extra are more debug annotations for the next event (captured
	// values, args.go); event clears it.
	extra map[string]string
}

// pfFlushAt is how many bytes of packets are written at once.
const pfFlushAt = 1 << 18

func (p *perfettoWriter) flushPacket() {
	p.out = protowire.AppendTag(p.out, pfTracePacket, protowire.BytesType)
	p.out = protowire.AppendVarint(p.out, uint64(len(p.pkt)))
	p.out = append(p.out, p.pkt...)
	p.pkt = p.pkt[:0]
	p.maybeFlush()
}

func (p *perfettoWriter) maybeFlush() {
	if len(p.out) >= pfFlushAt {
		p.flush()
	}
}

// flush hands out to the writing goroutine and takes a free buffer.
// Writing to the file costs about as much CPU as encoding: on another
// core it overlaps with the encoding of the next buffer.
func (p *perfettoWriter) flush() {
	if len(p.out) == 0 {
		return
	}
	if p.full == nil {
		p.full, p.free, p.wdone = make(chan []byte, 1), make(chan []byte, 2), make(chan struct{})
		p.free <- make([]byte, 0, cap(p.out))
		go func() {
			defer close(p.wdone)
			for b := range p.full {
				if p.werr == nil {
					if _, err := p.w.Write(b); err != nil {
						p.werr = fmt.Errorf("write perfetto trace: %w", err)
					} else if p.wb != nil {
						p.wb = p.wb.wrote(len(b))
					}
				}
				p.free <- b[:0]
			}
		}()
	}
	p.full <- p.out
	p.out = <-p.free
}

// finish writes what is left and returns the first write error.
func (p *perfettoWriter) finish() error {
	p.flush()
	if p.full != nil {
		close(p.full)
		<-p.wdone
	}
	return p.werr
}

// appendUvarint is protowire.AppendVarint with the one- and two-byte
// cases inlined (most fields of an event).
func appendUvarint(b []byte, v uint64) []byte {
	if v < 1<<7 {
		return append(b, byte(v))
	}
	if v < 1<<14 {
		return append(b, byte(v)|0x80, byte(v>>7))
	}
	return protowire.AppendVarint(b, v)
}

// appendBytes appends field num holding b.
func appendBytes(b []byte, num protowire.Number, v []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, v)
}

func appendString(b []byte, num protowire.Number, v string) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, v)
}

func appendVarint(b []byte, num protowire.Number, v uint64) []byte {
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, v)
}

// start writes the first packet: it clears the incremental state and
// describes the process track.
func (p *perfettoWriter) start() {
	p.sub = appendVarint(p.sub[:0], pfProcPID, uint64(int64(p.meta.PID)))
	p.sub = appendString(p.sub, pfProcName, Printable(p.meta.Comm))
	p.sub2 = appendVarint(p.sub2[:0], pfTrackUUID, processUUID)
	p.sub2 = appendBytes(p.sub2, pfTrackProcess, p.sub)
	p.pkt = appendVarint(p.pkt[:0], pfSequenceID, perfettoSeq)
	p.pkt = appendVarint(p.pkt, pfSequenceFlags, seqIncrementalDone)
	p.pkt = appendBytes(p.pkt, pfTrackDescriptor, p.sub2)
	p.flushPacket()
}

// processTrack returns the track of process pid: the target's
// (processUUID), or one described now for a followed child, whose uuid is
// above every thread's (threadUUIDBase + 2^32 + pid).
func (p *perfettoWriter) processTrack(pid int) uint64 {
	if pid == p.meta.PID {
		return processUUID
	}
	if uuid, ok := p.procs[pid]; ok {
		return uuid
	}
	uuid := threadUUIDBase + 1<<32 + uint64(uint32(pid))
	p.procs[pid] = uuid
	name := ""
	for _, pr := range p.meta.Processes {
		if pr.PID == pid {
			name = pr.Comm
		}
	}
	p.sub = appendVarint(p.sub[:0], pfProcPID, uint64(int64(pid)))
	p.sub = appendString(p.sub, pfProcName, Printable(name))
	p.sub2 = appendVarint(p.sub2[:0], pfTrackUUID, uuid)
	p.sub2 = appendBytes(p.sub2, pfTrackProcess, p.sub)
	p.pkt = appendVarint(p.pkt[:0], pfSequenceID, perfettoSeq)
	p.pkt = appendBytes(p.pkt, pfTrackDescriptor, p.sub2)
	p.flushPacket()
	return uuid
}

// track returns the track of thread tid, describing it first if needed.
func (p *perfettoWriter) track(tid uint32) uint64 {
	uuid := threadUUIDBase + uint64(tid)
	if p.tracks[tid] {
		return uuid
	}
	p.tracks[tid] = true
	pid := pidOf(p.pids, p.meta, tid)
	parent := p.processTrack(pid)
	p.sub = appendVarint(p.sub[:0], pfThreadPID, uint64(int64(pid)))
	p.sub = appendVarint(p.sub, pfThreadTID, uint64(tid))
	p.sub = appendString(p.sub, pfThreadName, threadName(p.names, p.meta, tid))
	p.sub2 = appendVarint(p.sub2[:0], pfTrackUUID, uuid)
	p.sub2 = appendVarint(p.sub2, pfTrackParent, parent)
	p.sub2 = appendBytes(p.sub2, pfTrackThread, p.sub)
	p.pkt = appendVarint(p.pkt[:0], pfSequenceID, perfettoSeq)
	p.pkt = appendBytes(p.pkt, pfTrackDescriptor, p.sub2)
	p.flushPacket()
	return uuid
}

// event writes one TrackEvent packet. fn is the function (for a name), or
// -1 for a slice end; annot, if not "", is a debug annotation name with
// value val. Names, annotation names and (up to maxInternedValues)
// annotation values are interned: written once, in the packet that first
// uses them, and referred to by id.
func (p *perfettoWriter) event(ns int64, tid uint32, typ uint64, fn int64, annot, val string) {
	uuid := p.trackUUID(tid)
	if annot == "" && len(p.extra) == 0 && (fn < 0 || fn < int64(len(p.iids)) && p.iids[fn] != 0) {
		p.plainEvent(ns, typ, uuid, fn)
		return
	}
	in := p.interned[:0]
	te := append(p.sub2[:0], byte(pfEventType<<3), byte(typ), byte(pfEventTrackUUID<<3))
	te = protowire.AppendVarint(te, uuid)
	if fn >= 0 {
		if fn >= int64(len(p.iids)) {
			p.iids = append(p.iids, make([]uint64, fn+1-int64(len(p.iids)))...)
		}
		iid := p.iids[fn]
		if iid == 0 {
			p.nextIID++
			iid, p.iids[fn] = p.nextIID, p.nextIID
			p.sub = appendVarint(p.sub[:0], pfInternedIID, iid)
			p.sub = appendString(p.sub, pfInternedName, funcName(p.meta, uint32(fn)))
			in = appendBytes(in, pfInternedEventNames, p.sub)
		}
		te = appendVarint(te, pfEventNameIID, iid)
	}
	if annot != "" {
		aiid := p.annots[annot]
		if aiid == 0 {
			aiid = uint64(len(p.annots) + 1)
			p.annots[annot] = aiid
			p.sub = appendVarint(p.sub[:0], pfInternedIID, aiid)
			p.sub = appendString(p.sub, pfInternedName, annot)
			in = appendBytes(in, pfInternedAnnotNames, p.sub)
		}
		p.sub = appendVarint(p.sub[:0], pfAnnotNameIID, aiid)
		viid, ok := p.values[val]
		if !ok && len(p.values) < maxInternedValues {
			viid, ok = uint64(len(p.values)+1), true
			p.values[val] = viid
			p.sub3 = appendVarint(p.sub3[:0], pfInternedIID, viid)
			p.sub3 = appendString(p.sub3, pfInternedStr, val)
			in = appendBytes(in, pfInternedAnnotValues, p.sub3)
		}
		if ok {
			p.sub = appendVarint(p.sub, pfAnnotStringIID, viid)
		} else {
			p.sub = appendString(p.sub, pfAnnotString, val)
		}
		te = appendBytes(te, pfEventAnnotations, p.sub)
	}
	te, in = p.extraAnnotations(te, in)
	n := 1 + protowire.SizeVarint(uint64(ns)) + 4
	if len(in) > 0 {
		n += 1 + protowire.SizeVarint(uint64(len(in))) + len(in)
	}
	n += 1 + protowire.SizeVarint(uint64(len(te))) + len(te)
	b := append(p.pkt[:0], byte(pfTracePacket<<3|2))
	b = protowire.AppendVarint(b, uint64(n))
	b = append(b, byte(pfTimestamp<<3))
	b = protowire.AppendVarint(b, uint64(ns))
	b = append(b, byte(pfSequenceID<<3), perfettoSeq, byte(pfSequenceFlags<<3), seqNeedsIncState)
	if len(in) > 0 {
		b = appendBytes(b, pfInternedData, in)
	}
	b = appendBytes(b, pfTrackEvent, te)
	p.out = append(p.out, b...)
	p.pkt, p.sub2, p.interned = b[:0], te[:0], in[:0]
	p.maybeFlush()
}

// trackUUID is track, remembering the last thread's.
func (p *perfettoWriter) trackUUID(tid uint32) uint64 {
	if p.haveLast && tid == p.lastTID {
		return p.lastUUID
	}
	uuid := p.track(tid)
	p.lastTID, p.lastUUID, p.haveLast = tid, uuid, true
	return uuid
}

// plainEvent is event of a function whose name is interned already (or of
// a slice end, fn < 0), without annotations, written straight into out.
// Its bytes are those event writes. (The exports write most events with
// sliceBegin and sliceEnd, the same bytes.)
func (p *perfettoWriter) plainEvent(ns int64, typ, uuid uint64, fn int64) {
	if uuid != p.teUUID || !p.teOK {
		// The TrackEvent's type and track of each type, for this track.
		for t := range p.te {
			p.te[t] = append(p.te[t][:0], byte(pfEventType<<3), byte(t), byte(pfEventTrackUUID<<3))
			p.te[t] = appendUvarint(p.te[t], uuid)
		}
		p.teUUID, p.teOK = uuid, true
	}
	te := p.te[typ&3]
	var iid uint64
	teLen := len(te)
	if fn >= 0 {
		iid = p.iids[fn]
		teLen += 1 + protowire.SizeVarint(iid)
	}
	// At most 3+10+1+10+2+1+10 bytes: its length is one byte.
	n := 1 + protowire.SizeVarint(uint64(ns)) + 4 + 2 + teLen
	b := append(p.out, byte(pfTracePacket<<3|2))
	b = appendUvarint(b, uint64(n))
	b = append(b, byte(pfTimestamp<<3))
	for v := uint64(ns); ; v >>= 7 {
		if v < 0x80 {
			b = append(b, byte(v))
			break
		}
		b = append(b, byte(v)|0x80)
	}
	b = append(b, byte(pfSequenceID<<3), perfettoSeq, byte(pfSequenceFlags<<3), seqNeedsIncState,
		byte(pfTrackEvent<<3|2), byte(teLen))
	b = append(b, te...)
	if fn >= 0 {
		b = append(b, byte(pfEventNameIID<<3))
		b = appendUvarint(b, iid)
	}
	p.out = b
	if len(b) >= pfFlushAt {
		p.flush()
	}
}

// perfettoOnePass lets graph mode without a duration filter take
// graphSlices (a variable for the tests, which check it against the
// engine's two passes).
var perfettoOnePass = true

// ExportPerfettoStream writes s as a Perfetto protobuf trace (a Trace
// message: a sequence of TracePackets) that ui.perfetto.dev and
// trace_processor open. Each thread is a track (a TrackDescriptor with a
// ThreadDescriptor) below the process track; timestamps are
// CLOCK_MONOTONIC ns (written as the default trace clock). Graph mode
// gives a slice per shown call (TYPE_SLICE_BEGIN at its entry,
// TYPE_SLICE_END at its end), the end of a call without an exit carrying
// a debug annotation "status" of "exit lost" or "unfinished" (which
// trace_processor adds to the slice's args); entry mode gives an
// instant event per entry, with the caller in a debug annotation
// "caller". Function names, annotation names and callers are interned
// (InternedData.event_names, debug_annotation_names,
// debug_annotation_string_values), so that an event costs a few bytes.
// The file is one packet sequence.
//
// Like the other exports it streams, holding no more than the open calls:
// graph mode reads s once, or twice with a duration filter (see the
// package documentation).
func ExportPerfettoStream(w io.Writer, s *tracefile.Stream, f Filter) error {
	rec := &s.Meta
	if err := f.check(rec); err != nil {
		return err
	}
	p := &perfettoWriter{w: w, wb: newWriteback(w), ts: pfNanos{hi: ^uint64(0)}, out: make([]byte, 0, pfFlushAt+1<<12), meta: rec, names: threadNames(rec),
		tracks: map[uint32]bool{}, procs: map[int]uint64{}, pids: rec.ThreadPIDs(), annots: map[string]uint64{}, values: map[string]uint64{}}
	p.start()
	var err error
	if rec.Mode == tracefile.ModeGraph {
		first := int64(0)
		if s.Total > 0 {
			first = s.Clock.Nanos(s.FirstTSC)
		}
		status := func(c *ocall) (string, string) {
			switch c.status {
			case exitLost:
				return "status", "exit lost"
			case unfinished:
				return "status", "unfinished"
			}
			return "", ""
		}
		if f.MinDuration == 0 && perfettoOnePass {
			// Whether a call shows is known at its entry: one pass.
			err = p.graphSlices(s, f)
		} else {
			err = inOrder(s, f, nil, func(it item) {
				c := it.c
				if !c.visible {
					return
				}
				if it.kind == itemEntry {
					p.extra = argsMap(p.meta, c.fn, c.args, false)
					p.event(first+c.start, c.tid, typeSliceBegin, int64(c.fn), "", "")
					return
				}
				annot, val := status(c)
				p.extra = argsMap(p.meta, c.fn, c.ret, true)
				p.event(first+c.end, c.tid, typeSliceEnd, -1, annot, val)
			})
		}
	} else {
		err = p.entryInstants(s, f)
	}
	// Always: it ends the writing goroutine.
	werr := p.finish()
	if err != nil {
		return err
	}
	return werr
}
