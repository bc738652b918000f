package session

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/livetrace/livetrace/internal/agent"
	"github.com/livetrace/livetrace/internal/gcpause"
)

// A spool keeps the chunks the consumer takes out of the shared buffer, raw,
// in an unlinked file next to the recording, and a converter goroutine turns
// them into recording blocks (decode, delta-encode, compress) at the lowest
// CPU priority. Taking a chunk then costs one copy into the page cache, so
// the buffer is drained at the rate the target fills it even when the
// tracer has no more than a share of one core: encoding runs on whatever
// CPU is idle, and what is left when tracing stops is encoded after the
// target is detached. The part of the file already converted is given back
// to the file system as the converter goes (FALLOC_FL_PUNCH_HOLE), so the
// spool holds only the backlog. See docs/DESIGN-NOTES.md, "A consumer that
// keeps up".
//
// A frame is a 12-byte header (tid, bytes stored, bytes of records) and
// the records, in the compact form of spoolframe.go, or as they are when
// that is not smaller (then both sizes are equal). The poll loop encodes a
// chunk in a few ns a record, and writes 1-3 bytes a record instead of 16:
// the page cache the spool needs at full speed is then what the machine
// gives, which raw records at 1 GB/s outran within seconds.
type spool struct {
	f *os.File

	mu      sync.Mutex
	cond    *sync.Cond
	wOff    int64 // end of the frames written
	closing bool  // no more frames: convert the rest at normal priority
	err     error // the first write error

	rOff    int64 // converter only: start of the frames not yet converted
	rPub    int64 // rOff as last published, guarded by mu
	punched int64 // converter only: bytes given back so far
	done    chan struct{}
	convErr error // set before done is closed
	convert func(tid uint32, raw []byte) error
	started bool // the converter runs (from the first frame on)
	lowered int  // the converter's thread, while at nice 19 (guarded by mu)
	oldNice int  // its nice value before
	// While the converter is lowered, the Go collector is off (unrelax
	// turns it back on) and a goroutine of its own collects instead,
	// until stopGC is closed (see collector).
	unrelax func()
	stopGC  chan struct{}

	enc       []byte // put's encoding buffer (guarded by mu)
	raw, disk int64  // bytes of records put, and as written (guarded by mu)
	dec       []byte // converter only: decoded records
	buf       []byte // converter only: what it reads
}

// spoolEncode turns the frame codec on; tests and benchmarks compare
// without it.
var spoolEncode = true

const (
	spoolFrameHeader = 12
	// spoolRead is the most the converter reads at once.
	spoolRead = 4 << 20
	// spoolPunch is how much converted data accumulates before it is
	// given back.
	spoolPunch = 16 << 20
	// spoolMaxFrame is the largest frame: a chunk of the most records
	// the agent allows, as is.
	spoolMaxFrame = 1 << 20 * agent.SizeofRecord
)

// openSpool creates the spool file in dir (the recording's directory, or
// the temporary directory) and starts the converter, which hands each
// frame to convert.
func openSpool(dir string, convert func(tid uint32, raw []byte) error) (*spool, error) {
	f, err := tmpFile(dir)
	if err != nil {
		return nil, fmt.Errorf("create the spool for raw events in %s: %w (set TMPDIR, or write the recording elsewhere with -o)", dir, err)
	}
	sp := &spool{f: f, done: make(chan struct{}), convert: convert}
	sp.cond = sync.NewCond(&sp.mu)
	return sp, nil
}

// tmpFile returns a read-write file in dir that has no name.
func tmpFile(dir string) (*os.File, error) {
	fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err == nil {
		return os.NewFile(uintptr(fd), filepath.Join(dir, "(livetrace spool)")), nil
	}
	// A file system without O_TMPFILE: a named file, removed at once.
	f, err := os.CreateTemp(dir, ".livetrace-spool-*")
	if err != nil {
		return nil, err
	}
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// put appends one frame. It fails only when the file cannot be written
// (the disk is full): the caller then converts the chunk itself.
func (sp *spool) put(tid uint32, raw []byte) error {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if sp.err != nil {
		return sp.err
	}
	if sp.convErr != nil {
		// The converter stopped: the caller's own conversion reports
		// the error (or succeeds, if it was the spool's file).
		return sp.convErr
	}
	body := raw
	if spoolEncode {
		if cap(sp.enc) < spoolFrameRoom(len(raw)) {
			sp.enc = make([]byte, 0, spoolFrameRoom(len(raw)))
		}
		if enc, ok := encodeSpoolFrame(sp.enc[:0], raw); ok {
			body = enc
		}
	}
	var h [spoolFrameHeader]byte
	binary.LittleEndian.PutUint32(h[0:], tid)
	binary.LittleEndian.PutUint32(h[4:], uint32(len(body)))
	binary.LittleEndian.PutUint32(h[8:], uint32(len(raw)))
	off := sp.wOff
	if err := pwritevAll(sp.f, [][]byte{h[:], body}, off); err != nil {
		sp.err = fmt.Errorf("spool raw events: %w", err)
		return sp.err
	}
	sp.wOff = off + spoolFrameHeader + int64(len(body))
	sp.raw += int64(len(raw))
	sp.disk += int64(len(body))
	if !sp.started {
		// Started here, not in openSpool: the tracer raises the
		// priority of all its threads while it attaches, and lowers
		// them all again afterwards.
		sp.started = true
		go sp.run(sp.convert)
	}
	sp.cond.Signal()
	return nil
}

// pwritevAll writes bufs at off, whole.
func pwritevAll(f *os.File, bufs [][]byte, off int64) error {
	for len(bufs) > 0 {
		n, err := unix.Pwritev(int(f.Fd()), bufs, off)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return err
		}
		if n == 0 {
			return errors.New("short write")
		}
		off += int64(n)
		for n > 0 && len(bufs) > 0 {
			if n >= len(bufs[0]) {
				n -= len(bufs[0])
				bufs = bufs[1:]
			} else {
				bufs[0] = bufs[0][n:]
				n = 0
			}
		}
	}
	return nil
}

// backlog returns the bytes spooled and not yet converted.
func (sp *spool) backlog() int64 {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	return sp.wOff - sp.rPub
}

// finish tells the converter that no frame follows, waits until it has
// converted every frame, and closes the file.
func (sp *spool) finish() error {
	sp.mu.Lock()
	sp.closing = true
	sp.cond.Signal()
	started := sp.started
	if sp.lowered != 0 {
		// What is left is all that stands between the user and the
		// recording: convert it at normal priority.
		_ = unix.Setpriority(unix.PRIO_PROCESS, sp.lowered, sp.oldNice)
		sp.lowered = 0
	}
	if sp.stopGC != nil { // the converter was lowered
		close(sp.stopGC)
		sp.stopGC = nil
		sp.unrelax()
	}
	if debugTiming && sp.raw > 0 {
		fmt.Fprintf(os.Stderr, "spool: %d bytes of records in %d bytes (%.2f a record)\n", sp.raw, sp.disk, float64(sp.disk)/float64(sp.raw/recordSize))
	}
	sp.mu.Unlock()
	if started {
		<-sp.done
	}
	cerr := sp.f.Close()
	sp.mu.Lock()
	defer sp.mu.Unlock()
	return errors.Join(sp.convErr, cerr) // a write error (sp.err) lost nothing: see put
}

// run is the converter.
func (sp *spool) run(convert func(tid uint32, raw []byte) error) {
	defer close(sp.done)
	// Its own thread, at nice 19: the tracer's other work (taking chunks,
	// ptrace stops) and the target come first.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	tid := unix.Gettid()
	// The thread goes back to the runtime at its old nice. Left at 19
	// (the converter stops on an error before finish raises it), it ran
	// other goroutines at that nice, and threads the runtime cloned from
	// it were born at 19: the likely cause of TestSpoolCollector's one
	// failure in CI, where the converter's thread was at nice 19 before
	// it was lowered. (Ending the thread instead, by never unlocking it,
	// killed children started from it earlier with Pdeathsig, which is
	// tied to the thread that forked them.)
	defer func() {
		sp.mu.Lock()
		if sp.lowered == tid {
			_ = unix.Setpriority(unix.PRIO_PROCESS, tid, sp.oldNice)
			sp.lowered = 0
		}
		sp.mu.Unlock()
	}()
	// Only root may raise the priority back (finish does it, from its
	// own thread: this one may get no CPU at all at nice 19 beside busy
	// threads of the target).
	if os.Geteuid() == 0 {
		sp.mu.Lock()
		if !sp.closing { // else finish has come already: stay as is
			if old, err := unix.Getpriority(unix.PRIO_PROCESS, tid); err == nil && unix.Setpriority(unix.PRIO_PROCESS, tid, 19) == nil {
				sp.lowered, sp.oldNice = tid, 20-old // the kernel reports 20 - nice
				sp.unrelax = gcpause.Relax()
				sp.stopGC = make(chan struct{})
				go sp.collector(sp.stopGC)
			}
		}
		sp.mu.Unlock()
	}
	sp.buf = make([]byte, spoolRead)
	for {
		sp.mu.Lock()
		for sp.wOff == sp.rOff && !sp.closing {
			sp.cond.Wait()
		}
		end := sp.wOff
		sp.mu.Unlock()
		if sp.rOff == end {
			return // closing, and nothing left
		}
		if err := sp.convertUpTo(end, convert); err != nil {
			sp.mu.Lock()
			sp.convErr = err
			sp.mu.Unlock()
			return
		}
	}
}

// collectEvery is how often the collector looks at the heap.
const collectEvery = 50 * time.Millisecond

// collector collects the heap while the converter's thread is at nice 19,
// until stop is closed, as often as GOGC would.
//
// The Go collector stops the world twice a cycle, and each stop waits for
// every P to be given up. The converter holds one while it converts, on a
// thread the kernel may leave without a CPU for over 100 ms beside busy
// threads of the target: a cycle the runtime started by itself then held
// every other goroutine, the poll loop too, that long (GODEBUG=gctrace=1:
// first stops of 35 to 155 ms, and 0.4M to 1.3M events lost with two
// calling threads, where runs without such a cycle lost 2,400-98,000). So the
// runtime's own cycles are off meanwhile (gcpause), and this goroutine
// runs them (collect), with the converter's thread back at its priority.
// docs/DESIGN-NOTES.md, "A consumer that keeps up".
func (sp *spool) collector(stop <-chan struct{}) {
	t := time.NewTicker(collectEvery)
	defer t.Stop()
	samples := []metrics.Sample{{Name: "/gc/heap/live:bytes"}, {Name: "/memory/classes/heap/objects:bytes"}}
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		pct := gcpause.Percent()
		if pct < 0 {
			continue // GOGC=off: the memory limit rules
		}
		metrics.Read(samples)
		live, heap := samples[0].Value.Uint64(), samples[1].Value.Uint64()
		// The runtime's goal, with its floor of 4 MB at GOGC=100.
		if heap > live+max(live*uint64(pct)/100, 4<<20*uint64(pct)/100) {
			sp.collect()
		}
	}
}

// collect runs a collection with the converter's thread at its old
// priority, so that the stops of the world do not wait for it.
func (sp *spool) collect() {
	sp.raised("collect", runtime.GC)
}

// raisedHook, when set (tests), runs in raised just before f.
var raisedHook func(what string, tid int)

// raised runs f, on the calling thread, with the converter's thread back
// at its old priority if it is lowered, and lowers it again after,
// unless finish has raised it for good meanwhile.
func (sp *spool) raised(what string, f func()) {
	sp.mu.Lock()
	tid := sp.lowered
	if tid != 0 {
		_ = unix.Setpriority(unix.PRIO_PROCESS, tid, sp.oldNice)
	}
	sp.mu.Unlock()
	if raisedHook != nil {
		raisedHook(what, tid)
	}
	f()
	sp.mu.Lock()
	if tid != 0 && sp.lowered == tid {
		_ = unix.Setpriority(unix.PRIO_PROCESS, tid, 19)
	}
	sp.mu.Unlock()
}

// convertUpTo converts the frames in [rOff, end).
func (sp *spool) convertUpTo(end int64, convert func(tid uint32, raw []byte) error) error {
	for sp.rOff < end {
		buf := sp.buf
		n := min(int64(len(buf)), end-sp.rOff)
		b := buf[:n]
		if _, err := sp.f.ReadAt(b, sp.rOff); err != nil {
			return fmt.Errorf("read the spool: %w", err)
		}
		used := 0
		for len(b)-used >= spoolFrameHeader {
			tid := binary.LittleEndian.Uint32(b[used:])
			size := int(binary.LittleEndian.Uint32(b[used+4:]))
			rawSize := int(binary.LittleEndian.Uint32(b[used+8:]))
			if spoolFrameHeader+size > len(buf) {
				// A chunk larger than the read (a 16 MiB chunk of
				// Options.ChunkRecords stored raw): read it whole.
				if size > spoolMaxFrame {
					return fmt.Errorf("spool frame of %d bytes at %d: more than a chunk can hold", size, sp.rOff+int64(used))
				}
				if used == 0 {
					sp.buf = make([]byte, spoolFrameHeader+size)
				}
				break
			}
			if len(b)-used < spoolFrameHeader+size {
				break // the frame continues past this read
			}
			raw := b[used+spoolFrameHeader : used+spoolFrameHeader+size]
			if size != rawSize {
				if size > rawSize || rawSize%recordSize != 0 {
					return fmt.Errorf("spool frame at %d: %d bytes for %d bytes of records", sp.rOff+int64(used), size, rawSize)
				}
				dec, err := decodeSpoolFrame(sp.dec[:0], raw, rawSize/recordSize)
				if err != nil {
					return fmt.Errorf("spool frame at %d: %w", sp.rOff+int64(used), err)
				}
				sp.dec, raw = dec, dec
			}
			if err := convert(tid, raw); err != nil {
				return err
			}
			used += spoolFrameHeader + size
		}
		if used == 0 {
			if len(sp.buf) > len(buf) {
				continue // read again, into the larger buffer
			}
			return fmt.Errorf("truncated spool frame at %d", sp.rOff)
		}
		sp.rOff += int64(used)
		sp.mu.Lock()
		sp.rPub = sp.rOff
		sp.mu.Unlock()
		if sp.rOff-sp.punched >= spoolPunch {
			// Give the converted part back; a file system without hole
			// punching just keeps it until the file is closed. The
			// punch holds the file's lock, which the poll loop's next
			// write waits for: at nice 19 this thread, preempted inside
			// one, held a write for 384 ms (1.9M events lost), so it is
			// raised for the punch (docs/DESIGN-NOTES.md, "A consumer
			// that keeps up").
			sp.raised("punch", func() {
				_ = unix.Fallocate(int(sp.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, sp.punched, sp.rOff-sp.punched)
			})
			sp.punched = sp.rOff
		}
	}
	return nil
}
