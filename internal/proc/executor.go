package proc

import (
	"bytes"
	"os"
	"os/signal"
	"runtime"
	"strconv"
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
	// Try threads until one has no children (see loop). Each one
	// refused stays locked to its goroutine until the choice is made, so
	// that the runtime cannot offer it again.
	release := make(chan struct{})
	defer close(release)
	for try := 0; ; try++ {
		started := make(chan int)
		go e.loop(idle, try < maxThreadTries, started, release)
		if tid := <-started; tid > 0 {
			e.tid = tid
			return e
		}
	}
}

// maxThreadTries bounds newExecutor's search for a thread without
// children. Every thread refused is held until the search ends, so the
// runtime offers each at most once and starts a new one when none is left:
// the bound is only reached by a program with more threads than that which
// all have children, which then gets the last thread tried.
const maxThreadTries = 128

// loop is the executor goroutine. It locks itself to its thread, and with
// picky set gives that thread up if it has children: it sends -1 on
// started, waits for release, unlocks and returns. Otherwise it sends the
// thread's id and runs closures until the executor stops.
//
// Why the children matter: the executor reaps tracee stops with
// wait4(-1, __WALL|__WNOTHREAD), which covers the children of this very
// thread as well as its tracees. A child that some goroutine forked from
// this thread before the executor locked it would have its exit reaped
// here, where nobody expects it, and so lost to its exec.Cmd's Wait; worse,
// when another thread of this process traces that child (another
// executor), the kernel treats this thread as a tracer too, and shows it
// the child's exit and its ptrace stops, which its real tracer then never
// sees (kernel/exit.c, wait_consider_task: a child traced by its real
// parent's thread group is reaped as a tracee). Tests start their targets
// with os/exec from any thread, then attach: that is how a tracer once
// waited 10 s for the exit of a `sleep 0.1` that another executor had
// reaped.
func (e *executor) loop(idle func(), picky bool, started chan<- int, release <-chan struct{}) {
	runtime.LockOSThread()
	tid := syscall.Gettid()
	if picky && hasChildren(tid) {
		started <- -1
		<-release
		runtime.UnlockOSThread()
		return
	}
	started <- tid
	// The thread goes back to the scheduler when the executor stops
	// (by then every tracee is detached). Letting it die instead would
	// fire PR_SET_PDEATHSIG in any child forked from it: one Launch
	// started, or one forked before (a thread picked anyway, past
	// maxThreadTries).
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
}

// hasChildren reports whether thread tid of this process has children
// (/proc/self/task/TID/children). A kernel without that file
// (CONFIG_PROC_CHILDREN) reports none.
func hasChildren(tid int) bool {
	b, err := os.ReadFile("/proc/self/task/" + strconv.Itoa(tid) + "/children")
	return err == nil && len(bytes.TrimSpace(b)) > 0
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
