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
	"sync/atomic"
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
//
// The three goroutines share no lock. The poll loop hands slabs to the
// writer, and the writer gives them back, through channels; the writer
// publishes how far the file goes (wOff) to the converter with an atomic
// and a wakeup. A lock the converter held at nice 19 made the poll loop
// wait until the kernel gave that thread a CPU again: sync.Mutex hands
// itself to a waiter that has waited over 1 ms, and the converter, woken
// at nice 19 beside busy threads of the target, always had (the mutex
// profile of a run that lost 429,215 events put a 51 ms poll on the
// converter's unlock).
type spool struct {
	f   *os.File
	dir string

	// The poll loop's side: put, flush and finish. put encodes into
	// cur; a full cur, or at flush one that the writer is not busy for,
	// goes to queue. At most spoolSlabs slabs exist; put waits on free
	// when all are queued.
	mu       sync.Mutex
	cur      []byte
	slabs    int
	started  bool  // the writer and converter run (from the first frame on)
	finished bool  // finish has come: no more frames
	raw      int64 // bytes of records put
	disk     int64 // and as stored
	putStats putStats

	queue  chan []byte // to the writer
	free   chan []byte // back from it
	busy   atomic.Bool // the writer is writing a slab
	wdone  chan struct{}
	wStats writerStats // the writer's own

	// The writer's failure: err is set before failed.
	failed atomic.Bool
	err    error
	wErr   error // converting the frames it could not write; read after wdone

	// The converter's side.
	wOff    atomic.Int64  // end of the frames written (the writer's)
	kick    chan struct{} // the writer has written more, or finish came
	closing atomic.Bool   // no more frames: convert the rest and stop
	rOff    int64         // start of the frames not yet converted
	rPub    atomic.Int64  // rOff as last published
	punched int64         // bytes given back so far
	done    chan struct{}
	stopped atomic.Bool // the converter stopped on convErr, set before
	convErr error
	convert func(tid uint32, raw []byte) error
	dec     []byte // decoded records
	buf     []byte // what it reads

	// The converter's priority, between it, the collector and finish.
	cmu     sync.Mutex
	lowered int // the converter's thread, while at nice 19
	oldNice int // its nice value before
	// While the converter is lowered, the Go collector is off (unrelax
	// turns it back on) and a goroutine of its own collects instead,
	// until stopGC is closed (see collector).
	unrelax func()
	stopGC  chan struct{}
}

// putStats and writerStats are the poll loop's and the writer's timing,
// printed by finish with LIVETRACE_DEBUG_TIMING set.
type putStats struct {
	maxQueued int           // the most slabs queued at once
	waits     int           // puts that waited for a free slab
	waited    time.Duration // how long they waited in all
}

type writerStats struct {
	writes, over1ms int
	maxWrite        time.Duration
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
	sp := &spool{
		f: f, dir: dir, convert: convert,
		queue: make(chan []byte, spoolSlabs+1), // every slab fits, and a large one
		free:  make(chan []byte, spoolSlabs+1),
		wdone: make(chan struct{}),
		kick:  make(chan struct{}, 1),
		done:  make(chan struct{}),
	}
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
	if sp.finished {
		return errSpoolFinished
	}
	if err := sp.refused(); err != nil {
		return err
	}
	need := spoolFrameHeader + spoolFrameRoom(len(raw))
	if cap(sp.cur)-len(sp.cur) < need {
		sp.nextSlab(need)
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

// errSpoolFinished is put's error after finish.
var errSpoolFinished = errors.New("the spool is finished")

// refused returns why the spool takes no more frames: the writer failed
// (the frames in cur go to it, which converts them, as every frame after
// the failed write), or the converter stopped (the caller's own conversion
// reports its error, or succeeds, if it was the spool's file; the
// recording fails with the converter's error in any case). sp.mu is held.
func (sp *spool) refused() error {
	var err error
	switch {
	case sp.failed.Load():
		err = sp.writeErr()
	case sp.stopped.Load():
		err = sp.convErr
	default:
		return nil
	}
	if len(sp.cur) > 0 {
		sp.enqueue()
	}
	return err
}

// writeErr returns the writer's error, if a write failed.
func (sp *spool) writeErr() error {
	if sp.failed.Load() {
		return sp.err
	}
	return nil
}

// nextSlab queues cur, if it holds frames, and makes cur an empty slab
// with room for need bytes, waiting for the writer to give one back when
// spoolSlabs are in use. sp.mu is held.
func (sp *spool) nextSlab(need int) {
	if len(sp.cur) > 0 {
		sp.enqueue()
	}
	if need > spoolSlab {
		// A frame larger than a slab (a chunk of Options.ChunkRecords
		// over 64K records, stored as is): a slab of its own, dropped
		// once written. queue has room for it beside the others.
		sp.cur = make([]byte, 0, need)
		return
	}
	select {
	case sp.cur = <-sp.free:
		return
	default:
	}
	if sp.slabs < spoolSlabs {
		sp.slabs++
		sp.cur = make([]byte, 0, spoolSlab)
		return
	}
	t0 := time.Now()
	sp.cur = <-sp.free // the writer gives back every slab, failed or not
	sp.putStats.waits++
	sp.putStats.waited += time.Since(t0)
}

// enqueue hands cur to the writer. sp.mu is held.
func (sp *spool) enqueue() {
	sp.queue <- sp.cur // waits only behind more than one large frame: queue holds every slab and one
	sp.cur = nil
	sp.putStats.maxQueued = max(sp.putStats.maxQueued, len(sp.queue))
}

// flush hands the frames put so far to the writer, unless it is busy:
// then they stay in cur, which fills up, so that a writer held up (by a
// punch, or the disk) gets whole slabs and not one per poll. The poll
// loop calls it after each poll.
func (sp *spool) flush() {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if len(sp.cur) > 0 && !sp.busy.Load() && len(sp.queue) == 0 && !sp.finished {
		sp.enqueue()
	}
}

// writer writes the queued slabs to the file, in order, and publishes
// them to the converter, until finish closes queue. It runs on threads of
// the Go runtime, apart from the poll loop: a write waits for the file's
// lock while the converter punches (1.5-2.8 ms) and for the disk (1-12
// ms, once 98 ms; over 100 ms when the kernel throttles a writer of dirty
// pages), and the shared buffer fills meanwhile (docs/DESIGN-NOTES.md, "A
// consumer that keeps up").
//
// When a write fails (the disk is full), this slab and every one after it
// are converted here, from memory, and put refuses frames from then on,
// so that the poll loop converts each chunk itself: nothing accepted is
// lost. A frame may then be converted before an older one of its thread
// still in the file; readers order events by time, not by block
// (tracefile.Stream).
func (sp *spool) writer() {
	defer close(sp.wdone)
	var dec []byte
	off := int64(0)
	for slab := range sp.queue {
		sp.busy.Store(true)
		if !sp.failed.Load() {
			if spoolWriteHook != nil {
				spoolWriteHook()
			}
			t0 := time.Now()
			err := pwriteAll(sp.f, slab, off)
			took := time.Since(t0)
			sp.wStats.writes++
			sp.wStats.maxWrite = max(sp.wStats.maxWrite, took)
			if took > time.Millisecond {
				sp.wStats.over1ms++
			}
			if err == nil {
				off += int64(len(slab))
				sp.wOff.Store(off)
				sp.wake()
			} else {
				sp.err = fmt.Errorf("write the spool for raw events in %s: %w", sp.dir, err)
				sp.failed.Store(true)
			}
		}
		if sp.failed.Load() {
			if sp.wErr == nil {
				_, dec, sp.wErr = convertFrames(slab, dec, off, sp.convert)
			}
			off += int64(len(slab)) // where it would have gone, for errors
		}
		sp.busy.Store(false)
		if cap(slab) == spoolSlab {
			sp.free <- slab[:0] // never blocks: free holds every slab
		}
	}
}

// wake wakes the converter, if it waits for frames (see run).
func (sp *spool) wake() {
	select {
	case sp.kick <- struct{}{}:
	default: // a wakeup is pending already
	}
}

// spoolWriteHook, when set (tests), runs before each of the writer's
// writes.
var spoolWriteHook func()

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

// backlog returns the bytes spooled and not yet converted, written or not
// (tests).
func (sp *spool) backlog() int64 {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	n := sp.wOff.Load() - sp.rPub.Load() + int64(len(sp.cur))
	if len(sp.queue) > 0 || sp.busy.Load() {
		n++ // not written yet, by an unknown amount
	}
	return n
}

// finish tells the writer and the converter that no frame follows, waits
// until every frame is converted, and closes the file.
func (sp *spool) finish() error {
	sp.cmu.Lock()
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
	sp.cmu.Unlock()
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if sp.finished {
		return errSpoolFinished
	}
	sp.finished = true
	if len(sp.cur) > 0 {
		sp.enqueue()
	}
	close(sp.queue)
	if sp.started {
		<-sp.wdone
	}
	// The writer is done: wOff is final.
	sp.closing.Store(true)
	sp.wake()
	if debugTiming && sp.raw > 0 {
		p, w := sp.putStats, sp.wStats
		fmt.Fprintf(os.Stderr, "spool: %d bytes of records in %d bytes (%.2f a record); %d writes, max %v (%d over 1 ms), max %d slabs queued, %d puts waited %v for a slab\n",
			sp.raw, sp.disk, float64(sp.disk)/float64(sp.raw/recordSize), w.writes, w.maxWrite, w.over1ms, p.maxQueued, p.waits, p.waited)
	}
	if sp.started {
		<-sp.done
	}
	cerr := sp.f.Close()
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
		sp.cmu.Lock()
		if sp.lowered == tid {
			_ = unix.Setpriority(unix.PRIO_PROCESS, tid, sp.oldNice)
			sp.lowered = 0
		}
		sp.cmu.Unlock()
	}()
	// Only root may raise the priority back (finish does it, from its
	// own thread: this one may get no CPU at all at nice 19 beside busy
	// threads of the target).
	if os.Geteuid() == 0 {
		sp.cmu.Lock()
		if !sp.closing.Load() { // else finish has come already: stay as is
			if old, err := unix.Getpriority(unix.PRIO_PROCESS, tid); err == nil && unix.Setpriority(unix.PRIO_PROCESS, tid, 19) == nil {
				sp.lowered, sp.oldNice = tid, 20-old // the kernel reports 20 - nice
				sp.unrelax = gcpause.Relax()
				sp.stopGC = make(chan struct{})
				go sp.collector(sp.stopGC)
			}
		}
		sp.cmu.Unlock()
	}
	sp.buf = make([]byte, spoolRead)
	for {
		closing := sp.closing.Load() // before wOff: then wOff is final
		end := sp.wOff.Load()
		if end == sp.rOff {
			if closing {
				return
			}
			<-sp.kick
			continue
		}
		if err := sp.convertUpTo(end, convert); err != nil {
			sp.convErr = err
			sp.stopped.Store(true)
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
	sp.cmu.Lock()
	tid := sp.lowered
	if tid != 0 {
		_ = unix.Setpriority(unix.PRIO_PROCESS, tid, sp.oldNice)
	}
	sp.cmu.Unlock()
	if raisedHook != nil {
		raisedHook(what, tid)
	}
	f()
	sp.cmu.Lock()
	if tid != 0 && sp.lowered == tid {
		_ = unix.Setpriority(unix.PRIO_PROCESS, tid, 19)
	}
	sp.cmu.Unlock()
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
		sp.rPub.Store(sp.rOff)
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
