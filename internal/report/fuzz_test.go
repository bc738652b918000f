package report_test

import (
	"encoding/binary"
	"io"
	"slices"
	"testing"
	"time"

	"github.com/livetrace/livetrace/internal/report"
	"github.com/livetrace/livetrace/internal/tracefile"
)

// FuzzOutputs runs every output on recordings made of arbitrary events:
// anything the reader accepts (functions in range, known kinds, sorted by
// time) but in any order of entries, exits and depths, with clocks that
// may run backwards. No output may panic.
func FuzzOutputs(f *testing.F) {
	f.Add([]byte{0, 1, 0, 0, 10, 1, 1, 0, 0, 5, 0, 2, 1, 1, 7, 1, 2, 1, 1, 2}, uint8(2), uint8(0), uint16(0))
	f.Add([]byte{1, 1, 3, 0, 0, 0, 1, 0, 9, 1, 1, 1, 3, 0, 0}, uint8(1), uint8(1), uint16(3))
	f.Fuzz(func(t *testing.T, data []byte, mode, depth uint8, minDur uint16) {
		rec := &tracefile.Recording{Meta: tracefile.Meta{
			Mode: tracefile.ModeEntry, PID: 1, Comm: "fuzz",
			Start: time.Unix(1, 0), End: time.Unix(2, 0),
			Clock:   tracefile.Clock{TSC0: 1000, Mono0: 1, TSC1: 1000 + uint64(minDur), Mono1: 2, TSCHz: 1e9},
			Modules: []tracefile.Module{{Path: "/a", Base: 0x1000}},
			Funcs: []tracefile.Func{{Name: "f", Module: 0, Addr: 0x1000, Size: 16}, {Name: "g", Module: -1, Addr: 0x2000},
				{Name: "", Module: 0, Addr: 0x1010}, {Name: "h;x\n", Module: 0, Addr: 0x1010, Size: 1}},
			Symbols: []tracefile.Symbol{{Name: "s", Module: 0, Addr: 0x1008}},
			Threads: []tracefile.Thread{{TID: 1, Name: "one", Lost: 2}},
		}}
		if mode%2 == 1 {
			rec.Mode = tracefile.ModeGraph
		}
		tsc := uint64(1000)
		for ; len(data) >= 5; data = data[5:] {
			ev := tracefile.Event{
				TSC: tsc, TID: uint32(data[0] % 3), Kind: tracefile.KindEntry,
				Func: uint32(data[1]) % uint32(len(rec.Funcs)), Depth: uint16(data[2] % 8),
				Caller: 0x1000 + uint64(data[3]),
			}
			if data[1]&0x80 != 0 {
				ev.Kind = tracefile.KindExit
			}
			if rec.Mode == tracefile.ModeEntry {
				ev.Kind = tracefile.KindEntry
			}
			tsc += uint64(binary.LittleEndian.Uint16([]byte{data[4], data[2]})) % 300
			rec.Events = append(rec.Events, ev)
		}
		slices.SortStableFunc(rec.Events, tracefile.CompareEvents)
		filters := []report.Filter{{}, {TIDs: []uint32{1}}}
		if rec.Mode == tracefile.ModeGraph {
			filters = append(filters, report.Filter{MaxDepth: int(depth % 5), MinDuration: time.Duration(minDur)})
		}
		for _, fl := range filters {
			_ = report.Replay(io.Discard, rec, fl)
			for _, col := range append([]string{""}, report.SortColumns...) {
				_ = report.Report(io.Discard, rec, report.ReportOptions{Filter: fl, Sort: col})
			}
			_ = report.Report(io.Discard, rec, report.ReportOptions{Filter: fl, JSON: true})
			for _, ef := range report.ExportFormats {
				_ = report.Export(io.Discard, rec, ef.Name, fl)
			}
		}
		_ = report.Info(io.Discard, rec)
	})
}
