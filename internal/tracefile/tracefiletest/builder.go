// Package tracefiletest builds synthetic recordings with known timing, for
// tests of the readers and of the recording format.
package tracefiletest

import (
	"fmt"
	"slices"
	"time"

	"github.com/livetrace/livetrace/internal/tracefile"
)

// Timing of synthetic recordings: the TSC runs at 3 GHz from TSCBase, and
// CLOCK_MONOTONIC is MonoBase at TSC TSCBase.
const (
	TSCPerNS = 3
	TSCBase  = 1_000_000
	MonoBase = 5_000_000_000
)

// Start is the wall-clock start time of every synthetic recording.
var Start = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

// Builder builds a recording thread by thread. It is not safe for
// concurrent use.
type Builder struct {
	meta    tracefile.Meta
	funcs   map[string]uint32
	threads []*Thread
	events  []tracefile.Event
	// RootCaller is the Caller of calls made at depth 0 (an address inside
	// the untraced symbol __libc_start_call_main by default).
	RootCaller uint64
}

// Module load addresses of synthetic recordings.
const (
	ExeBase = 0x555555554000
	LibBase = 0x7f0000000000
)

// New returns a Builder for a recording of the given mode, with two
// modules (/usr/bin/demo and /usr/lib/libhash.so) and a few untraced
// symbols.
func New(mode tracefile.Mode) *Builder {
	b := &Builder{funcs: map[string]uint32{}}
	b.meta = tracefile.Meta{
		Mode:    mode,
		PID:     4242,
		Comm:    "demo",
		Cmdline: []string{"/usr/bin/demo", "--fast"},
		Exe:     "/usr/bin/demo",
		Host:    "testhost",
		Start:   Start,
		Modules: []tracefile.Module{
			{Path: "/usr/bin/demo", Base: ExeBase, Limit: ExeBase + 0x10000, Bias: ExeBase, BuildID: "0123abcd"},
			{Path: "/usr/lib/libhash.so", Base: LibBase, Limit: LibBase + 0x10000, Bias: LibBase},
		},
		Filters: tracefile.RecordFilters{Patterns: []string{"*"}},
	}
	b.meta.Symbols = []tracefile.Symbol{
		{Name: "_start", Module: 0, Addr: ExeBase + 0x8000, Size: 0x30},
		{Name: "__libc_start_call_main", Module: 0, Addr: ExeBase + 0x8100, Size: 0xa0},
	}
	b.RootCaller = ExeBase + 0x8100 + 0x7a
	return b
}

// Func returns the index of the traced function name, adding it if needed.
// Names starting with "lib" go into the second module.
func (b *Builder) Func(name string) uint32 {
	if i, ok := b.funcs[name]; ok {
		return i
	}
	i := uint32(len(b.meta.Funcs))
	mod, base := 0, uint64(ExeBase+0x1000)
	if len(name) >= 3 && name[:3] == "lib" {
		mod, base = 1, LibBase+0x1000
	}
	addr := base + uint64(i)*0x100
	b.meta.Funcs = append(b.meta.Funcs, tracefile.Func{Name: name, Module: mod, Addr: addr, Size: 0x80, Site: addr + 4})
	b.meta.Symbols = append(b.meta.Symbols, tracefile.Symbol{Name: name, Module: mod, Addr: addr, Size: 0x80})
	b.funcs[name] = i
	return i
}

// Thread starts a thread whose first event happens at startNS (ns after
// the start of tracing).
func (b *Builder) Thread(tid uint32, name string, startNS int64) *Thread {
	t := &Thread{b: b, tid: tid, now: startNS}
	b.meta.Threads = append(b.meta.Threads, tracefile.Thread{TID: tid, Name: name})
	b.threads = append(b.threads, t)
	return t
}

// Meta returns the metadata built so far (Clock, End and lost counts are
// final only after [Builder.Recording]).
func (b *Builder) Meta() *tracefile.Meta { return &b.meta }

// Recording finishes the recording: events sorted by TSC, the clock pairs
// spanning all threads, lost counts.
func (b *Builder) Recording() *tracefile.Recording {
	var end int64
	for i, t := range b.threads {
		end = max(end, t.now)
		b.meta.Threads[i].Lost = t.lost
	}
	b.meta.Lost = 0
	for _, th := range b.meta.Threads {
		b.meta.Lost += th.Lost
	}
	b.meta.Clock = tracefile.Clock{
		TSC0: TSCBase, Mono0: MonoBase,
		TSC1: TSCBase + uint64(end)*TSCPerNS, Mono1: MonoBase + uint64(end),
		TSCHz: 1e9 * TSCPerNS,
	}
	b.meta.End = Start.Add(time.Duration(end))
	b.meta.Version = tracefile.Version
	evs := slices.Clone(b.events)
	slices.SortStableFunc(evs, tracefile.CompareEvents)
	m := b.meta
	return &tracefile.Recording{Meta: m, Events: evs}
}

// Write writes the recording to w the way a live consumer would: in small
// batches that interleave threads.
func (b *Builder) Write(w *tracefile.Writer) error {
	rec := b.Recording()
	per := map[uint32][]tracefile.Event{}
	var order []uint32
	for _, ev := range rec.Events {
		if _, ok := per[ev.TID]; !ok {
			order = append(order, ev.TID)
		}
		per[ev.TID] = append(per[ev.TID], ev)
	}
	for done := false; !done; {
		done = true
		for _, tid := range order {
			evs := per[tid]
			n := min(len(evs), 3)
			if n == 0 {
				continue
			}
			done = false
			if err := w.WriteEvents(evs[:n]); err != nil {
				return err
			}
			per[tid] = evs[n:]
		}
	}
	return w.Close(rec.Meta)
}

// WriteFile writes the recording to a new file at path.
func (b *Builder) WriteFile(path string) error {
	w, err := tracefile.Create(path)
	if err != nil {
		return err
	}
	return b.Write(w)
}

type frame struct {
	fn     uint32
	caller uint64
}

// Thread adds the events of one thread. Its methods return the Thread so
// that calls chain.
type Thread struct {
	b     *Builder
	tid   uint32
	now   int64 // ns since the start of tracing
	stack []frame
	drop  int
	lost  uint64
}

// Now returns the thread's clock in ns since the start of tracing.
func (t *Thread) Now() int64 { return t.now }

func (t *Thread) emit(kind tracefile.Kind, fn uint32, depth int, caller uint64) {
	if t.drop > 0 {
		t.drop--
		t.lost++
		return
	}
	ev := tracefile.Event{
		TSC:  TSCBase + uint64(t.now)*TSCPerNS,
		TID:  t.tid,
		Kind: kind,
		Func: fn,
	}
	if t.b.meta.Mode == tracefile.ModeGraph {
		ev.Depth = uint16(depth)
	} else if kind == tracefile.KindExit {
		return
	}
	if kind == tracefile.KindEntry {
		ev.Caller = caller
	}
	t.b.events = append(t.b.events, ev)
}

// Enter enters function name (an entry event; in graph mode at the depth of
// the thread's stack).
func (t *Thread) Enter(name string) *Thread {
	fn := t.b.Func(name)
	caller := t.b.RootCaller
	if n := len(t.stack); n > 0 {
		caller = t.b.meta.Funcs[t.stack[n-1].fn].Addr + 0x10 + uint64(n)
	}
	t.emit(tracefile.KindEntry, fn, len(t.stack), caller)
	t.stack = append(t.stack, frame{fn: fn, caller: caller})
	return t
}

// Exit leaves the innermost function entered (an exit event in graph mode).
// It panics if there is none: that is a bug in the test.
func (t *Thread) Exit() *Thread {
	n := len(t.stack)
	if n == 0 {
		panic(fmt.Sprintf("tracefiletest: thread %d: Exit without Enter", t.tid))
	}
	t.emit(tracefile.KindExit, t.stack[n-1].fn, n-1, 0)
	t.stack = t.stack[:n-1]
	return t
}

// Advance moves the thread's clock by ns.
func (t *Thread) Advance(ns int64) *Thread {
	t.now += ns
	return t
}

// Call makes a leaf call to name that lasts ns.
func (t *Thread) Call(name string, ns int64) *Thread {
	return t.Enter(name).Advance(ns).Exit()
}

// Lose drops the next n events as the agent would when out of buffers:
// they are not recorded and count as lost, but depths stay right.
func (t *Thread) Lose(n int) *Thread {
	t.drop += n
	return t
}

// OrphanExit records an exit of name at depth with no entry, as for a
// function whose entry was lost.
func (t *Thread) OrphanExit(name string, depth int) *Thread {
	t.emit(tracefile.KindExit, t.b.Func(name), depth, 0)
	return t
}

// Depth returns the number of functions the thread is in.
func (t *Thread) Depth() int { return len(t.stack) }
