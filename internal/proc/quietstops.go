package proc

import (
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"
)

// Quiet stops. The kernel sends the tracer a SIGCHLD for every stop of a
// tracee. The Go runtime takes it on the ptrace thread (the kernel prefers
// the tracee's tracer thread), then wakes the thread that waits for
// os/signal's queue, which wakes the goroutine that fans it out to the
// executors: one or two thread wake-ups per stop. While a batch runs, the
// ptrace thread reaps stops itself between the pieces of its writes, so
// those wake-ups are pure cost; with 2 vCPUs kept busy by the target, each
// one lands on a CPU a calling thread is waiting for, every INT3 hit.
//
// So while a batch runs SIGCHLD carries SA_NOCLDSTOP: stops and
// continues of tracees (and children) raise no signal, only the wake-up of
// a wait4 sleeper, which the kernel does in any case. Exits still signal.
// When the last batch ends the flag is cleared and every executor is
// woken once, for the stops that came meanwhile without a signal. A wait
// inside a batch for a stop that may take long (a single step over a
// blocking syscall) polls instead, every 50 µs (waitFor).

var quiet struct {
	mu sync.Mutex
	n  int // batches running
	on atomic.Bool
}

// saNoCldStop is SA_NOCLDSTOP of <asm/signal.h>.
const saNoCldStop = 1

// kernelSigaction is struct kernel_sigaction on x86-64.
type kernelSigaction struct {
	handler  uintptr
	flags    uint64
	restorer uintptr
	mask     uint64
}

// setNoCldStop sets or clears SA_NOCLDSTOP on SIGCHLD's action, keeping
// the rest of what the Go runtime installed.
func setNoCldStop(on bool) {
	var act kernelSigaction
	if _, _, e := syscall.RawSyscall6(syscall.SYS_RT_SIGACTION, uintptr(syscall.SIGCHLD), 0, uintptr(unsafe.Pointer(&act)), 8, 0, 0); e != 0 {
		return
	}
	if act.handler == 0 || act.handler == 1 {
		// SIG_DFL or SIG_IGN: nobody wakes on SIGCHLD; leave it.
		return
	}
	flags := act.flags &^ saNoCldStop
	if on {
		flags |= saNoCldStop
	}
	if flags == act.flags {
		return
	}
	act.flags = flags
	_, _, _ = syscall.RawSyscall6(syscall.SYS_RT_SIGACTION, uintptr(syscall.SIGCHLD), uintptr(unsafe.Pointer(&act)), 0, 8, 0, 0)
}

// quietStops silences stop notifications until the returned function is
// called. Calls nest, across processes.
func quietStops() func() {
	quiet.mu.Lock()
	quiet.n++
	if quiet.n == 1 {
		setNoCldStop(true)
		quiet.on.Store(true)
	}
	quiet.mu.Unlock()
	return func() {
		quiet.mu.Lock()
		quiet.n--
		last := quiet.n == 0
		if last {
			quiet.on.Store(false)
			setNoCldStop(false)
		}
		quiet.mu.Unlock()
		if last {
			wakeAll()
		}
	}
}

// wakeAll gives every executor the wake-up a SIGCHLD would have.
func wakeAll() {
	sigMu.Lock()
	for s := range sigSubs {
		select {
		case s <- struct{}{}:
		default:
		}
	}
	sigMu.Unlock()
}
