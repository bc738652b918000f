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
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"syscall"
	"unsafe"

	"github.com/spf13/cobra"

	"github.com/livetrace/livetrace/internal/earlyprio"
	"github.com/livetrace/livetrace/internal/hugemem"
	"github.com/livetrace/livetrace/internal/proc"
)

func init() {
	if len(os.Args) > 1 && (os.Args[1] == "record" || os.Args[1] == "restore") {
		// Catch every terminating signal from the start: record and
		// restore must never die with a target half patched. record's
		// own handler takes over from there. os/signal registers each
		// signal with a round trip to a thread of the runtime, and 21 of
		// them took 1-4 ms of CPU and, beside a target whose threads keep
		// the CPUs busy, 1-22 ms of waiting: so they are registered in
		// the background, and record and restore wait for them
		// (waitSignals) before they change anything in a target. Until
		// then a signal ends livetrace with nothing to undo (a seized
		// thread goes on when its tracer dies).
		if os.Args[1] == "record" && earlyprio.AttachesToPID(os.Args[2:]) {
			// The tracer's own start, beside a target whose threads keep
			// the CPUs busy, waited for a CPU at every step: 12-20 ms
			// where 4-6 suffice on an idle machine. session.Start takes
			// this boost over and ends it after the patch; record ends it
			// if Start never came (proc/nice.go). The main thread was
			// boosted already, before most packages' initialization
			// (internal/earlyprio); this boost takes that one over.
			proc.BoostEarly(-10)
		}
		if os.Args[1] == "record" {
			// Parsing the target's modules and the first batch
			// allocate tens of MB while the collector is off
			// (internal/gcpause), all of it fresh memory, which on a
			// VM can cost 10-28 µs a 4 KiB page (internal/hugemem):
			// discover took 42 ms instead of 6-10. Reserved in huge
			// pages first, and untouched, it costs one fault per
			// 2 MiB used and no memory until then.
			hugemem.Reserve(reserveHeap)
		}
		earlySignals = make(chan os.Signal, 16)
		ignoreUnhandled() // two rt_sigaction calls: at once
		signalsCaught = make(chan struct{})
		go func() {
			catchSignals(earlySignals)
			close(signalsCaught)
		}()
	}
}

// reserveHeap is the heap record reserves in huge pages at its start. The
// attach of a 10,000-function program and its libc allocates 15-25 MB; of
// a 100,000-function one, 137 MB (the heap at the first collection after
// the attach), and with 64 MiB reserved most of that was fresh 4 KiB
// pages again (docs/DESIGN-NOTES.md, "Fresh memory"). The block is
// address space: untouched, it costs no memory.
const reserveHeap = 256 << 20

// signalsCaught is closed once catchSignals has run (record and restore).
var signalsCaught chan struct{}

// waitSignals returns once every terminating signal is caught: call it
// before the first change to a target.
func waitSignals() {
	if signalsCaught != nil {
		<-signalsCaught
	}
}

// writeProfiles writes the block and mutex profiles to path and
// path.mutex.
func writeProfiles(path string) {
	for name, file := range map[string]string{"block": path, "mutex": path + ".mutex"} {
		if f, err := os.Create(file); err == nil {
			_ = pprof.Lookup(name).WriteTo(f, 0)
			f.Close()
		}
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
	// LIVETRACE_BLOCKPROFILE=FILE writes where livetrace's goroutines
	// waited on locks and channels (FILE) and which lock holders made
	// them wait (FILE.mutex), at exit.
	if path := os.Getenv("LIVETRACE_BLOCKPROFILE"); path != "" {
		runtime.SetBlockProfileRate(1)
		runtime.SetMutexProfileFraction(1)
		defer writeProfiles(path)
	}
	// LIVETRACE_MEMPROFILE=FILE writes where livetrace allocated
	// (go tool pprof -sample_index=alloc_space FILE), at exit.
	if path := os.Getenv("LIVETRACE_MEMPROFILE"); path != "" {
		defer func() {
			if f, err := os.Create(path); err == nil {
				_ = pprof.Lookup("allocs").WriteTo(f, 0)
				f.Close()
			}
		}()
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
// of a `record` or `restore` process, once waitSignals returns (see init).
var earlySignals chan os.Signal

// terminatingSignals are the signals whose default action ends a process
// and that can be caught (docs/DESIGN.md §5, "Cleanup"). SIGQUIT would also make
// the Go runtime dump every goroutine and exit: caught, it ends the
// recording cleanly like the others. SIGPIPE is not here: it is ignored
// (see catchSignals).
//
// The Go runtime passes the signals of a program error (SIGILL, SIGTRAP,
// SIGBUS, SIGFPE, SIGSEGV, SIGSYS) to os/signal only when another process
// sent them (kill(2)); one the tracer raised itself is still a crash.
// Uncaught, a `kill -SEGV` ended record with a goroutine dump and left the
// target patched.
//
// The real-time signals from 35 on are not here: the Go runtime ignores
// them unless asked for them (a process sent one neither ends nor
// disturbs a recording), and registering all 30, each with a round trip to
// a thread of the runtime, cost 3 ms of CPU at every start. Signals 32
// and 34 (glibc's SIGCANCEL and SIGRTMIN) are ones the runtime leaves at
// their default action, which ends the process: catchSignals ignores them.
func terminatingSignals() []os.Signal {
	return []os.Signal{
		syscall.SIGHUP, syscall.SIGINT, syscall.SIGQUIT, syscall.SIGTERM,
		syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGALRM, syscall.SIGVTALRM,
		syscall.SIGPROF, syscall.SIGXCPU, syscall.SIGXFSZ, syscall.SIGIO,
		syscall.SIGPWR, syscall.SIGSTKFLT, syscall.SIGABRT,
		syscall.SIGILL, syscall.SIGTRAP, syscall.SIGBUS, syscall.SIGFPE,
		syscall.SIGSEGV, syscall.SIGSYS,
	}
}

// inheritSignals gives SIGPIPE and unhandledSignals their default actions
// (inherit true) before record starts a command, or ignores them again
// after: an ignored signal stays ignored across fork and exec, and the
// command must start with the dispositions record was given. (os/signal
// has no way back from Ignore to the default action.)
func inheritSignals(inherit bool) {
	if inherit {
		setDefault(syscall.SIGPIPE, true)
		for _, sig := range unhandledSignals {
			setDefault(sig, true)
		}
		return
	}
	signal.Ignore(syscall.SIGPIPE)
	ignoreUnhandled()
}

// unhandledSignals are the signals whose default action ends a process
// and for which the Go runtime installs no handler, so that os/signal can
// neither catch nor ignore them: 32 (glibc's SIGCANCEL; a static Go
// program has no glibc to handle it) and 34 (glibc's SIGRTMIN, musl's
// SIGSYNCCALL). 33 is the runtime's own (its per-thread syscall signal).
var unhandledSignals = []syscall.Signal{32, 34}

// ignoreUnhandled ignores every signal of unhandledSignals.
func ignoreUnhandled() {
	for _, sig := range unhandledSignals {
		setDefault(sig, false)
	}
}

// setDefault gives signal sig its default action (def true) or ignores
// it, with rt_sigaction itself: for the signals os/signal cannot set.
func setDefault(sig syscall.Signal, def bool) {
	// struct kernel_sigaction (x86-64): handler, flags, restorer, mask.
	var act [4]uint64 // handler 0: SIG_DFL
	if !def {
		act[0] = 1 // SIG_IGN
	}
	_, _, _ = syscall.RawSyscall6(syscall.SYS_RT_SIGACTION, uintptr(sig), uintptr(unsafe.Pointer(&act)), 0, 8, 0, 0)
}

// catchSignals turns every terminating signal into a message on ch, and
// ignores SIGPIPE: after a SIGHUP the terminal (or the
// pipe) behind stdout and stderr may be gone, and writing the status line
// there must fail with EPIPE or EIO, which record ignores, not kill us.
func catchSignals(ch chan os.Signal) {
	signal.Ignore(syscall.SIGPIPE)
	ignoreUnhandled()
	signal.Notify(ch, terminatingSignals()...)
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
