package agent

import (
	"testing"
	"time"
)

// BenchmarkAgentCall runs the harness's self-timed loop: an untraced call,
// a traced call (mode per sub-benchmark), a bare rdtsc and a pushfq/popfq
// pair, 1M iterations each, and reports ns per iteration of each.
func BenchmarkAgentCall(b *testing.B) {
	for _, m := range []struct {
		name string
		ctl  Ctl
	}{
		{"disabled", Ctl{}},
		{"entry", Ctl{Enabled: true}},
		{"graph", Ctl{Enabled: true, Graph: true}},
	} {
		b.Run(m.name, func(b *testing.B) {
			var r *run
			for i := 0; i < b.N; i++ {
				r = runHarness(b, runOpts{test: "bench", iters: 1 << 20, ctl: m.ctl, chunks: 520, chunkRecords: 4096, pollEvery: time.Millisecond})
			}
			if r.ctrs.Lost != 0 {
				b.Errorf("%d events lost: the numbers include the drop path", r.ctrs.Lost)
			}
			for _, k := range []string{"untraced", "traced", "rdtsc", "pushfq_popfq"} {
				if v := r.result(k + "_ps"); len(v) == 1 {
					b.ReportMetric(float64(v[0])/1000, k+"-ns/call")
				}
			}
		})
	}
}
