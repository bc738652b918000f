package report

import (
	"bufio"
	"fmt"
	"io"
	"sort"
	"strings"
	"unicode/utf8"

	"github.com/livetrace/livetrace/internal/tracefile"
)

// Replay writes rec as text, one line per event: in the style of ftrace's
// function tracer for entry mode, of ftrace's function_graph tracer (and
// uftrace replay) for graph mode.
//
// Entry mode lines read
//
//	demo-100     [---]      0.000025: parse <- run+0x11
//
// with the thread's name and id, no CPU (the agent does not record it), the
// time in seconds since the first event of the recording (not the absolute
// CLOCK_MONOTONIC time ftrace prints, so that replays of one program
// compare), the function and its caller as symbol+offset ("?" when no
// symbol covers the return address).
//
// Graph mode interleaves threads in time order, with a TID column. A call
// opens with "name() {" and closes with "} /* name */" and its duration; a
// call whose next shown event on its thread is its own exit prints as one
// line "name();". A call without an exit prints "name() {" marked
// "/* exit lost */" or "/* unfinished */". See the package documentation
// for how calls are matched and filtered.
func Replay(w io.Writer, rec *tracefile.Recording, f Filter) error {
	return ReplayStream(w, rec.Stream(tracefile.StreamOptions{}), f)
}

// ReplayStream is [Replay] of a stream. It holds no events: graph mode
// reads the stream twice (see the package documentation).
func ReplayStream(w io.Writer, s *tracefile.Stream, f Filter) error {
	if err := f.check(&s.Meta); err != nil {
		return err
	}
	bw := bufio.NewWriter(w)
	var err error
	if s.Mode == tracefile.ModeGraph {
		err = replayGraph(bw, s, f)
	} else {
		err = replayEntries(bw, s, f)
	}
	if err != nil {
		bw.Flush()
		return err
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write replay: %w", err)
	}
	return nil
}

func writeLostHeader(w *bufio.Writer, rec *tracefile.Meta, recovered bool, dropped uint64) {
	if recovered {
		fmt.Fprintf(w, "# recovered from an unfinished recording (%s left out)\n", count(dropped, "event"))
	}
	if rec.JITCalls > 0 {
		fmt.Fprintf(w, "# %s from JIT-compiled code not traced (graph mode leaves a return address outside every module alone)\n", count(rec.JITCalls, "call"))
	}
	if rec.Lost == 0 && rec.ShadowOverflow == 0 {
		return
	}
	var per []string
	for _, th := range rec.Threads {
		if th.Lost > 0 {
			per = append(per, fmt.Sprintf("%d in thread %d", th.Lost, th.TID))
		}
	}
	fmt.Fprintf(w, "# lost %s", count(rec.Lost, "event"))
	if len(per) > 0 {
		fmt.Fprintf(w, " (%s)", strings.Join(per, ", "))
	}
	if rec.ShadowOverflow > 0 {
		fmt.Fprintf(w, "; %s not traced (shadow stack full)", count(rec.ShadowOverflow, "exit"))
	}
	fmt.Fprintln(w)
}

func replayEntries(w *bufio.Writer, s *tracefile.Stream, f Filter) error {
	rec := &s.Meta
	names := threadNames(rec)
	syms := newSymbolizer(rec)
	e := newEngine(s, f)
	fmt.Fprintf(w, "# tracer: function (livetrace entry mode), pid %d (%s)\n", rec.PID, Printable(rec.Comm))
	writeLostHeader(w, rec, s.Recovered, s.Dropped)
	// A recording of several processes (record --follow) gets a PID
	// column, as ftrace's record-tgid option adds a TGID one.
	var pids map[uint32]int
	if rec.MultiProcess() {
		pids = rec.ThreadPIDs()
		writeProcesses(w, rec)
		fmt.Fprintf(w, "#\n#           TASK-TID       PID   CPU      TIMESTAMP  FUNCTION\n#              | |          |     |          |         |\n")
	} else {
		fmt.Fprintf(w, "#\n#           TASK-TID     CPU      TIMESTAMP  FUNCTION\n#              | |        |          |         |\n")
	}
	marks := newChangeMarks(s, f)
	for {
		ev, ok := s.Next()
		if !ok {
			break
		}
		if ev.Kind != tracefile.KindEntry || !f.keep(&ev) {
			continue
		}
		ns := e.ns(ev.TSC)
		marks.upTo(w, ns)
		task := threadName(names, rec, ev.TID)
		if len(task) > 16 {
			// At a character boundary: half a character is invalid
			// UTF-8 on the terminal.
			n := 16
			for n > 0 && !utf8.RuneStart(task[n]) {
				n--
			}
			task = task[:n]
		}
		name := funcName(rec, ev.Func)
		if ev.Args != "" {
			name = callText(rec, ev.Func, ev.Args)
		}
		if pids != nil {
			fmt.Fprintf(w, "%16s-%-7d (%7d) [---] %7d.%06d: %s <- %s\n", task, ev.TID, pidOf(pids, rec, ev.TID),
				ns/1e9, ns%1e9/1e3, name, syms.name(ev.Caller))
			continue
		}
		fmt.Fprintf(w, "%16s-%-7d [---] %7d.%06d: %s <- %s\n", task, ev.TID,
			ns/1e9, ns%1e9/1e3, name, syms.name(ev.Caller))
	}
	if err := s.Err(); err != nil {
		return err
	}
	marks.rest(w)
	return nil
}

func replayGraph(w *bufio.Writer, s *tracefile.Stream, f Filter) error {
	rec := &s.Meta
	fmt.Fprintf(w, "# tracer: function_graph (livetrace graph mode), pid %d (%s)\n", rec.PID, Printable(rec.Comm))
	writeLostHeader(w, rec, s.Recovered, s.Dropped)
	// Several processes (record --follow): a PID column before the TID.
	var pids map[uint32]int
	if rec.MultiProcess() {
		pids = rec.ThreadPIDs()
		writeProcesses(w, rec)
		fmt.Fprintf(w, "#\n# DURATION       PID     TID      FUNCTION\n")
	} else {
		fmt.Fprintf(w, "#\n# DURATION       TID     FUNCTION\n")
	}
	marks := newChangeMarks(s, f)
	err := inOrder(s, f, nil, func(it item) {
		c := it.c
		if !c.visible || it.kind == itemLost {
			return
		}
		if it.kind == itemEntry {
			marks.upTo(w, c.start)
		} else {
			marks.upTo(w, c.end)
		}
		col := fmt.Sprintf("%7d", c.tid)
		if pids != nil {
			col = fmt.Sprintf("%7d %7d", pidOf(pids, rec, c.tid), c.tid)
		}
		indent := strings.Repeat("  ", int(c.depth))
		name := funcName(rec, c.fn)
		if it.kind == itemEntry {
			if c.folded() {
				fmt.Fprintf(w, "%s [%s] | %s%s%s;\n", fmtDur(c.dur()), col, indent, callText(rec, c.fn, c.args), retSuffix(rec, c.fn, c.ret))
				return
			}
			mark := ""
			switch c.status {
			case exitLost:
				mark = " /* exit lost */"
			case unfinished:
				mark = " /* unfinished */"
			}
			fmt.Fprintf(w, "%10s [%s] | %s%s {%s\n", "", col, indent, callText(rec, c.fn, c.args), mark)
			return
		}
		if c.folded() {
			return
		}
		ret := retSuffix(rec, c.fn, c.ret)
		if ret != "" {
			ret += ";"
		}
		fmt.Fprintf(w, "%s [%s] | %s}%s /* %s */\n", fmtDur(c.dur()), col, indent, ret, name)
	})
	if err != nil {
		return err
	}
	marks.rest(w)
	return nil
}

// pidOf returns the process of thread tid (pids from Meta.ThreadPIDs).
func pidOf(pids map[uint32]int, rec *tracefile.Meta, tid uint32) int {
	if pid, ok := pids[tid]; ok {
		return pid
	}
	return rec.PID
}

// describeProcess says what a process of a recording made with --follow
// is: "PID (COMM, forked from PPID)", "PID (COMM): exec of EXE", and why
// it was not traced.
func describeProcess(p tracefile.Process) string {
	var d string
	switch {
	case p.ExecFrom != 0 && p.ExecFrom != p.PID:
		d = fmt.Sprintf("%d (%s): exec of %s by thread %d", p.PID, Printable(p.Comm), Printable(p.Exe), p.ExecFrom)
	case p.ExecFrom != 0:
		d = fmt.Sprintf("%d (%s): exec of %s", p.PID, Printable(p.Comm), Printable(p.Exe))
	case p.PPID != 0:
		d = fmt.Sprintf("%d (%s, forked from %d)", p.PID, Printable(p.Comm), p.PPID)
	default:
		d = fmt.Sprintf("%d (%s)", p.PID, Printable(p.Comm))
	}
	if p.Untraced != "" {
		d += ", not traced: " + Printable(p.Untraced)
	}
	return d
}

// writeProcesses lists the processes of a recording made with --follow in
// the header of a replay.
func writeProcesses(w *bufio.Writer, rec *tracefile.Meta) {
	for _, p := range rec.Processes {
		fmt.Fprintf(w, "# process %s\n", describeProcess(p))
	}
}

// fmtDur formats a duration in ns the way uftrace does, 10 characters wide.
func fmtDur(ns int64) string {
	switch {
	case ns < 1e6:
		return fmt.Sprintf("%7.3f us", float64(ns)/1e3)
	case ns < 1e9:
		return fmt.Sprintf("%7.3f ms", float64(ns)/1e6)
	default:
		return fmt.Sprintf("%7.3f  s", float64(ns)/1e9)
	}
}

// symbolizer names code addresses from the symbols (and traced functions)
// of a recording.
type symbolizer struct {
	syms []tracefile.Symbol // sorted by Addr
	// cache holds the names of up to maxSymCache addresses.
	cache map[uint64]string
}

const maxSymCache = 1 << 16

func newSymbolizer(rec *tracefile.Meta) *symbolizer {
	s := &symbolizer{syms: make([]tracefile.Symbol, 0, len(rec.Symbols)+len(rec.Funcs))}
	s.syms = append(s.syms, rec.Symbols...)
	for _, f := range rec.Funcs {
		s.syms = append(s.syms, tracefile.Symbol{Name: f.Name, Module: f.Module, Addr: f.Addr, Size: f.Size})
	}
	sort.SliceStable(s.syms, func(i, j int) bool { return s.syms[i].Addr < s.syms[j].Addr })
	return s
}

// name returns "symbol+0xoff" for pc, or "?" when no symbol covers it. A
// symbol without a size covers addresses up to the next symbol.
func (s *symbolizer) name(pc uint64) string {
	if pc == 0 {
		return "?"
	}
	if n, ok := s.cache[pc]; ok {
		return n
	}
	n := s.lookup(pc)
	if s.cache == nil {
		s.cache = map[uint64]string{}
	}
	if len(s.cache) < maxSymCache {
		s.cache[pc] = n
	}
	return n
}

func (s *symbolizer) lookup(pc uint64) string {
	sym, ok := s.symbol(pc)
	if !ok {
		return "?"
	}
	if pc == sym.Addr {
		return Printable(sym.Name)
	}
	return fmt.Sprintf("%s+0x%x", Printable(sym.Name), pc-sym.Addr)
}

// symbol returns the named symbol that covers pc.
func (s *symbolizer) symbol(pc uint64) (tracefile.Symbol, bool) {
	i := sort.Search(len(s.syms), func(i int) bool { return s.syms[i].Addr > pc }) - 1
	if i < 0 {
		return tracefile.Symbol{}, false
	}
	// Prefer a symbol with a size among those at the same address.
	for j := i; j >= 0 && s.syms[j].Addr == s.syms[i].Addr; j-- {
		if s.syms[j].Size > 0 {
			i = j
			break
		}
	}
	sym := s.syms[i]
	if sym.Size > 0 && pc-sym.Addr >= sym.Size || sym.Name == "" {
		return tracefile.Symbol{}, false
	}
	return sym, true
}
