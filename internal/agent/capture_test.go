package agent

import (
	"fmt"
	"testing"
	"time"
)

// TestHarnessCapture runs the harness's capture loops (w_cap_ints(i, 2),
// w_cap_str("bob"), w_cap_str of "bob" in the caller's frame) and checks that every call comes out as its
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
		if next != iters/4 || nstr != iters/2 {
			t.Errorf("tid %d: %d w_cap_ints and %d w_cap_str calls with their values, want %d and %d", tid, next, nstr, iters/4, iters/2)
		}
	}
	if calls != 1 {
		t.Errorf("%d threads made the capture calls, want 1", calls)
	}
}

// TestHarnessHostileStrings captures string arguments that point where a
// load would fault (NULL, 1, a PROT_NONE page, an unmapped page, a string
// running into a PROT_NONE page, the guard pages of a coroutine stack),
// below the stack pointer, into the caller's frame on the thread's stack
// and on a ucontext stack, and into a page another thread unmaps and maps
// again in a loop, in entry and graph mode: the harness must never fault,
// and every value that can be known is checked (its payload length).
func TestHarnessHostileStrings(t *testing.T) {
	for _, m := range []struct {
		name string
		ctl  Ctl
	}{{"entry", Ctl{Enabled: true}}, {"graph", Ctl{Enabled: true, Graph: true}}} {
		t.Run(m.name, func(t *testing.T) {
			const iters = 500
			r := runHarness(t, runOpts{test: "hostile", iters: iters, ctl: m.ctl, chunks: 4096, chunkRecords: 256, pollEvery: time.Millisecond,
				specs: map[string]uint32{"w_cap_str": 1 | 1<<SpecStrShift}})
			r.noLoss()
			if v := r.result("hostile"); len(v) != 1 || v[0] != iters {
				t.Fatalf("harness result %v, want %d", v, iters)
			}
			str := -1
			for i, s := range r.sites {
				if s.name == "w_cap_str" {
					str = i
				}
			}
			const bad = 8 + 1 // the pointer and a length byte LT_STR_BAD
			// Payload bytes of each call of one round; 0: not known.
			round := []uint64{bad, bad, bad, bad, 8 + 1 + 3, 8 + 1 + 5, 0, 0, 8 + 1 + 4, 8 + 1 + 3, 0, bad}
			var lens []uint64
			for _, recs := range r.recs {
				for i := 0; i+1 < len(recs); i++ {
					if recs[i].Kind == KindEntry && recs[i].Site == uint32(str) {
						if recs[i+1].Kind != KindData {
							t.Fatalf("entry of w_cap_str without its DATA record")
						}
						lens = append(lens, recs[i+1].TSC>>32)
					}
				}
			}
			if want := iters*len(round) + 20*iters; len(lens) != want {
				t.Fatalf("%d w_cap_str calls recorded, want %d", len(lens), want)
			}
			for i := 0; i < iters*len(round); i++ {
				if w := round[i%len(round)]; w != 0 && lens[i] != w {
					t.Fatalf("call %d of round %d: payload of %d bytes, want %d", i%len(round), i/len(round), lens[i], w)
				}
			}
			for i, n := range lens[iters*len(round):] {
				if n != bad && n != 8+1+4 && n != 8+1 {
					t.Fatalf("flipped page, call %d: payload of %d bytes, want %d (unmapped), %d (\"flip\") or %d (a new zero page)", i, n, bad, 8+1+4, 8+1)
				}
			}
		})
	}
}

// TestHarnessCallerValues holds w_held_outer(s, i)'s entry back until
// w_held_leaf, below it, is entered (record --caller: SpecDefer and
// SpecCaller): each held-back entry must come out before the leaf's, with
// the time of its call and its DATA group (a 4- or 5-byte string and an
// integer).
func TestHarnessCallerValues(t *testing.T) {
	const iters = 1000
	spec := uint32(3 | 1<<SpecStrShift)
	r := runHarness(t, runOpts{test: "held", iters: iters, ctl: Ctl{Enabled: true, Graph: true}, chunks: 1024, chunkRecords: 256, pollEvery: time.Millisecond,
		specs: map[string]uint32{"w_held_outer": spec | SpecDefer, "w_held_leaf": SpecCaller}})
	r.noLoss()
	outer, leaf := -1, -1
	for i, s := range r.sites {
		switch s.name {
		case "w_held_outer":
			outer = i
		case "w_held_leaf":
			leaf = i
		}
	}
	if outer < 0 || leaf < 0 {
		t.Fatal("the harness has no w_held_outer or w_held_leaf site")
	}
	calls := 0
	for tid, recs := range r.recs {
		for i := 0; i < len(recs); i++ {
			if recs[i].Kind != KindEntry || recs[i].Site != uint32(outer) {
				continue
			}
			// "held" then "frame": 8 + 8 bytes of values, a length byte
			// and the bytes.
			want := uint64(spec) | uint64(8+8+1+4)<<32
			if calls%2 == 1 {
				want = uint64(spec) | uint64(8+8+1+5)<<32
			}
			if i+3 >= len(recs) || recs[i+1].Kind != KindData || recs[i+1].TSC != want {
				t.Fatalf("tid %d: held-back entry %d without its values: %+v", tid, calls, recs[i+1:min(i+4, len(recs))])
			}
			j := i + 2 + int((recs[i+1].TSC>>32+15)/16)
			if recs[j].Kind != KindEntry || recs[j].Site != uint32(leaf) || recs[j].TSC < recs[i].TSC {
				t.Fatalf("tid %d: held-back entry %d not followed by the leaf's: %+v", tid, calls, recs[j])
			}
			calls++
		}
	}
	if calls != 2*iters {
		t.Errorf("%d held-back entries with their values, want %d", calls, 2*iters)
	}
}
