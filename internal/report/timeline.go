// Package report turns recordings into text and files: replay (ftrace
// function and function_graph style), per-function reports, info, and
// exports (Chrome trace JSON, folded stacks, pprof, flame graph HTML).
//
// Every output reads a *tracefile.Stream (the functions named ...Stream)
// or a whole *tracefile.Recording (the others, which stream it) and writes
// to an io.Writer. They hold no events: memory is bounded by the threads,
// the open calls and, for the stack exports, the distinct stacks (see
// engine.go). None keeps state between calls; a Stream is read by one
// call at a time, and recordings nobody modifies can be read concurrently.
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
func (f Filter) check(rec *tracefile.Meta) error {
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

// funcName returns the name of traced function fn, escaped for display
// (see [Printable]), as every name this package writes.
func funcName(rec *tracefile.Meta, fn uint32) string {
	if int(fn) < len(rec.Funcs) && rec.Funcs[fn].Name != "" {
		return Printable(rec.Funcs[fn].Name)
	}
	if int(fn) < len(rec.Funcs) {
		return fmt.Sprintf("0x%x", rec.Funcs[fn].Addr)
	}
	return fmt.Sprintf("func#%d", fn)
}

// moduleName returns the path of the module of traced function fn.
func moduleName(rec *tracefile.Meta, fn uint32) string {
	if int(fn) < len(rec.Funcs) {
		if m := rec.Funcs[fn].Module; m >= 0 && m < len(rec.Modules) {
			return Printable(rec.Modules[m].Path)
		}
	}
	return ""
}

// threadNames maps tids to thread names (the command name when the thread
// has none).
func threadNames(rec *tracefile.Meta) map[uint32]string {
	names := map[uint32]string{}
	for _, th := range rec.Threads {
		if th.Name != "" {
			names[th.TID] = Printable(th.Name)
		}
	}
	return names
}

func threadName(names map[uint32]string, rec *tracefile.Meta, tid uint32) string {
	if n, ok := names[tid]; ok {
		return n
	}
	if rec.Comm != "" {
		return Printable(rec.Comm)
	}
	return "?"
}

// tids returns the thread ids of the events of s that f keeps, sorted. It
// reads the whole stream and rewinds it.
func tids(s *tracefile.Stream, f Filter) ([]uint32, error) {
	seen := map[uint32]bool{}
	var out []uint32
	last, have := uint32(0), false
	for {
		ev, ok := s.Next()
		if !ok {
			break
		}
		if have && ev.TID == last {
			continue
		}
		last, have = ev.TID, true
		if !seen[ev.TID] && f.keepTID(ev.TID) {
			seen[ev.TID] = true
			out = append(out, ev.TID)
		}
	}
	if err := s.Err(); err != nil {
		return nil, err
	}
	s.Rewind()
	slices.Sort(out)
	return out, nil
}
