package main

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/livetrace/livetrace/internal/proc"
	"github.com/livetrace/livetrace/internal/session"
)

// restoreOptions holds the flags of `livetrace restore`.
type restoreOptions struct {
	pid    int
	all    bool
	stdout io.Writer
	stderr io.Writer
}

func newRestoreCmd(stdout, stderr io.Writer) *cobra.Command {
	o := &restoreOptions{stdout: stdout, stderr: stderr}
	cmd := &cobra.Command{
		Use:   "restore {-p PID | --all}",
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

Children of a traced process may hold the agent too: those a record
--follow was tracing, and those forked after their tracer died (a forking
server's new workers). --all restores every process that holds an agent
whose livetrace is gone, and restore -p names the others the same
livetrace left.

Signals other than SIGKILL do not interrupt restore: it runs to the end.`,
		Example: `  livetrace restore -p 1234
  livetrace restore --all`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			switch {
			case o.all && cmd.Flags().Changed("pid"):
				return fmt.Errorf("restore: give -p PID or --all, not both")
			case o.all:
				waitSignals()
				return o.restoreAll()
			case !cmd.Flags().Changed("pid"):
				return fmt.Errorf("restore: give the process with -p PID, or --all (usage: %s)", cmd.UseLine())
			case o.pid <= 0:
				return fmt.Errorf("parse -p %d: a pid is a positive number", o.pid)
			}
			waitSignals()
			res, err := session.Restore(o.pid)
			if err != nil {
				return err
			}
			fmt.Fprintf(o.stdout, "livetrace: %s\n", res)
			o.sayOthers(res)
			return nil
		},
	}
	cmd.Flags().IntVarP(&o.pid, "pid", "p", 0, "restore the process `PID`")
	cmd.Flags().BoolVar(&o.all, "all", false, "restore every process holding an agent whose livetrace is gone")
	return cmd
}

// sayOthers names the other processes that hold an agent of the
// livetrace whose agent res undid: children it followed, or forked after
// it died.
func (o *restoreOptions) sayOthers(res *session.RestoreResult) {
	found, _ := session.FindOrphans()
	var pids []string
	for _, f := range found {
		if f.Pid != res.Pid && !f.Alive && int(f.Owner.Pid) == res.Owner && f.Owner.Start == res.OwnerStart {
			pids = append(pids, strconv.Itoa(f.Pid))
		}
	}
	if len(pids) == 0 {
		return
	}
	n := len(pids)
	if n > 10 {
		pids = append(pids[:10], "...")
	}
	verb := "hold agents"
	if n == 1 {
		verb = "holds an agent"
	}
	fmt.Fprintf(o.stderr, "livetrace: %s %s left by livetrace pid %d (children of a process it traced): %s; livetrace restore --all restores them\n",
		plural(n, "more process"), verb, res.Owner, strings.Join(pids, " "))
}

// restoreAll restores every orphaned agent, one process after another,
// and fails when one could not be restored.
func (o *restoreOptions) restoreAll() error {
	found, failed := session.FindOrphans()
	var errs []error
	n := 0
	for _, f := range found {
		if f.Alive {
			fmt.Fprintf(o.stderr, "livetrace: left pid %d alone: %v\n", f.Pid, f.Err())
			continue
		}
		res, err := session.Restore(f.Pid)
		switch {
		case proc.ExitedDuring(f.Pid, err, 100*time.Millisecond):
			continue // it exited meanwhile: nothing left to undo
		case err != nil:
			errs = append(errs, err)
			fmt.Fprintf(o.stderr, "livetrace: pid %d: %v\n", f.Pid, err)
			continue
		}
		n++
		fmt.Fprintf(o.stdout, "livetrace: %s\n", res)
	}
	// A process this user may not look into cannot hold an agent this
	// user's livetrace left: say so, without failing.
	var denied []string
	for _, pid := range slices.Sorted(maps.Keys(failed)) {
		if !errors.Is(failed[pid], proc.ErrPermission) {
			errs = append(errs, failed[pid])
			fmt.Fprintf(o.stderr, "livetrace: pid %d: %v\n", pid, failed[pid])
			continue
		}
		denied = append(denied, strconv.Itoa(pid))
	}
	if len(denied) > 0 {
		hint := ""
		if os.Geteuid() != 0 {
			hint = ": run as root to include them"
		}
		fmt.Fprintf(o.stderr, "livetrace: could not look into %s (pid %s): permission denied%s\n",
			plural(len(denied), "process"), strings.Join(denied[:min(len(denied), 10)], " "), hint)
	}
	switch {
	case len(errs) > 0:
		return fmt.Errorf("restored %s; %s could not be restored or looked into (above)", plural(n, "process"), plural(len(errs), "process"))
	case n == 0:
		fmt.Fprintf(o.stdout, "livetrace: no process holds an agent whose livetrace is gone: nothing to restore\n")
	}
	return nil
}
