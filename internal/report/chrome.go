package report

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"

	"github.com/livetrace/livetrace/internal/tracefile"
)

// chromeEvent is one event of the Trace Event Format.
type chromeEvent struct {
	Name string         `json:"name"`
	Cat  string         `json:"cat,omitempty"`
	Ph   string         `json:"ph"`
	TS   float64        `json:"ts"`
	Dur  *float64       `json:"dur,omitempty"`
	PID  int            `json:"pid"`
	TID  uint32         `json:"tid"`
	S    string         `json:"s,omitempty"`
	Args map[string]any `json:"args,omitempty"`
}

// ExportChrome writes rec in the Trace Event Format that chrome://tracing
// and the Perfetto UI open: {"traceEvents": [...], "displayTimeUnit": "ns"}.
// Timestamps are in microseconds since the first event. Each thread is one
// track, named by a "thread_name" metadata event. Graph mode gives a
// complete ("X") event per shown call; a call without an exit ends where
// the package documentation says, with args.unfinished or args.exit_lost
// set. Entry mode gives thread-scoped instant ("i") events with the caller
// in args.
func ExportChrome(w io.Writer, rec *tracefile.Recording, f Filter) error {
	return ExportChromeStream(w, rec.Stream(tracefile.StreamOptions{}), f)
}

// ExportChromeStream is [ExportChrome] of a stream. It reads the stream
// twice (once for the threads, or in graph mode for the ends of long
// calls) and holds no events.
func ExportChromeStream(w io.Writer, s *tracefile.Stream, f Filter) error {
	rec := &s.Meta
	if err := f.check(rec); err != nil {
		return err
	}
	bw := bufio.NewWriter(w)
	first := true
	emit := func(ev *chromeEvent) {
		b, err := json.Marshal(ev)
		if err != nil {
			// Only non-finite floats fail, and times are integers.
			return
		}
		if !first {
			bw.WriteString(",\n")
		}
		first = false
		bw.Write(b)
	}
	bw.WriteString(`{"displayTimeUnit":"ns","traceEvents":[` + "\n")
	names := threadNames(rec)
	// Each thread goes under its own process (record --follow): the real
	// pid, so that Perfetto draws one track group per process.
	pids := rec.ThreadPIDs()
	pidOf := func(tid uint32) int { return pidOf(pids, rec, tid) }
	header := func(threads []uint32) {
		emit(&chromeEvent{Name: "process_name", Ph: "M", PID: rec.PID, TID: 0, Args: map[string]any{"name": fmt.Sprintf("%s (pid %d)", Printable(rec.Comm), rec.PID)}})
		for _, p := range rec.Processes {
			if p.PID != rec.PID {
				emit(&chromeEvent{Name: "process_name", Ph: "M", PID: p.PID, TID: 0, Args: map[string]any{"name": fmt.Sprintf("%s (pid %d)", Printable(p.Comm), p.PID)}})
			}
		}
		for _, tid := range threads {
			if f.keepTID(tid) {
				emit(&chromeEvent{Name: "thread_name", Ph: "M", PID: pidOf(tid), TID: tid, Args: map[string]any{"name": threadName(names, rec, tid)}})
			}
		}
	}
	us := func(ns int64) float64 { return float64(ns) / 1e3 }
	var err error
	if rec.Mode == tracefile.ModeGraph {
		// The first pass finds the threads.
		err = inOrder(s, f, header, func(it item) {
			c := it.c
			if it.kind != itemEntry || !c.visible {
				return
			}
			d := us(c.dur())
			ev := &chromeEvent{Name: funcName(rec, c.fn), Cat: "function", Ph: "X", TS: us(c.start), Dur: &d, PID: pidOf(c.tid), TID: c.tid}
			switch c.status {
			case unfinished:
				ev.Args = map[string]any{"unfinished": true}
			case exitLost:
				ev.Args = map[string]any{"exit_lost": true}
			}
			ev.Args = addArgs(ev.Args, rec, c.fn, c.args, c.ret)
			emit(ev)
		})
	} else {
		threads, terr := tids(s, f)
		if terr != nil {
			return terr
		}
		header(threads)
		syms := newSymbolizer(rec)
		e := newEngine(s, f)
		for {
			ev, ok := s.Next()
			if !ok {
				break
			}
			if ev.Kind != tracefile.KindEntry || !f.keep(&ev) {
				continue
			}
			emit(&chromeEvent{Name: funcName(rec, ev.Func), Cat: "function", Ph: "i", S: "t", TS: us(e.ns(ev.TSC)),
				PID: pidOf(ev.TID), TID: ev.TID, Args: addArgs(map[string]any{"caller": syms.name(ev.Caller)}, rec, ev.Func, ev.Args, "")})
		}
		err = s.Err()
	}
	if err != nil {
		return err
	}
	bw.WriteString("\n]}\n")
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write chrome trace: %w", err)
	}
	return nil
}
