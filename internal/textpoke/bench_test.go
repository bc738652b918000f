package textpoke

import (
	"os"
	"strconv"
	"testing"
	"time"

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

func benchBatch(b *testing.B, n int, mode Mode) {
	st := startStress(b, testtarget.ClangNop5, n, "-t", "2")
	_, e := st.attach(b, Options{Mode: mode})
	on := make([]Patch, n)
	off := make([]Patch, n)
	for i := range on {
		call := st.callTo(b, i)
		on[i] = Patch{Addr: st.sites[i], Old: st.orig[i], New: call}
		off[i] = Patch{Addr: st.sites[i], Old: call, New: st.orig[i]}
	}
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
