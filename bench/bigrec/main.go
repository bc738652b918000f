// Command bigrec writes a large synthetic recording, shaped like one of the
// hotleaf benchmark program (bench/c/hotleaf.c): threads calling a traced
// leaf at full speed, below a traced loop function. It is the input of the
// reader figures (RSS and events/s of report and export on 250M events).
//
//	go run ./bench/bigrec -events 250000000 -mode graph -o /tmp/big.data
package main

import (
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/livetrace/livetrace/internal/tracefile"
)

func main() {
	var (
		events  = flag.Uint64("events", 250_000_000, "number of events")
		mode    = flag.String("mode", "graph", "entry or graph")
		threads = flag.Int("threads", 1, "threads calling the leaf")
		out     = flag.String("o", "big.data", "output file")
	)
	flag.Parse()
	var m tracefile.Mode
	if err := m.UnmarshalText([]byte(*mode)); err != nil {
		fmt.Fprintln(os.Stderr, "bigrec:", err)
		os.Exit(2)
	}
	const tscHz = 3_000_000_000
	meta := tracefile.Meta{
		Mode: m, PID: 4242, Comm: "hotleaf", Exe: "/usr/bin/hotleaf",
		Start: time.Now(), Clock: tracefile.Clock{TSC0: 1 << 40, Mono0: 1_000_000_000, TSCHz: tscHz},
		Modules: []tracefile.Module{{Path: "/usr/bin/hotleaf", Base: 0x555555554000, Bias: 0x555555554000}},
		Funcs: []tracefile.Func{
			{Name: "main", Module: 0, Addr: 0x555555555100, Size: 0x80},
			{Name: "loop", Module: 0, Addr: 0x555555555200, Size: 0x80},
			{Name: "leaf", Module: 0, Addr: 0x555555555300, Size: 0x20},
		},
		Symbols: []tracefile.Symbol{{Name: "loop", Module: 0, Addr: 0x555555555200, Size: 0x80}},
	}
	for i := 0; i < *threads; i++ {
		meta.Threads = append(meta.Threads, tracefile.Thread{TID: uint32(1000 + i), Name: fmt.Sprintf("hot%d", i)})
	}
	w, err := tracefile.Create(*out)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bigrec:", err)
		os.Exit(1)
	}
	if err := w.Checkpoint(meta); err != nil {
		fmt.Fprintln(os.Stderr, "bigrec:", err)
		os.Exit(1)
	}
	// Each thread: main { loop { leaf() x N } }, a leaf call every ~20 ns
	// (60 TSC ticks), written in batches of 4096 events per thread, the
	// way the consumer retires agent chunks.
	type th struct {
		tid   uint32
		tsc   uint64
		depth uint16
	}
	ths := make([]th, *threads)
	batch := make([]tracefile.Event, 0, 4096)
	caller := uint64(0x555555555200 + 0x31)
	for i := range ths {
		ths[i] = th{tid: uint32(1000 + i), tsc: 1<<40 + uint64(i)*7}
		ev := []tracefile.Event{{TSC: ths[i].tsc, TID: ths[i].tid, Kind: tracefile.KindEntry, Func: 0}, {TSC: ths[i].tsc + 3, TID: ths[i].tid, Kind: tracefile.KindEntry, Func: 1, Depth: 1}}
		if m == tracefile.ModeEntry {
			ev[1].Depth = 0
		}
		ths[i].tsc += 10
		if err := w.WriteEvents(ev); err != nil {
			fmt.Fprintln(os.Stderr, "bigrec:", err)
			os.Exit(1)
		}
	}
	var n uint64
	var last uint64
	for n < *events {
		for i := range ths {
			t := &ths[i]
			batch = batch[:0]
			for len(batch) < cap(batch)-1 && n < *events {
				t.tsc += 45 + uint64(n%7)
				if m == tracefile.ModeGraph {
					batch = append(batch, tracefile.Event{TSC: t.tsc, TID: t.tid, Kind: tracefile.KindEntry, Func: 2, Depth: 2, Caller: caller})
					t.tsc += 15
					batch = append(batch, tracefile.Event{TSC: t.tsc, TID: t.tid, Kind: tracefile.KindExit, Func: 2, Depth: 2})
					n += 2
				} else {
					batch = append(batch, tracefile.Event{TSC: t.tsc, TID: t.tid, Kind: tracefile.KindEntry, Func: 2, Caller: caller})
					n++
				}
			}
			if err := w.WriteEvents(batch); err != nil {
				fmt.Fprintln(os.Stderr, "bigrec:", err)
				os.Exit(1)
			}
			last = max(last, t.tsc)
		}
	}
	meta.Clock.TSC1 = last
	meta.Clock.Mono1 = meta.Clock.Mono0 + (last-meta.Clock.TSC0)/3
	meta.End = meta.Start.Add(time.Duration(meta.Clock.Mono1 - meta.Clock.Mono0))
	if err := w.Close(meta); err != nil {
		fmt.Fprintln(os.Stderr, "bigrec:", err)
		os.Exit(1)
	}
}
