package tracefile

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"time"
)

// StreamOptions configures [OpenStream] and [NewStream].
type StreamOptions struct {
	// Recover reads what can be read of a recording the writer did not
	// finish, like [Recover].
	Recover bool
	// MinTSC and MaxTSC keep only the events with MinTSC <= TSC <= MaxTSC
	// (MaxTSC 0: no upper bound). Event blocks outside the range are not
	// read at all.
	MinTSC, MaxTSC uint64
}

// Stream reads the events of a recording in the order of
// [Recording.Events] (by TSC, then TID, then file order) one at a time,
// block by block. Its memory is bounded by the blocks that overlap in time
// (about one per thread for a recording of the live tracer), not by the
// number of events.
//
// It merges the event blocks by their first timestamps, which version 2
// recordings keep in a block index (docs/FORMAT.md); for version 1
// recordings and recovered ones a first pass over the file computes them.
//
// Blocks are checked when they are read: a damaged block that the first
// pass did not read stops the stream with an error from [Stream.Err], after
// the events before it.
type Stream struct {
	Meta
	// Recovered and Dropped are as in [Recording].
	Recovered bool
	Dropped   uint64
	// Total is the number of events in the recording (whatever the range).
	Total uint64
	// FirstTSC and LastTSC are the smallest and largest TSC of the
	// recording's events (whatever the range); both 0 without events.
	FirstTSC, LastTSC uint64

	opts StreamOptions
	file *os.File
	r    io.ReaderAt
	// verify: the blocks' min/max TSC come from the index and are checked
	// against their events.
	verify bool

	// index is every event block in file order; blocks are those to read,
	// in the order of their first TSC (then file order).
	index  []indexEntry
	blocks []streamBlock
	next   int
	heap   []*cursor
	free   [][]Event
	bufs   blockBufs
	err    error

	// mem is set for a stream over a Recording in memory.
	mem    []Event
	memPos int
	// batch is what Next gives out; done is a block's events given out
	// last, to reuse at the next call.
	batch []Event
	bi    int
	done  []Event
	pf    *prefetch
}

type streamBlock struct {
	indexEntry
	seq int // position in the file among event blocks
}

// cursor is a decoded event block being merged.
type cursor struct {
	evs []Event
	pos int
	seq int
}

func (c *cursor) less(d *cursor) bool {
	return before(&c.evs[c.pos], c.seq, &d.evs[d.pos], d.seq)
}

// OpenStream opens the recording at path for streaming. Close it when done.
func OpenStream(path string, o StreamOptions) (*Stream, error) {
	f, size, err := openRegular(path)
	if err != nil {
		return nil, err
	}
	s, err := NewStream(f, size, o)
	if err != nil {
		f.Close()
		return nil, err
	}
	s.file = f
	return s, nil
}

// Close closes the file of a stream made by [OpenStream].
func (s *Stream) Close() error {
	s.stopPrefetch()
	if s.file == nil {
		return nil
	}
	err := s.file.Close()
	s.file = nil
	return err
}

// NewStream streams a recording of size bytes from r, which must stay
// readable while the stream is used. It checks the input as [ReadFrom]
// does, blocks as they are read.
func NewStream(r io.ReaderAt, size int64, o StreamOptions) (*Stream, error) {
	version, err := readHeader(r, size)
	if err != nil {
		return nil, err
	}
	s := &Stream{r: r, opts: o}
	fin, err := readEnd(r, size, version)
	switch {
	case err == nil:
		s.Meta, s.Total = *fin.meta, fin.trailer.events
		if fin.index != nil {
			s.verify = true
			s.setBlocks(fin.index)
		} else if err := s.scan(int64(fin.trailer.metaOff), &fin.trailer); err != nil {
			return nil, err
		}
	case o.Recover && (errors.Is(err, ErrTruncated) || errors.Is(err, ErrCorrupt)):
		if err := s.recoverScan(size, err); err != nil {
			return nil, err
		}
	default:
		return nil, err
	}
	return s, nil
}

// setBlocks sets the blocks of the recording (in file order), computes the
// first and last TSC and selects the blocks in the range.
func (s *Stream) setBlocks(index []indexEntry) {
	s.index = index
	for i, e := range index {
		if i == 0 {
			s.FirstTSC, s.LastTSC = e.minTSC, e.maxTSC
		}
		s.FirstTSC, s.LastTSC = min(s.FirstTSC, e.minTSC), max(s.LastTSC, e.maxTSC)
	}
	s.selectBlocks()
}

// selectBlocks picks the blocks that may hold events in the range.
func (s *Stream) selectBlocks() {
	s.blocks = s.blocks[:0]
	for i, e := range s.index {
		if e.maxTSC < s.opts.MinTSC || (s.opts.MaxTSC != 0 && e.minTSC > s.opts.MaxTSC) {
			continue
		}
		s.blocks = append(s.blocks, streamBlock{indexEntry: e, seq: i})
	}
	slices.SortStableFunc(s.blocks, func(a, b streamBlock) int {
		switch {
		case a.minTSC < b.minTSC:
			return -1
		case a.minTSC > b.minTSC:
			return 1
		}
		return 0
	})
}

// scan computes the index of a finished version 1 recording by decoding
// every block once, and checks every event.
func (s *Stream) scan(end int64, t *trailer) error {
	var index []indexEntry
	var evs []Event
	var events uint64
	for off := int64(headerSize); off < end; {
		h, raw, next, err := readBlockBuf(s.r, off, end, &s.bufs)
		if err != nil {
			return err
		}
		if h.typ == blockIndex {
			return corruptf("block index at offset %d in a version 1 recording", off)
		}
		if h.typ == blockEvents {
			var msg string
			if evs, msg = decodeEvents(evs[:0], raw, int(h.count)); msg != "" {
				return corruptf("event block at offset %d: %s", off, msg)
			}
			for i := range evs {
				if int64(evs[i].Func) >= int64(len(s.Funcs)) {
					return corruptf("event %d refers to function %d of %d", events+uint64(i), evs[i].Func, len(s.Funcs))
				}
			}
			events += uint64(len(evs))
			lo, hi := tscRange(evs)
			index = append(index, indexEntry{off: uint64(off), count: h.count, stored: h.stored, minTSC: lo, maxTSC: hi})
		}
		off = next
	}
	if uint32(len(index)) != t.eventBlock || events != t.events {
		return corruptf("%d events in %d blocks, the trailer says %d in %d", events, len(index), t.events, t.eventBlock)
	}
	s.setBlocks(index)
	return nil
}

// recoverScan finds the intact blocks of an unfinished recording, like
// [Recover].
func (s *Stream) recoverScan(size int64, why error) error {
	var (
		meta  *Meta
		index []indexEntry
		evs   []Event
	)
	for off := int64(headerSize); ; {
		h, raw, next, err := readBlockBuf(s.r, off, size, &s.bufs)
		if err != nil {
			break
		}
		if h.typ == blockMeta {
			m, err := decodeMeta(raw, uint64(off))
			if err != nil {
				break
			}
			meta = m
		} else if h.typ == blockEvents {
			var msg string
			if evs, msg = decodeEvents(evs[:0], raw, int(h.count)); msg != "" {
				break
			}
			lo, hi := tscRange(evs)
			index = append(index, indexEntry{off: uint64(off), count: h.count, stored: h.stored, minTSC: lo, maxTSC: hi})
		} else {
			break
		}
		off = next
	}
	if meta == nil {
		return fmt.Errorf("%w: no intact metadata checkpoint to recover from (%v)", ErrTruncated, why)
	}
	s.Meta, s.Recovered = *meta, true
	// Second pass: the events the metadata knows, their count and range.
	first := true
	for _, e := range index {
		_, raw, _, err := readBlockBuf(s.r, int64(e.off), size, &s.bufs)
		if err != nil {
			return err
		}
		evs, _ = decodeEvents(evs[:0], raw, int(e.count))
		for i := range evs {
			ev := &evs[i]
			if int64(ev.Func) >= int64(len(meta.Funcs)) {
				s.Dropped++
				continue
			}
			s.Total++
			if first {
				s.FirstTSC, s.LastTSC, first = ev.TSC, ev.TSC, false
			}
			s.FirstTSC, s.LastTSC = min(s.FirstTSC, ev.TSC), max(s.LastTSC, ev.TSC)
		}
	}
	lo, hi := s.FirstTSC, s.LastTSC
	s.setBlocks(index)
	s.FirstTSC, s.LastTSC = lo, hi
	return nil
}

// Stream returns a stream over the events of r (which must stay unchanged
// while the stream is used).
func (r *Recording) Stream(o StreamOptions) *Stream {
	s := &Stream{Meta: r.Meta, Recovered: r.Recovered, Dropped: r.Dropped, Total: uint64(len(r.Events)), mem: r.Events, opts: o}
	if s.mem == nil {
		s.mem = []Event{}
	}
	if n := len(r.Events); n > 0 {
		s.FirstTSC, s.LastTSC = r.Events[0].TSC, r.Events[n-1].TSC
	}
	return s
}

// SetTimeRange keeps only the events from since to until (exclusive) after
// the first event of the recording (until 0: to the end), and rewinds the
// stream. Blocks outside the range are not read.
func (s *Stream) SetTimeRange(since, until time.Duration) {
	s.stopPrefetch()
	s.opts.MinTSC, s.opts.MaxTSC = 0, 0
	if s.Total > 0 {
		first := s.Clock.Nanos(s.FirstTSC)
		// The smallest TSC at least ns after the first event (Nanos does
		// not decrease with the TSC).
		at := func(ns int64) uint64 {
			lo, hi := s.FirstTSC, s.LastTSC+1
			for lo < hi {
				m := lo + (hi-lo)/2
				if s.Clock.Nanos(m)-first >= ns {
					hi = m
				} else {
					lo = m + 1
				}
			}
			return lo
		}
		if since > 0 {
			s.opts.MinTSC = at(int64(since))
		}
		if until > 0 {
			s.opts.MaxTSC = at(int64(until)) - 1
			if s.opts.MaxTSC < s.FirstTSC || s.opts.MaxTSC == 0 {
				// Nothing: a range no event is in.
				s.opts.MinTSC, s.opts.MaxTSC = 1, 1
				if s.FirstTSC <= 1 {
					s.opts.MinTSC, s.opts.MaxTSC = s.LastTSC+1, s.LastTSC+1
				}
			}
		}
	}
	if s.mem == nil {
		s.selectBlocks()
	}
	s.Rewind()
}

// Rewind starts the stream over from its first event.
func (s *Stream) Rewind() {
	s.stopPrefetch()
	s.memPos, s.next, s.err = 0, 0, nil
	s.batch, s.bi = nil, 0
	if s.done != nil {
		s.free = append(s.free, s.done)
		s.done = nil
	}
	for _, c := range s.heap {
		s.free = append(s.free, c.evs)
	}
	s.heap = s.heap[:0]
}

// Err returns the error that ended the stream, if any.
func (s *Stream) Err() error { return s.err }

func (s *Stream) inRange(tsc uint64) bool {
	return tsc >= s.opts.MinTSC && (s.opts.MaxTSC == 0 || tsc <= s.opts.MaxTSC)
}

// Next returns the next event, or false at the end of the stream or on an
// error (see [Stream.Err]).
func (s *Stream) Next() (Event, bool) {
	if s.bi == len(s.batch) {
		b, ok := s.NextBatch()
		if !ok {
			return Event{}, false
		}
		s.batch, s.bi = b, 0
	}
	s.bi++
	return s.batch[s.bi-1], true
}

// NextBatch returns the next events, at least one, or false at the end of
// the stream or on an error (see [Stream.Err]). The slice is valid until
// the next call of Next, NextBatch or Rewind. Do not mix NextBatch with
// Next.
func (s *Stream) NextBatch() ([]Event, bool) {
	if s.done != nil {
		s.recycle(s.done)
		s.done = nil
	}
	if s.mem != nil {
		for s.memPos < len(s.mem) {
			b := s.mem[s.memPos:min(len(s.mem), s.memPos+4096)]
			s.memPos += len(b)
			if b = s.trim(b); len(b) > 0 {
				return b, true
			}
		}
		return nil, false
	}
	for s.err == nil {
		for s.next < len(s.blocks) && (len(s.heap) == 0 || s.blocks[s.next].minTSC <= s.heap[0].evs[s.heap[0].pos].TSC) {
			if err := s.open(&s.blocks[s.next]); err != nil {
				s.err = err
				return nil, false
			}
			s.next++
		}
		if len(s.heap) == 0 {
			return nil, false
		}
		// The events of the first cursor that come before every other
		// cursor's next event and before the next block to open.
		c := s.heap[0]
		end := len(c.evs)
		if s.next < len(s.blocks) {
			// The first event from c.pos+1 on at or after lim: the
			// block is sorted, so a binary search (a scan cost as much
			// as the rest of the merge).
			lim := s.blocks[s.next].minTSC
			rest := c.evs[c.pos+1:]
			end = c.pos + 1 + sort.Search(len(rest), func(i int) bool { return rest[i].TSC >= lim })
		}
		for k := 1; k <= 2 && k < len(s.heap); k++ {
			d := s.heap[k]
			j := c.pos + 1
			for j < end && before(&c.evs[j], c.seq, &d.evs[d.pos], d.seq) {
				j++
			}
			end = j
		}
		b := c.evs[c.pos:end]
		c.pos = end
		if c.pos == len(c.evs) {
			s.done = c.evs
			n := len(s.heap) - 1
			s.heap[0] = s.heap[n]
			s.heap = s.heap[:n]
		}
		if len(s.heap) > 1 {
			s.down(0)
		}
		if s.opts.MaxTSC != 0 && b[0].TSC > s.opts.MaxTSC {
			// Every event left is later.
			s.stopPrefetch()
			s.heap = s.heap[:0]
			s.next = len(s.blocks)
			return nil, false
		}
		if b = s.trim(b); len(b) > 0 {
			return b, true
		}
	}
	return nil, false
}

// trim drops the events of b (sorted) outside the range.
func (s *Stream) trim(b []Event) []Event {
	for len(b) > 0 && b[0].TSC < s.opts.MinTSC {
		b = b[1:]
	}
	if s.opts.MaxTSC != 0 {
		for len(b) > 0 && b[len(b)-1].TSC > s.opts.MaxTSC {
			b = b[:len(b)-1]
		}
	}
	return b
}

// before says whether event a of block aseq comes before event b of block
// bseq in the stream's order.
func before(a *Event, aseq int, b *Event, bseq int) bool {
	if a.TSC != b.TSC {
		return a.TSC < b.TSC
	}
	if a.TID != b.TID {
		return a.TID < b.TID
	}
	return aseq < bseq
}

// open adds block b, the next of s.blocks, to the merge. A goroutine
// decodes the blocks ahead (a few at most), on another core when there is
// one.
func (s *Stream) open(b *streamBlock) error {
	if s.pf == nil && len(s.blocks)-s.next > 1 {
		s.startPrefetch()
	}
	var (
		evs []Event
		err error
	)
	if s.pf != nil {
		d := <-s.pf.out
		evs, err = d.evs, d.err
	} else {
		if n := len(s.free); n > 0 {
			evs, s.free = s.free[n-1][:0], s.free[:n-1]
		}
		evs, err = s.decodeBlock(b, evs, &s.bufs)
	}
	if err != nil {
		return err
	}
	if len(evs) == 0 {
		s.recycle(evs)
		return nil
	}
	s.heap = append(s.heap, &cursor{evs: evs, seq: b.seq})
	s.up(len(s.heap) - 1)
	return nil
}

// recycle keeps evs for another block.
func (s *Stream) recycle(evs []Event) {
	if s.pf != nil {
		select {
		case s.pf.free <- evs:
			return
		default:
		}
	}
	s.free = append(s.free, evs)
}

// decodeBlock reads, checks, decodes and sorts block b into evs. It only
// reads the Stream's fields that do not change once it is made, so that
// the prefetch goroutine can call it.
func (s *Stream) decodeBlock(b *streamBlock, evs []Event, bufs *blockBufs) ([]Event, error) {
	h, raw, _, err := readBlockBuf(s.r, int64(b.off), int64(b.off)+blockHeaderSize+int64(b.stored), bufs)
	if err != nil {
		return nil, err
	}
	if h.typ != blockEvents || h.count != b.count {
		return nil, corruptf("block index entry %d does not match the block at offset %d", b.seq, b.off)
	}
	evs, info, msg := decodeEventsInfo(evs[:0], raw, int(h.count))
	if msg != "" {
		return nil, corruptf("event block at offset %d: %s", b.off, msg)
	}
	if s.verify {
		if info.lo != b.minTSC || info.hi != b.maxTSC {
			return nil, corruptf("block index entry %d does not match the block at offset %d", b.seq, b.off)
		}
	}
	out := evs
	nf := int64(len(s.Funcs))
	for i := range evs {
		if int64(info.maxFunc) < nf {
			break // every function is known
		}
		if int64(evs[i].Func) >= nf {
			if !s.Recovered {
				return nil, corruptf("event block at offset %d: an event refers to function %d of %d", b.off, evs[i].Func, len(s.Funcs))
			}
			// Drop the events the recovered metadata does not know.
			out = evs[:0]
			for _, ev := range evs {
				if int64(ev.Func) < nf {
					out = append(out, ev)
				}
			}
			break
		}
	}
	// (Dropping events keeps the others in order.)
	if !info.sorted {
		sortEventRuns(out, bufs)
	}
	return out, nil
}

// prefetch is the goroutine that decodes the blocks ahead of the merge.
type prefetch struct {
	out  chan decodedBlock
	free chan []Event
	stop chan struct{}
	done chan struct{}
}

type decodedBlock struct {
	evs []Event
	err error
}

// startPrefetch decodes s.blocks from s.next on, in order, in a goroutine.
func (s *Stream) startPrefetch() {
	p := &prefetch{out: make(chan decodedBlock, 2), free: make(chan []Event, 4), stop: make(chan struct{}), done: make(chan struct{})}
	blocks := s.blocks[s.next:]
	go func() {
		defer close(p.done)
		var bufs blockBufs
		for i := range blocks {
			var evs []Event
			select {
			case evs = <-p.free:
			default:
			}
			evs, err := s.decodeBlock(&blocks[i], evs, &bufs)
			select {
			case p.out <- decodedBlock{evs, err}:
			case <-p.stop:
				return
			}
			if err != nil {
				return
			}
		}
	}()
	s.pf = p
}

// stopPrefetch ends the prefetch goroutine, if any.
func (s *Stream) stopPrefetch() {
	if s.pf != nil {
		close(s.pf.stop)
		<-s.pf.done
		s.pf = nil
	}
}

func (s *Stream) up(i int) {
	h := s.heap
	for i > 0 {
		p := (i - 1) / 2
		if !h[i].less(h[p]) {
			break
		}
		h[i], h[p] = h[p], h[i]
		i = p
	}
}

func (s *Stream) down(i int) {
	h := s.heap
	n := len(h)
	for {
		l := 2*i + 1
		if l >= n {
			return
		}
		m := l
		if r := l + 1; r < n && h[r].less(h[l]) {
			m = r
		}
		if !h[m].less(h[i]) {
			return
		}
		h[i], h[m] = h[m], h[i]
		i = m
	}
}
