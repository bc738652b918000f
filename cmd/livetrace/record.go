package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/livetrace/livetrace/internal/proc"
	"github.com/livetrace/livetrace/internal/report"
	"github.com/livetrace/livetrace/internal/session"
	"github.com/livetrace/livetrace/internal/textpoke"
	"github.com/livetrace/livetrace/internal/tracefile"
)

// recordOptions holds the flags of `livetrace record`.
type recordOptions struct {
	pid          int
	funcs        []string
	exclude      []string
	modules      []string
	onlyNop      bool
	duration     time.Duration
	output       string
	graph        bool
	stopMode     bool
	unwindUnsafe bool
	chunks       int
	filter       filterOptions
	args         argOptions
	command      []string // -- CMD [ARGS...]
	stdout       io.Writer
	stderr       io.Writer
}

func newRecordCmd(stdout, stderr io.Writer) *cobra.Command {
	o := &recordOptions{stdout: stdout, stderr: stderr}
	cmd := &cobra.Command{
		Use:   "record (-p PID | -- CMD [ARGS...]) [-m GLOB]... [-F GLOB]... [-N GLOB]... [-d DURATION] [-o FILE]",
		Short: "Trace functions of a running process into a recording file",
		Long: `Attach to the running process PID, patch the entry of every selected
function into a call to an injected agent, and record every call until
-d elapses, until Ctrl-C (SIGINT), SIGTERM, SIGHUP or any other signal
that can be caught, or until the process exits. Then put back every byte
of the process's text, remove the agent, detach, and print a summary. The
process keeps running throughout. If livetrace itself is killed (SIGKILL),
run livetrace restore -p PID.

With -- CMD [ARGS...] instead of -p, livetrace starts CMD itself, lets the
dynamic loader map its libraries, patches every module before CMD's own
code runs (at its ELF entry point), and traces until CMD exits. CMD keeps
livetrace's standard input, output and error, and livetrace exits with
CMD's exit status. A first Ctrl-C goes to CMD as usual; a second one stops
tracing and leaves CMD running.

-F selects functions by shell glob (default: all), -N excludes them; both
may be repeated. Functions compiled without a patchable NOP (a stock
libc.so.6, a distribution's binaries) are traced too when -F or -m names
them: their first instructions move into a stub, and their entry becomes a
jmp to it (written with every thread stopped); --only-nop keeps to
compiler NOPs. A function that cannot be moved safely is named with the
reason (livetrace list --all shows them all). -m keeps to the modules whose
path or file name matches GLOB. The recording goes to FILE (default
livetrace.data); read it with livetrace replay, report, info and export.`,
		Example: `  livetrace record -p 1234 -d 2s
  livetrace record -p 1234 -F 'parse_*' -N parse_debug -o parse.data
  livetrace record --graph -- ./myprog --some-flag
  livetrace record -p 1234 -m libc.so.6 -F malloc -F free -d 1s
  livetrace record --graph -p 1234 -F lookup_user -A 'lookup_user@arg1,arg2/s' -R lookup_user`,
		RunE: func(cmd *cobra.Command, args []string) error {
			dash := cmd.ArgsLenAtDash()
			switch {
			case dash < 0 && len(args) > 0:
				return fmt.Errorf("record: unexpected argument %q: put the command to run after -- (usage: %s)", args[0], cmd.UseLine())
			case dash > 0:
				return fmt.Errorf("record: unexpected argument %q before -- (usage: %s)", args[0], cmd.UseLine())
			case cmd.Flags().Changed("pid") && len(args) > 0:
				return fmt.Errorf("record: give either -p PID or -- CMD, not both")
			case !cmd.Flags().Changed("pid") && len(args) == 0:
				return fmt.Errorf("record: give the process to trace with -p PID, or a command after -- (usage: %s)", cmd.UseLine())
			case cmd.Flags().Changed("pid") && o.pid <= 0:
				return fmt.Errorf("parse -p %d: a pid is a positive number", o.pid)
			}
			o.command = args
			if o.duration < 0 {
				return fmt.Errorf("parse -d %v: the duration must be positive", o.duration)
			}
			return o.run()
		},
	}
	f := cmd.Flags()
	f.IntVarP(&o.pid, "pid", "p", 0, "trace the running process `PID`")
	f.StringArrayVarP(&o.funcs, "function", "F", nil, "trace functions matching `GLOB` (repeatable; default all)")
	f.StringArrayVarP(&o.exclude, "notrace", "N", nil, "do not trace functions matching `GLOB` (repeatable)")
	f.StringArrayVarP(&o.modules, "module", "m", nil, "select functions only in modules whose path or file name matches `GLOB` (repeatable)")
	f.BoolVar(&o.onlyNop, "only-nop", false, "trace only functions with a compiler NOP (no relocation of functions without one)")
	f.DurationVarP(&o.duration, "duration", "d", 0, "stop after `DURATION` (default: until Ctrl-C or exit)")
	f.StringVarP(&o.output, "output", "o", "livetrace.data", "write the recording to `FILE`")
	f.BoolVar(&o.graph, "graph", false, "record function exits too (function_graph)")
	f.BoolVar(&o.stopMode, "stop", false, "patch with every thread stopped (stop mode) instead of live")
	f.BoolVar(&o.unwindUnsafe, "graph-unwind-unsafe", false, "record --graph even if the C++ unwinder cannot be hooked (an exception thrown through a traced function would then kill the program)")
	f.IntVar(&o.chunks, "buffer-chunks", 0, "shared buffer size in 64 KiB chunks (default 256)")
	f.IntVarP(&o.filter.depth, "depth", "D", 0, "record calls at depth < `N` only (graph mode, N < 256; 0 = all)")
	f.DurationVarP(&o.filter.minDur, "time-filter", "t", 0, "show only calls that took at least `DURATION` (graph mode; applied when the recording is read)")
	f.UintSliceVar(&o.filter.tids, "tid", nil, "record thread `TID` only (repeat or separate with commas)")
	o.args.addFlags(f)
	return cmd
}

func (o *recordOptions) run() error {
	// Signals first: a Ctrl-C during attach or patching must not kill us
	// with the target half patched; it ends the recording cleanly.
	sigs := earlySignals
	if sigs == nil {
		sigs = make(chan os.Signal, 16)
	}
	signal.Notify(sigs, terminatingSignals()...)
	defer signal.Stop(sigs)

	flt, err := o.filter.filter()
	if err != nil {
		return err
	}
	if !o.graph && (flt.MaxDepth != 0 || flt.MinDuration != 0) {
		return fmt.Errorf("record: -D and -t need --graph (entry-only recordings have no depth or duration)")
	}
	if flt.MaxDepth > 255 {
		return fmt.Errorf("parse -D %d: at most 255", flt.MaxDepth)
	}
	opts := session.Options{
		Funcs: o.funcs, Exclude: o.exclude, Graph: o.graph,
		Modules: o.modules, OnlyNop: o.onlyNop,
		Output: o.output, Chunks: o.chunks, AllowUnwind: o.unwindUnsafe,
		Filters: tracefile.RecordFilters{MaxDepth: flt.MaxDepth, MinDuration: flt.MinDuration, TIDs: flt.TIDs},
	}
	if opts.Args, err = o.args.rules(o.graph); err != nil {
		return err
	}
	opts.StringMax = o.args.stringMax
	opts.GraphFuncs, opts.CallerFuncs = o.args.graphFns, o.args.callerFns
	opts.AutoArgs = o.args.auto
	if o.stopMode {
		opts.Mode = textpoke.ModeStop
	}
	var s *session.Session
	var launched *proc.Process
	if len(o.command) > 0 {
		launched, err = proc.Launch(o.command)
		if err != nil {
			return err
		}
		s, err = session.StartProcess(launched, opts)
		if err != nil {
			// The command never ran its own code: do not let it run
			// untraced behind the user's back.
			_ = syscall.Kill(launched.Pid(), syscall.SIGKILL)
		} else if err = launched.Release(); err != nil {
			_ = s.Close()
		}
	} else {
		// An agent left by a livetrace that died: say how to undo it
		// rather than trace on top of it.
		orphan, ferr := session.FindOrphan(o.pid)
		if errors.Is(ferr, session.ErrBadAgent) {
			return ferr
		}
		if ferr == nil && orphan != nil {
			return orphan.Err()
		}
		s, err = session.Start(o.pid, opts)
	}
	if err != nil {
		var nm *session.NoMatchError
		if errors.As(err, &nm) {
			return noMatchError(nm)
		}
		return err
	}
	mode, why := s.Mode()
	ps := s.PatchStats()
	fmt.Fprintf(o.stderr, "livetrace: tracing %d functions in PID %d\n", s.Functions(), s.Pid())
	if r := s.Refused(); len(r) > 0 {
		fmt.Fprintf(o.stderr, "livetrace: %s not traced in graph mode (entry mode traces them), e.g. %s: %s\n", plural(len(r), "function"), report.Printable(r[0].Name), r[0].Reason)
	}
	for i, r := range s.Untraceable() {
		if i == 10 {
			fmt.Fprintf(o.stderr, "livetrace: and %d more functions that cannot be traced (livetrace list --all -p %d shows why)\n", len(s.Untraceable())-10, s.Pid())
			break
		}
		fmt.Fprintf(o.stderr, "livetrace: %s cannot be traced: %s\n", report.Printable(r.Name), report.Printable(r.Reason))
	}
	held := s.Held()
	for _, l := range session.DescribeHeld("skipped", held) {
		fmt.Fprintf(o.stderr, "livetrace: %s\n", report.Printable(l)) // function names from the target
	}
	if mode == textpoke.ModeStop {
		fmt.Fprintf(o.stderr, "livetrace: stop mode (%s): the process was stopped for %v\n", why, ps.Paused.Round(time.Microsecond))
	}

	var deadline <-chan time.Time
	if o.duration > 0 {
		t := time.NewTimer(o.duration)
		defer t.Stop()
		deadline = t.C
	}
	status := newStatusLine(o.stderr)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	why = ""
	var pollErr error
	interrupted := false
loop:
	for {
		select {
		case sig := <-sigs:
			if launched != nil && !interrupted && fromTerminal(sig) {
				// The terminal sent it to CMD too; wait for CMD to
				// exit. A second one stops tracing.
				interrupted = true
				continue
			}
			why = "received " + sig.String()
			break loop
		case <-deadline:
			break loop
		case <-s.Exited():
			why = s.EndReason()
			break loop
		case <-tick.C:
			if _, err := s.Poll(); err != nil {
				pollErr = err
				break loop
			}
			if status.due() {
				status.update(s.Summary())
			}
		}
	}
	status.clear()
	cerr := s.Close()
	sum := s.Summary()
	// Sites another tool took while we traced them: not restored.
	seen := map[uint64]bool{}
	for _, h := range held {
		seen[h.Addr] = true
	}
	var late []session.HeldSite
	for _, h := range s.Held() {
		if !seen[h.Addr] {
			late = append(late, h)
		}
	}
	for _, l := range session.DescribeHeld("left", late) {
		fmt.Fprintf(o.stderr, "livetrace: %s, as the other tool made them\n", l)
	}
	if why != "" {
		fmt.Fprintf(o.stderr, "livetrace: %s\n", why)
	}
	fmt.Fprintf(o.stderr, "livetrace: %d events, %d lost, %d threads in %v; wrote %s\n",
		sum.Events, sum.Lost, sum.Threads, sum.Duration.Round(time.Millisecond), sum.Output)
	if sum.Corrupt > 0 {
		fmt.Fprintf(o.stderr, "livetrace: warning: %d malformed records from the target were dropped\n", sum.Corrupt)
	}
	if err := errors.Join(pollErr, cerr); err != nil {
		return err
	}
	if launched != nil {
		// Pass on CMD's exit status.
		if ws, _ := launched.ExitStatus(); ws.Exited() && ws.ExitStatus() != 0 {
			return exitError{ws.ExitStatus()}
		} else if ws.Signaled() {
			return exitError{128 + int(ws.Signal())}
		}
	}
	return nil
}

// fromTerminal reports whether sig is one a terminal sends to its whole
// foreground process group (and SIGTERM, which a shell's kill of the job
// sends to the group too): with -- CMD, CMD gets it as well.
func fromTerminal(sig os.Signal) bool {
	switch sig {
	case syscall.SIGINT, syscall.SIGQUIT, syscall.SIGHUP, syscall.SIGTERM:
		return true
	}
	return false
}

// noMatchError turns a selection that matched nothing into an error that
// shows the closest names.
func noMatchError(nm *session.NoMatchError) error {
	seen := map[string]bool{}
	var names []string
	for _, n := range nm.Names {
		if !seen[n] {
			seen[n] = true
			names = append(names, n)
		}
	}
	var near []string
	for _, g := range nm.Globs {
		for _, n := range closest(g, names, 5) {
			near = append(near, report.Printable(n)) // names from the target's files
		}
	}
	msg := fmt.Sprintf("no function matches %s", strings.Join(nm.Globs, " "))
	if len(near) > 0 {
		msg += "; closest names: " + strings.Join(near, ", ")
	}
	return errors.New(msg + " (see livetrace list -p PID)")
}

// statusLine shows a live status line when stderr is a terminal.
type statusLine struct {
	w     io.Writer
	tty   bool
	last  time.Time
	shown bool
}

func newStatusLine(w io.Writer) *statusLine {
	s := &statusLine{w: w}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		s.tty = true
	}
	return s
}

// due reports whether the line should be redrawn now (on a terminal, five
// times a second).
func (s *statusLine) due() bool { return s.tty && time.Since(s.last) >= 200*time.Millisecond }

func (s *statusLine) update(sum session.Summary) {
	s.last = time.Now()
	s.shown = true
	fmt.Fprintf(s.w, "\r\033[Klivetrace: %v  %d events  %d lost  %d threads  (Ctrl-C to stop)",
		sum.Duration.Round(100*time.Millisecond), sum.Events, sum.Lost, sum.Threads)
}

func (s *statusLine) clear() {
	if s.shown {
		fmt.Fprint(s.w, "\r\033[K")
	}
}
