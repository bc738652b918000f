package agent

import (
	"encoding/binary"
	"os"
	"syscall"
	"testing"
	"time"
)

func sum(m map[uint32]map[string]uint64, name string) uint64 {
	var n uint64
	for _, f := range m {
		n += f[name]
	}
	return n
}

func checkResults(t *testing.T, r *run, key string, want int64) {
	t.Helper()
	got := r.result(key)
	if len(got) == 0 {
		t.Errorf("no result %s", key)
	}
	for _, v := range got {
		if v != want {
			t.Errorf("result %s = %d, want %d", key, v, want)
		}
	}
}

// basicResults are the program outputs of the basic test with 20000 iterations.
func checkBasicResults(t *testing.T, r *run) {
	t.Helper()
	checkResults(t, r, "fib", 200*55)
	checkResults(t, r, "args", 200*(1+4+9+16+25+36+5+25))
	var tail int64
	for i := int64(0); i < 20000; i += 100 {
		tail += 2*i + 1
	}
	checkResults(t, r, "tail", tail)
}

func TestHarnessEntryMode(t *testing.T) {
	r := runHarness(t, runOpts{test: "basic", iters: 20000, ctl: Ctl{Enabled: true}, chunks: 2048, chunkRecords: 1024, pollEvery: time.Millisecond})
	checkBasicResults(t, r)
	if len(r.counts) != 4 {
		t.Errorf("ground truth from %d threads, want 4", len(r.counts))
	}
	r.noLoss()
	r.checkExactCounts()
	r.checkTimestamps()
	for _, recs := range r.recs {
		for _, rec := range recs {
			if rec.Kind != KindEntry || rec.Depth != 0 {
				t.Fatalf("entry mode record %+v", rec)
			}
			if !rec.CallerKnown {
				t.Fatalf("entry record without caller: %+v", rec)
			}
		}
	}
	if r.ctrs.Threads != 4 {
		t.Errorf("threads counter %d, want 4", r.ctrs.Threads)
	}
}

func TestHarnessGraphMode(t *testing.T) {
	r := runHarness(t, runOpts{test: "basic", iters: 20000, ctl: Ctl{Enabled: true, Graph: true}, chunks: 2048, chunkRecords: 1024, pollEvery: time.Millisecond})
	checkBasicResults(t, r)
	r.noLoss()
	r.checkExactCounts()
	r.checkTimestamps()
	if stale := r.checkGraph(false); stale != 0 {
		t.Errorf("%d stale frames", stale)
	}
	if r.ctrs.Overflow != 0 {
		t.Errorf("overflow %d", r.ctrs.Overflow)
	}
}

func TestHarnessDisabled(t *testing.T) {
	r := runHarness(t, runOpts{test: "basic", iters: 20000, ctl: Ctl{Graph: true}, pollEvery: time.Millisecond})
	checkBasicResults(t, r)
	if len(r.recs) != 0 || r.ctrs.Threads != 0 {
		t.Errorf("disabled agent recorded %d threads", len(r.recs))
	}
}

func TestHarnessDeepRecursion(t *testing.T) {
	const iters, depth = 20, 1500
	r := runHarness(t, runOpts{test: "deep", iters: iters, ctl: Ctl{Enabled: true, Graph: true}, chunks: 64, chunkRecords: 4096, pollEvery: time.Millisecond})
	checkResults(t, r, "deep", iters*depth+55)
	r.noLoss()
	r.checkGraph(false)
	calls := sum(r.counts, "w_deep")
	got := sum(r.entryCounts(), "w_deep")
	if got != iters*ShadowDepth || got+r.ctrs.Overflow != calls {
		t.Errorf("w_deep: %d entries + %d overflows, %d calls; want %d entries", got, r.ctrs.Overflow, calls, iters*ShadowDepth)
	}
}

func TestHarnessLongjmp(t *testing.T) {
	r := runHarness(t, runOpts{test: "jump", iters: 5000, ctl: Ctl{Enabled: true, Graph: true}, chunks: 64, chunkRecords: 4096, pollEvery: time.Millisecond})
	checkResults(t, r, "jumps", 5000)
	checkResults(t, r, "fib", 5000*5)
	r.noLoss()
	r.checkExactCounts()
	r.checkTimestamps()
	stale := r.checkGraph(true)
	// Each longjmp abandons the i%7+1 frames of w_jump.
	want := 0
	for i := 0; i < 5000; i++ {
		want += i%7 + 1
	}
	if stale != want {
		t.Errorf("%d abandoned frames, want %d", stale, want)
	}
}

func TestHarnessFork(t *testing.T) {
	r := runHarness(t, runOpts{test: "fork", iters: 1, ctl: Ctl{Enabled: true, Graph: true}, pollEvery: time.Millisecond})
	checkResults(t, r, "child", 42)
	checkResults(t, r, "fib", 55)
	if len(r.child) != 1 {
		t.Fatalf("child tids %v", r.child)
	}
	if _, ok := r.recs[r.child[0]]; ok {
		t.Errorf("forked child %d recorded events", r.child[0])
	}
	// The child's calls are not in the ground truth (it reports none).
	r.noLoss()
	r.checkExactCounts()
	r.checkGraph(false)
}

func TestHarnessTightLoop(t *testing.T) {
	const calls = 2000000
	r := runHarness(t, runOpts{test: "tight", iters: calls, ctl: Ctl{Enabled: true}, chunks: 8, chunkRecords: 256, pollEvery: 50 * time.Microsecond})
	got := sum(r.entryCounts(), "w_leaf")
	var lost uint64
	for _, l := range r.lost {
		lost += l
	}
	t.Logf("%d calls: %d records, %d lost (chunk headers), %d lost (counter)", calls, got, lost, r.ctrs.Lost)
	if got+r.ctrs.Lost != calls {
		t.Errorf("records %d + lost %d != calls %d", got, r.ctrs.Lost, calls)
	}
	if lost > r.ctrs.Lost {
		t.Errorf("chunk headers report %d lost, counter %d", lost, r.ctrs.Lost)
	}
	r.checkTimestamps()
}

func TestHarnessSigtrapBackstop(t *testing.T) {
	const calls = 1000
	r := runHarness(t, runOpts{test: "trap", iters: calls, ctl: Ctl{Enabled: true, Graph: true}, pollEvery: time.Millisecond,
		trapSites: map[string]bool{"w_leaf": true, "w_fib": true}})
	checkResults(t, r, "fib", 55)
	checkResults(t, r, "apptraps", 20) // raise() and int3 outside sites reach the app's handler
	r.noLoss()
	r.checkExactCounts()
	r.checkGraph(false)
	if want := uint64(calls + 177); r.ctrs.Traps != want {
		t.Errorf("%d traps emulated, want %d", r.ctrs.Traps, want)
	}
}

func TestHarnessSigtrapDefault(t *testing.T) {
	runHarness(t, runOpts{test: "trapdfl", iters: 1, pollEvery: time.Millisecond, wantSignal: syscall.SIGTRAP})
}

// TestHarnessDetach restores hijacked return addresses the way the tracer
// does before it unmaps the agent, then wipes the shadow stacks: any return
// still routed through lt_return would then hit ud2 and kill the harness.
func TestHarnessDetach(t *testing.T) {
	restored := 0
	r := runHarness(t, runOpts{test: "detach", iters: 1, ctl: Ctl{Enabled: true, Graph: true}, pollEvery: time.Millisecond,
		held: func(pm *os.File, a Addrs, _ func(func(*Consumer, collectFunc))) {
			if _, err := pm.WriteAt(Ctl{}.Encode(), int64(a.Ctl)); err != nil {
				t.Fatal(err)
			}
			table := make([]byte, MaxThreads*SizeofThread)
			if _, err := pm.ReadAt(table, int64(a.ThreadSlotAddr(0))); err != nil {
				t.Fatal(err)
			}
			for i := 0; i < MaxThreads; i++ {
				s, _ := DecodeThreadSlot(table[i*SizeofThread:])
				if !s.InUse() {
					continue
				}
				if d := (i - ThreadHash(s.Key) + MaxThreads) % MaxThreads; d >= MaxProbes {
					t.Errorf("slot %d is %d probes from its hash", i, d)
				}
				buf := make([]byte, s.Frames()*SizeofShadow)
				if _, err := pm.ReadAt(buf, int64(a.ShadowStackAddr(i))); err != nil {
					t.Fatal(err)
				}
				stack := DecodeShadowStack(buf, s.Frames())
				for j := len(stack) - 1; j >= 0; j-- {
					e := stack[j]
					cur := make([]byte, 8)
					if _, err := pm.ReadAt(cur, int64(e.Slot)); err != nil {
						t.Fatal(err)
					}
					if binary.LittleEndian.Uint64(cur) != a.Return {
						continue
					}
					if _, err := pm.WriteAt(binary.LittleEndian.AppendUint64(nil, e.Orig), int64(e.Slot)); err != nil {
						t.Fatal(err)
					}
					restored++
				}
				// Forget the frames: lt_return can no longer find them.
				if _, err := pm.WriteAt(make([]byte, 4), int64(a.ThreadSlotAddr(i)+ThreadDepthOff)); err != nil {
					t.Fatal(err)
				}
			}
		}})
	checkResults(t, r, "hold", 10)
	if restored != 11 {
		t.Errorf("restored %d return addresses, want 11", restored)
	}
	// Entries only: the exits happened after tracing was disabled.
	for _, recs := range r.recs {
		for _, rec := range recs {
			if rec.Kind != KindEntry {
				t.Errorf("record %+v after detach", rec)
			}
		}
	}
}

// TestHarnessSignals interrupts a traced thread every 20us with
// a handler that calls traced functions: handler calls that land inside
// the agent are dropped and counted, everything else is recorded exactly,
// and the graph stays consistent.
func TestHarnessSignals(t *testing.T) {
	t.Run("graph", func(t *testing.T) { testHarnessSignals(t, true) })
	t.Run("entry", func(t *testing.T) { testHarnessSignals(t, false) })
}

func testHarnessSignals(t *testing.T, graph bool) {
	const iters = 2000
	r := runHarness(t, runOpts{test: "signal", iters: iters, ctl: Ctl{Enabled: true, Graph: graph}, chunks: 512, chunkRecords: 4096, pollEvery: time.Millisecond})
	checkResults(t, r, "fib", iters*55)
	checkResults(t, r, "args", iters*121)
	h := r.result("handler")
	if len(h) != 1 || h[0] == 0 {
		t.Fatalf("handler ran %v times", h)
	}
	if r.ctrs.Lost != 0 || r.ctrs.TableFull != 0 {
		t.Errorf("drops: %+v", r.ctrs)
	}
	var calls, entries uint64
	for _, f := range r.counts {
		for _, n := range f {
			calls += n
		}
	}
	for _, f := range r.entryCounts() {
		for _, n := range f {
			entries += n
		}
	}
	t.Logf("%d handler runs, %d calls, %d entries, %d re-entries dropped", h[0], calls, entries, r.ctrs.Reentered)
	if entries+r.ctrs.Reentered != calls {
		t.Errorf("entries %d + reentered %d != calls %d", entries, r.ctrs.Reentered, calls)
	}
	if graph {
		r.checkGraph(false)
	}
	r.checkTimestamps()
}

// TestHarnessRetire retires the slot of an exited thread the way the
// tracer does at PTRACE_EVENT_EXIT. The next thread usually gets the same
// thread pointer (glibc caches stacks); without the retirement it would
// record under the dead thread's tid.
func TestHarnessRetire(t *testing.T) {
	const iters = 1000
	retired := 0
	r := runHarness(t, runOpts{test: "retire", iters: iters, ctl: Ctl{Enabled: true, Graph: true}, pollEvery: time.Millisecond,
		held: func(pm *os.File, a Addrs, withConsumer func(func(*Consumer, collectFunc))) {
			table := make([]byte, MaxThreads*SizeofThread)
			if _, err := pm.ReadAt(table, int64(a.ThreadSlotAddr(0))); err != nil {
				t.Fatal(err)
			}
			for i := 0; i < MaxThreads; i++ {
				s, _ := DecodeThreadSlot(table[i*SizeofThread:])
				if !s.InUse() {
					continue
				}
				if s.Chunk != 0 {
					withConsumer(func(c *Consumer, collect collectFunc) {
						if _, err := c.RetireChunk(s.Chunk, collect); err != nil {
							t.Error(err)
						}
					})
				}
				if _, err := pm.WriteAt(RetiredKey(), int64(a.ThreadSlotAddr(i)+ThreadKeyOff)); err != nil {
					t.Fatal(err)
				}
				retired++
			}
		}})
	if retired != 1 {
		t.Errorf("retired %d slots, want 1", retired)
	}
	if len(r.counts) != 2 {
		t.Fatalf("ground truth from %d threads, want 2", len(r.counts))
	}
	r.noLoss()
	r.checkExactCounts()
	r.checkGraph(false)
	if r.ctrs.Threads != 2 {
		t.Errorf("%d slots claimed, want 2", r.ctrs.Threads)
	}
}

// TestHarnessUcontext runs coroutines on ucontexts in graph mode, two
// threads at once: the context's stack is an array in a traced frame (it
// lies within StackWindow of the frames it interrupts, which the agent
// once took for frames left by longjmp and dropped: the program died of
// ud2) or a malloc'd block, and traced frames on both stacks are suspended
// in turn. The program must compute what it computes untraced, and every
// frame must get its exit record.
func TestHarnessUcontext(t *testing.T) {
	const iters = 300
	r := runHarness(t, runOpts{test: "ucontext", iters: iters, ctl: Ctl{Enabled: true, Graph: true}, chunks: 256, chunkRecords: 4096, pollEvery: time.Millisecond})
	checkResults(t, r, "onframe", iters*20)
	checkResults(t, r, "heap", iters*20)
	r.noLoss()
	r.checkExactCounts()
	r.checkTimestamps()
	r.checkMatched()
	if r.ctrs.Overflow != 0 {
		t.Errorf("overflow %d: holes in the shadow stack are not given back", r.ctrs.Overflow)
	}
}

// TestHarnessLongjmpUnhooked is TestHarnessLongjmp with longjmp called
// directly, as a program that links libc statically does: the agent cannot
// tell the frames a jump left from live frames of another stack until
// their slots are overwritten, so it keeps them that long. The program
// must still compute the right results, every call must be recorded and
// the shadow stack must not fill up.
func TestHarnessLongjmpUnhooked(t *testing.T) {
	r := runHarness(t, runOpts{test: "jump", iters: 5000, ctl: Ctl{Enabled: true, Graph: true}, chunks: 64, chunkRecords: 4096, pollEvery: time.Millisecond, noHooks: true})
	checkResults(t, r, "jumps", 5000)
	checkResults(t, r, "fib", 5000*5)
	r.noLoss()
	r.checkExactCounts()
	r.checkTimestamps()
	if r.ctrs.Overflow != 0 {
		t.Errorf("overflow %d: stale frames were never ended", r.ctrs.Overflow)
	}
	maxDepth := uint8(0)
	for _, recs := range r.recs {
		for _, rec := range recs {
			maxDepth = max(maxDepth, rec.Depth)
		}
	}
	t.Logf("deepest record at depth %d (7 without stale frames)", maxDepth)
}

// TestHarnessFreedStack abandons a coroutine suspended inside traced frames,
// unmaps its stack, and runs a new coroutine on the stack right above: the
// agent, which must read the abandoned frames' slots to tell them from live
// frames, must not fault on the unmapped stack, and must end them (else
// they fill the shadow stack).
func TestHarnessFreedStack(t *testing.T) {
	const iters = 2000
	r := runHarness(t, runOpts{test: "freed", iters: iters, ctl: Ctl{Enabled: true, Graph: true}, chunks: 64, chunkRecords: 4096, pollEvery: time.Millisecond})
	checkResults(t, r, "freed", iters)
	r.noLoss()
	r.checkExactCounts()
	if r.ctrs.Overflow != 0 {
		t.Errorf("overflow %d: the abandoned frames were never ended", r.ctrs.Overflow)
	}
}
