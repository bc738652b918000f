package report

import (
	"bufio"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/livetrace/livetrace/internal/tracefile"
)

// Info writes a summary of rec: the target, the mode, start, end and
// duration, modules, threads (with their events and lost events), event
// and lost counts, and shadow-stack overflows.
func Info(w io.Writer, rec *tracefile.Recording) error {
	bw := bufio.NewWriter(w)
	perThread := map[uint32]uint64{}
	for _, ev := range rec.Events {
		perThread[ev.TID]++
	}
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
	if rec.Recovered {
		kv("recovered", "yes: the writer did not finish; %d events left out", rec.Dropped)
	}
	kv("start", "%s", fmtTime(rec.Start))
	kv("end", "%s", fmtTime(rec.End))
	if !rec.Start.IsZero() && !rec.End.IsZero() {
		kv("duration", "%s", human(rec.End.Sub(rec.Start).Nanoseconds()))
	}
	if n := len(rec.Events); n > 0 {
		span := rec.Clock.Nanos(rec.Events[n-1].TSC) - rec.Clock.Nanos(rec.Events[0].TSC)
		kv("events span", "%s", human(span))
	}
	kv("events", "%d", len(rec.Events))
	kv("lost events", "%d", rec.Lost)
	if rec.Mode == tracefile.ModeGraph {
		kv("shadow stack overflows", "%d", rec.ShadowOverflow)
	}
	kv("traced functions", "%d", len(rec.Funcs))
	kv("symbols", "%d", len(rec.Symbols))
	fl := rec.Filters
	var filters []string
	if len(fl.Patterns) > 0 {
		filters = append(filters, "functions "+Printable(strings.Join(fl.Patterns, ",")))
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
	fmt.Fprintf(bw, "\nthreads:\n  %8s  %-16s  %10s  %10s\n", "TID", "NAME", "EVENTS", "LOST")
	seen := map[uint32]bool{}
	for _, th := range rec.Threads {
		seen[th.TID] = true
		fmt.Fprintf(bw, "  %8d  %-16s  %10d  %10d\n", th.TID, Printable(th.Name), perThread[th.TID], th.Lost)
	}
	for _, tid := range tids(rec, Filter{}) {
		if !seen[tid] {
			fmt.Fprintf(bw, "  %8d  %-16s  %10d  %10s\n", tid, "?", perThread[tid], "-")
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
