package report

import (
	"bufio"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/livetrace/livetrace/internal/tracefile"
)

// Info writes a summary of rec: the target, the mode, start, end and
// duration, modules, threads (with their events and lost events), event
// and lost counts, and shadow-stack overflows.
func Info(w io.Writer, rec *tracefile.Recording) error {
	return InfoStream(w, rec.Stream(tracefile.StreamOptions{}))
}

// InfoStream is [Info] of a stream, which it reads once to count the
// events of each thread.
func InfoStream(w io.Writer, s *tracefile.Stream) error {
	rec := &s.Meta
	counts := map[uint32]*uint64{}
	var (
		events  uint64
		threads []uint32
		cur     *uint64
		lastTID uint32
	)
	for {
		ev, ok := s.Next()
		if !ok {
			break
		}
		events++
		if cur == nil || ev.TID != lastTID {
			p := counts[ev.TID]
			if p == nil {
				p = new(uint64)
				counts[ev.TID] = p
				threads = append(threads, ev.TID)
			}
			cur, lastTID = p, ev.TID
		}
		*cur++
	}
	if err := s.Err(); err != nil {
		return err
	}
	slices.Sort(threads)
	perThread := make(map[uint32]uint64, len(counts))
	for tid, n := range counts {
		perThread[tid] = *n
	}
	bw := bufio.NewWriter(w)
	kv := func(k, format string, args ...any) {
		fmt.Fprintf(bw, "%-24s %s\n", k+":", fmt.Sprintf(format, args...))
	}
	target := fmt.Sprintf("pid %d (%s)", rec.PID, Printable(rec.Comm))
	if len(rec.Cmdline) > 0 {
		args := make([]string, len(rec.Cmdline))
		for i, a := range rec.Cmdline {
			args[i] = Printable(a)
		}
		target += ": " + strings.Join(args, " ")
	}
	kv("target", "%s", target)
	if rec.Exe != "" {
		kv("executable", "%s", Printable(rec.Exe))
	}
	if rec.Host != "" {
		kv("host", "%s", Printable(rec.Host))
	}
	kv("mode", "%s", rec.Mode)
	kv("format version", "%d", rec.Version)
	if s.Recovered {
		kv("recovered", "yes: the writer did not finish; %s left out", count(s.Dropped, "event"))
	}
	kv("start", "%s", fmtTime(rec.Start))
	kv("end", "%s", fmtTime(rec.End))
	if !rec.Start.IsZero() && !rec.End.IsZero() {
		kv("duration", "%s", human(rec.End.Sub(rec.Start).Nanoseconds()))
	}
	if events > 0 {
		span := rec.Clock.Nanos(s.LastTSC) - rec.Clock.Nanos(s.FirstTSC)
		kv("events span", "%s", human(span))
	}
	kv("events", "%d", events)
	kv("lost events", "%d", rec.Lost)
	if rec.Mode == tracefile.ModeGraph {
		kv("shadow stack overflows", "%d", rec.ShadowOverflow)
		if rec.JITCalls > 0 {
			kv("calls from JIT code", "%d (not traced: graph mode leaves a return address outside every module alone)", rec.JITCalls)
		}
	}
	kv("traced functions", "%d", len(rec.Funcs))
	kv("symbols", "%d", len(rec.Symbols))
	fl := rec.Filters
	var filters []string
	if len(fl.Patterns) > 0 {
		filters = append(filters, "functions "+Printable(strings.Join(fl.Patterns, ",")))
	}
	if len(fl.Exclude) > 0 {
		filters = append(filters, "excluding "+Printable(strings.Join(fl.Exclude, ",")))
	}
	if len(fl.Modules) > 0 {
		filters = append(filters, "modules "+Printable(strings.Join(fl.Modules, ",")))
	}
	if fl.MaxDepth > 0 {
		filters = append(filters, fmt.Sprintf("depth < %d", fl.MaxDepth))
	}
	if fl.MinDuration > 0 {
		filters = append(filters, fmt.Sprintf("calls >= %v", fl.MinDuration))
	}
	if len(fl.TIDs) > 0 {
		filters = append(filters, fmt.Sprintf("threads %v", fl.TIDs))
	}
	if len(filters) > 0 {
		kv("recorded with", "%s", strings.Join(filters, "; "))
	}
	fmt.Fprintf(bw, "\nmodules:\n")
	for _, m := range rec.Modules {
		fmt.Fprintf(bw, "  0x%012x  %s", m.Base, Printable(m.Path))
		if m.BuildID != "" {
			fmt.Fprintf(bw, " (build id %s)", Printable(m.BuildID))
		}
		fmt.Fprintln(bw)
	}
	if len(rec.Processes) > 0 {
		// record --follow: the target and the children it forked.
		perProc := map[int]uint64{}
		pids := rec.ThreadPIDs()
		for tid, n := range perThread {
			perProc[pidOf(pids, rec, tid)] += n
		}
		// A pid that exec'd has a row per image; its events (counted per
		// pid) go on its first row.
		fmt.Fprintf(bw, "\nprocesses:\n  %8s  %8s  %10s  %s\n", "PID", "PPID", "EVENTS", "PROCESS")
		shown := map[int]bool{}
		for _, p := range rec.Processes {
			ev := "\""
			if !shown[p.PID] {
				ev = strconv.FormatUint(perProc[p.PID], 10)
				shown[p.PID] = true
			}
			fmt.Fprintf(bw, "  %8d  %8d  %10s  %s\n", p.PID, p.PPID, ev, describeProcess(p))
		}
	}
	multi := rec.MultiProcess()
	pids := rec.ThreadPIDs()
	if multi {
		fmt.Fprintf(bw, "\nthreads:\n  %8s  %8s  %-16s  %10s  %10s\n", "TID", "PID", "NAME", "EVENTS", "LOST")
	} else {
		fmt.Fprintf(bw, "\nthreads:\n  %8s  %-16s  %10s  %10s\n", "TID", "NAME", "EVENTS", "LOST")
	}
	seen := map[uint32]bool{}
	for _, th := range rec.Threads {
		seen[th.TID] = true
		if multi {
			fmt.Fprintf(bw, "  %8d  %8d  %-16s  %10d  %10d\n", th.TID, pidOf(pids, rec, th.TID), Printable(th.Name), perThread[th.TID], th.Lost)
			continue
		}
		fmt.Fprintf(bw, "  %8d  %-16s  %10d  %10d\n", th.TID, Printable(th.Name), perThread[th.TID], th.Lost)
	}
	for _, tid := range threads {
		if !seen[tid] {
			if multi {
				fmt.Fprintf(bw, "  %8d  %8s  %-16s  %10d  %10s\n", tid, "?", "?", perThread[tid], "-")
				continue
			}
			fmt.Fprintf(bw, "  %8d  %-16s  %10d  %10s\n", tid, "?", perThread[tid], "-")
		}
	}
	if len(rec.Changes) > 0 {
		// Made while attached (livetrace ctl): when, and what.
		fmt.Fprintf(bw, "\nchanges:\n")
		for i := range rec.Changes {
			c := &rec.Changes[i]
			fmt.Fprintf(bw, "  %+10.3fs  %s\n", c.Time.Sub(rec.Start).Seconds(), changeText(rec, c))
		}
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write info: %w", err)
	}
	return nil
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "unknown"
	}
	return t.Format(time.RFC3339Nano)
}
