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
	"path"
	"slices"
	"strings"
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
	// Funcs, if not nil, keeps only the functions fn with Funcs[fn] set
	// (indexes of Meta.Funcs; see [ModuleFuncs]). A call of another
	// function is hidden like one that -D or -t hides: its time counts as
	// its parent's self time, and its children show.
	Funcs []bool
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

func (f Filter) keepFunc(fn uint32) bool {
	return f.Funcs == nil || int(fn) < len(f.Funcs) && f.Funcs[fn]
}

// keep reports whether an entry event passes the thread and function
// filters.
func (f Filter) keep(ev *tracefile.Event) bool {
	return f.keepTID(ev.TID) && f.keepFunc(ev.Func)
}

// ModuleFuncs returns the [Filter.Funcs] that keeps the functions of the
// modules whose path or file name matches one of globs (as record -m
// selects them), and an error if a glob is malformed or no module of rec
// matches.
func ModuleFuncs(rec *tracefile.Meta, globs []string) ([]bool, error) {
	for _, g := range globs {
		if _, err := path.Match(g, ""); err != nil {
			return nil, fmt.Errorf("parse -m %q: %w", g, err)
		}
	}
	mods := make([]bool, len(rec.Modules))
	found := false
	for i, m := range rec.Modules {
		if tracefile.MatchModule(m.Path, globs) {
			mods[i], found = true, true
		}
	}
	if !found {
		names := make([]string, len(rec.Modules))
		for i, m := range rec.Modules {
			names[i] = Printable(path.Base(m.Path))
		}
		return nil, fmt.Errorf("no module of the recording matches -m %s: it has %s", strings.Join(globs, " -m "), strings.Join(names, ", "))
	}
	keep := make([]bool, len(rec.Funcs))
	for i, fn := range rec.Funcs {
		keep[i] = fn.Module >= 0 && fn.Module < len(mods) && mods[fn.Module]
	}
	return keep, nil
}

// funcName returns the name of traced function fn, escaped for display
// (see [Printable]), as every name this package writes.
// count returns "1 word" or "n words".
func count(n uint64, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return fmt.Sprintf("%d %ss", n, word)
}

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
		if have && ev.TID == last && (f.Funcs == nil || seen[last]) {
			continue
		}
		last, have = ev.TID, true
		if !seen[ev.TID] && f.keepTID(ev.TID) && (f.Funcs == nil || ev.Kind == tracefile.KindEntry && f.keepFunc(ev.Func)) {
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
