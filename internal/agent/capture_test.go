package agent

import (
	"testing"
	"time"
)

// TestHarnessCapture runs the harness's capture loops (w_cap_ints(i, 2),
// then w_cap_str("bob")) with 5-record chunks, so that a 3-record group
// often does not fit in what is left of a chunk: every call must come out
// as its entry record, a DATA record and its payload, in order, in entry
// mode (the assembly fast path for integers, lt_emit_data when the chunk
// is short) and in graph mode (the C path).
func TestHarnessCapture(t *testing.T) {
	for _, m := range []struct {
		name string
		ctl  Ctl
	}{{"entry", Ctl{Enabled: true}}, {"graph", Ctl{Enabled: true, Graph: true}}} {
		t.Run(m.name, func(t *testing.T) {
			const iters = 4096 // the harness makes iters/4 calls of each
			r := runHarness(t, runOpts{test: "bench", iters: iters, ctl: m.ctl, chunks: 4096, chunkRecords: 5, pollEvery: time.Millisecond,
				specs: map[string]uint32{"w_cap_ints": 3, "w_cap_str": 1 | 1<<SpecStrShift}})
			r.noLoss()
			ints, str := -1, -1
			for i, s := range r.sites {
				switch s.name {
				case "w_cap_ints":
					ints = i
				case "w_cap_str":
					str = i
				}
			}
			if ints < 0 || str < 0 {
				t.Fatal("the harness has no w_cap_ints or w_cap_str site")
			}
			calls := 0
			for tid, recs := range r.recs {
				next := uint64(0)
				nstr := 0
				for i := 0; i < len(recs); i++ {
					rec := recs[i]
					if rec.Kind != KindEntry || (rec.Site != uint32(ints) && rec.Site != uint32(str)) {
						continue
					}
					if i+2 >= len(recs) || recs[i+1].Kind != KindData {
						t.Fatalf("tid %d: entry of site %d at %d without its DATA record", tid, rec.Site, i)
					}
					d := recs[i+1]
					if rec.Site == uint32(ints) {
						// The payload record decodes with TSC = arg1, meta = arg2.
						if d.TSC != 3|16<<32 || recs[i+2].TSC != next || recs[i+2].Kind != 0 || recs[i+2].Site != 0 {
							t.Fatalf("tid %d: w_cap_ints call %d: DATA %#x, payload %+v", tid, next, d.TSC, recs[i+2])
						}
						next++
					} else {
						// 8 bytes of pointer, the length byte 3 and "bob".
						if d.TSC != (1|1<<SpecStrShift)|12<<32 {
							t.Fatalf("tid %d: w_cap_str call %d: DATA %#x", tid, nstr, d.TSC)
						}
						nstr++
					}
					i += 2
				}
				if next == 0 && nstr == 0 {
					continue
				}
				calls++
				if next != iters/4 || nstr != iters/4 {
					t.Errorf("tid %d: %d w_cap_ints and %d w_cap_str calls with their values, want %d each", tid, next, nstr, iters/4)
				}
			}
			if calls != 1 {
				t.Errorf("%d threads made the capture calls, want 1", calls)
			}
		})
	}
}
