package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/livetrace/livetrace/internal/session"
)

// restoreOptions holds the flags of `livetrace restore`.
type restoreOptions struct {
	pid    int
	stdout io.Writer
	stderr io.Writer
}

func newRestoreCmd(stdout, stderr io.Writer) *cobra.Command {
	o := &restoreOptions{stdout: stdout, stderr: stderr}
	cmd := &cobra.Command{
		Use:   "restore -p PID",
		Short: "Undo what a livetrace that died left in a process",
		Long: `A livetrace killed while recording (SIGKILL, the OOM killer, a crash)
leaves its agent in the process, and the traced functions still call it.
The agent keeps everything needed to undo itself: restore finds it,
attaches, puts back the original bytes of every site (with the same live
protocol as record, while the process runs), the hijacked return addresses
of --graph, the unwinder's GOT slots and the SIGTRAP action, removes the
agent's memory, detaches, and says what it did.

restore refuses when the livetrace that owns the agent is still running,
and changes nothing when anything it reads from the process does not make
sense. An orphaned agent costs the process almost nothing meanwhile: it
turns itself off within a second of its tracer's death.

Signals other than SIGKILL do not interrupt restore: it runs to the end.`,
		Example: `  livetrace restore -p 1234`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if !cmd.Flags().Changed("pid") {
				return fmt.Errorf("restore: give the process with -p PID (usage: %s)", cmd.UseLine())
			}
			if o.pid <= 0 {
				return fmt.Errorf("parse -p %d: a pid is a positive number", o.pid)
			}
			waitSignals()
			res, err := session.Restore(o.pid)
			if err != nil {
				return err
			}
			fmt.Fprintf(o.stdout, "livetrace: %s\n", res)
			return nil
		},
	}
	cmd.Flags().IntVarP(&o.pid, "pid", "p", 0, "restore the process `PID`")
	return cmd
}
