package tracefile

import (
	"cmp"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"slices"
	"syscall"

	"github.com/klauspost/compress/s2"
)

// Read reads the whole recording at path. See [ReadFrom].
func Read(path string) (*Recording, error) {
	return readFile(path, false)
}

// Recover reads the recording at path like [Read], and if the writer did
// not finish it (or the file is damaged past some point) it returns what it
// can: the complete, intact blocks from the start of the file, described by
// the last metadata checkpoint ([Writer.Checkpoint]). The result then has
// Recording.Recovered set. It fails with [ErrTruncated] when the file holds
// no checkpoint before the damage.
func Recover(path string) (*Recording, error) {
	return readFile(path, true)
}

func readFile(path string, recover bool) (*Recording, error) {
	f, size, err := openRegular(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return read(f, size, recover)
}

// ErrNotRegular is returned (in an *fs.PathError) by [Read], [Recover]
// and [ReadMeta] for a path that is not a regular file.
var ErrNotRegular = errors.New("not a regular file: give the path of a recording")

// openRegular opens path for reading if it is a regular file, and returns
// its size. O_NONBLOCK keeps the open of a FIFO from waiting for a writer
// (it changes nothing for a regular file).
func openRegular(path string) (*os.File, int64, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, 0, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, 0, &fs.PathError{Op: "open", Path: path, Err: ErrNotRegular}
	}
	return f, st.Size(), nil
}

// ReadFrom reads a whole recording of size bytes from r.
//
// It treats the input as hostile: it checks every length, count, checksum
// and index before using it, and never allocates much more than a
// legitimate recording of that size would need. Errors wrap
// [ErrNotRecording], [ErrTruncated] or [ErrCorrupt], or are a
// [*VersionError], or come from r.
func ReadFrom(r io.ReaderAt, size int64) (*Recording, error) {
	return read(r, size, false)
}

// RecoverFrom is [Recover] for an io.ReaderAt.
func RecoverFrom(r io.ReaderAt, size int64) (*Recording, error) {
	return read(r, size, true)
}

func read(r io.ReaderAt, size int64, recover bool) (*Recording, error) {
	version, err := readHeader(r, size)
	if err != nil {
		return nil, err
	}
	rec, err := readFinished(r, size, version)
	if err == nil || !recover || !(errors.Is(err, ErrTruncated) || errors.Is(err, ErrCorrupt)) {
		return rec, err
	}
	return recoverBlocks(r, size, err)
}

// readHeader checks the file header and returns the format version.
func readHeader(r io.ReaderAt, size int64) (uint16, error) {
	if size < 0 {
		return 0, fmt.Errorf("read recording: negative size %d", size)
	}
	var hdr [headerSize]byte
	n := int(min(size, headerSize))
	if err := readAt(r, hdr[:n], 0); err != nil {
		return 0, err
	}
	if m := min(n, len(magic)); string(hdr[:m]) != magic[:m] {
		return 0, ErrNotRecording
	}
	if n < headerSize {
		return 0, fmt.Errorf("%w: %d bytes, shorter than the file header", ErrTruncated, size)
	}
	v := binary.LittleEndian.Uint16(hdr[8:])
	if v == 0 {
		return 0, corruptf("version 0")
	} else if v > Version {
		return 0, &VersionError{Version: int(v)}
	}
	if hs := binary.LittleEndian.Uint16(hdr[10:]); hs != headerSize {
		return 0, corruptf("header size %d, want %d", hs, headerSize)
	}
	if fl := binary.LittleEndian.Uint32(hdr[12:]); fl != 0 {
		return 0, corruptf("unknown header flags %#x", fl)
	}
	return v, nil
}

// readFinished reads a file that has a trailer.
func readFinished(r io.ReaderAt, size int64, version uint16) (*Recording, error) {
	return readTrailerMeta(r, size, version, false)
}

// errMetaOnly carries the event count out of readTrailerMeta in metaOnly
// mode.
type errMetaOnly struct{ events uint64 }

func (errMetaOnly) Error() string { return "metadata only" }

// ReadMeta reads only the metadata of a finished recording and the number
// of events the trailer counts: it costs the same for any recording size
// (Read holds every event in memory, about 40 bytes each).
func ReadMeta(path string) (*Meta, uint64, error) {
	f, size, err := openRegular(path)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	version, err := readHeader(f, size)
	if err != nil {
		return nil, 0, err
	}
	rec, err := readTrailerMeta(f, size, version, true)
	var mo errMetaOnly
	if errors.As(err, &mo) {
		return &rec.Meta, mo.events, nil
	}
	if err == nil {
		err = errors.New("read metadata: unexpected full read")
	}
	return nil, 0, err
}

func readTrailerMeta(r io.ReaderAt, size int64, version uint16, metaOnly bool) (*Recording, error) {
	fin, err := readEnd(r, size, version)
	if err != nil {
		return nil, err
	}
	t, meta := fin.trailer, fin.meta
	if metaOnly {
		return &Recording{Meta: *meta}, errMetaOnly{t.events}
	}
	var evs []Event
	var blocks uint32
	for off := int64(headerSize); off < int64(t.metaOff); {
		h, raw, next, err := readBlock(r, off, int64(t.metaOff))
		if err != nil {
			return nil, err
		}
		if h.typ == blockIndex {
			return nil, corruptf("block index at offset %d before the metadata", off)
		}
		if h.typ == blockEvents {
			n := len(evs)
			var msg string
			if evs, msg = decodeEvents(evs, raw, int(h.count)); msg != "" {
				return nil, corruptf("event block at offset %d: %s", off, msg)
			}
			if fin.index != nil {
				// The index must describe exactly the blocks walked.
				if int(blocks) >= len(fin.index) {
					return nil, corruptf("event block at offset %d is not in the block index", off)
				}
				lo, hi := tscRange(evs[n:])
				e := fin.index[blocks]
				if e.off != uint64(off) || e.count != h.count || e.stored != h.stored || e.minTSC != lo || e.maxTSC != hi {
					return nil, corruptf("block index entry %d does not match the event block at offset %d", blocks, off)
				}
			}
			blocks++
		}
		off = next
	}
	if blocks != t.eventBlock || uint64(len(evs)) != t.events {
		return nil, corruptf("%d events in %d blocks, the trailer says %d in %d", len(evs), blocks, t.events, t.eventBlock)
	}
	for i := range evs {
		if int64(evs[i].Func) >= int64(len(meta.Funcs)) {
			return nil, corruptf("event %d refers to function %d of %d", i, evs[i].Func, len(meta.Funcs))
		}
	}
	sortEvents(evs)
	return &Recording{Meta: *meta, Events: evs}, nil
}

// tscRange returns the smallest and largest TSC of evs (not empty).
func tscRange(evs []Event) (lo, hi uint64) {
	lo, hi = evs[0].TSC, evs[0].TSC
	for i := range evs[1:] {
		lo, hi = min(lo, evs[i+1].TSC), max(hi, evs[i+1].TSC)
	}
	return lo, hi
}

// finished is what the end of a finished recording holds.
type finished struct {
	trailer trailer
	meta    *Meta
	// index describes every event block (version 2; nil in version 1).
	index []indexEntry
}

// readEnd reads the trailer, the final metadata and (version 2) the block
// index of a finished recording, and checks that the index is consistent:
// its blocks follow one another from the file header to the metadata (with
// metadata checkpoints in the gaps) and add up to the trailer's counts.
func readEnd(r io.ReaderAt, size int64, version uint16) (*finished, error) {
	if size < headerSize+trailerSize {
		return nil, fmt.Errorf("%w: %d bytes and no trailer (the writer did not finish)", ErrTruncated, size)
	}
	var tb [trailerSize]byte
	if err := readAt(r, tb[:], size-trailerSize); err != nil {
		return nil, err
	}
	if string(tb[32:]) != endMagic {
		return nil, fmt.Errorf("%w: no trailer (the writer did not finish)", ErrTruncated)
	}
	if crc32.Checksum(tb[:28], castagnoli) != binary.LittleEndian.Uint32(tb[28:]) {
		return nil, corruptf("trailer checksum mismatch")
	}
	t := trailer{
		metaOff:    binary.LittleEndian.Uint64(tb[0:]),
		metaSize:   binary.LittleEndian.Uint64(tb[8:]),
		events:     binary.LittleEndian.Uint64(tb[16:]),
		eventBlock: binary.LittleEndian.Uint32(tb[24:]),
	}
	end := uint64(size - trailerSize)
	if t.metaOff < headerSize || t.metaOff > end || t.metaSize > end-t.metaOff || (version < 2 && t.metaSize != end-t.metaOff) {
		return nil, corruptf("trailer points at metadata [%d, +%d) outside the file", t.metaOff, t.metaSize)
	}
	metaEnd := t.metaOff + t.metaSize
	mh, raw, next, err := readBlock(r, int64(t.metaOff), int64(metaEnd))
	if err != nil {
		return nil, err
	}
	if mh.typ != blockMeta || uint64(next) != metaEnd {
		return nil, corruptf("trailer does not point at the metadata block")
	}
	meta, err := decodeMeta(raw, t.metaOff)
	if err != nil {
		return nil, err
	}
	fin := &finished{trailer: t, meta: meta}
	if version < 2 {
		return fin, nil
	}
	ih, raw, next, err := readBlock(r, int64(metaEnd), int64(end))
	if err != nil {
		return nil, err
	}
	if ih.typ != blockIndex || uint64(next) != end {
		return nil, corruptf("no block index between the metadata and the trailer")
	}
	if ih.count != t.eventBlock {
		return nil, corruptf("block index of %d blocks, the trailer says %d", ih.count, t.eventBlock)
	}
	fin.index = make([]indexEntry, ih.count)
	var events uint64
	prevEnd := uint64(headerSize)
	for i := range fin.index {
		e := parseIndexEntry(raw[i*indexEntrySize:])
		blockEnd := e.off + blockHeaderSize + uint64(e.stored)
		if e.off < prevEnd || e.off > t.metaOff || blockEnd > t.metaOff || e.count == 0 || e.count > maxBlockEventCount || e.minTSC > e.maxTSC {
			return nil, corruptf("block index entry %d: bad block at offset %d", i, e.off)
		}
		prevEnd = blockEnd
		events += uint64(e.count)
		fin.index[i] = e
	}
	if events != t.events {
		return nil, corruptf("block index counts %d events, the trailer says %d", events, t.events)
	}
	return fin, nil
}

// recoverBlocks reads the intact blocks from the start of the file up to the
// first damaged or incomplete one. why is the error of the strict read.
func recoverBlocks(r io.ReaderAt, size int64, why error) (*Recording, error) {
	var (
		meta *Meta
		evs  []Event
	)
	for off := int64(headerSize); ; {
		h, raw, next, err := readBlock(r, off, size)
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
			n := len(evs)
			var msg string
			if evs, msg = decodeEvents(evs, raw, int(h.count)); msg != "" {
				evs = evs[:n]
				break
			}
		}
		off = next
	}
	if meta == nil {
		return nil, fmt.Errorf("%w: no intact metadata checkpoint to recover from (%v)", ErrTruncated, why)
	}
	rec := &Recording{Meta: *meta, Recovered: true}
	out := evs[:0]
	for _, ev := range evs {
		if int64(ev.Func) >= int64(len(meta.Funcs)) {
			rec.Dropped++
			continue
		}
		out = append(out, ev)
	}
	sortEvents(out)
	rec.Events = out
	return rec, nil
}

// readBlock reads, checks and decompresses the block at off, which must end
// by end. It returns the offset after the block.
func readBlock(r io.ReaderAt, off, end int64) (blockHeader, []byte, int64, error) {
	return readBlockBuf(r, off, end, nil)
}

// blockBufs are buffers a reader of many blocks reuses.
type blockBufs struct {
	payload, raw []byte
	// sort and runs are the scratch of sortEventRuns.
	sort []Event
	runs []int
}

func grow(b []byte, n int) []byte {
	if cap(b) < n {
		return make([]byte, n)
	}
	return b[:n]
}

// readBlockBuf is readBlock into bufs (if not nil): the result is valid
// until the next call with the same bufs.
func readBlockBuf(r io.ReaderAt, off, end int64, bufs *blockBufs) (blockHeader, []byte, int64, error) {
	if bufs == nil {
		bufs = &blockBufs{}
	}
	var hb [blockHeaderSize]byte
	if off < 0 || end-off < blockHeaderSize {
		return blockHeader{}, nil, 0, corruptf("block at offset %d: cut short", off)
	}
	if err := readAt(r, hb[:], off); err != nil {
		return blockHeader{}, nil, 0, err
	}
	h := parseBlockHeader(hb[:])
	switch h.typ {
	case blockEvents:
		if h.count == 0 || h.count > maxBlockEventCount || h.raw > maxEventBlockRaw ||
			uint64(h.raw) < uint64(h.count)*minEventSize || uint64(h.raw) > uint64(h.count)*maxEventSize {
			return h, nil, 0, corruptf("event block at offset %d: %d events in %d bytes", off, h.count, h.raw)
		}
	case blockMeta:
		if h.count != 0 || h.raw == 0 || h.raw > maxMetaRaw {
			return h, nil, 0, corruptf("metadata block at offset %d: %d bytes", off, h.raw)
		}
	case blockIndex:
		if h.raw > maxIndexRaw || uint64(h.raw) != uint64(h.count)*indexEntrySize {
			return h, nil, 0, corruptf("block index at offset %d: %d entries in %d bytes", off, h.count, h.raw)
		}
	default:
		return h, nil, 0, corruptf("block at offset %d: unknown type %q", off, h.typ)
	}
	if hb[5] != 0 || hb[6] != 0 || hb[7] != 0 {
		return h, nil, 0, corruptf("block at offset %d: reserved bytes set", off)
	}
	switch h.codec {
	case codecNone:
		if h.stored != h.raw {
			return h, nil, 0, corruptf("block at offset %d: stored %d bytes of %d", off, h.stored, h.raw)
		}
	case codecZstd, codecS2:
		if h.stored == 0 || h.stored >= h.raw || uint64(h.raw) > maxRatio*uint64(h.stored) {
			return h, nil, 0, corruptf("block at offset %d: %d bytes compressed to %d", off, h.raw, h.stored)
		}
	default:
		return h, nil, 0, corruptf("block at offset %d: unknown codec %d", off, h.codec)
	}
	next := off + blockHeaderSize + int64(h.stored)
	if next > end {
		return h, nil, 0, corruptf("block at offset %d: %d bytes past the end", off, next-end)
	}
	bufs.payload = grow(bufs.payload, int(h.stored))
	payload := bufs.payload
	if err := readAt(r, payload, off+blockHeaderSize); err != nil {
		return h, nil, 0, err
	}
	if blockCRC(hb[:], payload) != h.crc {
		return h, nil, 0, corruptf("block at offset %d: checksum mismatch", off)
	}
	if h.codec == codecNone {
		return h, payload, next, nil
	}
	if h.codec == codecS2 {
		n, err := s2.DecodedLen(payload)
		if err != nil || n != int(h.raw) {
			return h, nil, 0, corruptf("block at offset %d: S2 payload of %d bytes, want %d (%v)", off, n, h.raw, err)
		}
		bufs.raw = grow(bufs.raw, int(h.raw))
		raw, err := s2.Decode(bufs.raw, payload)
		if err != nil {
			return h, nil, 0, corruptf("block at offset %d: decompress: %v", off, err)
		}
		return h, raw, next, nil
	}
	dec, err := zstdDecoder()
	if err != nil {
		return h, nil, 0, err
	}
	bufs.raw = grow(bufs.raw, int(h.raw))
	raw, err := dec.DecodeAll(payload, bufs.raw[:0])
	if err != nil {
		return h, nil, 0, corruptf("block at offset %d: decompress: %v", off, err)
	}
	if len(raw) != int(h.raw) {
		return h, nil, 0, corruptf("block at offset %d: decompressed to %d bytes, want %d", off, len(raw), h.raw)
	}
	return h, raw, next, nil
}

func decodeMeta(raw []byte, off uint64) (*Meta, error) {
	var m Meta
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, corruptf("metadata at offset %d: %v", off, err)
	}
	if err := checkMeta(&m); err != nil {
		return nil, corruptf("metadata at offset %d: %v", off, err)
	}
	m.Version = Version
	return &m, nil
}

// CompareEvents orders events by TSC, then by TID. Sorting with it stably
// keeps the order of the events of one thread that share a TSC, and makes
// the order of a recording independent of how the writer got its events.
func CompareEvents(a, b Event) int {
	if c := cmp.Compare(a.TSC, b.TSC); c != 0 {
		return c
	}
	return cmp.Compare(a.TID, b.TID)
}

func sortEvents(evs []Event) {
	if !slices.IsSortedFunc(evs, CompareEvents) {
		slices.SortStableFunc(evs, CompareEvents)
	}
}

// readAt reads len(b) bytes at off; running out of input means the size
// the caller gave was wrong, which reads as truncation.
func readAt(r io.ReaderAt, b []byte, off int64) error {
	n, err := r.ReadAt(b, off)
	if n == len(b) {
		return nil
	}
	if err == nil || err == io.EOF {
		return fmt.Errorf("%w: input ends at offset %d", ErrTruncated, off+int64(n))
	}
	return fmt.Errorf("read recording: %w", err)
}
