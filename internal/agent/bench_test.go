package agent

import (
	"testing"
	"time"
)

// BenchmarkAgentCall runs the harness's self-timed loop: an untraced call,
// a traced call (mode per sub-benchmark), a bare rdtsc, a pushfq/popfq
// pair, a traced call capturing 2 integer arguments (cap_ints) and one
// capturing a 3-byte string (cap_str), 1M iterations each, and reports ns
// per iteration of each. Compare cap_ints and cap_str with traced.
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
				r = runHarness(b, runOpts{test: "bench", iters: 1 << 20, ctl: m.ctl, chunks: 1040, chunkRecords: 4096, pollEvery: time.Millisecond,
					specs: map[string]uint32{"w_cap_ints": 3, "w_cap_str": 1 | 1<<SpecStrShift}})
			}
			if r.ctrs.Lost != 0 {
				b.Errorf("%d events lost: the numbers include the drop path", r.ctrs.Lost)
			}
			for _, k := range []string{"untraced", "traced", "rdtsc", "pushfq_popfq", "cap_ints", "cap_str"} {
				if v := r.result(k + "_ps"); len(v) == 1 {
					b.ReportMetric(float64(v[0])/1000, k+"-ns/call")
				}
			}
		})
	}
}
