package agent

import (
	"fmt"
	"testing"
	"time"
)

// TestHarnessCapture runs the harness's capture loops (w_cap_ints(i, 2),
// then w_cap_str("bob")) and checks that every call comes out as its
// entry record, a DATA record and its payload, in order, in entry mode
// and in graph mode: with 5-record chunks, so that a group often does not
// fit in what is left of a chunk (lt_emit_data publishes first), and with
// 64-record chunks, where the assembly fast paths write most groups, for
// arguments 1 and 2 (stored without a branch) and for argument 2 alone
// (the fast paths' other loop).
func TestHarnessCapture(t *testing.T) {
	for _, m := range []struct {
		name string
		ctl  Ctl
	}{{"entry", Ctl{Enabled: true}}, {"graph", Ctl{Enabled: true, Graph: true}}} {
		for _, records := range []int{5, 64} {
			for _, spec := range []uint32{3, 2} {
				t.Run(fmt.Sprintf("%s/%d/%d", m.name, records, spec), func(t *testing.T) {
					testHarnessCapture(t, m.ctl, records, spec)
				})
			}
		}
	}
}

func testHarnessCapture(t *testing.T, ctl Ctl, records int, spec uint32) {
	const iters = 4096 // the harness makes iters/4 calls of each
	r := runHarness(t, runOpts{test: "bench", iters: iters, ctl: ctl, chunks: 4096, chunkRecords: records, pollEvery: time.Millisecond,
		specs: map[string]uint32{"w_cap_ints": spec, "w_cap_str": 1 | 1<<SpecStrShift}})
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
				// The payload record decodes with TSC = the first value
				// (its second one, in meta, is not kept by the decoder).
				p := recs[i+2]
				ok := d.TSC == 3|16<<32 && p.TSC == next
				if spec == 2 {
					ok = d.TSC == 2|8<<32 && p.TSC == 2
				}
				if !ok || p.Kind != 0 || p.Site != 0 {
					t.Fatalf("tid %d: w_cap_ints call %d: DATA %#x, payload %+v", tid, next, d.TSC, p)
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
}
