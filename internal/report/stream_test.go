package report_test

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/livetrace/livetrace/internal/report"
	"github.com/livetrace/livetrace/internal/tracefile"
)

// randomRecording makes a recording of up to three threads with nested
// calls, lost events (entries and exits missing, depths out of order) and
// functions of the same name.
func randomRecording(rng *rand.Rand, n int) *tracefile.Recording {
	rec := &tracefile.Recording{Meta: tracefile.Meta{
		Mode: tracefile.ModeEntry, PID: 1, Comm: "fuzz",
		Start: time.Unix(1, 0), End: time.Unix(2, 0),
		Clock:   tracefile.Clock{TSC0: 1000, Mono0: 1, TSC1: 1000 + 3e9, Mono1: 1e9 + 1, TSCHz: 3e9},
		Modules: []tracefile.Module{{Path: "/a", Base: 0x1000}},
		Funcs: []tracefile.Func{{Name: "f", Module: 0, Addr: 0x1000, Size: 16}, {Name: "g", Module: -1, Addr: 0x2000},
			{Name: "", Module: 0, Addr: 0x1010}, {Name: "h;x\n", Module: 0, Addr: 0x1010, Size: 1}, {Name: "f", Module: -1, Addr: 0x3000}},
		Symbols: []tracefile.Symbol{{Name: "s", Module: 0, Addr: 0x1008}},
		Threads: []tracefile.Thread{{TID: 1, Name: "one", Lost: 2}},
	}}
	if n%3 != 0 {
		rec.Mode = tracefile.ModeGraph
	}
	nth := 1 + rng.IntN(3)
	for th := 0; th < nth; th++ {
		tsc := uint64(1000 + rng.IntN(100))
		depth := 0
		var stack []uint32
		for i := rng.IntN(300); i > 0; i-- {
			tsc += uint64(rng.IntN(5000))
			ev := tracefile.Event{TSC: tsc, TID: uint32(th + 1), Kind: tracefile.KindEntry, Caller: 0x1000 + uint64(rng.IntN(64))}
			noisy := rng.IntN(20) == 0
			if rec.Mode == tracefile.ModeGraph && len(stack) > 0 && rng.IntN(2) == 0 {
				ev.Kind = tracefile.KindExit
				ev.Func = stack[len(stack)-1]
				stack = stack[:len(stack)-1]
				depth--
				ev.Depth = uint16(depth)
			} else {
				ev.Func = uint32(rng.IntN(5))
				ev.Depth = uint16(depth)
				if rec.Mode == tracefile.ModeGraph {
					stack = append(stack, ev.Func)
					depth++
				}
			}
			if noisy {
				ev.Depth = uint16(rng.IntN(6))
				ev.Func = uint32(rng.IntN(5))
				if rec.Mode == tracefile.ModeGraph && rng.IntN(2) == 0 {
					ev.Kind = tracefile.KindExit
				}
			}
			if ev.Kind == tracefile.KindExit {
				ev.Caller = 0
			}
			if rng.IntN(10) != 0 || noisy {
				rec.Events = append(rec.Events, ev)
			}
		}
	}
	slices.SortStableFunc(rec.Events, tracefile.CompareEvents)
	rec.Version = tracefile.Version
	return rec
}

// allOutputs writes every output of the stream open() gives, for filters.
func allOutputs(open func() *tracefile.Stream, filters []report.Filter) string {
	var b bytes.Buffer
	for fi, fl := range filters {
		fmt.Fprintf(&b, "== filter %d %+v\n", fi, fl)
		fmt.Fprintln(&b, report.ReplayStream(&b, open(), fl))
		for _, col := range append([]string{""}, report.SortColumns...) {
			fmt.Fprintln(&b, report.ReportStream(&b, open(), report.ReportOptions{Filter: fl, Sort: col}))
		}
		for _, ef := range report.ExportFormats {
			fmt.Fprintf(&b, "-- export %s\n", ef.Name)
			fmt.Fprintln(&b, report.ExportStream(&b, open(), ef.Name, fl))
		}
	}
	fmt.Fprintln(&b, report.InfoStream(&b, open()))
	return b.String()
}

// TestStreamOutputs checks that every output is the same from a recording
// in memory and from the file the writer makes of it (many small blocks
// whose times overlap, merged by the reader), and when the outputs in
// entry order hold back at most 2 events (so that most calls are resolved
// by the first pass).
func TestStreamOutputs(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 5))
	for n := 0; n < 40; n++ {
		rec := randomRecording(rng, n)
		var file bytes.Buffer
		w, err := tracefile.NewWriter(&file)
		if err != nil {
			t.Fatal(err)
		}
		// Per thread, in batches, flushed often: blocks overlap in time.
		per := map[uint32][]tracefile.Event{}
		for _, ev := range rec.Events {
			per[ev.TID] = append(per[ev.TID], ev)
		}
		for len(per) > 0 {
			for tid := uint32(1); tid <= 3; tid++ {
				evs := per[tid]
				if len(evs) == 0 {
					delete(per, tid)
					continue
				}
				k := min(len(evs), 1+rng.IntN(40))
				if err := w.WriteEvents(evs[:k]); err != nil {
					t.Fatal(err)
				}
				per[tid] = evs[k:]
				if rng.IntN(2) == 0 {
					if err := w.Flush(); err != nil {
						t.Fatal(err)
					}
				}
			}
		}
		if err := w.Close(rec.Meta); err != nil {
			t.Fatal(err)
		}
		filters := []report.Filter{{}, {TIDs: []uint32{1}}}
		if rec.Mode == tracefile.ModeGraph {
			filters = append(filters, report.Filter{MaxDepth: 1 + rng.IntN(4)}, report.Filter{MinDuration: time.Duration(rng.IntN(5000))})
		}
		mem := allOutputs(func() *tracefile.Stream { return rec.Stream(tracefile.StreamOptions{}) }, filters)
		fromFile := func() *tracefile.Stream {
			s, err := tracefile.NewStream(bytes.NewReader(file.Bytes()), int64(file.Len()), tracefile.StreamOptions{})
			if err != nil {
				t.Fatal(err)
			}
			return s
		}
		restore := report.SetLookahead(2)
		got := allOutputs(fromFile, filters)
		restore()
		if got != mem {
			t.Fatalf("recording %d: outputs from the file with lookahead 2 differ from those in memory", n)
		}
	}
}
