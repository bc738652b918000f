package report

import (
	"bufio"
	"fmt"
	"io"
	"strings"

	"github.com/livetrace/livetrace/internal/tracefile"
)

// Live prints events as they arrive from a running session (livetrace
// live), in replay's format: entry mode like ftrace's function tracer,
// graph mode like function_graph, each thread's calls indented by depth
// and a call with no call inside folded into one line "name();".
//
// Events come one thread's batch at a time (a batch holds one thread's
// events in order; batches of different threads interleave in the order
// the tracer took them, which is close to, but not exactly, time order).
// In graph mode the last entry of each thread is held back until the
// thread's next event shows whether the call is a leaf; Flush prints what
// is held.
type Live struct {
	w     *bufio.Writer
	meta  *tracefile.Meta
	clock *tracefile.NanosConverter
	first int64
	syms  *symbolizer
	names map[uint32]string
	graph bool
	f     Filter
	held  map[uint32]*liveEntry // graph mode: per thread, an entry not printed yet
	// pids, once ShowPIDs is called (record --follow), maps threads to
	// their processes, printed in a PID column.
	pids map[uint32]int
	open map[uint32][]int64 // graph mode: per thread, the entry time of each depth
}

type liveEntry struct {
	ev tracefile.Event
	ns int64
}

// NewLive returns a printer for the session whose metadata is meta (its
// Funcs are what an event's Func indexes; its Clock converts timestamps).
func NewLive(w io.Writer, meta tracefile.Meta, f Filter) *Live {
	l := &Live{w: bufio.NewWriterSize(w, 64<<10), meta: &meta, clock: meta.Clock.Converter(),
		syms: newSymbolizer(&meta), names: threadNames(&meta), graph: meta.Mode == tracefile.ModeGraph, f: f,
		held: map[uint32]*liveEntry{}, open: map[uint32][]int64{}}
	l.first = l.clock.Nanos(meta.Clock.TSC0)
	return l
}

// ShowPIDs adds a PID column (live --follow: the events of forked
// children come too); SetThreadPID says which process a thread is of.
// Call it before Header.
func (l *Live) ShowPIDs() { l.pids = map[uint32]int{} }

// SetThreadPID records the process of thread tid (see ShowPIDs).
func (l *Live) SetThreadPID(tid uint32, pid int) {
	if l.pids != nil {
		l.pids[tid] = pid
	}
}

// col is the TID column of a graph line: the tid, or pid and tid.
func (l *Live) col(tid uint32) string {
	if l.pids == nil {
		return fmt.Sprintf("%7d", tid)
	}
	return fmt.Sprintf("%7d %7d", pidOf(l.pids, l.meta, tid), tid)
}

// Header prints the column header.
func (l *Live) Header() {
	if l.pids != nil && l.graph {
		fmt.Fprintf(l.w, "# tracer: function_graph (livetrace live), pid %d (%s)\n#\n# DURATION       PID     TID      FUNCTION\n", l.meta.PID, Printable(l.meta.Comm))
		return
	}
	if l.pids != nil {
		fmt.Fprintf(l.w, "# tracer: function (livetrace live), pid %d (%s)\n#\n#           TASK-TID       PID   CPU      TIMESTAMP  FUNCTION\n#              | |          |     |          |         |\n", l.meta.PID, Printable(l.meta.Comm))
		return
	}
	if l.graph {
		fmt.Fprintf(l.w, "# tracer: function_graph (livetrace live), pid %d (%s)\n#\n# DURATION       TID     FUNCTION\n", l.meta.PID, Printable(l.meta.Comm))
	} else {
		fmt.Fprintf(l.w, "# tracer: function (livetrace live), pid %d (%s)\n#\n#           TASK-TID     CPU      TIMESTAMP  FUNCTION\n#              | |        |          |         |\n", l.meta.PID, Printable(l.meta.Comm))
	}
}

// SetFuncs replaces the traced functions, which a running session may add
// to (livetrace ctl enable): an event's Func indexes them.
func (l *Live) SetFuncs(funcs []tracefile.Func) { l.meta.Funcs = funcs }

// SetThreadName names a thread for the entry-mode TASK column.
func (l *Live) SetThreadName(tid uint32, name string) { l.names[tid] = name }

// Events prints one batch.
func (l *Live) Events(evs []tracefile.Event) {
	for i := range evs {
		ev := &evs[i]
		if !l.f.keepTID(ev.TID) {
			continue
		}
		if l.f.MaxDepth > 0 && int(ev.Depth) >= l.f.MaxDepth {
			continue
		}
		ns := l.clock.Nanos(ev.TSC) - l.first
		if !l.graph {
			if ev.Kind != tracefile.KindEntry {
				continue
			}
			task := threadName(l.names, l.meta, ev.TID)
			if len(task) > 16 {
				task = task[:16]
			}
			name := funcName(l.meta, ev.Func)
			if ev.Args != "" {
				name = callText(l.meta, ev.Func, ev.Args)
			}
			if l.pids != nil {
				fmt.Fprintf(l.w, "%16s-%-7d (%7d) [---] %7d.%06d: %s <- %s\n", Printable(task), ev.TID, pidOf(l.pids, l.meta, ev.TID),
					ns/1e9, ns%1e9/1e3, name, l.syms.name(ev.Caller))
				continue
			}
			fmt.Fprintf(l.w, "%16s-%-7d [---] %7d.%06d: %s <- %s\n", Printable(task), ev.TID,
				ns/1e9, ns%1e9/1e3, name, l.syms.name(ev.Caller))
			continue
		}
		h := l.held[ev.TID]
		if ev.Kind == tracefile.KindExit {
			if h != nil && h.ev.Func == ev.Func && h.ev.Depth == ev.Depth {
				// A leaf: one line, unless it is shorter than -t.
				delete(l.held, ev.TID)
				if l.f.MinDuration > 0 && ns-h.ns < l.f.MinDuration.Nanoseconds() {
					continue
				}
				fmt.Fprintf(l.w, "%s [%s] | %s%s%s;\n", fmtDur(ns-h.ns), l.col(ev.TID), l.indent(ev.Depth), callText(l.meta, ev.Func, h.ev.Args), retSuffix(l.meta, ev.Func, ev.Args))
				continue
			}
			l.release(ev.TID)
			dur := fmt.Sprintf("%10s", "")
			if st := l.open[ev.TID]; int(ev.Depth) < len(st) && st[ev.Depth] >= 0 {
				dur = fmtDur(ns - st[ev.Depth])
				st[ev.Depth] = -1
			}
			ret := retSuffix(l.meta, ev.Func, ev.Args)
			if ret != "" {
				ret += ";"
			}
			fmt.Fprintf(l.w, "%s [%s] | %s}%s /* %s */\n", dur, l.col(ev.TID), l.indent(ev.Depth), ret, funcName(l.meta, ev.Func))
			continue
		}
		l.release(ev.TID)
		st := l.open[ev.TID]
		for len(st) <= int(ev.Depth) {
			st = append(st, -1)
		}
		st[ev.Depth] = ns
		l.open[ev.TID] = st
		l.held[ev.TID] = &liveEntry{ev: *ev, ns: ns}
	}
}

// Skipped notes that n events of thread tid were not printed (the output
// could not keep up). In graph mode the thread's held entry is printed
// and its open calls forgotten: an exit whose entry was skipped prints
// without a duration.
func (l *Live) Skipped(tid uint32, n uint64) {
	if !l.f.keepTID(tid) {
		return
	}
	if l.graph {
		l.release(tid)
		delete(l.open, tid)
	}
	fmt.Fprintf(l.w, "# %s of thread %d skipped: the output cannot keep up (livetrace record keeps every event)\n", count(n, "event"), tid)
}

// release prints the held entry of tid as an open call.
func (l *Live) release(tid uint32) {
	h := l.held[tid]
	if h == nil {
		return
	}
	fmt.Fprintf(l.w, "%10s [%s] | %s%s {\n", "", l.col(tid), l.indent(h.ev.Depth), callText(l.meta, h.ev.Func, h.ev.Args))
	delete(l.held, tid)
}

func (l *Live) indent(depth uint16) string { return strings.Repeat("  ", int(depth)) }

// Flush writes out what is buffered. With all, the held graph entries are
// printed too (at the end, or when a thread has been quiet for a while).
func (l *Live) Flush(all bool) error {
	if all {
		for tid := range l.held {
			l.release(tid)
		}
	}
	return l.w.Flush()
}
