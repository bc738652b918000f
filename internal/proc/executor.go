package proc

import (
	"os"
	"os/signal"
	"runtime"
	"sync"
	"syscall"
)

// executor runs closures on one goroutine that is locked to one OS thread.
//
// Linux ties a ptrace relationship to the tracer *thread*, not the process:
// every ptrace request for a tracee must come from the thread that attached
// it (kernel/ptrace.c, ptrace_check_attach: child->ptrace && child->parent ==
// current). Go moves goroutines between threads freely, so every ptrace call,
// and every wait4 that reaps tracee stops, goes through one executor, as in
// delve's pkg/proc/native (execPtraceFunc).
//
// Between closures the executor calls idle whenever a SIGCHLD arrives (the
// kernel sends one to the tracer for every tracee stop) and on a slow tick,
// so that tracee stops are handled even while nobody asks for anything.
//
// An executor is safe for concurrent use; closures run one at a time.
type executor struct {
	fns  chan func()
	done chan struct{}
	wake chan struct{} // SIGCHLD arrived; buffered, coalescing
	once sync.Once
	// tid is the thread's id, set before newExecutor returns.
	tid int
}

func newExecutor(idle func()) *executor {
	e := &executor{
		fns:  make(chan func()),
		done: make(chan struct{}),
		wake: make(chan struct{}, 1),
	}
	subscribeSIGCHLD(e.wake)
	started := make(chan int)
	go func() {
		runtime.LockOSThread()
		started <- syscall.Gettid()
		// The thread goes back to the scheduler when the executor stops
		// (by then every tracee is detached). Letting it die instead
		// would fire PR_SET_PDEATHSIG in any child that some goroutine
		// happened to fork from this very thread earlier.
		defer runtime.UnlockOSThread()
		defer unsubscribeSIGCHLD(e.wake)
		for {
			select {
			case fn := <-e.fns:
				fn()
			case <-e.wake:
				// A request waiting goes first: idle work is
				// bounded, and more of it can wait.
				select {
				case fn := <-e.fns:
					fn()
				default:
				}
				idle()
			case <-e.done:
				return
			}
		}
	}()
	e.tid = <-started
	return e
}

// run executes fn on the executor thread and waits for it to return. It
// returns false, without running fn, when the executor has stopped.
func (e *executor) run(fn func()) bool {
	ch := make(chan struct{})
	select {
	case e.fns <- func() {
		defer close(ch)
		fn()
	}:
	case <-e.done:
		return false
	}
	<-ch
	return true
}

// try hands fn to the executor thread if that thread is waiting for work
// now, and returns at once: it does not wait for fn to run, nor for a
// busy executor to be free. It reports whether fn was handed over.
func (e *executor) try(fn func()) bool {
	select {
	case e.fns <- fn:
		return true
	default:
		return false
	}
}

// stop ends the executor goroutine and its OS thread. Only call it from
// outside the executor.
func (e *executor) stop() { e.once.Do(func() { close(e.done) }) }

// SIGCHLD fan-out: signal.Notify delivers to every registered channel, but
// one process-wide subscription is enough; each executor gets a coalescing
// wake-up.
var (
	sigMu   sync.Mutex
	sigSubs = map[chan struct{}]bool{}
	sigOnce sync.Once
)

func subscribeSIGCHLD(ch chan struct{}) {
	sigOnce.Do(func() {
		c := make(chan os.Signal, 16)
		signal.Notify(c, syscall.SIGCHLD)
		go func() {
			for range c {
				wakeAll()
			}
		}()
	})
	sigMu.Lock()
	sigSubs[ch] = true
	sigMu.Unlock()
}

func unsubscribeSIGCHLD(ch chan struct{}) {
	sigMu.Lock()
	delete(sigSubs, ch)
	sigMu.Unlock()
}
