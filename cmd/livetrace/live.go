package main

import (
	"io"
	"slices"
	"sync"
	"time"

	"github.com/livetrace/livetrace/internal/report"
	"github.com/livetrace/livetrace/internal/session"
	"github.com/livetrace/livetrace/internal/tracefile"
	"github.com/spf13/cobra"
)

func newLiveCmd(stdout, stderr io.Writer) *cobra.Command {
	cmd, o := recordCommand(stdout, stderr)
	o.live = true
	o.output = ""
	cmd.Flags().Lookup("output").DefValue = ""
	cmd.Flags().Lookup("output").Usage = "record the events to `FILE` as well"
	cmd.Use = "live (-p PID | -- CMD [ARGS...]) [-m GLOB]... [-F GLOB]... [-N GLOB]... [--graph] [-d DURATION] [-o FILE]"
	cmd.Short = "Print the calls of a running process as they happen"
	cmd.Long = `Attach to the running process PID (or start CMD) as record does, with the
same selection flags, and print every call to standard output as it
happens, in replay's format, until Ctrl-C, -d, or the process's exit.
An event shows within about 100 ms of the call, at any call rate: a
thread's partly filled buffer chunk is read while the thread runs on, and
when calls come faster than the terminal can show them, live skips the
oldest and prints a line saying how many events of which thread it
skipped (a recording made with -o keeps them).
With -o FILE the events are recorded as well.

In entry mode each line is an ftrace function-tracer line; with --graph,
calls nest by depth as in function_graph, a call with no traced call inside
is folded into one line, and each closing brace carries the call's
duration. Threads interleave in the order their events reach livetrace,
within 50 ms of time order.`
	cmd.Example = `  livetrace live -p 1234 -F 'parse_*'
  livetrace live --graph -p 1234 -m libc.so.6 -F malloc -F free -d 2s
  livetrace live -p 1234 -o run.data`
	return cmd
}

// liveOutput prints a live session's events (livetrace live).
//
// The session's poll loop hands over each batch (events) and goes back to
// the agent's buffer at once: a printer goroutine formats the lines. A
// terminal cannot show millions of lines a second, so a batch is skipped
// and counted when its turn comes if it has waited for the printer longer
// than liveMaxAge while more than liveFewEvents wait, or if what waits
// (it included) would take the printer
// longer than liveMaxBacklog to print at its recent pace (printPace), or
// if it is the oldest when more than liveMaxQueued events wait: the screen
// stays within about 100 ms of the program, as ftrace's trace_pipe does
// when its reader falls behind, and a recording made at the same time (-o)
// still gets every event, because the poll loop never waits for the
// terminal. The backlog rule keeps the lines shown fresh under a flood:
// with the age rule alone, every batch printed had waited almost
// liveMaxAge (at 10M calls/s, 8 ms at the median and 36-41 ms at the 99th
// percentile; with both, 2 and 11-14 ms).
//
// The wait is counted from the hand-over, not from the events' time: a
// thread that fills its chunk slowly hands its events over up to
// drainEvery (50 ms) after it made them, plus the poll loop's own delay,
// which made such batches look too old on a busy machine although the
// printer was idle.
type liveOutput struct {
	o      *recordOptions
	filter report.Filter

	mu       sync.Mutex // the printer's state: the printer goroutine, ticks, finish
	s        *session.Session
	printer  *report.Live
	decoded  []tracefile.Event // the batch being printed, decoded (records)
	pending  bool
	fullSync time.Time
	flushed  time.Time     // the last write of printed lines
	done     chan struct{} // closed when the printer goroutine has returned

	qmu     sync.Mutex // the queue, between the poll loop and the printer
	qcond   *sync.Cond
	queue   []liveBatch
	queued  int
	closed  bool
	skipped map[uint32]uint64 // per thread, events skipped since its last line
	free    [][]byte          // record buffers to fill again (recycle)
	busy    printPace         // the printer goroutine's own (backlog)
	early   map[uint32]int    // thread pids told before the printer exists
}

// threadPID is the session's OnThreadPID (live --follow).
func (l *liveOutput) threadPID(tid uint32, pid int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.printer == nil {
		if l.early == nil {
			l.early = map[uint32]int{}
		}
		l.early[tid] = pid
		return
	}
	l.printer.SetThreadPID(tid, pid)
}

// liveBatch is one thread's batch, copied out of the session's buffer:
// its events, or without -o its records as the agent wrote them, decoded
// only if printed.
type liveBatch struct {
	evs    []tracefile.Event
	raw    []byte
	n      int // events
	tid    uint32
	thread string
	at     time.Time // when the poll loop handed it over
}

const (
	liveMaxAge     = 60 * time.Millisecond
	liveMaxBacklog = 20 * time.Millisecond
	liveMaxQueued  = 1 << 16
	// liveFewEvents: a batch that waited longer than liveMaxAge is
	// printed all the same when no more than this many events wait (it
	// included). The printer is then late because it was not scheduled
	// (a loaded machine), not because a flood outruns it: a trickle of
	// calls, the one a thread made before it went idle, would be lost
	// for good, since a skip is reported only before the thread's next
	// line (a test of live on a loaded CI machine saw one thread's calls
	// never show).
	liveFewEvents  = 4096
	livePrintFlush = 5 * time.Millisecond
	// liveFreeBuffers bounds the record buffers kept for reuse.
	liveFreeBuffers = 256
)

// start makes the printer once the session knows its functions.
func (l *liveOutput) start(s *session.Session) {
	meta := s.Meta() // before l.mu: events hold the session's lock, then l.mu
	l.mu.Lock()
	l.s = s
	l.mu.Unlock()
	l.begin(meta)
}

// begin starts printing the events of a session whose metadata is meta.
func (l *liveOutput) begin(meta tracefile.Meta) {
	l.mu.Lock()
	l.printer = report.NewLive(l.o.stdout, meta, l.filter)
	if l.o.follow {
		l.printer.ShowPIDs()
		for tid, pid := range l.early {
			l.printer.SetThreadPID(tid, pid)
		}
	}
	l.printer.Header()
	_ = l.printer.Flush(false)
	l.mu.Unlock()
	l.qmu.Lock()
	if l.qcond == nil {
		l.qcond = sync.NewCond(&l.qmu)
	}
	l.qmu.Unlock()
	l.done = make(chan struct{})
	go l.print()
}

// events is the session's OnEvents (with -o): one thread's batch. It runs
// on the poll loop, so it only queues.
func (l *liveOutput) events(evs []tracefile.Event, thread string) {
	if len(evs) == 0 {
		return
	}
	l.queue1(liveBatch{evs: slices.Clone(evs), n: len(evs), tid: evs[0].TID, thread: thread})
}

// records is the session's OnRaw (without -o): one thread's records,
// queued undecoded. Decoding every event on the poll loop (about 40 ns
// an event with an argument) kept it from emptying the shared buffer at
// 10M calls a second, while the printer shows about 230,000 lines a
// second and skips the rest: the printer decodes what it prints.
func (l *liveOutput) records(tid uint32, raw []byte, n int, thread string) {
	l.qmu.Lock()
	var buf []byte
	if k := len(l.free); k > 0 {
		buf, l.free = l.free[k-1], l.free[:k-1]
	}
	l.qmu.Unlock()
	l.queue1(liveBatch{raw: append(buf[:0], raw...), n: n, tid: tid, thread: thread})
}

// recycle keeps the record buffer of a batch done with for records to
// fill again: a fresh buffer for every chunk cost the poll loop an
// allocation, and the collector a sweep, for each 64 KiB. l.qmu is held.
func (l *liveOutput) recycle(b liveBatch) {
	if b.raw != nil && len(l.free) < liveFreeBuffers {
		l.free = append(l.free, b.raw)
	}
}

// queue1 queues one batch for the printer.
func (l *liveOutput) queue1(b liveBatch) {
	l.qmu.Lock()
	defer l.qmu.Unlock()
	if l.qcond == nil {
		l.qcond = sync.NewCond(&l.qmu)
	}
	if l.closed {
		return
	}
	// Too much waiting: the oldest batches go, the news stays.
	for len(l.queue) > 0 && l.queued+b.n > liveMaxQueued {
		old := l.queue[0]
		l.queue[0] = liveBatch{}
		l.queue = l.queue[1:]
		l.queued -= old.n
		l.skip(old.tid, old.n)
		l.recycle(old)
	}
	b.at = time.Now()
	l.queue = append(l.queue, b)
	l.queued += b.n
	l.qcond.Signal()
}

// skip counts n events of tid as skipped. l.qmu must be held.
func (l *liveOutput) skip(tid uint32, n int) {
	if l.skipped == nil {
		l.skipped = map[uint32]uint64{}
	}
	l.skipped[tid] += uint64(n)
}

// print is the printer goroutine: it prints the queued batches until
// finish, skipping those that are too old to be news.
func (l *liveOutput) print() {
	defer close(l.done)
	for {
		l.qmu.Lock()
		for len(l.queue) == 0 && !l.closed {
			l.qcond.Wait()
		}
		if len(l.queue) == 0 {
			l.qmu.Unlock()
			return
		}
		b := l.queue[0]
		l.queue[0] = liveBatch{}
		l.queue = l.queue[1:]
		l.queued -= b.n
		tid := b.tid
		// Skipped at the end too: what was skipped is gone, and the
		// rest is printed.
		if !l.closed && (time.Since(b.at) > liveMaxAge && l.queued+b.n > liveFewEvents || l.backlog(l.queued+b.n) > liveMaxBacklog) {
			l.skip(tid, b.n)
			l.recycle(b)
			l.qmu.Unlock()
			continue
		}
		n := l.skipped[tid]
		delete(l.skipped, tid)
		l.qmu.Unlock()

		t0 := time.Now()
		l.mu.Lock()
		if n > 0 {
			l.printer.Skipped(tid, n)
		}
		l.printer.SetThreadName(tid, b.thread)
		if b.raw != nil {
			l.decoded = l.s.Decode(tid, b.raw, l.decoded[:0])
			b.evs = l.decoded
		}
		l.printer.Events(b.evs)
		l.pending = true
		// Written out here, not only at the poll loop's next tick: a
		// poll loop busy with millions of events a second ticks seldom,
		// and lines printed waited 29 ms for it at the median, 79 ms at
		// the 99th percentile. At most every livePrintFlush while
		// batches wait, so that a flood costs few writes.
		if l.idle() || time.Since(l.flushed) >= livePrintFlush {
			_ = l.printer.Flush(false)
			l.pending = false
			l.flushed = time.Now()
		}
		l.mu.Unlock()
		l.busy.add(b.n, time.Since(t0))
		l.qmu.Lock()
		l.recycle(b)
		l.qmu.Unlock()
	}
}

// idle reports whether no batch waits for the printer.
func (l *liveOutput) idle() bool {
	l.qmu.Lock()
	defer l.qmu.Unlock()
	return len(l.queue) == 0
}

// backlog returns how long the printer would take to print n events at
// the pace it has kept lately (0 until it has printed for a while).
func (l *liveOutput) backlog(n int) time.Duration {
	if l.busy.took < 10*time.Millisecond || l.busy.events == 0 {
		return 0
	}
	return time.Duration(float64(n) / float64(l.busy.events) * float64(l.busy.took))
}

// printPace is the printer's recent pace: events printed and the time it
// took, the lock waits of a slow output's flushes included; halved every
// 100 ms of printing, so that it follows a terminal that gets slower or
// faster.
type printPace struct {
	events int
	took   time.Duration
}

func (p *printPace) add(n int, d time.Duration) {
	p.events += n
	p.took += d
	if p.took > 100*time.Millisecond {
		p.events /= 2
		p.took /= 2
	}
}

// tick writes out what was printed: at once, and every half second the
// calls of threads whose exit has not come yet.
func (l *liveOutput) tick() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.printer == nil {
		return
	}
	all := time.Since(l.fullSync) >= 500*time.Millisecond
	if l.pending || all {
		_ = l.printer.Flush(all)
		l.pending = false
		l.flushed = time.Now()
		if all {
			l.fullSync = time.Now()
		}
	}
}

// refresh gives the printer the functions a change added.
func (l *liveOutput) refresh() {
	l.mu.Lock()
	s := l.s
	l.mu.Unlock()
	if s == nil {
		return // not started: start takes the functions as they are then
	}
	meta := s.Meta() // before l.mu, as in start
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.printer != nil {
		l.printer.SetFuncs(meta.Funcs)
	}
}

// finish prints what is queued and what is held, once the session has
// delivered its last events.
func (l *liveOutput) finish() {
	l.qmu.Lock()
	if l.qcond == nil {
		l.qcond = sync.NewCond(&l.qmu)
	}
	l.closed = true
	l.qcond.Broadcast()
	l.qmu.Unlock()
	if l.done != nil {
		<-l.done
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.printer != nil {
		for tid, n := range l.skipped {
			l.printer.Skipped(tid, n)
		}
		l.skipped = nil
		_ = l.printer.Flush(true)
	}
}
