package main

import (
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/livetrace/livetrace/internal/report"
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
