package main

import (
	"errors"
	"fmt"
	"io"
	"math/bits"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/livetrace/livetrace/internal/report"
	"github.com/livetrace/livetrace/internal/session"
	"github.com/livetrace/livetrace/internal/tracefile"
)

func newTopCmd(stdout, stderr io.Writer) *cobra.Command {
	cmd, o := recordCommand(stdout, stderr)
	o.top = true
	o.output = ""
	o.graph = true
	f := cmd.Flags()
	f.Lookup("output").DefValue = ""
	f.Lookup("output").Usage = "record the events to `FILE` as well"
	f.Lookup("graph").DefValue = "true"
	f.Lookup("graph").Usage = "record exits too, for total, self, avg and p99 (--graph=false: calls only)"
	cmd.Use = "top (-p PID | -- CMD [ARGS...]) [-m GLOB]... [-F GLOB]... [-N GLOB]... [--graph=false] [-d DURATION] [-o FILE]"
	cmd.Short = "Show the busiest functions of a running process, live, full screen"
	cmd.Long = `Attach to the running process PID (or start CMD) as record does, with the
same selection flags, and show per traced function, refreshed every second:
calls per second over the last second, calls, total and self time, the
average and the 99th percentile of a call's duration (since the function
was enabled), and whether it is traced now. Graph mode is on by default:
times need the exits (--graph=false shows calls only).

Keys:
  up/down, j/k      move the cursor (PgUp/PgDn, Home/End)
  s / S             sort by the next / previous column
  space             disable the function under the cursor, or enable it again
  e GLOB Enter      enable the functions matching GLOB (not selected at the start too)
  d GLOB Enter      disable the functions matching GLOB
  q, Ctrl-C         detach cleanly and quit

Changes go through the same mechanism as livetrace ctl (one patch batch
each, no detach), which can also drive top from another shell. With -o
FILE the events are recorded as well.`
	cmd.Example = `  livetrace top -p 1234 -F 'parse_*'
  livetrace top -p 1234 -m libc.so.6 -F malloc -F free -F realloc`
	return cmd
}

// Columns of top, in the order `s` cycles through them.
const (
	colRate = iota
	colCalls
	colTotal
	colSelf
	colAvg
	colP99
	colName
	numCols
)

var colNames = [numCols]string{"CALLS/S", "CALLS", "TOTAL", "SELF", "AVG", "P99", "FUNCTION"}

// histBuckets is a log-linear histogram of durations in ns: 8 buckets per
// power of two (12.5 % resolution).
const histBuckets = 64 * 8

func histIndex(ns uint64) int {
	if ns < 8 {
		return int(ns)
	}
	e := bits.Len64(ns) - 1
	return (e-2)*8 + int(ns>>(e-3)&7)
}

func histLow(i int) uint64 {
	if i < 8 {
		return uint64(i)
	}
	e := i/8 + 2
	return (8 | uint64(i%8)) << (e - 3)
}

// topStat is what top knows of one function.
type topStat struct {
	calls, window uint64 // all entries; entries since the last refresh
	rate          float64
	total, self   uint64 // ns, of completed calls
	done          uint64 // completed calls
	hist          [histBuckets]uint32
}

func (st *topStat) p99() uint64 {
	if st.done == 0 {
		return 0
	}
	want := st.done - st.done/100 // the call at rank 99 %
	var n uint64
	for i, c := range st.hist {
		n += uint64(c)
		if n >= want {
			return histLow(i)
		}
	}
	return 0
}

type topFrame struct {
	fn    uint32
	depth uint16
	start uint64 // ns
	child uint64 // ns spent in traced callees
}

// topView is the full-screen view of livetrace top.
type topView struct {
	o     *recordOptions
	in    *os.File
	out   io.Writer
	quit  chan struct{}
	qOnce sync.Once

	mu       sync.Mutex // events arrive on the goroutine that polls
	s        *session.Session
	clock    *tracefile.NanosConverter
	stats    []topStat
	stacks   map[uint32][]topFrame
	funcs    []session.FuncState
	sortCol  int
	cursor   int
	offset   int
	prompt   string // "enable" or "disable" while a glob is typed
	typed    string
	msg      string
	last     time.Time // last refresh of the rates
	dirty    bool
	oldState *term.State
}

func newTopView(o *recordOptions) (*topView, error) {
	in := os.Stdin
	if !term.IsTerminal(int(in.Fd())) || !term.IsTerminal(int(os.Stdout.Fd())) {
		return nil, errors.New("top needs a terminal for its input and output: use livetrace live to print calls, or livetrace record")
	}
	return &topView{o: o, in: in, out: o.stdout, quit: make(chan struct{}), stacks: map[uint32][]topFrame{}}, nil
}

// start takes the terminal: raw input, the alternate screen.
func (v *topView) start(s *session.Session) error {
	meta := s.Meta()
	st, err := term.MakeRaw(int(v.in.Fd()))
	if err != nil {
		return fmt.Errorf("top: set the terminal to raw mode: %w", err)
	}
	v.mu.Lock()
	v.s = s
	v.clock = meta.Clock.Converter()
	v.oldState = st
	v.funcs = s.Funcs()
	v.stats = make([]topStat, len(v.funcs))
	v.last = time.Now()
	v.dirty = true
	v.mu.Unlock()
	fmt.Fprint(v.out, "\x1b[?1049h\x1b[?25l") // alternate screen, no cursor
	go v.readKeys()
	return nil
}

// finish gives the terminal back.
func (v *topView) finish() {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.oldState == nil {
		return
	}
	fmt.Fprint(v.out, "\x1b[?25h\x1b[?1049l")
	_ = term.Restore(int(v.in.Fd()), v.oldState)
	v.oldState = nil
}

// Quit is closed when the user asked to quit.
func (v *topView) Quit() <-chan struct{} {
	if v == nil {
		return nil
	}
	return v.quit
}

// events is the session's OnEvents: one thread's batch.
func (v *topView) events(evs []tracefile.Event, _ string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.clock == nil {
		return
	}
	for _, ev := range evs {
		if int(ev.Func) >= len(v.stats) {
			v.grow(int(ev.Func) + 1)
		}
		st := &v.stats[ev.Func]
		stack := v.stacks[ev.TID]
		ns := uint64(max(v.clock.Nanos(ev.TSC), 0))
		switch ev.Kind {
		case tracefile.KindEntry:
			st.calls++
			st.window++
			if v.o.graph {
				v.stacks[ev.TID] = append(stack, topFrame{fn: ev.Func, depth: ev.Depth, start: ns})
			}
		case tracefile.KindExit:
			// Frames above this depth lost their exits (a lost
			// event): drop them.
			for len(stack) > 0 && stack[len(stack)-1].depth > ev.Depth {
				stack = stack[:len(stack)-1]
			}
			if n := len(stack); n > 0 && stack[n-1].depth == ev.Depth && stack[n-1].fn == ev.Func {
				f := stack[n-1]
				stack = stack[:n-1]
				d := uint64(0)
				if ns > f.start {
					d = ns - f.start
				}
				st.total += d
				st.self += d - min(d, f.child)
				st.done++
				st.hist[histIndex(d)]++
				if n > 1 {
					stack[n-2].child += d
				}
			}
			v.stacks[ev.TID] = stack
		}
	}
}

func (v *topView) grow(n int) {
	if n > len(v.stats) {
		v.stats = append(v.stats, make([]topStat, n-len(v.stats))...)
	}
}

// tick refreshes the screen every second, and at once after a key.
func (v *topView) tick() {
	v.mu.Lock()
	s := v.s
	v.mu.Unlock()
	if s == nil {
		return
	}
	sum := s.Summary()
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.oldState == nil {
		return
	}
	if el := time.Since(v.last); el >= time.Second {
		for i := range v.stats {
			v.stats[i].rate = float64(v.stats[i].window) / el.Seconds()
			v.stats[i].window = 0
		}
		v.last = time.Now()
		v.dirty = true
	}
	if v.dirty {
		v.dirty = false
		v.draw(sum)
	}
}

// order returns the function indexes in display order. v.mu is held.
func (v *topView) order() []int {
	idx := make([]int, len(v.funcs))
	for i := range idx {
		idx[i] = i
	}
	key := func(i int) float64 {
		st := &v.stats[i]
		switch v.sortCol {
		case colRate:
			return st.rate
		case colCalls:
			return float64(st.calls)
		case colTotal:
			return float64(st.total)
		case colSelf:
			return float64(st.self)
		case colAvg:
			if st.done == 0 {
				return 0
			}
			return float64(st.total) / float64(st.done)
		case colP99:
			return float64(st.p99())
		}
		return 0
	}
	sort.SliceStable(idx, func(a, b int) bool {
		if v.sortCol == colName {
			return v.funcs[idx[a]].Name < v.funcs[idx[b]].Name
		}
		ka, kb := key(idx[a]), key(idx[b])
		if ka != kb {
			return ka > kb
		}
		return v.funcs[idx[a]].Name < v.funcs[idx[b]].Name
	})
	return idx
}

func fmtNs(ns uint64, ok bool) string {
	if !ok {
		return "-"
	}
	d := time.Duration(ns)
	switch {
	case d < time.Microsecond:
		return fmt.Sprintf("%dns", ns)
	case d < time.Millisecond:
		return fmt.Sprintf("%.1fus", float64(ns)/1e3)
	case d < time.Second:
		return fmt.Sprintf("%.1fms", float64(ns)/1e6)
	}
	return fmt.Sprintf("%.2fs", d.Seconds())
}

// draw writes the whole screen; sum is the session's, taken before v.mu
// (events hold the session's lock, then v.mu). v.mu is held.
func (v *topView) draw(sum session.Summary) {
	w, h, err := term.GetSize(int(os.Stdout.Fd()))
	if err != nil || w < 40 || h < 6 {
		w, h = 80, 24
	}
	var b strings.Builder
	b.WriteString("\x1b[H\x1b[2J")
	line := func(s string, attr string) {
		if len(s) > w {
			s = s[:w]
		}
		if attr != "" {
			b.WriteString(attr + s + strings.Repeat(" ", w-len(s)) + "\x1b[0m")
		} else {
			b.WriteString(s)
		}
		b.WriteString("\r\n")
	}
	traced := 0
	for _, f := range v.funcs {
		if f.Traced {
			traced++
		}
	}
	mode := "graph"
	if !v.o.graph {
		mode = "entry (calls only)"
	}
	line(fmt.Sprintf("livetrace top  pid %d  %s mode  %s traced  %d events  %d lost  %.0fs", v.s.Pid(), mode, plural(traced, "function"), sum.Events, sum.Lost, sum.Duration.Seconds()), "")
	line(fmt.Sprintf("sort: %s  keys: up/down  s/S sort  space on/off  e enable GLOB  d disable GLOB  q quit", colNames[v.sortCol]), "")
	hdr := [numCols]string{}
	for c := range hdr {
		hdr[c] = colNames[c]
		if c == v.sortCol {
			hdr[c] += "*"
		}
	}
	line(fmt.Sprintf("%11s %11s %10s %10s %9s %9s  %-4s %s", hdr[colRate], hdr[colCalls], hdr[colTotal], hdr[colSelf], hdr[colAvg], hdr[colP99], "ON", hdr[colName]), "\x1b[1m")
	rows := h - 5
	order := v.order()
	if v.cursor >= len(order) {
		v.cursor = max(0, len(order)-1)
	}
	if v.cursor < v.offset {
		v.offset = v.cursor
	}
	if v.cursor >= v.offset+rows {
		v.offset = v.cursor - rows + 1
	}
	for r := 0; r < rows; r++ {
		k := v.offset + r
		if k >= len(order) {
			line("", "")
			continue
		}
		i := order[k]
		st := &v.stats[i]
		on := "on"
		if !v.funcs[i].Traced {
			on = "off"
		}
		timed := v.o.graph && st.done > 0
		avg := uint64(0)
		if st.done > 0 {
			avg = st.total / st.done
		}
		s := fmt.Sprintf("%11.0f %11d %10s %10s %9s %9s  %-4s %s", st.rate, st.calls, fmtNs(st.total, timed), fmtNs(st.self, timed), fmtNs(avg, timed), fmtNs(st.p99(), timed), on, report.Printable(v.funcs[i].Name))
		attr := ""
		if k == v.cursor {
			attr = "\x1b[7m"
		}
		line(s, attr)
	}
	switch {
	case v.prompt != "":
		line(fmt.Sprintf("%s GLOB: %s_", v.prompt, report.Printable(v.typed)), "")
	default:
		line(v.msg, "")
	}
	fmt.Fprint(v.out, strings.TrimSuffix(b.String(), "\r\n"))
}

// readKeys reads the terminal until quit. Escape sequences of the arrow
// and paging keys are taken whole from one read.
func (v *topView) readKeys() {
	buf := make([]byte, 64)
	for {
		n, err := v.in.Read(buf)
		if err != nil {
			v.doQuit()
			return
		}
		for k := 0; k < n; k++ {
			c := buf[k]
			if c == 0x1b && k+2 < n && buf[k+1] == '[' {
				seq := string(buf[k+2 : n])
				k += 2
				switch {
				case strings.HasPrefix(seq, "A"):
					v.key("up")
				case strings.HasPrefix(seq, "B"):
					v.key("down")
				case strings.HasPrefix(seq, "5~"):
					v.key("pgup")
					k++
				case strings.HasPrefix(seq, "6~"):
					v.key("pgdn")
					k++
				case strings.HasPrefix(seq, "H"):
					v.key("home")
				case strings.HasPrefix(seq, "F"):
					v.key("end")
				}
				continue
			}
			v.key(string(c))
			select {
			case <-v.quit:
				return
			default:
			}
		}
	}
}

func (v *topView) doQuit() { v.qOnce.Do(func() { close(v.quit) }) }

// key handles one key.
func (v *topView) key(k string) {
	v.mu.Lock()
	if v.prompt != "" {
		op := v.prompt
		switch k {
		case "\r", "\n":
			glob := v.typed
			v.prompt, v.typed = "", ""
			v.dirty = true
			v.mu.Unlock()
			if glob != "" {
				v.change(op, []string{glob})
			}
			return
		case "\x1b", "\x03":
			v.prompt, v.typed = "", ""
		case "\x7f", "\b":
			if v.typed != "" {
				v.typed = v.typed[:len(v.typed)-1]
			}
		default:
			if len(k) == 1 && k[0] >= 0x20 && k[0] < 0x7f {
				v.typed += k
			}
		}
		v.dirty = true
		v.mu.Unlock()
		return
	}
	page := 10
	if _, h, err := term.GetSize(int(os.Stdout.Fd())); err == nil && h > 6 {
		page = h - 5
	}
	var toggle *session.FuncState
	switch k {
	case "q", "\x03":
		v.mu.Unlock()
		v.doQuit()
		return
	case "up", "k":
		v.cursor = max(0, v.cursor-1)
	case "down", "j":
		v.cursor = min(len(v.funcs)-1, v.cursor+1)
	case "pgup":
		v.cursor = max(0, v.cursor-page)
	case "pgdn":
		v.cursor = max(0, min(len(v.funcs)-1, v.cursor+page))
	case "home", "g":
		v.cursor = 0
	case "end", "G":
		v.cursor = max(0, len(v.funcs)-1)
	case "s":
		v.sortCol = (v.sortCol + 1) % numCols
	case "S":
		v.sortCol = (v.sortCol + numCols - 1) % numCols
	case "e":
		v.prompt = "enable"
	case "d":
		v.prompt = "disable"
	case " ":
		if order := v.order(); v.cursor < len(order) {
			f := v.funcs[order[v.cursor]]
			toggle = &f
		}
	}
	v.dirty = true
	v.mu.Unlock()
	if toggle != nil {
		op := "disable"
		if !toggle.Traced {
			op = "enable"
		}
		v.change(op, []string{escapeGlob(toggle.Name)})
	}
}

// change enables or disables functions, as livetrace ctl does.
func (v *topView) change(op string, globs []string) {
	var res session.ChangeResult
	var err error
	if op == "enable" {
		res, err = v.s.Enable(globs)
	} else {
		res, err = v.s.Disable(globs)
	}
	funcs := v.s.Funcs()
	v.mu.Lock()
	defer v.mu.Unlock()
	v.funcs = funcs
	v.grow(len(funcs))
	v.dirty = true
	switch {
	case err != nil:
		v.msg = fmt.Sprintf("%s %s: %v", op, strings.Join(globs, " "), err)
	default:
		v.msg = fmt.Sprintf("%sd %s", op, plural(len(res.Changed), "function"))
		if len(res.Refused) > 0 {
			v.msg += fmt.Sprintf("; %s cannot be traced (%s: %s)", plural(len(res.Refused), "function"), res.Refused[0].Name, res.Refused[0].Reason)
		}
	}
	v.msg = report.Printable(v.msg)
}

// refresh takes the functions a change made through livetrace ctl added.
func (v *topView) refresh() {
	v.mu.Lock()
	s := v.s
	v.mu.Unlock()
	if s == nil {
		return
	}
	funcs := s.Funcs()
	v.mu.Lock()
	defer v.mu.Unlock()
	v.funcs = funcs
	v.grow(len(funcs))
	v.dirty = true
}

// escapeGlob returns a glob that matches name only.
func escapeGlob(name string) string {
	var b strings.Builder
	for _, r := range name {
		if strings.ContainsRune(`*?[\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}
