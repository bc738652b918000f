package proc

import (
	"os"
	"runtime"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/livetrace/livetrace/internal/earlyprio"
)

// The tracer's priority while it attaches and patches.
//
// The tracer competes for the CPUs with the target's own threads, and
// every moment it waits for a CPU stretches the window in which held or
// trapped threads wait for it. A nice value does not buy a prompt CPU on
// a kernel built without preemption: a woken task of the fair class waits
// until the running one has used its slice, which a busy thread in user
// mode only notices at the next tick (4 ms at HZ=250), so every wake-up of
// the tracer (each remote syscall, each trap served) could cost a tick. A
// real-time task preempts a fair one at once. So a boosted thread is set
// to SCHED_FIFO at the lowest real-time priority, and, where that is not
// allowed (no CAP_SYS_NICE, or a cgroup without real-time runtime), to a
// negative nice value instead.
//
// Only one short, bounded window is real-time: the attach, from record
// -p's start (BoostEarly) through session.Start's patch batch (BoostAll),
// tens of milliseconds, and never more than maxRealTime. The tracer never
// spins while boosted: it sleeps whenever it waits for the target, and it
// parses files on all CPUs but one (elfsite.LiveModulesWith). The
// kernel's real-time throttling (sched_rt_runtime_us) and the fair server
// bound what a boosted tracer could take in any case. The batches of a
// recording (ctl, dlopen, detach) and its consumer get a nice value
// instead (BoostThread, BoostCaller): the consumer at full event rate
// would hold a CPU for as long as the target runs. See
// docs/DESIGN-NOTES.md, "Real-time while attaching".

// RealTime reports whether the calling thread runs under a real-time
// policy (boosted for the attach, or by the user). A caller that would add
// a thread of work leaves it out when it is real-time and the machine has
// fewer than three CPUs: the target keeps a CPU (see above).
func RealTime() bool {
	a, err := unix.SchedGetAttr(0, 0)
	return err == nil && (a.Policy == unix.SCHED_FIFO || a.Policy == unix.SCHED_RR)
}

// boostTask boosts thread tid (see above), falling back to nice n, and
// returns its old attributes to put back.
func boostTask(tid, n int) (old *unix.SchedAttr, ok bool) {
	old, err := unix.SchedGetAttr(tid, 0)
	if err != nil {
		return nil, false
	}
	if old.Policy != unix.SCHED_NORMAL && old.Policy != unix.SCHED_BATCH {
		// Already real-time (or idle, or deadline): the user chose it.
		return nil, false
	}
	rt := unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_FIFO, Priority: 1}
	if unix.SchedSetAttr(tid, &rt, 0) == nil {
		return old, true
	}
	if unix.Setpriority(unix.PRIO_PROCESS, tid, n) == nil {
		return old, true
	}
	return nil, false
}

// unboostTask puts back the attributes boostTask returned.
func unboostTask(tid int, old *unix.SchedAttr) {
	a := *old
	a.Size = unix.SizeofSchedAttr
	_ = unix.SchedSetAttr(tid, &a, 0)
}

// BoostAll boosts every thread of the tracer (real-time where allowed,
// else nice n; see above) and returns a function that puts the old
// attributes back (it may be called more than once). Without root (or
// CAP_SYS_NICE) it does nothing. On Linux, the scheduling attributes
// belong to one thread (a task), so every thread is set; threads created
// meanwhile inherit the boost and are put back too. An early boost
// (BoostEarly) is taken over: the returned function ends it too.
func BoostAll(n int) (restore func()) {
	earlyMu.Lock()
	old := early
	early = nil
	earlyMu.Unlock()
	old = boostAll(n, old)
	var once sync.Once
	end := func() { once.Do(func() { restoreBoost(old) }) }
	// However the attach goes (a huge or hostile program to parse), the
	// tracer is real-time for a bounded time only.
	t := time.AfterFunc(maxRealTime, end)
	return func() {
		t.Stop()
		end()
	}
}

// maxRealTime bounds a real-time boost: ten times the attach of 10,000
// functions beside busy threads, twice that of every function of a
// stock redis-server.
const maxRealTime = 500 * time.Millisecond

// boostAll boosts every thread of the tracer not in old and returns old
// with their old attributes added.
func boostAll(n int, old map[int]*unix.SchedAttr) map[int]*unix.SchedAttr {
	if old == nil {
		old = map[int]*unix.SchedAttr{}
	}
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return old
	}
	for _, e := range ents {
		tid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if _, done := old[tid]; done {
			continue
		}
		if a, ok := boostTask(tid, n); ok {
			old[tid] = a
		}
	}
	return old
}

var (
	earlyMu  sync.Mutex
	early    map[int]*unix.SchedAttr // boosted by BoostEarly, not yet taken over
	earlyGen uint64                  // counts BoostEarly calls, for its timer
)

// BoostEarly boosts the tracer as BoostAll does, from the start of a
// command that will attach to a running process, so that the tracer's
// own start (flags, checks, discover) does not wait for CPUs the
// target's threads keep busy. The next BoostAll takes the boost over,
// and its restore ends it; EndEarlyBoost ends it if none came. Never
// call it before the tracer starts a program of its own: a real-time
// policy is inherited across fork.
func BoostEarly(n int) {
	old := map[int]*unix.SchedAttr{}
	if tid, a, ok := earlyprio.Take(); ok {
		// Boosted during the package initialization: ours to end.
		old[tid] = &unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: a.Policy, Flags: a.Flags, Nice: a.Nice, Priority: a.Priority,
			Runtime: a.Runtime, Deadline: a.Deadline, Period: a.Period, Util_min: a.UtilMin, Util_max: a.UtilMax}
	}
	old = boostAll(n, old)
	earlyMu.Lock()
	early = old
	earlyGen++
	gen := earlyGen
	earlyMu.Unlock()
	// Bounded as BoostAll's; once taken over or ended, this does nothing.
	time.AfterFunc(maxRealTime, func() {
		earlyMu.Lock()
		var old map[int]*unix.SchedAttr
		if earlyGen == gen {
			old, early = early, nil
		}
		earlyMu.Unlock()
		restoreBoost(old)
	})
}

// EndEarlyBoost ends a boost BoostEarly began, unless a BoostAll took
// it over.
func EndEarlyBoost() {
	earlyMu.Lock()
	old := early
	early = nil
	earlyMu.Unlock()
	restoreBoost(old)
}

// restoreBoost gives every boosted thread its old attributes; threads
// created meanwhile inherited the boost and get the attributes the
// process had.
func restoreBoost(old map[int]*unix.SchedAttr) {
	var base *unix.SchedAttr
	for _, a := range old {
		base = a
		break
	}
	if base == nil {
		return
	}
	ents, _ := os.ReadDir("/proc/self/task")
	for _, e := range ents {
		tid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		a, ok := old[tid]
		if !ok {
			a = base
		}
		unboostTask(tid, a)
	}
}

// BoostThread sets the nice value of the ptrace thread alone to n and
// returns a function that puts the old value back. During a live batch
// that thread serves every INT3 hit: it must get a CPU at once, but the
// rest of the tracer must not crowd the target's threads off the CPUs.
// The thread is set from here, by its id: a request to the ptrace thread
// would first wait for it to get a CPU at its old priority, up to 18 ms
// beside 4 busy threads of the target.
//
// A nice value, not the real-time policy of BoostAll: side by side on
// the 100,000-site batch with two calling threads, real-time for this
// thread, the caller's or both made no batch shorter and the calling
// threads' longest stall longer (docs/DESIGN-NOTES.md, "Real-time while
// attaching"). A batch of the attach runs real-time all the same, inside
// session.Start's BoostAll; on a real-time thread this changes only the
// nice value, which it puts back.
func (p *Process) BoostThread(n int) (restore func()) {
	tid := p.ex.tid
	prio, err := unix.Getpriority(unix.PRIO_PROCESS, tid)
	if err != nil || unix.Setpriority(unix.PRIO_PROCESS, tid, n) != nil {
		return func() {}
	}
	return func() { _ = unix.Setpriority(unix.PRIO_PROCESS, tid, 20-prio) }
}

// BoostCaller locks the calling goroutine to its OS thread and sets that
// thread's nice value to n, for a loop that must run promptly while other
// threads keep the CPUs busy (the verify pass of a batch; the tracer's
// consumer, whose shared buffer fills in tens of milliseconds at full
// speed and which a real-time policy would let take a CPU from the target
// for as long as it records). The returned function puts the old value
// back and unlocks the goroutine; call it on the same goroutine. Without
// root (or CAP_SYS_NICE) a negative n has no effect.
func BoostCaller(n int) (restore func()) {
	runtime.LockOSThread()
	tid := unix.Gettid()
	prio, err := unix.Getpriority(unix.PRIO_PROCESS, tid)
	if err != nil || unix.Setpriority(unix.PRIO_PROCESS, tid, n) != nil {
		return runtime.UnlockOSThread
	}
	return func() {
		_ = unix.Setpriority(unix.PRIO_PROCESS, tid, 20-prio)
		runtime.UnlockOSThread()
	}
}

// BatchSlice is the scheduler slice of a batch's threads (ShortSlice).
const BatchSlice = 100 * time.Microsecond

// ShortSlice gives the calling thread a fair-class slice of d (at least
// 100 µs; Linux 6.12 on) and returns a function that puts the old one
// back; call it on the same thread (the goroutine locked to it). Use
// it with BoostCaller.
//
// A woken fair task preempts the running one only once that one has
// used its slice (1.4 ms here by default, which the kernel notices at a
// tick, every 4 ms), unless the woken task's own slice is shorter. A
// batch's threads wake all the time, to serve an INT3 hit or after a
// pacing nap, and with the default slice the ptrace thread waited up to
// 3 ms behind a busy thread of the target while other threads stayed
// stopped at their INT3s (docs/DESIGN-NOTES.md, "The batch, tenth
// round"). A thread that is not in the fair class (real-time during the
// attach) is left alone.
func ShortSlice(d time.Duration) (restore func()) {
	return setSlice(unix.Gettid(), d)
}

// ShortSlice is the package's ShortSlice for the ptrace thread, set from
// the calling thread by its id, like BoostThread.
func (p *Process) ShortSlice(d time.Duration) (restore func()) {
	return setSlice(p.ex.tid, d)
}

func setSlice(tid int, d time.Duration) (restore func()) {
	old, err := unix.SchedGetAttr(tid, 0)
	if err != nil || old.Policy != unix.SCHED_NORMAL {
		return func() {}
	}
	a := *old
	a.Size = unix.SizeofSchedAttr
	a.Runtime = uint64(d)
	if unix.SchedSetAttr(tid, &a, 0) != nil {
		return func() {}
	}
	return func() {
		// The nice value as it is now: a boost put back meanwhile
		// stays put back.
		b, err := unix.SchedGetAttr(tid, 0)
		if err != nil || b.Policy != unix.SCHED_NORMAL {
			return
		}
		// 0 is the kernel's default slice. The slice read before
		// (old.Runtime) is the default's value, and setting it would
		// make it a custom one that no longer follows the default.
		b.Size = unix.SizeofSchedAttr
		b.Runtime = 0
		_ = unix.SchedSetAttr(tid, b, 0)
	}
}
