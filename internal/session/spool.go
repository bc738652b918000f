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
// CPU priority. Taking a chunk then costs one pass of the frame codec into
// memory (a writer goroutine takes it to the page cache, a slab at a time),
// so the buffer is drained at the rate the target fills it even when the
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
	f   *os.File
	dir string

	mu      sync.Mutex
	cond    *sync.Cond // the converter waits on it for frames
	wOff    int64      // end of the frames written
	closing bool       // no more frames: convert the rest at normal priority
	err     error      // the first write error

	// The frames put and not written yet. put encodes into cur; a full
	// cur, or at flush one that the writer is not busy for, goes to
	// queue, which the writer goroutine writes in order (see writer).
	// Slabs come back to free; at most spoolSlabs of them exist, and put
	// waits for one when all are queued.
	cur      []byte
	queue    [][]byte
	free     [][]byte
	slabs    int
	busy     bool       // the writer is writing a slab
	wcond    *sync.Cond // the writer waits on it for slabs
	fcond    *sync.Cond // put waits on it for a free slab
	wclosing bool       // no more slabs: the writer ends when queue is empty
	wdone    chan struct{}
	wErr     error // converting the frames the writer could not write
	wStats   writerStats

	rOff    int64 // converter only: start of the frames not yet converted
	rPub    int64 // rOff as last published, guarded by mu
	punched int64 // converter only: bytes given back so far
	done    chan struct{}
	convErr error // set before done is closed
	convert func(tid uint32, raw []byte) error
	started bool // the writer and converter run (from the first frame on)
	lowered int  // the converter's thread, while at nice 19 (guarded by mu)
	oldNice int  // its nice value before
	// While the converter is lowered, the Go collector is off (unrelax
	// turns it back on) and a goroutine of its own collects instead,
	// until stopGC is closed (see collector).
	unrelax func()
	stopGC  chan struct{}

	raw, disk int64  // bytes of records put, and as stored (guarded by mu)
	dec       []byte // converter only: decoded records
	buf       []byte // converter only: what it reads
}

// writerStats are the writer's timing, printed by finish with
// LIVETRACE_DEBUG_TIMING set. Guarded by mu.
type writerStats struct {
	writes, over1ms int
	maxWrite        time.Duration
	maxQueued       int           // the most slabs queued at once
	waits           int           // puts that waited for a free slab
	waited          time.Duration // how long they waited in all
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
	// spoolSlab is the size of the writer's slabs, and spoolSlabs how
	// many there may be: the writer may fall that far behind (about
	// 150 ms of two threads calling a traced leaf at full speed, at 2
	// bytes a record) before the poll loop waits for it.
	spoolSlab  = 1 << 20
	spoolSlabs = 32
)

// openSpool creates the spool file in dir (the recording's directory, or
// the temporary directory) and starts the converter, which hands each
// frame to convert.
func openSpool(dir string, convert func(tid uint32, raw []byte) error) (*spool, error) {
	f, err := tmpFile(dir)
	if err != nil {
		return nil, fmt.Errorf("create the spool for raw events in %s: %w (set TMPDIR, or write the recording elsewhere with -o)", dir, err)
	}
	sp := &spool{f: f, dir: dir, done: make(chan struct{}), wdone: make(chan struct{}), convert: convert}
	sp.cond = sync.NewCond(&sp.mu)
	sp.wcond = sync.NewCond(&sp.mu)
	sp.fcond = sync.NewCond(&sp.mu)
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

// put appends one frame. It fails only when the spool cannot take it (the
// file could not be written, or the converter stopped): the caller then
// converts the chunk itself. The frame reaches the file after the next
// flush, or once a slab is full.
func (sp *spool) put(tid uint32, raw []byte) error {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if err := sp.failed(); err != nil {
		return err
	}
	need := spoolFrameHeader + spoolFrameRoom(len(raw))
	if cap(sp.cur)-len(sp.cur) < need {
		if err := sp.nextSlab(need); err != nil {
			return err
		}
	}
	at := len(sp.cur)
	b := sp.cur[:at+spoolFrameHeader]
	ok := false
	if spoolEncode {
		b, ok = encodeSpoolFrame(b, raw)
	}
	if !ok {
		b = append(b, raw...)
	}
	body := len(b) - at - spoolFrameHeader
	binary.LittleEndian.PutUint32(b[at:], tid)
	binary.LittleEndian.PutUint32(b[at+4:], uint32(body))
	binary.LittleEndian.PutUint32(b[at+8:], uint32(len(raw)))
	sp.cur = b
	sp.raw += int64(len(raw))
	sp.disk += int64(body)
	if !sp.started {
		// Started here, not in openSpool: the tracer raises the
		// priority of all its threads while it attaches, and lowers
		// them all again afterwards.
		sp.started = true
		go sp.writer()
		go sp.run(sp.convert)
	}
	return nil
}

// failed returns why the spool takes no more frames. sp.mu is held.
func (sp *spool) failed() error {
	if sp.err != nil {
		return sp.err
	}
	// The converter stopped: the caller's own conversion reports the
	// error (or succeeds, if it was the spool's file).
	return sp.convErr
}

// nextSlab queues cur, if it holds frames, and makes cur an empty slab
// with room for need bytes, waiting for the writer to free one when
// spoolSlabs are in use. sp.mu is held.
func (sp *spool) nextSlab(need int) error {
	if len(sp.cur) > 0 {
		sp.enqueue()
	}
	if need > spoolSlab {
		// A frame larger than a slab (a chunk of Options.ChunkRecords
		// over 64K records, stored as is): a slab of its own, dropped
		// once written.
		sp.cur = make([]byte, 0, need)
		sp.slabs++
		return nil
	}
	if len(sp.free) == 0 && sp.slabs >= spoolSlabs {
		t0 := time.Now()
		for len(sp.free) == 0 && sp.failed() == nil {
			sp.fcond.Wait()
		}
		sp.wStats.waits++
		sp.wStats.waited += time.Since(t0)
		if err := sp.failed(); err != nil {
			return err
		}
	}
	if n := len(sp.free); n > 0 {
		sp.cur, sp.free = sp.free[n-1], sp.free[:n-1]
	} else {
		sp.cur = make([]byte, 0, spoolSlab)
		sp.slabs++
	}
	return nil
}

// enqueue hands cur to the writer. sp.mu is held.
func (sp *spool) enqueue() {
	sp.queue = append(sp.queue, sp.cur)
	sp.cur = nil
	sp.wStats.maxQueued = max(sp.wStats.maxQueued, len(sp.queue))
	sp.wcond.Signal()
}

// flush hands the frames put so far to the writer, unless it is busy:
// then they stay in cur, which fills up, so that a writer held up (by a
// punch, or the disk) gets whole slabs and not one per poll. The poll
// loop calls it after each poll.
func (sp *spool) flush() {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if len(sp.cur) > 0 && !sp.busy && len(sp.queue) == 0 {
		sp.enqueue()
	}
}

// writer writes the queued slabs to the file, in order, and publishes
// them to the converter. It runs on threads of the Go runtime, apart from
// the poll loop: a write waits for the file's lock while the converter
// punches (1.5-2.8 ms) and, now and then, for the disk (1-12 ms, once
// 98 ms), and the shared buffer fills meanwhile (docs/DESIGN-NOTES.md,
// "A consumer that keeps up").
//
// When a write fails (the disk is full), the frames not written are
// converted here, from memory, and put fails from then on, so that the
// poll loop converts each chunk itself: nothing accepted is lost. A frame
// may then be converted before an older one of its thread still in the
// file; readers order events by time, not by block (tracefile.Stream).
func (sp *spool) writer() {
	defer close(sp.wdone)
	var dec []byte
	sp.mu.Lock()
	defer sp.mu.Unlock()
	for {
		for len(sp.queue) == 0 && !sp.wclosing {
			sp.wcond.Wait()
		}
		if len(sp.queue) == 0 {
			return
		}
		slab, off := sp.queue[0], sp.wOff
		sp.busy = true
		sp.mu.Unlock()
		t0 := time.Now()
		err := pwriteAll(sp.f, slab, off)
		took := time.Since(t0)
		sp.mu.Lock()
		sp.busy = false
		sp.wStats.writes++
		sp.wStats.maxWrite = max(sp.wStats.maxWrite, took)
		if took > time.Millisecond {
			sp.wStats.over1ms++
		}
		if err != nil {
			if sp.err == nil {
				sp.err = fmt.Errorf("write the spool for raw events in %s: %w", sp.dir, err)
			}
			left := sp.queue
			if len(sp.cur) > 0 {
				left = append(left, sp.cur)
			}
			sp.queue, sp.cur = nil, nil
			sp.fcond.Broadcast() // a put waiting for a slab fails now
			sp.mu.Unlock()
			var cerr error
			for _, slab := range left {
				if cerr == nil {
					_, dec, cerr = convertFrames(slab, dec, off, sp.convert)
				}
				off += int64(len(slab))
			}
			sp.mu.Lock()
			sp.wErr = cerr
			continue
		}
		sp.queue[0] = nil
		sp.queue = sp.queue[1:]
		sp.wOff = off + int64(len(slab))
		if cap(slab) == spoolSlab {
			sp.free = append(sp.free, slab[:0])
		} else {
			sp.slabs--
		}
		sp.fcond.Signal()
		sp.cond.Signal()
	}
}

// pwriteAll writes b at off, whole.
func pwriteAll(f *os.File, b []byte, off int64) error {
	for len(b) > 0 {
		n, err := unix.Pwrite(int(f.Fd()), b, off)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return err
		}
		if n == 0 {
			return errors.New("short write")
		}
		b, off = b[n:], off+int64(n)
	}
	return nil
}

// backlog returns the bytes spooled and not yet converted, written or not.
func (sp *spool) backlog() int64 {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	n := sp.wOff - sp.rPub + int64(len(sp.cur))
	for _, slab := range sp.queue {
		n += int64(len(slab))
	}
	return n
}

// finish tells the writer and the converter that no frame follows, waits
// until every frame is converted, and closes the file.
func (sp *spool) finish() error {
	sp.mu.Lock()
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
	if len(sp.cur) > 0 {
		sp.enqueue()
	}
	sp.wclosing = true
	sp.wcond.Signal()
	sp.mu.Unlock()
	if started {
		<-sp.wdone
	}
	sp.mu.Lock()
	sp.closing = true
	sp.cond.Signal()
	if debugTiming && sp.raw > 0 {
		w := sp.wStats
		fmt.Fprintf(os.Stderr, "spool: %d bytes of records in %d bytes (%.2f a record); %d writes, max %v (%d over 1 ms), max %d slabs queued, %d puts waited %v for a slab\n",
			sp.raw, sp.disk, float64(sp.disk)/float64(sp.raw/recordSize), w.writes, w.maxWrite, w.over1ms, w.maxQueued, w.waits, w.waited)
	}
	sp.mu.Unlock()
	if started {
		<-sp.done
	}
	cerr := sp.f.Close()
	sp.mu.Lock()
	defer sp.mu.Unlock()
	// A write error (sp.err) lost nothing: see writer.
	return errors.Join(sp.convErr, sp.wErr, cerr)
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
		b := sp.buf[:min(int64(len(sp.buf)), end-sp.rOff)]
		if _, err := sp.f.ReadAt(b, sp.rOff); err != nil {
			return fmt.Errorf("read the spool: %w", err)
		}
		used, dec, err := convertFrames(b, sp.dec, sp.rOff, convert)
		sp.dec = dec
		if err != nil {
			return err
		}
		if used == 0 {
			// The first frame continues past the read.
			if len(b) >= spoolFrameHeader {
				size := int(binary.LittleEndian.Uint32(b[4:]))
				if size > spoolMaxFrame {
					return fmt.Errorf("spool frame of %d bytes at %d: more than a chunk can hold", size, sp.rOff)
				}
				if spoolFrameHeader+size > len(sp.buf) {
					// A chunk larger than the read (a 16 MiB chunk
					// of Options.ChunkRecords stored raw): read it
					// whole.
					sp.buf = make([]byte, spoolFrameHeader+size)
					continue
				}
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
			// punch holds the file's lock, which the writer's next
			// write waits for: at nice 19 this thread, preempted inside
			// one, held a write for 384 ms (1.9M events lost, when the
			// poll loop wrote itself), so it is raised for the punch (docs/DESIGN-NOTES.md, "A consumer
			// that keeps up").
			sp.raised("punch", func() {
				_ = unix.Fallocate(int(sp.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, sp.punched, sp.rOff-sp.punched)
			})
			sp.punched = sp.rOff
		}
	}
	return nil
}

// convertFrames converts the whole frames at the start of b, which begins
// at offset at of the spool (for errors), and returns the bytes they took
// and dec, the buffer it decoded into.
func convertFrames(b, dec []byte, at int64, convert func(tid uint32, raw []byte) error) (int, []byte, error) {
	used := 0
	for len(b)-used >= spoolFrameHeader {
		tid := binary.LittleEndian.Uint32(b[used:])
		size := int(binary.LittleEndian.Uint32(b[used+4:]))
		rawSize := int(binary.LittleEndian.Uint32(b[used+8:]))
		if len(b)-used-spoolFrameHeader < size {
			break // the frame continues past b
		}
		raw := b[used+spoolFrameHeader : used+spoolFrameHeader+size]
		if size != rawSize {
			if size > rawSize || rawSize%recordSize != 0 {
				return used, dec, fmt.Errorf("spool frame at %d: %d bytes for %d bytes of records", at+int64(used), size, rawSize)
			}
			d, err := decodeSpoolFrame(dec[:0], raw, rawSize/recordSize)
			if err != nil {
				return used, dec, fmt.Errorf("spool frame at %d: %w", at+int64(used), err)
			}
			dec, raw = d, d
		}
		if err := convert(tid, raw); err != nil {
			return used, dec, err
		}
		used += spoolFrameHeader + size
	}
	return used, dec, nil
}
