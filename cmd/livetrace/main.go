// Command livetrace traces functions in running Linux processes.
//
// It attaches to a live process, rewrites the 5-byte NOPs that compilers
// leave at function entries into CALLs to a small injected agent, and
// records function entries (and, in graph mode, exits) into shared memory.
// See README.md and docs/.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"

	"github.com/spf13/cobra"
)

func main() {
	// LIVETRACE_CPUPROFILE=FILE profiles livetrace itself (for its
	// developers: go tool pprof FILE).
	if path := os.Getenv("LIVETRACE_CPUPROFILE"); path != "" {
		if f, err := os.Create(path); err == nil {
			if pprof.StartCPUProfile(f) == nil {
				defer pprof.StopCPUProfile()
			}
		}
	}
	if len(os.Args) > 1 && os.Args[1] == "record" {
		// Catch Ctrl-C and SIGTERM from the very start: record must
		// never die with a target half patched. record's own handler
		// takes over from here.
		signal.Ignore(syscall.SIGINT, syscall.SIGTERM)
		earlySignals = make(chan os.Signal, 2)
		signal.Notify(earlySignals, syscall.SIGINT, syscall.SIGTERM)
	}
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		pprof.StopCPUProfile()
		var ee exitError
		if errors.As(err, &ee) {
			os.Exit(ee.code)
		}
		fmt.Fprintf(os.Stderr, "livetrace: %v\n", err)
		os.Exit(1)
	}
}

// earlySignals receives SIGINT and SIGTERM from the start of a `record`
// process (see main), nil otherwise.
var earlySignals chan os.Signal

// exitError asks main to exit with a given status without printing anything,
// for example to pass on the exit status of a traced command.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// run is the whole program behind main, testable: it parses args (without
// the program name) and writes to stdout and stderr.
func run(args []string, stdout, stderr io.Writer) error {
	root := &cobra.Command{
		Use:           "livetrace",
		Short:         "ftrace for user space: trace functions in running processes",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.AddCommand(
		newListCmd(stdout, stderr),
		newRecordCmd(stdout, stderr),
		newReplayCmd(stdout, stderr),
		newReportCmd(stdout, stderr),
		newInfoCmd(stdout, stderr),
		newExportCmd(stdout, stderr),
	)
	return root.Execute()
}
