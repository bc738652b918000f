package textpoke

import (
	"os"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/livetrace/livetrace/internal/gcpause"
	"github.com/livetrace/livetrace/internal/proc"
	"github.com/livetrace/livetrace/internal/testtarget"
)

// BenchmarkBatch100k enables and then disables all 100,000 sites of a
// fixture while 2 threads call every function, and reports the wall time of
// one batch, the syncs and /proc/PID/mem writes per batch, the INT3 hits
// emulated, and the longest gap a calling thread saw between two calls
// (stall-ns). Run it with `make bench` or
//
//	go test -run '^$' -bench Batch100k -benchtime 5x ./internal/textpoke
func BenchmarkBatch100k(b *testing.B) {
	testtarget.RequireRoot(b)
	n := 100000
	if s := os.Getenv("LIVETRACE_BENCH_SITES"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	for _, mode := range []Mode{ModeLive, ModeStop} {
		b.Run(mode.String(), func(b *testing.B) { benchBatch(b, n, mode) })
	}
}

// toggles returns the batches that enable and disable the first n
// functions of st.
func (st *stressTarget) toggles(b testing.TB, n int) (on, off []Patch) {
	on = make([]Patch, n)
	off = make([]Patch, n)
	for i := range on {
		call := st.callTo(b, i)
		on[i] = Patch{Addr: st.sites[i], Old: st.orig[i], New: call}
		off[i] = Patch{Addr: st.sites[i], Old: call, New: st.orig[i]}
	}
	return on, off
}

func benchBatch(b *testing.B, n int, mode Mode) {
	st := startStress(b, testtarget.ClangNop5, n, "-t", "2")
	_, e := st.attach(b, Options{Mode: mode})
	on, off := st.toggles(b, n)
	hammer := func() {
		if err := testtarget.HammerStress(st.tp, 30*time.Second); err != nil {
			b.Fatal(err)
		}
	}
	stop := func() float64 {
		stall, _, err := testtarget.StopStress(st.tp, 60*time.Second)
		if err != nil {
			b.Fatal(err)
		}
		return float64(stall.Nanoseconds())
	}
	// The baseline: the longest gap the same threads see on this machine
	// when nothing patches them, over a comparable time. On a shared 2-CPU
	// machine the scheduler alone makes gaps of milliseconds.
	hammer()
	time.Sleep(time.Duration(b.N) * 150 * time.Millisecond)
	baseline := stop()
	hammer()
	var total Stats
	var maxBatch time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, batch := range [][]Patch{on, off} {
			s, err := e.Apply(batch)
			if err != nil {
				b.Fatal(err)
			}
			total.Syncs += s.Syncs
			total.Writes += s.Writes
			total.Traps += s.Traps
			total.Duration += s.Duration
			total.Paused += s.Paused
			maxBatch = max(maxBatch, s.Duration)
		}
	}
	b.StopTimer()
	stall := stop()
	batches := float64(2 * b.N)
	b.ReportMetric(float64(total.Duration.Milliseconds())/batches, "ms/batch")
	b.ReportMetric(float64(maxBatch.Milliseconds()), "max-ms/batch")
	b.ReportMetric(float64(total.Syncs)/batches, "syncs/batch")
	b.ReportMetric(float64(total.Writes)/batches, "writes/batch")
	b.ReportMetric(float64(total.Traps)/batches, "traps/batch")
	b.ReportMetric(float64(total.Paused.Microseconds())/batches, "paused-µs/batch")
	b.ReportMetric(stall/1e3, "max-stall-µs")
	b.ReportMetric(baseline/1e3, "baseline-stall-µs")
	b.ReportMetric(0, "ns/op")
	if _, err := e.RestoreAll(); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkBatchStall is BenchmarkBatch100k's stall, batch by batch: the
// longest gap a calling thread saw around each live batch of 100,000
// sites (from 10 ms before the batch to 10 ms after), beside the longest
// gap in windows as long without a batch, over b.N rounds of a window and
// two batches (at least 12 rounds). It reports the median and the largest
// of each: the single largest gap of a long run, which BenchmarkBatch100k
// reports, is the tail of a distribution that a few rounds cannot show.
// Each round also runs the kernel's part of a batch alone (kernelFloor):
// floor-stall-µs and median-floor-ms/batch.
//
//	go test -run '^$' -bench BatchStall -benchtime 20x ./internal/textpoke
func BenchmarkBatchStall(b *testing.B) {
	testtarget.RequireRoot(b)
	const n = 100000
	st := startStress(b, testtarget.ClangNop5, n, "-t", "2")
	_, e := st.attach(b, Options{Mode: ModeLive})
	on, off := st.toggles(b, n)
	report := func(d []time.Duration, name string) {
		slices.Sort(d)
		b.ReportMetric(float64(d[len(d)/2].Microseconds()), "median-"+name)
		b.ReportMetric(float64(d[len(d)-1].Microseconds()), "max-"+name)
	}
	around := func(f func()) time.Duration {
		if err := testtarget.HammerStress(st.tp, 30*time.Second); err != nil {
			b.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
		f()
		time.Sleep(10 * time.Millisecond)
		gap, _, err := testtarget.StopStress(st.tp, 60*time.Second)
		if err != nil {
			b.Fatal(err)
		}
		return gap
	}
	apply := func(ps []Patch) time.Duration {
		s, err := e.Apply(ps)
		if err != nil {
			b.Fatal(err)
		}
		return s.Duration
	}
	// The first batches merge the sites into the trap table; the rounds
	// measure the toggles a session's batches are.
	apply(on)
	apply(off)
	runs, err := e.layRuns(on, nil, false)
	if err != nil {
		b.Fatal(err)
	}
	var base, batch, took, floor, floorTook []time.Duration
	b.ResetTimer()
	for i := 0; i < max(b.N, 12); i++ {
		base = append(base, around(func() { time.Sleep(30 * time.Millisecond) }))
		for _, ps := range [][]Patch{on, off} {
			batch = append(batch, around(func() { took = append(took, apply(ps)) }))
		}
		floor = append(floor, around(func() { floorTook = append(floorTook, e.kernelFloor(b, runs)) }))
	}
	b.StopTimer()
	report(floor, "floor-stall-µs")
	slices.Sort(floorTook)
	b.ReportMetric(float64(floorTook[len(floorTook)/2].Microseconds())/1e3, "median-floor-ms/batch")
	report(batch, "stall-µs")
	report(base, "baseline-stall-µs")
	slices.Sort(took)
	b.ReportMetric(float64(took[len(took)/2].Microseconds())/1e3, "median-ms/batch")
	b.ReportMetric(0, "ns/op")
	if _, err := e.RestoreAll(); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkBookkeeping is the tracer's own work in a batch of 100,000
// sites, without the target: the text is in memory, so what it measures is
// the Go side of BenchmarkBatch100k (checking the patches, comparing the
// text, the trap table, the three steps, settling), which the system calls
// and the INT3 hits come on top of. The patches' bytes are small
// allocations spread over the heap, as a session's are.
//
//	go test -run '^$' -bench Bookkeeping ./internal/textpoke
func BenchmarkBookkeeping(b *testing.B) {
	const n, stride = 100000, 64
	m := newMemEngine(n * stride)
	var spread [][]byte
	on, off := make([]Patch, n), make([]Patch, n)
	for i := range on {
		a := m.base + uint64(i*stride)
		nop := append([]byte(nil), 0x0f, 0x1f, 0x44, 0x00, 0x00)
		call, err := Call(a, m.base+uint64(n*stride))
		if err != nil {
			b.Fatal(err)
		}
		spread = append(spread, make([]byte, 48))
		on[i] = Patch{Addr: a, Old: nop, New: call}
		off[i] = Patch{Addr: a, Old: call, New: nop}
		copy(m.text[i*stride:], nop)
	}
	e, write := m.Engine, m.write
	var verify, publish, passes, settle time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, batch := range [][]Patch{on, off} {
			relax := gcpause.Relax()
			t1 := time.Now()
			bt, err := e.verify(batch, false, true)
			if err != nil {
				b.Fatal(err)
			}
			t2 := time.Now()
			e.publish(bt)
			t3 := time.Now()
			for _, st := range []step{stepBreak, stepTail, stepHead} {
				if err := e.pass(bt, write, st, nil); err != nil {
					b.Fatal(err)
				}
			}
			t4 := time.Now()
			if e.settle(bt) != 0 {
				b.Fatal("sites left alone")
			}
			t5 := time.Now()
			relax()
			verify += t2.Sub(t1)
			publish += t3.Sub(t2)
			passes += t4.Sub(t3)
			settle += t5.Sub(t4)
		}
	}
	b.StopTimer()
	per := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(2*b.N) / 1e3 }
	b.ReportMetric(per(verify), "verify-ms")
	b.ReportMetric(per(publish), "publish-ms")
	b.ReportMetric(per(passes), "passes-ms")
	b.ReportMetric(per(settle), "settle-ms")
	b.ReportMetric(per(verify+publish+passes+settle), "ms/batch")
	b.ReportMetric(0, "ns/op")
	runtime.KeepAlive(spread)
}

// kernelFloor does the system calls of a live batch over runs and nothing
// else, and returns how long they took: the text read once (verify) and
// three times read again and written back unchanged (the passes), each
// pass on two threads boosted as a batch's are, whole runs at a time,
// without a sync, an INT3 or any comparison. Writing the bytes the text
// already holds changes nothing for the threads running it. This is the
// floor under a batch's time on the machine it runs on
// (BenchmarkBatchStall reports it beside the batch).
func (e *Engine) kernelFloor(b *testing.B, runs []*run) time.Duration {
	pass := func(write bool) {
		var next atomic.Int64
		var wg sync.WaitGroup
		for range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer proc.BoostCaller(-10)()
				defer proc.ShortSlice(proc.BatchSlice)()
				for {
					k := int(next.Add(1)) - 1
					if k >= len(runs) {
						return
					}
					r := runs[k]
					if err := e.readText(r.addr, r.buf); err != nil {
						b.Error(err)
						return
					}
					if write {
						if err := e.p.WriteMem(r.addr, r.buf); err != nil {
							b.Error(err)
							return
						}
					}
				}
			}()
		}
		wg.Wait()
	}
	t0 := time.Now()
	pass(false)
	for range 3 {
		pass(true)
	}
	return time.Since(t0)
}
