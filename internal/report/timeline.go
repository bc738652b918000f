// Package report turns recordings into text and files: replay (ftrace
// function and function_graph style), per-function reports, info, and
// exports (Chrome trace JSON, folded stacks, pprof, flame graph HTML).
//
// Every function here is a pure function of a *tracefile.Recording that
// writes to an io.Writer; none keeps state between calls, so they are safe
// for concurrent use on recordings nobody modifies.
//
// # Calls in graph mode
//
// A graph-mode recording is turned into calls thread by thread. An entry
// opens a call at the entry's Depth; an exit closes the open call at its
// Depth if it is of the same function. Depth resynchronizes after lost
// events:
//   - an entry at depth d first closes every open call at depth >= d: their
//     exits were lost ("exit lost");
//   - an exit at depth d first closes every open call deeper than d (exits
//     lost), and is ignored when no open call of its function is at depth d
//     (its entry was lost, or the function was already running when
//     tracing started);
//   - calls still open after the last event are "unfinished".
//
// A call without an exit has no duration: it counts in Calls but in no time
// column of a report. Where a time is needed anyway (replay nesting,
// exports) it ends at the event that revealed the lost exit, or at the last
// event of the recording for an unfinished call.
//
// # Filters
//
// [Filter] hides calls: those of other threads, those at Depth >= MaxDepth,
// those that completed in less than MinDuration, and every call inside a
// hidden call. Everything else (self time, folding of leaf calls, stacks)
// is computed from the calls that remain: the time of hidden children
// counts as their parent's self time.
package report

import (
	"fmt"
	"slices"
	"time"

	"github.com/livetrace/livetrace/internal/tracefile"
)

// Filter selects the calls readers show.
type Filter struct {
	// MaxDepth hides calls at Depth >= MaxDepth (0 = no limit). Graph mode.
	MaxDepth int
	// MinDuration hides calls that completed in less time. Graph mode.
	MinDuration time.Duration
	// TIDs keeps only these threads (empty = all).
	TIDs []uint32
}

// check rejects filters a recording of rec's mode cannot apply.
func (f Filter) check(rec *tracefile.Recording) error {
	if f.MaxDepth < 0 {
		return fmt.Errorf("check depth filter: %d is negative: give a depth of 1 or more", f.MaxDepth)
	}
	if f.MinDuration < 0 {
		return fmt.Errorf("check duration filter: %v is negative", f.MinDuration)
	}
	if rec.Mode != tracefile.ModeGraph && (f.MaxDepth > 0 || f.MinDuration > 0) {
		return fmt.Errorf("apply filter: depth and duration filters need a graph-mode recording, this one is %s mode", rec.Mode)
	}
	return nil
}

func (f Filter) keepTID(tid uint32) bool {
	return len(f.TIDs) == 0 || slices.Contains(f.TIDs, tid)
}

type callStatus uint8

const (
	complete   callStatus = iota
	exitLost              // closed by resync: its exit was lost
	unfinished            // still running at the end of the recording
)

// call is one function call of a graph-mode recording.
type call struct {
	tid    uint32
	fn     uint32
	depth  uint16
	status callStatus
	// outermost is set when no other call of fn was active below this one
	// on the thread's stack (recursion is counted once in total times).
	outermost bool
	visible   bool
	parent    int32 // index into timeline.calls, -1 at the top
	entry     int   // event index of the entry
	exit      int   // event index of the exit, -1 if none
	start     int64 // ns since the first event
	end       int64 // ns since the first event (estimated unless complete)
}

func (c *call) dur() int64 { return c.end - c.start }

// timeline is the calls of a recording, in the order of their entries.
type timeline struct {
	rec   *tracefile.Recording
	calls []call
	// evCall maps an event index to the visible call it opens or closes,
	// or -1.
	evCall []int32
	// orphans counts exits without an entry.
	orphans int
	// first is the time of the first event in CLOCK_MONOTONIC ns.
	first int64
	// last is the time of the last event in ns since first.
	last int64
}

// ns returns the time of event i in ns since the first event.
func (t *timeline) ns(i int) int64 {
	return t.rec.Clock.Nanos(t.rec.Events[i].TSC) - t.first
}

// newTimeline builds the calls of rec and applies f. In entry mode it holds
// no calls.
func newTimeline(rec *tracefile.Recording, f Filter) (*timeline, error) {
	if err := f.check(rec); err != nil {
		return nil, err
	}
	t := &timeline{rec: rec}
	if n := len(rec.Events); n > 0 {
		t.first = rec.Clock.Nanos(rec.Events[0].TSC)
		t.last = t.ns(n - 1)
	}
	if rec.Mode != tracefile.ModeGraph {
		return t, nil
	}
	type thread struct {
		stack  []int32
		active map[uint32]int
	}
	threads := map[uint32]*thread{}
	pop := func(th *thread, status callStatus, end int64) {
		c := &t.calls[th.stack[len(th.stack)-1]]
		th.stack = th.stack[:len(th.stack)-1]
		c.status, c.end = status, end
		if th.active[c.fn]--; th.active[c.fn] == 0 {
			delete(th.active, c.fn)
		}
	}
	for i := range rec.Events {
		ev := &rec.Events[i]
		th := threads[ev.TID]
		if th == nil {
			th = &thread{active: map[uint32]int{}}
			threads[ev.TID] = th
		}
		now := t.ns(i)
		top := func() *call {
			if len(th.stack) == 0 {
				return nil
			}
			return &t.calls[th.stack[len(th.stack)-1]]
		}
		switch ev.Kind {
		case tracefile.KindEntry:
			for c := top(); c != nil && c.depth >= ev.Depth; c = top() {
				pop(th, exitLost, now)
			}
			parent := int32(-1)
			if n := len(th.stack); n > 0 {
				parent = th.stack[n-1]
			}
			t.calls = append(t.calls, call{
				tid: ev.TID, fn: ev.Func, depth: ev.Depth, parent: parent,
				outermost: th.active[ev.Func] == 0,
				entry:     i, exit: -1, start: now,
			})
			th.active[ev.Func]++
			th.stack = append(th.stack, int32(len(t.calls)-1))
		case tracefile.KindExit:
			for c := top(); c != nil && c.depth > ev.Depth; c = top() {
				pop(th, exitLost, now)
			}
			c := top()
			if c == nil || c.depth != ev.Depth {
				t.orphans++
				continue
			}
			if c.fn != ev.Func {
				// Both the exit of c and the entry of this exit were lost.
				pop(th, exitLost, now)
				t.orphans++
				continue
			}
			c.exit = i
			pop(th, complete, now)
		}
	}
	for _, th := range threads {
		for len(th.stack) > 0 {
			pop(th, unfinished, t.last)
		}
	}
	// Visibility: calls come after their parents.
	for i := range t.calls {
		c := &t.calls[i]
		c.visible = f.keepTID(c.tid) &&
			(f.MaxDepth == 0 || int(c.depth) < f.MaxDepth) &&
			(c.status != complete || c.dur() >= int64(f.MinDuration)) &&
			(c.parent < 0 || t.calls[c.parent].visible)
	}
	t.evCall = make([]int32, len(rec.Events))
	for i := range t.evCall {
		t.evCall[i] = -1
	}
	for i := range t.calls {
		c := &t.calls[i]
		if !c.visible {
			continue
		}
		t.evCall[c.entry] = int32(i)
		if c.exit >= 0 {
			t.evCall[c.exit] = int32(i)
		}
	}
	return t, nil
}

// funcName returns the name of traced function fn, escaped for display
// (see [Printable]), as every name this package writes.
func funcName(rec *tracefile.Recording, fn uint32) string {
	if int(fn) < len(rec.Funcs) && rec.Funcs[fn].Name != "" {
		return Printable(rec.Funcs[fn].Name)
	}
	if int(fn) < len(rec.Funcs) {
		return fmt.Sprintf("0x%x", rec.Funcs[fn].Addr)
	}
	return fmt.Sprintf("func#%d", fn)
}

// moduleName returns the path of the module of traced function fn.
func moduleName(rec *tracefile.Recording, fn uint32) string {
	if int(fn) < len(rec.Funcs) {
		if m := rec.Funcs[fn].Module; m >= 0 && m < len(rec.Modules) {
			return Printable(rec.Modules[m].Path)
		}
	}
	return ""
}

// threadNames maps tids to thread names (the command name when the thread
// has none).
func threadNames(rec *tracefile.Recording) map[uint32]string {
	names := map[uint32]string{}
	for _, th := range rec.Threads {
		if th.Name != "" {
			names[th.TID] = Printable(th.Name)
		}
	}
	return names
}

func threadName(names map[uint32]string, rec *tracefile.Recording, tid uint32) string {
	if n, ok := names[tid]; ok {
		return n
	}
	if rec.Comm != "" {
		return Printable(rec.Comm)
	}
	return "?"
}

// tids returns the thread ids of rec's events that f keeps, sorted.
func tids(rec *tracefile.Recording, f Filter) []uint32 {
	seen := map[uint32]bool{}
	var out []uint32
	for _, ev := range rec.Events {
		if !seen[ev.TID] && f.keepTID(ev.TID) {
			seen[ev.TID] = true
			out = append(out, ev.TID)
		}
	}
	slices.Sort(out)
	return out
}
