package report_test

import (
	"bytes"
	"encoding/binary"
	"io"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/livetrace/livetrace/internal/report"
	"github.com/livetrace/livetrace/internal/tracefile"
)

// TestPerfettoOnePass checks that the one-pass export of graph mode
// writes the same bytes as the engine's two passes, on random recordings
// with lost events, captured values and filters.
func TestPerfettoOnePass(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 13))
	u64 := func(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }
	entry, err := tracefile.EncodeArgs(1, u64(42))
	if err != nil {
		t.Fatal(err)
	}
	ret, err := tracefile.EncodeArgs(1<<16, u64(47))
	if err != nil {
		t.Fatal(err)
	}
	graphs := 0
	for n := 0; n < 60; n++ {
		rec := randomRecording(rng, n)
		if rec.Mode != tracefile.ModeGraph {
			continue
		}
		graphs++
		// Function 0 captures its first argument and return value.
		rec.Funcs[0].Args = []tracefile.ArgSpec{{Reg: 1, Format: "d", Name: "id"}}
		rec.Funcs[0].Ret = &tracefile.ArgSpec{Format: "d"}
		for i := range rec.Events {
			ev := &rec.Events[i]
			if ev.Func == 0 && rng.IntN(3) == 0 {
				if ev.Kind == tracefile.KindEntry {
					ev.Args = entry
				} else {
					ev.Args = ret
				}
			}
		}
		filters := []report.Filter{{}, {TIDs: []uint32{1, 3}}, {MaxDepth: 1 + rng.IntN(3)}, {Funcs: []bool{true, false, true}}}
		for _, fl := range filters {
			var one, two bytes.Buffer
			if err := report.ExportPerfettoStream(&one, rec.Stream(tracefile.StreamOptions{}), fl); err != nil {
				t.Fatal(err)
			}
			restore := report.SetPerfettoOnePass(false)
			err := report.ExportPerfettoStream(&two, rec.Stream(tracefile.StreamOptions{}), fl)
			restore()
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(one.Bytes(), two.Bytes()) {
				t.Fatalf("recording %d, filter %+v: the one-pass export (%d bytes) differs from the engine's (%d bytes)", n, fl, one.Len(), two.Len())
			}
			if one.Len() < 64 && len(rec.Events) > 20 && fl.TIDs == nil && fl.Funcs == nil {
				t.Fatalf("recording %d: export of %d events is %d bytes", n, len(rec.Events), one.Len())
			}
		}
	}
	if graphs < 20 {
		t.Fatalf("only %d graph-mode recordings", graphs)
	}
}

// TestExportPerfettoEntry checks the Perfetto export of random entry-mode
// recordings (three threads, callers in and out of symbols) against their
// Chrome export, with and without filters.
func TestExportPerfettoEntry(t *testing.T) {
	rng := rand.New(rand.NewPCG(17, 19))
	n := 0
	for i := 0; n < 20; i++ {
		rec := randomRecording(rng, i)
		if rec.Mode != tracefile.ModeEntry || len(rec.Events) == 0 {
			continue
		}
		n++
		for _, fl := range []report.Filter{{}, {TIDs: []uint32{1, 3}}, {Funcs: []bool{true, false, true}}} {
			kept := slices.ContainsFunc(rec.Events, func(ev tracefile.Event) bool {
				return (fl.TIDs == nil || slices.Contains(fl.TIDs, ev.TID)) && (fl.Funcs == nil || int(ev.Func) < len(fl.Funcs) && fl.Funcs[ev.Func])
			})
			if kept {
				checkPerfettoAsChrome(t, rec, fl)
			}
		}
	}
}

// BenchmarkExportPerfettoGraph exports a graph-mode recording in memory
// shaped like bench/bigrec's (a leaf called at full speed) to io.Discard:
// the encoding alone, without the file's decoding.
func BenchmarkExportPerfettoGraph(b *testing.B) {
	rec := &tracefile.Recording{Meta: tracefile.Meta{
		Mode: tracefile.ModeGraph, PID: 1, Comm: "hotleaf",
		Clock:   tracefile.Clock{TSC0: 1 << 40, Mono0: 1e9, TSC1: 1<<40 + 3_000_000_000, Mono1: 2e9},
		Funcs:   []tracefile.Func{{Name: "main", Module: -1}, {Name: "loop", Module: -1}, {Name: "leaf", Module: -1}},
		Threads: []tracefile.Thread{{TID: 1000, Name: "hot0"}},
	}}
	tsc := uint64(1 << 40)
	rec.Events = append(rec.Events, tracefile.Event{TSC: tsc, TID: 1000, Kind: tracefile.KindEntry, Func: 0},
		tracefile.Event{TSC: tsc + 3, TID: 1000, Kind: tracefile.KindEntry, Func: 1, Depth: 1})
	for i := 0; i < 1<<20; i++ {
		tsc += 45 + uint64(i%7)
		rec.Events = append(rec.Events, tracefile.Event{TSC: tsc, TID: 1000, Kind: tracefile.KindEntry, Func: 2, Depth: 2, Caller: 0x1231})
		tsc += 15
		rec.Events = append(rec.Events, tracefile.Event{TSC: tsc, TID: 1000, Kind: tracefile.KindExit, Func: 2, Depth: 2})
	}
	b.SetBytes(int64(len(rec.Events))) // "MB/s" are millions of events per second
	for b.Loop() {
		if err := report.ExportPerfettoStream(io.Discard, rec.Stream(tracefile.StreamOptions{}), report.Filter{}); err != nil {
			b.Fatal(err)
		}
	}
}
