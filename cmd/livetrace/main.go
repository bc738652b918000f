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
	"runtime/debug"
	"runtime/pprof"
	"syscall"

	"github.com/spf13/cobra"
)

func init() {
	if len(os.Args) > 1 && (os.Args[1] == "record" || os.Args[1] == "restore") {
		// Catch every terminating signal as early as we can: record and
		// restore must never die with a target half patched. record's
		// own handler takes over from here. (Before this runs, the Go
		// runtime is in charge, and livetrace has not touched anything.)
		catchSignals()
	}
}

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

// earlySignals receives every signal of terminatingSignals from the start
// of a `record` or `restore` process (see main), nil otherwise;
// earlyReady returns once all of them are registered.
var (
	earlySignals chan os.Signal
	earlyReady   = func() {}
)

// terminatingSignals are the signals whose default action ends a process
// and that can be caught (docs/DESIGN.md §5, "Cleanup"). SIGQUIT would also make
// the Go runtime dump every goroutine and exit: caught, it ends the
// recording cleanly like the others. SIGPIPE is not here: it is ignored
// (see catchSignals).
func terminatingSignals() []os.Signal {
	sigs := []os.Signal{
		syscall.SIGHUP, syscall.SIGINT, syscall.SIGQUIT, syscall.SIGTERM,
		syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGALRM, syscall.SIGVTALRM,
		syscall.SIGPROF, syscall.SIGXCPU, syscall.SIGXFSZ, syscall.SIGIO,
		syscall.SIGPWR, syscall.SIGSTKFLT,
	}
	// The real-time signals glibc leaves to applications (SIGRTMIN is 34
	// there; 32 and 33 belong to the threading library).
	for s := 34; s <= 64; s++ {
		sigs = append(sigs, syscall.Signal(s))
	}
	return sigs
}

// catchSignals turns every terminating signal into a message on
// earlySignals, and ignores SIGPIPE: after a SIGHUP the terminal (or the
// pipe) behind stdout and stderr may be gone, and writing the status line
// there must fail with EPIPE or EIO, which record ignores, not kill us.
func catchSignals() {
	signal.Ignore(syscall.SIGPIPE)
	earlySignals = make(chan os.Signal, 16)
	earlyReady = notifyAll(earlySignals)
}

// notifyAll sends every signal of terminatingSignals to c. The standard
// ones are registered at once; the 31 real-time ones in the background:
// the Go runtime registers each signal with a round trip to a thread of
// its own, which cost 3 ms of CPU and 5 ms of wall time on an idle
// machine, and much more beside busy threads of a target, on the attach
// path. The returned function waits until all are registered: call it
// before touching the target.
func notifyAll(c chan os.Signal) (ready func()) {
	var std, rt []os.Signal
	for _, sig := range terminatingSignals() {
		if sig.(syscall.Signal) >= 34 {
			rt = append(rt, sig)
		} else {
			std = append(std, sig)
		}
	}
	signal.Notify(c, std...)
	done := make(chan struct{})
	go func() {
		defer close(done)
		signal.Notify(c, rt...)
	}()
	return func() { <-done }
}

// exitError asks main to exit with a given status without printing anything,
// for example to pass on the exit status of a traced command.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// version is the release, set at build time with
// -ldflags "-X main.version=v1.2.3"; without it versionString reads what
// the Go toolchain recorded.
var version = ""

// versionString returns the version, the commit (from the build's VCS
// stamp, marked "+dirty" for a modified tree) and the Go version.
func versionString() string {
	v := version
	bi, ok := debug.ReadBuildInfo()
	if v == "" && ok && bi.Main.Version != "" {
		v = bi.Main.Version
	}
	if v == "" {
		v = "(devel)"
	}
	if !ok {
		return v
	}
	var rev, dirty string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "+dirty"
			}
		}
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if rev != "" {
		v += " (commit " + rev + dirty + ")"
	}
	return v + " " + bi.GoVersion
}

// run is the whole program behind main, testable: it parses args (without
// the program name) and writes to stdout and stderr.
func run(args []string, stdout, stderr io.Writer) error {
	root := &cobra.Command{
		Use:           "livetrace",
		Short:         "ftrace for user space: trace functions in running processes",
		Version:       versionString(),
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetVersionTemplate("livetrace version {{.Version}}\n")
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.AddCommand(
		newListCmd(stdout, stderr),
		newRecordCmd(stdout, stderr),
		newLiveCmd(stdout, stderr),
		newReplayCmd(stdout, stderr),
		newReportCmd(stdout, stderr),
		newInfoCmd(stdout, stderr),
		newExportCmd(stdout, stderr),
		newRestoreCmd(stdout, stderr),
		newCtlCmd(stdout, stderr),
		newTopCmd(stdout, stderr),
	)
	addCompletions(root)
	return root.Execute()
}
