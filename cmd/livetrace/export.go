package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/livetrace/livetrace/internal/report"
	"github.com/livetrace/livetrace/internal/safefile"
)

// exportOptions holds the flags of `livetrace export`.
type exportOptions struct {
	in     inputOptions
	filter filterOptions
	format string
	out    string
	stdout io.Writer
	stderr io.Writer
}

func newExportCmd(stdout, stderr io.Writer) *cobra.Command {
	o := &exportOptions{stdout: stdout, stderr: stderr}
	cmd := &cobra.Command{
		Use:   "export --format chrome|perfetto|folded|pprof|flamegraph [FILE | -i FILE] [-m GLOB]... [-o OUT] [-D N] [-t DURATION] [--tid TID]... [--since D] [--until D]",
		Short: "Convert a recording to Chrome JSON or Perfetto trace, folded stacks, pprof or a flame graph",
		Long: `Convert a recording for other tools:

  chrome      Trace Event Format JSON for the Perfetto UI or chrome://tracing
              (default OUT livetrace.json): one track per thread, a complete
              event per call (graph mode) or an instant event per entry.
  perfetto    Perfetto's protobuf trace for ui.perfetto.dev and trace_processor
              (livetrace.perfetto-trace): the same tracks and slices, with
              interned names, several times smaller than the JSON.
  folded      folded stacks "a;b;c value" for flamegraph.pl and speedscope
              (livetrace.folded): self time in ns (graph mode) or calls.
  pprof       a gzipped pprof profile for go tool pprof (livetrace.pb.gz),
              with sample types calls/count and time/nanoseconds.
  flamegraph  a self-contained HTML flame graph (livetrace.html).

-o - writes to standard output; an existing OUT is replaced (an export
can be made again from the recording). FILE (or -i FILE) is the recording,
livetrace.data by default; - reads it from standard input. -m keeps the
functions of the modules whose path or file name matches GLOB.`,
		Example: `  livetrace export --format chrome
  livetrace export --format pprof -o prof.pb.gz && go tool pprof -top prof.pb.gz
  livetrace export --format folded -o - | flamegraph.pl > flame.svg`,
		Args: o.in.inputArgs,
		RunE: func(cmd *cobra.Command, args []string) error { return o.run() },
	}
	o.in.addFlags(cmd.Flags())
	o.in.addModuleFlag(cmd.Flags())
	o.filter.addFlags(cmd.Flags())
	cmd.Flags().StringVarP(&o.format, "format", "f", "", "write `FORMAT`: chrome, perfetto, folded, pprof or flamegraph")
	cmd.Flags().StringVarP(&o.out, "output", "o", "", "write to `OUT` (default livetrace.json, .perfetto-trace, .folded, .pb.gz or .html; - for stdout)")
	return cmd
}

func (o *exportOptions) run() error {
	out := ""
	for _, f := range report.ExportFormats {
		if f.Name == o.format {
			out = f.DefaultFile
		}
	}
	if out == "" {
		if o.format == "" {
			return fmt.Errorf("export: give --format chrome, perfetto, folded, pprof or flamegraph")
		}
		return fmt.Errorf("export: unknown format %q: use chrome, perfetto, folded, pprof or flamegraph", o.format)
	}
	if o.out != "" {
		out = o.out
	}
	s, f, err := load(&o.in, &o.filter)
	if err != nil {
		return err
	}
	defer s.Close()
	if out == "-" {
		return o.in.readErr(report.ExportStream(o.stdout, s, o.format, f))
	}
	// Write under a new name next to OUT and rename (see package
	// safefile): a failed export leaves no half-written file behind, and
	// a link planted at OUT is refused, never written through.
	file, err := safefile.Create(out)
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	defer file.Abort()
	if err := report.ExportStream(file, s, o.format, f); err != nil {
		return o.in.readErr(err)
	}
	if err := file.Commit(); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	fmt.Fprintf(o.stderr, "wrote %s\n", out)
	return nil
}
