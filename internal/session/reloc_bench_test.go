package session

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/livetrace/livetrace/internal/testtarget"
	"github.com/livetrace/livetrace/internal/textpoke"
)

// BenchmarkRelocCall measures what tracing adds to one call of work_leaf,
// side by side: through its compiler NOP (nop5) and through a relocating
// site (a build without flags, reloc). The metric ns/call is the time of a
// traced run less an untraced one, per traced call.
func BenchmarkRelocCall(b *testing.B) {
	testtarget.RequireRoot(b)
	for _, v := range []struct {
		name string
		opts []testtarget.Option
	}{{"nop5", nil}, {"reloc", []testtarget.Option{testtarget.NoSites()}}} {
		b.Run(v.name, func(b *testing.B) {
			bin := testtarget.Build(b, "workload", testtarget.ClangNop5, v.opts...)
			tp := testtarget.Start(b, bin, "-t", "1")
			if _, err := tp.Expect("ready", 10*time.Second); err != nil {
				b.Fatal(err)
			}
			const iters = 200000
			run := func() time.Duration {
				best := time.Duration(1 << 62)
				for range 5 {
					t0 := time.Now()
					if _, err := testtarget.RunWorkload(tp, iters, 60*time.Second); err != nil {
						b.Fatal(err)
					}
					best = min(best, time.Since(t0))
				}
				return best
			}
			base := run()
			s, err := Start(tp.Pid(), Options{Funcs: []string{"work_leaf"}, Output: filepath.Join(b.TempDir(), "rec.data"), Chunks: 4096})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			b.ResetTimer()
			var traced time.Duration
			for range b.N {
				traced = run()
			}
			b.StopTimer()
			b.ReportMetric(float64(traced-base)/float64(3*iters), "ns/call")
		})
	}
}

// BenchmarkRelocLibcPatch measures the patch batches that enable and
// disable every function of the stock libc.so.6 that livetrace can trace
// (about 2000 relocating sites, `-m libc.so.6 -F '*'`), in live mode, in a
// program whose 4 threads keep calling strtol, qsort, malloc and free of
// that libc throughout. Per cycle (Start, then Close): the wall time of
// each batch, its syncs (membarrier calls in the target), the threads
// found inside a relocated region and stepped out, and the time the
// check of every thread took. The program's counts stay exact and its
// text is restored (checked after the last cycle).
func BenchmarkRelocLibcPatch(b *testing.B) {
	tp := startLibcCalls(b, "4")
	// The workers call libc for the whole benchmark, through every batch.
	stop := make(chan struct{})
	done := make(chan error, 1)
	var rounds int
	go func() {
		for {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			got, err := testtarget.RunWorkload(tp, 200, 60*time.Second)
			if err == nil && (got["strtol"] != 800 || got["qsort"] != 800) {
				err = fmt.Errorf("run 200 with 4 threads: %v; want 800 strtol and qsort calls", got)
			}
			if err != nil {
				done <- err
				return
			}
			rounds++
		}
	}()
	var on, off textpoke.Stats
	sites := 0
	b.ResetTimer()
	for i := range b.N {
		s, err := Start(tp.Pid(), Options{Modules: []string{"libc.so.6"}, Funcs: []string{"*"}, Mode: textpoke.ModeLive, Output: filepath.Join(b.TempDir(), fmt.Sprintf("rec%d.data", i))})
		if err != nil {
			b.Fatal(err)
		}
		en := s.PatchStats()
		if en.Mode != textpoke.ModeLive {
			b.Fatalf("patched in %v mode; want live", en.Mode)
		}
		sites = s.Functions()
		time.Sleep(50 * time.Millisecond) // let the workers run traced
		if err := s.Close(); err != nil {
			b.Fatal(err)
		}
		all := s.PatchStats()
		on = addStats(on, en)
		off = addStats(off, subStats(all, en))
	}
	b.StopTimer()
	close(stop)
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	if rounds == 0 {
		b.Fatal("the workers finished no round while the batches ran")
	}
	testtarget.CheckText(b, tp.Pid())
	n := float64(b.N)
	ms := func(d time.Duration) float64 { return float64(d) / 1e6 / n }
	b.ReportMetric(float64(sites), "sites")
	b.ReportMetric(ms(on.Duration), "enable-ms")
	b.ReportMetric(float64(on.Syncs)/n, "enable-syncs")
	b.ReportMetric(float64(on.SteppedOut)/n, "enable-stepped-out")
	b.ReportMetric(ms(on.RegionCheck), "enable-region-check-ms")
	b.ReportMetric(ms(off.Duration), "disable-ms")
	b.ReportMetric(float64(off.Syncs)/n, "disable-syncs")
	b.ReportMetric(float64(off.SteppedOut)/n, "disable-stepped-out")
	b.ReportMetric(ms(off.RegionCheck), "disable-region-check-ms")
}

func addStats(a, b textpoke.Stats) textpoke.Stats {
	a.Sites += b.Sites
	a.Syncs += b.Syncs
	a.Duration += b.Duration
	a.SteppedOut += b.SteppedOut
	a.RegionCheck += b.RegionCheck
	return a
}

func subStats(a, b textpoke.Stats) textpoke.Stats {
	a.Sites -= b.Sites
	a.Syncs -= b.Syncs
	a.Duration -= b.Duration
	a.SteppedOut -= b.SteppedOut
	a.RegionCheck -= b.RegionCheck
	return a
}
