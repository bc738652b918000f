package main

import (
	"io"

	"github.com/spf13/cobra"

	"github.com/livetrace/livetrace/internal/report"
)

// infoOptions holds the flags of `livetrace info`.
type infoOptions struct {
	in     inputOptions
	stdout io.Writer
}

func newInfoCmd(stdout, stderr io.Writer) *cobra.Command {
	o := &infoOptions{stdout: stdout}
	cmd := &cobra.Command{
		Use:   "info [FILE | -i FILE]",
		Short: "Describe a recording: target, mode, time, modules, threads, lost events",
		Long: `Describe a recording: the target process (pid, command, command line), the
mode, the start, end and duration, the modules, the threads (with their
events and lost events), the number of events, of lost events and of
shadow-stack overflows, and the -F, -N, -m, -D, -t and --tid it was
recorded with.

FILE (or -i FILE) is the recording, livetrace.data by default; - reads it
from standard input.`,
		Args: o.in.inputArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := o.in.open()
			if err != nil {
				return err
			}
			defer s.Close()
			return o.in.readErr(report.InfoStream(o.stdout, s))
		},
	}
	o.in.addFlags(cmd.Flags())
	return cmd
}
