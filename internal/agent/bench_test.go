package agent

import (
	"testing"
	"time"
)

// BenchmarkAgentCall runs the harness's self-timed loops: an untraced
// call, a bare rdtsc, a pushfq/popfq pair, a bare system call (getppid);
// then, interleaved in 32 rounds (each reports its fastest), a traced call
// (mode per sub-benchmark), one capturing 2 integer arguments (cap_ints),
// one capturing a 3-byte string literal (cap_str) and one capturing a
// 3-byte string in the caller's frame (cap_stack_str), and reports ns per
// call of each. Compare the cap_ loops with traced.
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
			for _, k := range []string{"untraced", "traced", "rdtsc", "pushfq_popfq", "cap_ints", "cap_str", "cap_stack_str", "syscall"} {
				if v := r.result(k + "_ps"); len(v) == 1 {
					b.ReportMetric(float64(v[0])/1000, k+"-ns/call")
				}
			}
		})
	}
}
