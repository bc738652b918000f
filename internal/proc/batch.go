package proc

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"golang.org/x/sys/unix"
)

// Batch is a sequence of operations that runs on the ptrace thread as one
// closure, so that tracee stops are handled between its steps without any
// hand-off: while the text holds INT3s, a thread that traps must not wait
// for a goroutine to be scheduled. Writes are cut into pieces, with the
// pending stops handled after each piece, so no trapped thread waits
// longer than one piece takes to write (tens of microseconds).
//
// A Batch is only valid inside the function passed to [Process.Batch].
type Batch struct {
	p *Process
}

// batchPiece is the most a Batch writes before it handles pending stops.
const batchPiece = 32 << 10

// Batch runs fn on the ptrace thread with a Batch handle.
func (p *Process) Batch(fn func(b *Batch) error) error {
	return p.doErr(func() error {
		defer quietStops()()
		return fn(&Batch{p: p})
	})
}

// HoldRemote is [Process.HoldRemote] inside a batch. The Remote's methods
// must only be called within the batch.
func (b *Batch) HoldRemote() (*Remote, error) {
	r, err := b.p.holdRemoteLocked(0)
	if err != nil {
		return nil, err
	}
	r.inline = true
	return r, nil
}

// Write writes data at addr in pieces, handling pending stops (INT3 hits,
// new threads, signals) between pieces: about one per thread, so that
// threads which trap again as soon as they run on (every function they
// call holds an INT3) cannot keep the writes from going on. Draining every
// stop instead (up to reapLimit) made a pass over the 600 KB of text of
// 10,000 sites, with 4 threads calling them all, take 17 ms instead of
// under one, and every thread trapped throughout.
func (b *Batch) Write(addr uint64, data []byte) error {
	for len(data) > 0 {
		n := min(len(data), batchPiece)
		if err := b.p.mem.Write(addr, data[:n]); err != nil {
			return err
		}
		b.p.reapN(len(b.p.threads) + 1)
		addr += uint64(n)
		data = data[n:]
	}
	return nil
}

// Pump handles every pending stop, and reports whether there was one.
func (b *Batch) Pump() bool { return b.p.reap() }

// EachThread stops the threads of the process one at a time, while the
// others keep running, and calls fn with the stopped thread's registers;
// fn may read the target's memory (its stack) meanwhile. When fn returns
// a range lo < hi, the thread is single-stepped until its program counter
// is outside [lo, hi) (at most maxSteps steps, signals held meanwhile) and
// fn is called again with its new registers. Then the thread runs on, or
// returns to the group-stop it was in.
//
// The children that share the process's memory until they exec (vfork,
// posix_spawn) are visited too, first. Threads created meanwhile are not
// visited: a caller uses EachThread when
// no new thread can start in the state it looks for (a thread inherits
// nothing of its creator's program counter but the return of clone). A
// thread borrowed by a Remote cannot be visited; the batch releases its
// Remote first. A thread that exits is skipped.
func (b *Batch) EachThread(maxSteps int, fn func(tid int, regs *unix.PtraceRegs) (lo, hi uint64, err error)) error {
	p := b.p
	// The children that share the process's memory run its text too
	// (sharedkids.go).
	if err := p.visitShared(maxSteps, fn); err != nil {
		return err
	}
	tids := make([]int, 0, len(p.threads))
	for tid := range p.threads {
		tids = append(tids, tid)
	}
	slices.Sort(tids)
	for _, tid := range tids {
		t := p.threads[tid]
		if t == nil || !p.live(t) || t.exiting {
			continue
		}
		if t.role == roleParked && t.state == stopped {
			// Parked at the breakpoint (breakpoint.go), in the
			// loader: looked at where it is, never stepped.
			var regs unix.PtraceRegs
			if err := unix.PtraceGetRegs(t.tid, &regs); err != nil {
				continue
			}
			if lo, hi, err := fn(t.tid, &regs); err != nil {
				return err
			} else if lo < hi {
				return fmt.Errorf("inspect thread %d: parked at the loader's breakpoint inside [%#x, %#x)", tid, lo, hi)
			}
			continue
		}
		if t.role != roleFree && t.role != roleHeld {
			return fmt.Errorf("inspect thread %d: it is busy", tid)
		}
		wasFree := t.role == roleFree
		p.interrupt(t)
		if err := p.waitBlocking(t, func() bool { return !p.live(t) || t.state == stopped }, 5*time.Second); err != nil {
			return fmt.Errorf("stop thread %d: %w", tid, err)
		}
		if !p.live(t) {
			continue
		}
		err := p.inspect(t, maxSteps, fn)
		if wasFree && !p.holdAll && p.live(t) {
			t.role = roleFree
			if t.state == stopped {
				if t.kind == stopGroup {
					p.listen(t)
				} else {
					p.fixInterrupted(t)
					p.resume(t, 0)
				}
			}
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// inspect is EachThread's visit of t, held and stopped.
func (p *Process) inspect(t *thread, maxSteps int, fn func(tid int, regs *unix.PtraceRegs) (lo, hi uint64, err error)) error {
	for round := 0; ; round++ {
		var regs unix.PtraceRegs
		if err := unix.PtraceGetRegs(t.tid, &regs); err != nil {
			if errors.Is(err, unix.ESRCH) {
				return nil
			}
			return fmt.Errorf("read registers of thread %d: %w", t.tid, err)
		}
		lo, hi, err := fn(t.tid, &regs)
		if err != nil || lo >= hi {
			return err
		}
		if round > 0 {
			return fmt.Errorf("thread %d is still in [%#x, %#x) after single-stepping", t.tid, lo, hi)
		}
		if err := p.stepOut(t, lo, hi, maxSteps); err != nil {
			return fmt.Errorf("single-step thread %d out of [%#x, %#x): %w", t.tid, lo, hi, err)
		}
		if !p.live(t) || t.state != stopped {
			return nil
		}
	}
}
