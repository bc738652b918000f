package session

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/livetrace/livetrace/internal/testtarget"
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
