package tracefile

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/klauspost/compress/s2"

	"github.com/livetrace/livetrace/internal/safefile"
)

// ErrClosed is returned by a [Writer] used after Close or after it failed.
var ErrClosed = errors.New("recording writer is closed")

// Writer streams a recording. Events go out in compressed blocks of
// [BlockEvents] events as they arrive, so memory stays bounded however long
// the recording runs; the metadata goes last, with [Writer.Close].
//
// A Writer is safe for concurrent use. After any write error it returns
// that error from every later call: the recording then lacks its trailer
// and reads as truncated, and ReadOptions.Recover can still read its
// complete blocks and the last [Writer.Checkpoint].
type Writer struct {
	mu     sync.Mutex
	w      io.Writer
	bw     *bufio.Writer // non-nil when the Writer owns a file (Create)
	file   *safefile.File
	off    uint64
	buf    []byte // encoded events of the current block
	n      int    // events in buf
	prev   Event
	blocks uint32
	events uint64
	// maxFunc is 1 + the largest Event.Func written, to check the metadata.
	maxFunc uint64
	scratch []byte
	err     error
	// index describes the event blocks written so far (version 2);
	// minTSC and maxTSC are those of the pending block.
	index          []indexEntry
	minTSC, maxTSC uint64
	// version is the format version written (Version; tests write 1).
	version uint16
}

// NewWriter starts a recording on w and writes the file header at once.
// Close does not close w.
func NewWriter(w io.Writer) (*Writer, error) {
	return newWriter(w, Version)
}

func newWriter(w io.Writer, version uint16) (*Writer, error) {
	wr := &Writer{w: w, version: version}
	var hdr [headerSize]byte
	copy(hdr[:], magic)
	binary.LittleEndian.PutUint16(hdr[8:], version)
	binary.LittleEndian.PutUint16(hdr[10:], headerSize)
	if err := wr.write(hdr[:]); err != nil {
		return nil, fmt.Errorf("write recording header: %w", err)
	}
	return wr, nil
}

// Create starts a recording that Close puts at path, replacing a regular
// file there. It fails if path is a symbolic link or another kind of
// file. The recording is written to a new file of mode 0600 next to path
// and renamed to path by Close (see package safefile for why), so a file
// already at path stays as it was until then.
//
// Close renames the file even when it fails, so that what was recorded
// lands at path and ReadOptions.Recover can read it. If the tracer is
// killed before Close, the recording so far is in the temporary file,
// named path + ".tmp-" + 16 hex digits (see [Writer.TempName]).
func Create(path string) (*Writer, error) {
	f, err := safefile.Create(path)
	if err != nil {
		return nil, err // "create PATH: ..."
	}
	bw := bufio.NewWriterSize(f, 1<<20)
	w, err := NewWriter(bw)
	if err != nil {
		f.Abort()
		return nil, err
	}
	w.bw, w.file = bw, f
	return w, nil
}

// TempName returns the name the recording has until Close renames it, or
// "" for a Writer not made by [Create].
func (w *Writer) TempName() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.file == nil {
		return ""
	}
	return w.file.Name()
}

func (w *Writer) write(b []byte) error {
	if w.err != nil {
		return w.err
	}
	n, err := w.w.Write(b)
	w.off += uint64(n)
	if err == nil && n != len(b) {
		err = io.ErrShortWrite
	}
	if err != nil {
		w.err = err
	}
	return err
}

// WriteEvents adds events to the recording. Each call must hold the events
// of one stretch of time in the order they happened for each thread (calls
// may interleave threads arbitrarily; the reader sorts by TSC, keeping the
// order of equal timestamps). Kind must be KindEntry or KindExit.
func (w *Writer) WriteEvents(evs []Event) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return w.err
	}
	for i := range evs {
		ev := &evs[i]
		if ev.Kind != KindEntry && ev.Kind != KindExit {
			return fmt.Errorf("write events: event %d has unknown kind %d", i, ev.Kind)
		}
		if w.n == 0 {
			w.minTSC, w.maxTSC = ev.TSC, ev.TSC
		} else {
			w.minTSC, w.maxTSC = min(w.minTSC, ev.TSC), max(w.maxTSC, ev.TSC)
		}
		if len(ev.Args) > MaxArgs {
			return fmt.Errorf("write events: event %d has %d bytes of arguments, at most %d", i, len(ev.Args), MaxArgs)
		}
		w.buf = appendEvent(w.buf, &w.prev, ev, w.n == 0)
		// appendEvent reads only these of the previous event.
		w.prev.TSC, w.prev.TID = ev.TSC, ev.TID
		w.n++
		if uint64(ev.Func) >= w.maxFunc {
			w.maxFunc = uint64(ev.Func) + 1
		}
		if w.n == BlockEvents || len(w.buf) > maxEventBlockRaw-maxEventSize {
			if err := w.flushBlock(); err != nil {
				return err
			}
		}
	}
	return nil
}

// flushBlock writes the pending events as one block.
func (w *Writer) flushBlock() error {
	if w.n == 0 {
		return nil
	}
	off := w.off
	if err := w.writeBlock(blockEvents, uint32(w.n), w.buf); err != nil {
		return fmt.Errorf("write event block: %w", err)
	}
	w.index = append(w.index, indexEntry{off: off, count: uint32(w.n), stored: uint32(w.off - off - blockHeaderSize), minTSC: w.minTSC, maxTSC: w.maxTSC})
	w.blocks++
	w.events += uint64(w.n)
	w.buf, w.n, w.prev = w.buf[:0], 0, Event{}
	return nil
}

// writeBlock compresses raw and writes it with its block header.
func (w *Writer) writeBlock(typ string, count uint32, raw []byte) error {
	if w.err != nil {
		return w.err
	}
	h := blockHeader{typ: typ, codec: codecZstd, count: count, raw: uint32(len(raw))}
	if len(raw) == 0 {
		h.codec = codecNone
	} else if typ == blockEvents {
		h.codec = codecS2
		if n := s2.MaxEncodedLen(len(raw)); cap(w.scratch) < n {
			w.scratch = make([]byte, n)
		}
		w.scratch = s2.Encode(w.scratch[:cap(w.scratch)], raw)
	} else {
		enc, err := zstdEncoder()
		if err != nil {
			return err
		}
		w.scratch = enc.EncodeAll(raw, w.scratch[:0])
	}
	payload := w.scratch
	if len(raw) == 0 {
		payload = raw
	}
	// Store the block as is when compression does not help, or when it
	// helps more than a reader accepts (see maxRatio).
	if len(payload) >= len(raw) || uint64(len(raw)) > maxRatio*uint64(len(payload)) {
		h.codec, payload = codecNone, raw
	}
	h.stored = uint32(len(payload))
	var hb [blockHeaderSize]byte
	h.put(hb[:])
	h.crc = blockCRC(hb[:], payload)
	h.put(hb[:])
	if err := w.write(hb[:]); err != nil {
		return err
	}
	return w.write(payload)
}

// metaJSON encodes and checks the metadata.
func (w *Writer) metaJSON(meta *Meta) ([]byte, error) {
	meta.Version = int(w.version)
	if meta.Mode != ModeEntry && meta.Mode != ModeGraph {
		return nil, fmt.Errorf("unknown mode %d", meta.Mode)
	}
	if w.maxFunc > uint64(len(meta.Funcs)) {
		return nil, fmt.Errorf("events refer to function %d but the metadata has %d functions", w.maxFunc-1, len(meta.Funcs))
	}
	if err := checkMeta(meta); err != nil {
		return nil, err
	}
	b, err := marshalMeta(meta)
	if err != nil {
		return nil, err
	}
	if len(b) > maxMetaRaw {
		return nil, fmt.Errorf("metadata is %d bytes, more than the format's limit of %d", len(b), maxMetaRaw)
	}
	return b, nil
}

// Checkpoint flushes the pending events and writes meta as a checkpoint. A
// finished recording ignores checkpoints; an unfinished one read with
// ReadOptions.Recover uses the last one. Call it once the traced functions
// are known (before the first events), and whenever they change.
func (w *Writer) Checkpoint(meta Meta) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return w.err
	}
	if err := w.flushBlock(); err != nil {
		return err
	}
	b, err := w.metaJSON(&meta)
	if err != nil {
		return fmt.Errorf("write checkpoint: %w", err)
	}
	if err := w.writeBlock(blockMeta, 0, b); err != nil {
		return fmt.Errorf("write checkpoint: %w", err)
	}
	return w.flushLocked()
}

// Flush writes the pending events as a (short) block and flushes the file,
// so that they survive if the tracer dies.
func (w *Writer) Flush() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.flushBlock(); err != nil {
		return err
	}
	return w.flushLocked()
}

func (w *Writer) flushLocked() error {
	if w.err != nil {
		return w.err
	}
	if w.bw != nil {
		if err := w.bw.Flush(); err != nil {
			w.err = err
			return fmt.Errorf("flush recording: %w", err)
		}
	}
	return nil
}

// Close writes the pending events, the metadata and the trailer, and
// closes the file and renames it to its path if the Writer was made by
// [Create]. Close sets meta.Version. It fails if meta does not describe
// the events (an Event.Func without a Func, a Func or Symbol in an unknown
// module).
//
// A file made by Create is renamed even if the recording could not be
// finished (a write error, bad metadata): it then reads as truncated, and
// ReadOptions.Recover reads its complete blocks. If the rename itself
// fails, the error names the temporary file, which is left in place.
func (w *Writer) Close(meta Meta) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	err := w.finish(&meta)
	if w.file != nil {
		if cerr := w.file.Commit(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("close recording: %w (what was recorded is in %s: read it with --recover)", cerr, w.file.Name()))
		}
		w.file = nil
	}
	if w.err == nil {
		w.err = ErrClosed
	}
	return err
}

func (w *Writer) finish(meta *Meta) error {
	if w.err != nil {
		return w.err
	}
	if err := w.flushBlock(); err != nil {
		return err
	}
	b, err := w.metaJSON(meta)
	if err != nil {
		return fmt.Errorf("close recording: %w", err)
	}
	t := trailer{metaOff: w.off, events: w.events, eventBlock: w.blocks}
	if err := w.writeBlock(blockMeta, 0, b); err != nil {
		return fmt.Errorf("write metadata: %w", err)
	}
	t.metaSize = w.off - t.metaOff
	if w.version >= 2 {
		raw := make([]byte, len(w.index)*indexEntrySize)
		for i := range w.index {
			w.index[i].put(raw[i*indexEntrySize:])
		}
		if err := w.writeBlock(blockIndex, uint32(len(w.index)), raw); err != nil {
			return fmt.Errorf("write block index: %w", err)
		}
	}
	var tb [trailerSize]byte
	t.put(tb[:])
	if err := w.write(tb[:]); err != nil {
		return fmt.Errorf("write trailer: %w", err)
	}
	return w.flushLocked()
}

// checkMeta checks the indices and counts of meta. The reader and the
// writer share it.
func checkMeta(m *Meta) error {
	if m.Mode != ModeEntry && m.Mode != ModeGraph {
		return fmt.Errorf("unknown mode %d", m.Mode)
	}
	switch {
	case len(m.Modules) > maxModules:
		return fmt.Errorf("%d modules, more than the limit of %d", len(m.Modules), maxModules)
	case len(m.Funcs) > maxFuncs:
		return fmt.Errorf("%d functions, more than the limit of %d", len(m.Funcs), maxFuncs)
	case len(m.Symbols) > maxSymbols:
		return fmt.Errorf("%d symbols, more than the limit of %d", len(m.Symbols), maxSymbols)
	case len(m.Threads) > maxThreads:
		return fmt.Errorf("%d threads, more than the limit of %d", len(m.Threads), maxThreads)
	case len(m.Processes) > maxThreads:
		return fmt.Errorf("%d processes, more than the limit of %d", len(m.Processes), maxThreads)
	}
	for i, th := range m.Threads {
		if th.PID < 0 {
			return fmt.Errorf("thread %d (tid %d) has pid %d", i, th.TID, th.PID)
		}
	}
	for i, pr := range m.Processes {
		if pr.PID <= 0 || pr.PPID < 0 {
			return fmt.Errorf("process %d has pid %d, ppid %d", i, pr.PID, pr.PPID)
		}
	}
	for i, f := range m.Funcs {
		if f.Module < -1 || f.Module >= len(m.Modules) {
			return fmt.Errorf("function %d (%.64q) refers to module %d of %d", i, f.Name, f.Module, len(m.Modules))
		}
	}
	for i, s := range m.Symbols {
		if s.Module < -1 || s.Module >= len(m.Modules) {
			return fmt.Errorf("symbol %d (%.64q) refers to module %d of %d", i, s.Name, s.Module, len(m.Modules))
		}
	}
	for i, c := range m.Changes {
		if c.Op != "enable" && c.Op != "disable" && c.Op != "load" && c.Op != "unload" {
			return fmt.Errorf("change %d: unknown operation %.16q", i, c.Op)
		}
		for _, f := range c.Funcs {
			if int64(f) >= int64(len(m.Funcs)) {
				return fmt.Errorf("change %d refers to function %d of %d", i, f, len(m.Funcs))
			}
		}
	}
	return nil
}
