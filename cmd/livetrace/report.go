package main

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/livetrace/livetrace/internal/report"
	"github.com/livetrace/livetrace/internal/tracefile"
)

// reportOptions holds the flags of `livetrace report`.
type reportOptions struct {
	in     inputOptions
	filter filterOptions
	json   bool
	sort   string
	by     byArgOptions
	stdout io.Writer
}

func newReportCmd(stdout, stderr io.Writer) *cobra.Command {
	o := &reportOptions{stdout: stdout}
	cmd := &cobra.Command{
		Use:   "report [FILE | -i FILE] [-m GLOB]... [--json] [--sort COL] [-D N] [-t DURATION] [--tid TID]... [--since D] [--until D]",
		Short: "Print per-function statistics of a recording",
		Long: `Print one line per traced function: its calls, and for graph-mode
recordings its total, self, average, minimum and maximum time.

Total is the time the function was on the stack: for recursive functions
only the outermost frame counts. Self is the time spent in the function
itself, minus its children (children hidden by -D or -t count as self
time). Average, minimum and maximum are over every completed call. Calls
whose exit is missing (lost, or still running at the end) count as calls
but in no time column.

--sort takes calls, name, total, self, avg, min or max (default: calls for
entry mode, total for graph mode). --json prints an array of objects with
function, module, calls and, in graph mode, total_ns, self_ns, avg_ns,
min_ns and max_ns.

--by pid splits the table by process, for a recording made with --follow.

FILE (or -i FILE) is the recording, livetrace.data by default; - reads it
from standard input. -m keeps the functions of the modules whose path or
file name matches GLOB.`,
		Example: `  livetrace report
  livetrace report --sort self -t 1us
  livetrace report --json --tid 1234
  livetrace report run1.data -m libc.so.6`,
		Args: o.in.inputArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			s, f, err := load(&o.in, &o.filter)
			if err != nil {
				return err
			}
			defer s.Close()
			if o.by.arg == "pid" {
				return o.in.readErr(reportByPid(o.stdout, s, f, o.sort, o.json))
			}
			if o.by.arg != "" || len(o.by.funcs) > 0 {
				return o.in.readErr(o.by.report(o.stdout, s, f, o.json))
			}
			return o.in.readErr(report.ReportStream(o.stdout, s, report.ReportOptions{Filter: f, Sort: o.sort, JSON: o.json}))
		},
	}
	o.in.addFlags(cmd.Flags())
	o.in.addModuleFlag(cmd.Flags())
	o.filter.addFlags(cmd.Flags())
	cmd.Flags().BoolVar(&o.json, "json", false, "print a JSON array instead of a table")
	cmd.Flags().StringVarP(&o.sort, "sort", "s", "", "sort by `COL`: "+strings.Join(report.SortColumns, ", "))
	o.by.addFlags(cmd.Flags())
	return cmd
}

// reportByPid prints one report per process of the recording (record
// --follow), each under a "# pid N (COMM)" line: the report of the
// process's threads.
func reportByPid(w io.Writer, s *tracefile.Stream, f report.Filter, sortCol string, asJSON bool) error {
	if asJSON {
		return errors.New("report --by pid prints tables only: use --json with --tid to get one process's calls as JSON")
	}
	m := &s.Meta
	byPid := map[int][]uint32{}
	for tid, pid := range m.ThreadPIDs() {
		if len(f.TIDs) == 0 || slices.Contains(f.TIDs, tid) {
			byPid[pid] = append(byPid[pid], tid)
		}
	}
	comm := map[int]string{m.PID: m.Comm}
	var pids []int
	seen := map[int]bool{}
	for _, p := range m.Processes {
		if !seen[p.PID] {
			seen[p.PID] = true
			pids = append(pids, p.PID)
		}
		comm[p.PID] = p.Comm // the last image's
	}
	var rest []int
	for pid := range byPid {
		if !seen[pid] {
			rest = append(rest, pid)
		}
	}
	slices.Sort(rest)
	pids = append(pids, rest...)
	for i, pid := range pids {
		tids := byPid[pid]
		if len(tids) == 0 {
			continue
		}
		slices.Sort(tids)
		if i > 0 {
			fmt.Fprintln(w)
		}
		fmt.Fprintf(w, "# pid %d (%s)\n", pid, report.Printable(comm[pid]))
		pf := f
		pf.TIDs = tids
		s.Rewind()
		if err := report.ReportStream(w, s, report.ReportOptions{Filter: pf, Sort: sortCol}); err != nil {
			return err
		}
	}
	return nil
}
