package session

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"slices"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/livetrace/livetrace/internal/agent"
	"github.com/livetrace/livetrace/internal/proc"
	"github.com/livetrace/livetrace/internal/tracefile"
)

// Poll moves the events the agent has published so far into the recording.
// Call it regularly while the target runs (every millisecond or so keeps
// the default buffer from overflowing at tens of millions of events per
// second). Every drainEvery it also takes the records written so far to
// chunks that are not full yet, so that an event reaches the tracer within
// that time however slowly its thread fills its chunk (the agent's call
// path does nothing more for it: a chunk's record count is always
// published). It returns the number of events moved.
func (s *Session) Poll() (int, error) { return s.consume(false) }

// drainEvery bounds how long an event waits in a chunk that is not full.
const drainEvery = 50 * time.Millisecond

// consume moves published chunks (all chunks, with final) to the writer.
func (s *Session) consume(final bool) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cons == nil || s.w == nil {
		return 0, nil
	}
	if !final && time.Since(s.drained) >= drainEvery {
		final = true // the partly filled chunks too; nothing is freed
	}
	if final {
		s.drained = time.Now()
	}
	defer s.countForeign()
	if s.inj != nil && s.inj.tids != nil {
		s.inj.tids.newPoll()
	}
	var werr error
	fn := func(tid uint32, lostBefore uint32, raw []byte) {
		if werr == nil {
			werr = s.deliverRaw(tid, lostBefore, raw)
		}
	}
	var n int
	var err error
	t0 := time.Now()
	var ru0 unix.Rusage
	if debugTiming {
		_ = unix.Getrusage(unix.RUSAGE_THREAD, &ru0)
	}
	if final {
		n, err = s.cons.DrainRaw(fn)
	} else {
		n, err = s.cons.PollRaw(fn)
	}
	if s.spool != nil {
		s.spool.flush()
	}
	if debugTiming {
		pollStats.add(t0, n, s.cons.Counters().Lost, &ru0)
	}
	if werr != nil {
		return n, werr
	}
	return n, err
}

// pollStats are the consumer's timing, printed every second with
// LIVETRACE_DEBUG_TIMING set: how late polls came, how long they took,
// how many records the largest took, and the loss, to tell a consumer
// that falls behind from one that is kept off the CPU.
var pollStats pollTiming

type pollTiming struct {
	since, last     time.Time
	polls, recs     int
	maxGap, maxTook time.Duration
	maxRecs         int
	gapsOver5ms     int
	lost0, lost     uint64        // the agent's count at the start, at the last poll
	lossyPolls      int           // polls that found new loss
	lossGap         time.Duration // the largest gap before such a poll
	// The longest poll's CPU time, and its voluntary (blocked) and
	// involuntary (preempted) context switches.
	tookCPU          time.Duration
	tookBlk, tookPre int64
}

func (pt *pollTiming) add(t0 time.Time, n int, lost uint64, ru0 *unix.Rusage) {
	now := time.Now()
	var ru unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_THREAD, &ru)
	if pt.since.IsZero() {
		pt.since, pt.last, pt.lost0, pt.lost = t0, t0, lost, lost
	}
	gap := t0.Sub(pt.last)
	pt.last = t0
	pt.polls++
	pt.recs += n
	pt.maxGap = max(pt.maxGap, gap)
	if took := now.Sub(t0); took > pt.maxTook {
		pt.maxTook = took
		pt.tookCPU = time.Duration(ru.Utime.Nano() + ru.Stime.Nano() - ru0.Utime.Nano() - ru0.Stime.Nano())
		pt.tookBlk, pt.tookPre = ru.Nvcsw-ru0.Nvcsw, ru.Nivcsw-ru0.Nivcsw
	}
	pt.maxRecs = max(pt.maxRecs, n)
	if gap > 5*time.Millisecond {
		pt.gapsOver5ms++
	}
	if lost > pt.lost {
		pt.lossyPolls++
		pt.lossGap = max(pt.lossGap, gap)
	}
	pt.lost = lost
	if now.Sub(pt.since) >= time.Second {
		fmt.Fprintf(os.Stderr, "consume: %d polls, %d records, max gap %v (%d over 5 ms), max poll %v (CPU %v, %d blocked, %d preempted), max %d records a poll, lost %d in %d polls (max gap before %v)\n",
			pt.polls, pt.recs, pt.maxGap, pt.gapsOver5ms, pt.maxTook, pt.tookCPU, pt.tookBlk, pt.tookPre, pt.maxRecs, lost-pt.lost0, pt.lossyPolls, pt.lossGap)
		*pt = pollTiming{since: now, last: t0, lost0: lost, lost: lost}
	}
}

// deliverRaw takes one chunk's records, straight from the shared memory:
// it accounts the chunk to its thread and puts the records in the spool,
// or converts them at once when there is none (see spool.go). s.mu is held.
func (s *Session) deliverRaw(tid uint32, lostBefore uint32, raw []byte) error {
	// Only a tid the consumer accepted (tidSet.accept) gets here. The
	// agent records tids of the target's pid namespace; the recording
	// holds the tracer's.
	if s.inj != nil && s.inj.tids != nil {
		if o, ok := s.inj.tids.known[tid]; ok {
			tid = uint32(o)
		}
	}
	if _, ok := s.threads[tid]; !ok {
		s.threads[tid] = threadName(s.pidOfThread(tid), int(tid))
		if s.opts.Follow && s.opts.OnThreadPID != nil {
			s.opts.OnThreadPID(tid, s.pidOfThread(tid))
		}
	}
	s.lost[tid] += uint64(lostBefore)
	if !s.wantTID(tid) {
		return nil
	}
	if s.opts.OnRaw != nil {
		_, n := s.decode(tid, raw, nil, decodeCount)
		s.events.Add(uint64(n))
		if n > 0 {
			s.opts.OnRaw(tid, raw, n, s.threads[tid])
		}
		return nil
	}
	if s.spool != nil {
		err := s.spool.put(tid, raw)
		if err == nil {
			s.spooled += uint64(len(raw) / agent.SizeofRecord)
			return nil
		}
		// Converted directly from now on. Only a write error is
		// Summary's: the converter's ends the recording with an error,
		// and a put after finish means nothing.
		if s.spoolErr == nil {
			s.spoolErr = s.spool.writeErr()
		}
	}
	s.conv.Lock()
	defer s.conv.Unlock()
	return s.convertLocked(tid, raw)
}

// convert is the spool's converter: it turns one spooled chunk into events.
func (s *Session) convert(tid uint32, raw []byte) error {
	s.conv.Lock()
	defer s.conv.Unlock()
	s.unspooled.Add(uint64(len(raw) / agent.SizeofRecord))
	return s.convertLocked(tid, raw)
}

// convertLocked decodes the records of one chunk of thread tid and writes
// them. s.conv is held.
func (s *Session) convertLocked(tid uint32, raw []byte) error {
	evs, _ := s.decode(tid, raw, s.evbuf[:0], decodeEvents)
	s.evbuf = evs[:0] // grown by decode, kept for the next chunk
	s.events.Add(uint64(len(evs)))
	if s.opts.OnEvents != nil && len(evs) > 0 {
		// Without a spool (OnEvents implies none) this runs under s.mu.
		s.opts.OnEvents(evs, s.threads[tid])
	}
	if s.opts.Discard {
		// Nothing reads the recording: no need to encode it.
		return nil
	}
	return s.w.WriteEvents(evs)
}

// Decode turns records of thread tid that OnRaw handed over, copied, into
// the events a recording would hold, appended to dst. It may run on any
// goroutine, beside the poll loop.
func (s *Session) Decode(tid uint32, raw []byte, dst []tracefile.Event) []tracefile.Event {
	s.conv.Lock()
	defer s.conv.Unlock()
	evs, _ := s.decode(tid, raw, dst, decodeAgain)
	return evs
}

// decodeMode is what decode does with a chunk's records.
type decodeMode uint8

const (
	// decodeEvents appends the events and counts the corrupt records.
	decodeEvents decodeMode = iota
	// decodeCount only counts the events and the corrupt records: the
	// values are checked, not encoded.
	decodeCount
	// decodeAgain appends the events of records counted before.
	decodeAgain
)

// decode decodes the records of one chunk of thread tid: it appends the
// events to dst (but with decodeCount) and returns them with their
// number. Records come from the target's memory: a site index out of
// range, or values that do not match the site's spec, are corrupt and
// dropped. s.conv is held, or s.mu with decodeCount.
func (s *Session) decode(tid uint32, raw []byte, dst []tracefile.Event, mode decodeMode) ([]tracefile.Event, int) {
	nrec := len(raw) / agent.SizeofRecord
	maxDepth := s.opts.Filters.MaxDepth
	nsel := uint32(len(s.sel))
	if mode != decodeCount {
		dst = slices.Grow(dst, nrec)
	}
	bad := uint64(0)
	n := 0
	for i := 0; i < nrec; i++ {
		// The fields of agent.Record, decoded in place (see
		// agent.DecodeRecord): a Record temporary per event cost more than
		// the rest of the loop.
		rec := raw[i*agent.SizeofRecord : (i+1)*agent.SizeofRecord]
		tsc := binary.LittleEndian.Uint64(rec[agent.RecordTscOff:])
		meta := binary.LittleEndian.Uint64(rec[agent.RecordMetaOff:])
		kind, depth := uint8(meta>>62), uint8(meta>>54)
		site := uint32(meta>>32) & (agent.MaxSites - 1)
		args := ""
		if site < nsel && (kind == agent.KindEntry || kind == agent.KindExit) && isData(raw[(i+1)*agent.SizeofRecord:]) {
			// The values of a site with a spec (args.go).
			a, skip, ok := s.dataGroup(site, kind, raw[(i+1)*agent.SizeofRecord:], mode != decodeCount)
			if skip == 0 {
				skip = 1
			}
			i += skip
			if !ok {
				bad++
				continue
			}
			args = a
		}
		if site >= nsel || (kind != agent.KindEntry && kind != agent.KindExit) {
			bad++
			continue
		}
		if maxDepth > 0 && int(depth) >= maxDepth {
			continue
		}
		n++
		if mode == decodeCount {
			continue
		}
		dst = dst[:len(dst)+1]
		ev := &dst[len(dst)-1]
		ev.TSC, ev.TID, ev.Func, ev.Depth = tsc, tid, site, uint16(depth)
		ev.Kind, ev.Caller, ev.Args = tracefile.KindExit, 0, args
		if kind == agent.KindEntry {
			ev.Kind = tracefile.KindEntry
			if low := uint32(meta); low != agent.CallerUnknown {
				// The agent measures the caller from the CALL it was
				// reached by: the site's, or a relocation stub's.
				base := s.sel[site].addr
				if x := &s.sel[site]; x.plan != nil {
					base = x.stub + relocCallOff(x.plan, x.keep)
				}
				ev.Caller = uint64(int64(base) + int64(int32(low)))
			}
		}
	}
	if bad > 0 && mode != decodeAgain {
		s.badRecords.Add(bad)
	}
	return dst, n
}

// attributePendingLoss adds to each thread the events it dropped after
// its last chunk: a thread reports its drops in the header of the next
// chunk it takes, so those of a thread that found the buffer full until
// the end would count in the total only, not per thread.
func (s *Session) attributePendingLoss() {
	slots, err := s.inj.readThreads(s.p)
	if err != nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, slot := range slots {
		if slot.InUse() && slot.Chunk == 0 && slot.Lost > 0 {
			s.notePendingLoss(slot.Tid, slot.Lost)
		}
	}
}

// notePendingLoss adds lost to the thread the agent knows as tid (in the
// target's pid namespace), if the tracer knows it. s.mu is held.
func (s *Session) notePendingLoss(tid uint32, lost uint32) {
	if s.inj.tids == nil {
		return
	}
	o, ok := s.inj.tids.known[tid]
	if !ok {
		return
	}
	s.lost[uint32(o)] += uint64(lost)
	if _, ok := s.threads[uint32(o)]; !ok {
		s.threads[uint32(o)] = threadName(s.pidOfThread(uint32(o)), o)
	}
}

// threadExit runs on the ptrace thread when a thread of the target exits
// (it is stopped for good). Its agent slot is retired, so a new thread that
// reuses its thread pointer gets a slot of its own, and its partly filled
// chunk is handed to the consumer.
func (s *Session) threadExit(tid int) { s.threadExitIn(s.p, tid) }

// threadExitIn is threadExit for a thread of p: the target, or a followed
// child (follow.go), whose agent copy has a thread table of its own.
func (s *Session) threadExitIn(p *proc.Process, tid int) {
	if s.inj == nil || s.cons == nil {
		return
	}
	inner := uint32(tid)
	if s.inj.tids != nil {
		// Its records may still be in the buffer when it is gone.
		s.mu.Lock()
		inner = s.inj.tids.exitingIn(p.Pid(), tid)
		s.mu.Unlock()
	}
	slots, err := s.inj.readThreads(p)
	if err != nil {
		return
	}
	for i, slot := range slots {
		if !slot.InUse() || slot.Tid != inner {
			continue
		}
		_ = p.WriteMem(s.inj.addrs.ThreadSlotAddr(i)+agent.ThreadKeyOff, agent.RetiredKey())
		if slot.Chunk == 0 && slot.Lost > 0 {
			s.mu.Lock()
			s.notePendingLoss(slot.Tid, slot.Lost)
			s.mu.Unlock()
		}
		if slot.Chunk != 0 {
			s.mu.Lock()
			var werr error
			_, _ = s.cons.RetireChunkRaw(slot.Chunk, func(tid uint32, lostBefore uint32, raw []byte) {
				if werr == nil {
					werr = s.deliverRaw(tid, lostBefore, raw)
				}
			})
			s.mu.Unlock()
		}
	}
}

// forked runs on the ptrace thread when the target forks: the child gets
// the original text back, so it never runs into our stubs or INT3s. (Its
// copy of the agent stays mapped: frames hijacked in graph mode still
// return through it, and its control page reads 0, so it records nothing.)
func (s *Session) forked(child int, mem *proc.Mem) {
	if s.eng == nil {
		return
	}
	_ = s.eng.RestoreInto(mem)
	if s.inj != nil {
		// Its copy of the agent stays (frames hijacked in graph mode
		// return through it) but is no agent to undo: without its owner
		// record's magic, restore does not take it for an orphan, nor
		// record for a process traced already. (A child forked after the
		// tracer died keeps the record, and restore undoes it.)
		_ = mem.Write(s.inj.addrs.Owner+agent.OwnerMagicOff, make([]byte, 4))
	}
	if at := s.loader.addr.Load(); at != 0 {
		_ = mem.Write(at, []byte{opRet}) // the loader's r_brk (dlopen.go)
		if pad := s.loader.pad.Load(); pad != 0 {
			_ = mem.Write(at+1, []byte{byte(pad)})
		}
	}
}

// wantTID applies the --tid filter.
func (s *Session) wantTID(tid uint32) bool {
	if len(s.opts.Filters.TIDs) == 0 {
		return true
	}
	for _, t := range s.opts.Filters.TIDs {
		if t == tid {
			return true
		}
	}
	return false
}

// countForeign adds the records the consumer dropped for an unknown thread
// to the corrupt count (the recording's "malformed records" warning).
// s.mu must be held.
func (s *Session) countForeign() {
	if s.cons == nil || s.inj == nil {
		return
	}
	f := s.cons.Counters().Foreign
	s.corrupt += f - s.inj.foreign
	s.inj.foreign = f
}

// tidSet is the set of the target's real thread ids, which the consumer
// checks the owner of every chunk against (agent.Consumer.SetTIDFilter):
// a chunk header is the target's memory, and a tid there costs the tracer
// a map entry and a /proc read per thread. Only threads of the process
// the tracer has seized count: those in /proc/PID/task, every one of them
// traced (PTRACE_O_TRACECLONE), and those that exited while traced
// (PTRACE_EVENT_EXIT, see exiting). So the tracer's per-thread state is
// bounded by the threads the target really ran.
//
// The agent knows a thread by gettid() in the target's pid namespace, the
// tracer by its tid in its own: the NSpid line of /proc/PID/task/TID/status
// maps one to the other. A process in the tracer's own pid namespace (the
// usual case) needs no such read: both tids are the same, and a thread's
// status costs 0.1-0.25 ms to read beside busy threads on a VM.
//
// A tidSet is guarded by Session.mu.
type tidSet struct {
	pid   int
	known map[uint32]int // tid as the agent sees it -> tid in the tracer's pid namespace
	outer map[int]uint32 // tracer-side tids already looked up -> tid as the agent sees it
	// more are the followed children that share the buffer (follow.go),
	// whose task directories count too; procOf maps a tracer-side tid
	// found in one of them to its pid.
	more   []int
	procOf map[int]int
	// ourNS caches, for each process looked up, whether it is in the
	// tracer's pid namespace (all of its threads are: a thread cannot
	// change its pid namespace, nor be created in another).
	ourNS map[int]bool
	// rescanned says /proc/PID/task was read during this poll.
	rescanned bool
	rescans   int // for tests
}

func newTIDSet(pid int, tids []int) *tidSet {
	ts := &tidSet{pid: pid, known: map[uint32]int{}, outer: map[int]uint32{}, procOf: map[int]int{}, ourNS: map[int]bool{}}
	for _, t := range tids {
		ts.add(t)
	}
	return ts
}

// add looks up thread tid (tracer side), marks it known and returns its
// tid as the agent sees it (tid itself if it is gone).
func (ts *tidSet) add(tid int) uint32 { return ts.addIn(ts.pid, tid) }

// addIn is add for a thread of process pid (the target or a followed
// child).
func (ts *tidSet) addIn(pid, tid int) uint32 {
	if inner, ok := ts.outer[tid]; ok {
		return inner
	}
	if pid != ts.pid {
		ts.procOf[tid] = pid
	}
	same, seen := ts.ourNS[pid]
	if !seen {
		same = inOurPidNS(pid)
		ts.ourNS[pid] = same
	}
	var inner uint32
	var ok bool
	if same {
		inner, ok = uint32(tid), threadExists(pid, tid)
	} else {
		inner, ok = innerTID(pid, tid)
	}
	if !ok {
		return uint32(tid) // gone before it could be looked up: no records of its own
	}
	ts.outer[tid] = inner
	ts.known[inner] = tid
	return inner
}

// exiting records a thread that is about to exit (it still shows in
// /proc): its records may still be in the buffer. Its tid may then be
// reused by a thread that, in another pid namespace, has another inner
// tid: that one is looked up afresh. It returns the thread's tid as the
// agent sees it.
func (ts *tidSet) exiting(tid int) uint32 { return ts.exitingIn(ts.pid, tid) }

// exitingIn is exiting for a thread of process pid.
func (ts *tidSet) exitingIn(pid, tid int) uint32 {
	inner := ts.addIn(pid, tid)
	delete(ts.outer, tid)
	return inner
}

// newPoll starts a poll: the next unknown tid rereads /proc/PID/task.
func (ts *tidSet) newPoll() { ts.rescanned = false }

// accept reports whether tid (as the agent sees it) is a thread of the
// target. An unknown tid makes it reread /proc/PID/task, once per poll:
// that is enough, because every chunk a poll delivers was published
// before the poll began, by a thread that existed then. Such a thread is
// still in /proc/PID/task when the poll rereads it, or it was added by
// exiting first (an exiting thread waits in PTRACE_EVENT_EXIT for
// Session.mu, which the poll holds, and is not reaped before). So a
// forged tid costs at most one directory read per poll, and no memory.
func (ts *tidSet) accept(tid uint32) bool {
	if _, ok := ts.known[tid]; ok {
		return true
	}
	if ts.rescanned {
		return false
	}
	ts.rescanned = true
	ts.rescan()
	_, ok := ts.known[tid]
	return ok
}

// rescan adds the threads in /proc/PID/task that are not known yet. A
// thread's chunk is published while it runs, and a running thread of a
// seized process is in its task directory; one that exited went through
// exiting first.
func (ts *tidSet) rescan() {
	ts.rescans++
	ts.rescanPid(ts.pid)
	for _, pid := range ts.more {
		ts.rescanPid(pid)
	}
}

func (ts *tidSet) rescanPid(pid int) {
	d, err := os.Open(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return
	}
	defer d.Close()
	names, _ := d.Readdirnames(-1)
	for _, n := range names {
		if tid, err := strconv.Atoi(n); err == nil && !ts.hasOuter(tid) {
			ts.addIn(pid, tid)
		}
	}
}

// pidOf returns the process of thread tid (tracer side): the target's
// pid unless it was found in a followed child.
func (ts *tidSet) pidOf(tid int) int {
	if pid, ok := ts.procOf[tid]; ok {
		return pid
	}
	return ts.pid
}

func (ts *tidSet) hasOuter(tid int) bool { _, ok := ts.outer[tid]; return ok }

// inOurPidNS reports whether process pid is in the tracer's pid namespace.
func inOurPidNS(pid int) bool {
	ours, err := os.Readlink("/proc/self/ns/pid")
	if err != nil {
		return false
	}
	theirs, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", pid))
	return err == nil && theirs == ours
}

// threadExists reports whether thread tid of process pid still exists.
func threadExists(pid, tid int) bool {
	var st unix.Stat_t
	return unix.Stat(fmt.Sprintf("/proc/%d/task/%d", pid, tid), &st) == nil
}

// innerTID returns the tid of thread tid of process pid in the thread's own
// pid namespace (the last field of NSpid), which is what gettid() returns
// inside it.
func innerTID(pid, tid int) (uint32, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/status", pid, tid))
	if err != nil {
		return 0, false
	}
	for _, line := range bytes.Split(b, []byte("\n")) {
		if rest, ok := bytes.CutPrefix(line, []byte("NSpid:")); ok {
			f := bytes.Fields(rest)
			if len(f) == 0 {
				break
			}
			n, err := strconv.ParseUint(string(f[len(f)-1]), 10, 32)
			if err != nil {
				break
			}
			return uint32(n), true
		}
	}
	// No NSpid (Linux before 4.1): one pid namespace.
	return uint32(tid), true
}
