package proc

import (
	"os"
	"runtime"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"
)

// BoostNice sets the nice value of every thread of the tracer to n and
// returns a function that puts the old values back (it may be called more
// than once). It needs root (or CAP_SYS_NICE) for a negative n; without it,
// it does nothing.
//
// While it attaches and patches, the tracer competes for the CPUs with the
// target's own threads, and every moment it waits for a CPU stretches the
// window in which trapped threads wait for it. On Linux, setpriority acts
// on one thread (a task), so every thread is set.
func BoostNice(n int) (restore func()) {
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return func() {}
	}
	old := map[int]int{}
	for _, e := range ents {
		tid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		prio, err := unix.Getpriority(unix.PRIO_PROCESS, tid)
		if err != nil {
			continue
		}
		// The raw syscall returns 20 - nice.
		if unix.Setpriority(unix.PRIO_PROCESS, tid, n) == nil {
			old[tid] = 20 - prio
		}
	}
	var once sync.Once
	return func() { once.Do(func() { restoreNice(old) }) }
}

// restoreNice gives every thread its old nice value; threads created
// meanwhile inherited the boosted one and get the value the process had.
func restoreNice(old map[int]int) {
	base := 0
	for _, nice := range old {
		base = nice
		break
	}
	ents, _ := os.ReadDir("/proc/self/task")
	for _, e := range ents {
		tid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		nice, ok := old[tid]
		if !ok {
			nice = base
		}
		_ = unix.Setpriority(unix.PRIO_PROCESS, tid, nice)
	}
}

// BoostThread sets the nice value of the ptrace thread alone to n and
// returns a function that puts the old value back. During a live batch
// that thread serves every INT3 hit: it must get a CPU at once, but the
// rest of the tracer must not crowd the target's threads off the CPUs.
// The thread is set from here, by its id: a request to the ptrace thread
// would first wait for it to get a CPU at its old priority, up to 18 ms
// beside 4 busy threads of the target.
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
// threads keep the CPUs busy (the tracer's consumer: the shared buffer
// fills in tens of milliseconds at full speed). The returned function puts
// the old value back and unlocks the goroutine; call it on the same
// goroutine. Without root (or CAP_SYS_NICE) a negative n has no effect.
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
