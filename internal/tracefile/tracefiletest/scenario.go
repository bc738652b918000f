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
func Scenario(mode tracefile.Mode) *Builder {
	b := New(mode)

	m := b.Thread(100, "demo", 0)
	m.Advance(5).OrphanExit("setup", 0).Advance(20)
	// run #1: 100 + parse 250 + compute(fib(3)) + write_output 1500.
	m.Enter("run").Advance(100)
	m.Call("parse", 250).Advance(10)
	m.Enter("compute").Advance(40)
	fib(m, 3)
	m.Advance(60).Exit()
	m.Call("write_output", 1500).Advance(20)
	m.Exit()
	m.Advance(200)
	// run #2: the entries of compute and fib are lost.
	m.Enter("run").Advance(50)
	m.Call("parse", 300)
	m.Lose(2).Enter("compute").Advance(30).Call("fib", 70).Advance(30).Exit()
	m.Advance(25).Exit()
	m.Advance(100)
	// run #3: compute still runs at the end.
	m.Enter("run").Advance(40)
	m.Call("parse", 200).Advance(5)
	m.Enter("compute").Advance(800)

	w := b.Thread(101, "worker-1", 50)
	w.Enter("worker")
	for i := int64(0); i < 3; i++ {
		w.Advance(30).Enter("process").Advance(20)
		w.Call("libhash_update", 80+10*i).Advance(300 + 100*i)
		w.Call("std::vector<int>::push_back(int const&)", 15)
		w.Exit()
	}
	w.Advance(10).Exit()
	w.Advance(40).Call("idle", 1000)

	v := b.Thread(102, "worker-2", 120)
	v.Enter("process").Advance(30)
	v.Enter("libhash_update").Advance(90).Lose(1).Exit()
	v.Advance(45).Exit()
	v.Advance(15).Call("idle", 400)
	return b
}

// fib makes the recursive calls of fib(n): each frame spends 10 ns before
// and 5 ns after its children.
func fib(t *Thread, n int) {
	t.Enter("fib").Advance(10)
	if n >= 2 {
		fib(t, n-1)
		fib(t, n-2)
	}
	t.Advance(5).Exit()
}
