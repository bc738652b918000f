package tracefiletest

import "github.com/livetrace/livetrace/internal/tracefile"

// Scenario builds the recording the reader tests share. In graph mode it
// holds:
//   - thread 100 "demo": an exit without entry (setup), nested calls with
//     known durations, recursion (fib), a leaf call, a stretch of lost
//     events that hides two entries (resynced with Depth), and a call still
//     running at the end (compute);
//   - thread 101 "worker-1": a loop of nested calls into a second module
//     (libhash), and a C++ name;
//   - thread 102 "worker-2": a lost exit (libhash) inside a call that
//     finishes.
//
// In entry mode the same calls record only their entries.
//
// Times are in microseconds, plus a few nanoseconds here and there so that
// the ns digits of outputs are exercised too.
func Scenario(mode tracefile.Mode) *Builder {
	b := New(mode)

	m := b.Thread(100, "demo", 0)
	m.Advance(5*us).OrphanExit("setup", 0).Advance(20 * us)
	// run #1: 100 + parse 250 + compute(fib(3)) + write_output 1500.
	m.Enter("run").Advance(100 * us)
	m.Call("parse", 250*us).Advance(10 * us)
	m.Enter("compute").Advance(40 * us)
	fib(m, 3)
	m.Advance(60 * us).Exit()
	m.Call("write_output", 1500*us).Advance(20 * us)
	m.Exit()
	m.Advance(200 * us)
	// run #2: the entries of compute and fib are lost.
	m.Enter("run").Advance(50 * us)
	m.Call("parse", 300*us)
	m.Lose(2).Enter("compute").Advance(30*us).Call("fib", 70*us).Advance(30 * us).Exit()
	m.Advance(25 * us).Exit()
	m.Advance(100 * us)
	// run #3: compute still runs at the end.
	m.Enter("run").Advance(40 * us)
	m.Call("parse", 200*us).Advance(5 * us)
	m.Enter("compute").Advance(800 * us)

	w := b.Thread(101, "worker-1", 50*us)
	w.Enter("worker")
	for i := int64(0); i < 3; i++ {
		w.Advance(30 * us).Enter("process").Advance(20 * us)
		w.Call("libhash_update", (80+10*i)*us).Advance((300 + 100*i) * us)
		w.Call("std::vector<int>::push_back(int const&)", 15*us)
		w.Exit()
	}
	w.Advance(10 * us).Exit()
	w.Advance(40*us).Call("idle", 1000*us)

	v := b.Thread(102, "worker-2", 120*us)
	v.Enter("process").Advance(30 * us)
	v.Enter("libhash_update").Advance(90 * us).Lose(1).Exit()
	v.Advance(45 * us).Exit()
	v.Advance(15*us).Call("idle", 400*us)
	return b
}

// us is a microsecond in ns.
const us = 1000

// fib makes the recursive calls of fib(n): each frame spends 10 us before
// and 5 us (plus n ns) after its children.
func fib(t *Thread, n int) {
	t.Enter("fib").Advance(10 * us)
	if n >= 2 {
		fib(t, n-1)
		fib(t, n-2)
	}
	t.Advance(5*us + int64(n)).Exit()
}
