package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
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
	waitModules  bool
	onlyNop      bool
	noSpool      bool
	live         bool // livetrace live: print events as they come
	top          bool // livetrace top: a full-screen view
	duration     time.Duration
	output       string
	force        bool
	graph        bool
	follow       bool
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
	cmd, _ := recordCommand(stdout, stderr)
	return cmd
}

// recordCommand returns the record command and the options its flags set
// (live reuses both).
func recordCommand(stdout, stderr io.Writer) (*cobra.Command, *recordOptions) {
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
run livetrace restore -p PID. While it runs, livetrace ctl -p PID enables
and disables functions, shows its status or stops it.

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
jmp to it (written with the same live protocol); --only-nop keeps to
compiler NOPs. A function that cannot be moved safely is named with the
reason (livetrace list --all shows them all). -m keeps to the modules whose
path or file name matches GLOB. The recording goes to FILE (default
livetrace.data; - for standard output, with -p only); read it with
livetrace replay, report, info and export. An existing FILE is kept
unless -f is given: a recording cannot be made again.`,
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
	f.StringArrayVarP(&o.modules, "module", "m", nil, "select functions only in modules whose path or file name matches `GLOB`, or whose file name extends it as a soname (libfoo.so.1 for libfoo.so.1.2.3; repeatable)")
	f.BoolVar(&o.waitModules, "wait-module", false, "with -m: start even if no module matches yet, and trace the matching modules the process loads (dlopen)")
	f.BoolVar(&o.onlyNop, "only-nop", false, "trace only functions with a compiler NOP (no relocation of functions without one)")
	f.VarP((*seconds)(&o.duration), "duration", "d", "stop after `DURATION` (e.g. 10s, 500ms; a bare number is seconds; default: until Ctrl-C or exit)")
	f.StringVarP(&o.output, "output", "o", "livetrace.data", "write the recording to `FILE` (- for stdout)")
	f.BoolVarP(&o.force, "force", "f", false, "overwrite the recording FILE if it exists")
	f.BoolVar(&o.graph, "graph", false, "record function exits too (function_graph)")
	f.BoolVar(&o.follow, "follow", false, "record the children the process forks too, each under its own pid (not vfork children, which share its memory)")
	f.BoolVar(&o.stopMode, "stop", false, "patch with every thread stopped (stop mode) instead of live")
	f.BoolVar(&o.unwindUnsafe, "graph-unwind-unsafe", false, "record --graph even if the C++ unwinder cannot be hooked (an exception thrown through a traced function would then kill the program)")
	f.IntVar(&o.chunks, "buffer-chunks", 0, "shared buffer size in 64 KiB chunks (default: record 256 for each CPU the target may run on, at most 1024; live and top 256)")
	f.BoolVar(&o.noSpool, "no-spool", false, "encode events while tracing instead of spooling them raw next to the recording (uses no extra disk, loses events sooner)")
	f.IntVarP(&o.filter.depth, "depth", "D", 0, "record calls at depth < `N` only (graph mode, N < 256; 0 = all)")
	f.DurationVarP(&o.filter.minDur, "time-filter", "t", 0, "show only calls that took at least `DURATION` (graph mode; applied when the recording is read)")
	f.UintSliceVar(&o.filter.tids, "tid", nil, "record thread `TID` only (repeat or separate with commas)")
	o.args.addFlags(f)
	return cmd, o
}

// waitCheckpoint polls s until its first checkpoint is written. A poll
// error is left for the record loop, whose next poll meets it again.
func waitCheckpoint(s *session.Session) {
	done := s.Checkpointed()
	t := time.NewTicker(time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
			if _, err := s.Poll(); err != nil {
				<-done
				return
			}
		}
	}
}

// maxPollGap is the longest the record loop waits between two polls of
// the shared buffer.
const maxPollGap = 4 * time.Millisecond

func (o *recordOptions) run() error {
	// Signals first: a Ctrl-C during attach or patching must not kill us
	// with the target half patched; it ends the recording cleanly.
	sigs := earlySignals
	if sigs == nil {
		sigs = make(chan os.Signal, 16)
		catchSignals(sigs)
	}
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
	if err := o.checkTIDs(flt.TIDs); err != nil {
		return err
	}
	out, err := o.checkOutput()
	if err != nil {
		return err
	}
	opts := session.Options{
		Funcs: o.funcs, Exclude: o.exclude, Graph: o.graph, Follow: o.follow,
		Modules: o.modules, WaitModules: o.waitModules, OnlyNop: o.onlyNop,
		Output: o.output, Chunks: o.chunks, AllowUnwind: o.unwindUnsafe, NoSpool: o.noSpool,
		Filters: tracefile.RecordFilters{
			Patterns: o.funcs, Exclude: o.exclude, Modules: o.modules,
			MaxDepth: flt.MaxDepth, MinDuration: flt.MinDuration, TIDs: flt.TIDs,
		},
	}
	if out != nil {
		opts.OutputWriter = out
		opts.Output = "standard output"
	}
	if opts.Chunks == 0 && (o.live || o.top) {
		// A buffer sized against loss (per CPU) is a queue whose age
		// is the time to show a call, once the printer falls behind
		// at millions of calls a second: 32 MiB instead of 16 raised
		// live's median latency at 10M calls/s from 59 to 90-113 ms
		// (docs/DESIGN-NOTES.md, "The shared buffer"). live and top
		// skip what they cannot show anyway.
		opts.Chunks = session.ChunksPerCPU
	}
	var lv *liveOutput
	if o.live {
		lv = &liveOutput{o: o, filter: report.Filter{MaxDepth: flt.MaxDepth, MinDuration: flt.MinDuration, TIDs: flt.TIDs}}
		if o.output == "" {
			opts.OnRaw = lv.records
		} else {
			opts.OnEvents = lv.events
		}
		opts.OnThreadPID = lv.threadPID
		opts.OnFuncs = lv.refresh // the names of functions ctl adds, before their events
		opts.Discard = o.output == ""
	}
	var tv *topView
	if o.top {
		if len(o.command) > 0 {
			return errors.New("top -- CMD: the command would share top's terminal; start it in another terminal and use top -p PID")
		}
		if tv, err = newTopView(o); err != nil {
			return err
		}
		opts.OnEvents = tv.events
		opts.OnFuncs = tv.refresh
		opts.Discard = o.output == ""
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
	// The signals must be caught before the target changes (see init):
	// before the agent goes in, or before a command is started.
	opts.BeforeInject = waitSignals
	if len(o.command) > 0 {
		waitSignals()
		inheritSignals(true)
		launched, err = proc.Launch(o.command)
		inheritSignals(false)
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
	// Start took over the boost of main's init, if there was one; if it
	// never began, the boost ends here.
	proc.EndEarlyBoost()
	if err != nil {
		var nm *session.NoMatchError
		if errors.As(err, &nm) {
			return noMatchError(nm, o.funcs, o.exclude, o.pid)
		}
		return err
	}
	// The control socket (livetrace ctl), before "tracing" is said.
	onChange := func() {}
	switch {
	case lv != nil:
		onChange = lv.refresh
	case tv != nil:
		onChange = tv.refresh
	}
	ctl, err := serveCtl(s, onChange)
	if err != nil {
		fmt.Fprintf(o.stderr, "livetrace: livetrace ctl cannot reach this session: %v\n", err)
	}
	defer ctl.Close() // idempotent
	mode, why := s.Mode()
	// The loop takes chunks out of the shared buffer, which fills in tens
	// of milliseconds at full speed: keep it ahead of other work.
	defer proc.BoostCaller(-5)()
	// The spool's converter holds a P of the Go scheduler on its own
	// thread at nice 19, which the kernel may leave without a CPU for
	// tens of ms while busy threads of the target run; the Go scheduler
	// does not take a P back from a thread the kernel preempted, and the
	// GC takes one more. With as many Ps as CPUs, this loop then waited
	// up to 55 ms for a P (events lost with 2 threads calling at full
	// speed, 40M calls/s in all): give it Ps to spare, and let the
	// kernel's priorities decide.
	if n := runtime.NumCPU() + 2; runtime.GOMAXPROCS(0) < n {
		runtime.GOMAXPROCS(n)
	}
	ps := s.PatchStats()
	if lv == nil && tv == nil {
		// "tracing" means the recording survives the tracer's death: say
		// it once the first checkpoint is on disk, emptying the shared
		// buffer meanwhile (live and top start their printers first).
		waitCheckpoint(s)
	}
	if why := s.Passive(); why != "" {
		fmt.Fprintf(o.stderr, "livetrace: tracing nothing in PID %d (%s); following the processes it starts\n", s.Pid(), why)
	} else {
		fmt.Fprintf(o.stderr, "livetrace: tracing %s in PID %d\n", plural(s.Functions(), "function"), s.Pid())
	}
	if r := s.Refused(); len(r) > 0 {
		fmt.Fprintf(o.stderr, "livetrace: %s not traced in graph mode (entry mode traces them), e.g. %s: %s\n", plural(len(r), "function"), report.Printable(r[0].Name), r[0].Reason)
	}
	for i, r := range s.Untraceable() {
		if i == 10 {
			fmt.Fprintf(o.stderr, "livetrace: and %s more that cannot be traced (livetrace list --all -p %d shows why)\n", plural(len(s.Untraceable())-10, "function"), s.Pid())
			break
		}
		fmt.Fprintf(o.stderr, "livetrace: %s cannot be traced: %s\n", report.Printable(r.Name), report.Printable(r.Reason))
	}
	for _, l := range s.IFuncs() {
		fmt.Fprintf(o.stderr, "livetrace: %s\n", report.Printable(l))
	}
	for _, p := range s.Nameless() {
		fmt.Fprintf(o.stderr, "livetrace: %s is stripped and names no function: -F cannot select its functions (install its debug symbols, Debian's -dbgsym package, or set LIVETRACE_DEBUG_DIR to where they are)\n", report.Printable(p))
	}
	switch ld := s.Loader(); {
	case s.Passive() != "":
		// Nothing traced: no loader to follow either.
	case !ld.Following:
		fmt.Fprintf(o.stderr, "livetrace: modules the process loads later (dlopen) are not traced: %s\n", ld.Why)
	case s.Waiting():
		fmt.Fprintf(o.stderr, "livetrace: no module matches -m %s yet: its functions are traced when the process loads it\n", strings.Join(o.modules, " -m "))
	}
	held := s.Held()
	for _, l := range session.DescribeHeld("skipped", held) {
		fmt.Fprintf(o.stderr, "livetrace: %s\n", report.Printable(l)) // function names from the target
	}
	if mode == textpoke.ModeStop {
		fmt.Fprintf(o.stderr, "livetrace: stop mode (%s): the process was stopped for %v\n", why, ps.Paused.Round(time.Microsecond))
	}

	if lv != nil {
		lv.start(s)
		defer lv.finish()
	}
	var deadline <-chan time.Time
	if o.duration > 0 {
		t := time.NewTimer(o.duration)
		defer t.Stop()
		deadline = t.C
	}
	// With -- CMD, CMD shares the terminal: a status line would be drawn
	// over its output, and its hint would be wrong (the first Ctrl-C goes
	// to CMD).
	status := newStatusLine(o.stderr, launched == nil && lv == nil && tv == nil)
	if tv != nil {
		if err := tv.start(s); err != nil {
			ctl.Close()
			return errors.Join(err, s.Close())
		}
		defer tv.finish() // idempotent
	}
	// Poll every millisecond while events come; after polls that found
	// none, back off to maxPollGap. An idle target then costs the tracer
	// a wakeup every few ms instead of every one (10% of a vCPU here with
	// the fixed 1 ms tick), and a burst that starts meanwhile still finds
	// the default buffer far from full: it holds 15-20 ms of the fastest
	// calling threads measured.
	//
	// The loop sleeps in the kernel on its own boosted thread
	// (proc.Sleep) between polls, and looks at its channels without
	// waiting. A timer of the Go runtime is served by whichever thread
	// runs the scheduler, at normal priority, which waits for a CPU behind
	// the target's busy threads before it can wake this one: with two
	// threads calling a traced leaf at full speed (hotleaf spin 5 2, eight
	// alternating runs each) the timer left 38-86 gaps between polls of
	// over 5 ms a run and lost 475-53,671 events, the nap 35-51 gaps and
	// lost nothing in six runs, 80 and 4,412 in two.
	gap := time.Millisecond
	why = ""
	var pollErr error
	// top shows the loss in its header.
	interrupted, warnedLoss := false, tv != nil
	var lossChecked time.Time
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
		case <-ctl.Stopped():
			why = "stopped by livetrace ctl"
			break loop
		case <-tv.Quit():
			break loop
		case <-s.Exited():
			why = s.EndReason()
			break loop
		default:
			proc.Sleep(gap)
			n, err := s.Poll()
			if err != nil {
				pollErr = err
				break loop
			}
			if n > 0 {
				gap = time.Millisecond
			} else {
				gap = min(2*gap, maxPollGap)
			}
			if !warnedLoss && time.Since(lossChecked) >= 100*time.Millisecond {
				lossChecked = time.Now()
				if s.Summary().Lost > 0 {
					// Once: the status line and the summary count on.
					warnedLoss = true
					status.clear()
					fmt.Fprintf(o.stderr, "livetrace: events are being lost: the target fills the shared buffer faster than livetrace empties it; "+
						"record with a larger buffer (--buffer-chunks %d), fewer functions (-F/-N) or fewer threads (--tid); `livetrace info` shows the loss per thread\n",
						min(4*s.BufferChunks(), 1<<20))
				}
			}
			if status.due() {
				status.update(s.Summary())
			}
			if lv != nil {
				lv.tick()
			}
			if tv != nil {
				tv.tick()
			}
		}
	}
	status.clear()
	if tv != nil {
		tv.finish()
	}
	ctl.Close() // a change under way ends first
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
	if ld := s.Loader(); ld.Loads+ld.Unloads > 0 || len(ld.Errors) > 0 {
		fmt.Fprintf(o.stderr, "livetrace: the process loaded %s and unloaded %s while traced\n", plural(ld.Loads, "module"), plural(ld.Unloads, "module"))
		for _, e := range ld.Errors {
			fmt.Fprintf(o.stderr, "livetrace: not traced: %s\n", report.Printable(e))
		}
	}
	if why != "" {
		fmt.Fprintf(o.stderr, "livetrace: %s\n", why)
	}
	wrote := ""
	if sum.Output != "" {
		wrote = "; wrote " + sum.Output
	}
	fmt.Fprintf(o.stderr, "livetrace: %s, %d lost, %s in %v%s\n",
		plural(int(sum.Events), "event"), sum.Lost, plural(sum.Threads, "thread"), sum.Duration.Round(time.Millisecond), wrote)
	if sum.JITCalls > 0 {
		fmt.Fprintf(o.stderr, "livetrace: %s from JIT-compiled code not traced: graph mode leaves a return address outside every module alone (the runtime that compiled the caller may read it back); record without --graph traces them\n", plural(int(sum.JITCalls), "call"))
	}
	if sum.Corrupt > 0 {
		fmt.Fprintf(o.stderr, "livetrace: warning: %d malformed records from the target were dropped\n", sum.Corrupt)
	}
	if sum.SpoolErr != nil {
		fmt.Fprintf(o.stderr, "livetrace: warning: %v: events were encoded as they came from then on, which keeps up less well (count lost above); free some space there, or set TMPDIR when the recording goes to standard output\n", sum.SpoolErr)
	}
	if out != nil {
		cerr = errors.Join(cerr, out.Flush())
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

// checkTIDs checks, before attaching, that every --tid names a thread of
// the process -p. The threads of -- CMD do not exist yet.
func (o *recordOptions) checkTIDs(tids []uint32) error {
	if len(tids) == 0 {
		return nil
	}
	if len(o.command) > 0 {
		return fmt.Errorf("record: --tid needs -p PID: the threads of a command started with -- do not exist yet; record them all and pick with replay --tid")
	}
	for _, tid := range tids {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d/task/%d", o.pid, tid)); err != nil {
			if _, perr := os.Stat(fmt.Sprintf("/proc/%d", o.pid)); perr != nil {
				return nil // no such process: session.Start says so
			}
			return fmt.Errorf("record: process %d has no thread %d: its threads are in /proc/%d/task", o.pid, tid, o.pid)
		}
	}
	return nil
}

// checkOutput checks -o and -f before attaching. It returns the writer
// for -o - (standard output), nil for a file.
func (o *recordOptions) checkOutput() (*bufio.Writer, error) {
	if o.live && o.output == "-" {
		return nil, fmt.Errorf("live: the events go to standard output already: give -o FILE to record them too")
	}
	if o.top && o.output == "-" {
		return nil, fmt.Errorf("top: the screen is standard output: give -o FILE to record the events too")
	}
	if o.output == "-" {
		if len(o.command) > 0 {
			return nil, fmt.Errorf("record: -o - cannot be used with -- CMD: CMD writes to the same standard output; give -o FILE, or trace a running process with -p")
		}
		if f, ok := o.stdout.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			return nil, fmt.Errorf("record: -o - writes a binary recording to standard output, which is a terminal: pipe it (livetrace record -o - ... | livetrace replay -i -) or give -o FILE")
		}
		return bufio.NewWriterSize(o.stdout, 1<<20), nil
	}
	if o.output == "" {
		if o.live || o.top {
			return nil, nil // no recording: the events go to standard output (or top's screen) only
		}
		return nil, fmt.Errorf("record: -o needs a file name (or - for standard output)")
	}

	fi, err := os.Lstat(o.output)
	switch {
	case err == nil && fi.Mode().IsRegular() && !o.force:
		return nil, fmt.Errorf("record: %s already exists: give -f to overwrite it, or another name with -o", o.output)
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("record: check %s: %w", o.output, err)
	}
	// The links and special files safefile refuses are reported by
	// session.Start before it attaches.
	dir := filepath.Dir(o.output)
	if di, err := os.Stat(dir); err != nil || !di.IsDir() {
		return nil, fmt.Errorf("record: cannot write %s: directory %s does not exist: create it, or give another -o", o.output, dir)
	}
	return nil, nil
}

// noMatchError turns a selection that matched nothing into an error that
// shows the closest names, or says that -N took everything.
func noMatchError(nm *session.NoMatchError, funcs, exclude []string, pid int) error {
	if nm.Excluded > 0 && len(funcs) == 0 {
		return fmt.Errorf("nothing to trace: -N %s excludes every function (%s): narrow -N", strings.Join(exclude, " -N "), plural(nm.Excluded, "function"))
	}
	if nm.Excluded > 0 {
		return fmt.Errorf("nothing to trace: -N %s excludes every function selected by -F %s (%s): narrow -N", strings.Join(exclude, " -N "), strings.Join(nm.Globs, " -F "), plural(nm.Excluded, "function"))
	}
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
	who := "PID"
	if pid > 0 {
		who = strconv.Itoa(pid)
	}
	msg += fmt.Sprintf(" (livetrace list --all -p %s lists them)", who)
	switch n := len(nm.Stripped); {
	case n == 1:
		msg += fmt.Sprintf("; %s is stripped and names only the functions it exports", nm.Stripped[0])
	case n > 3:
		msg += fmt.Sprintf("; %s and %d more modules searched are stripped and name only the functions they export", strings.Join(nm.Stripped[:3], ", "), n-3)
	case n > 1:
		msg += fmt.Sprintf("; %s are stripped and name only the functions they export", strings.Join(nm.Stripped, ", "))
	}
	if len(nm.Stripped) > 0 {
		msg += ": to name the others, install the debug symbols (Debian's -dbgsym package) or set LIVETRACE_DEBUG_DIR to where they are"
	}
	return errors.New(msg)
}

// statusLine shows a live status line when stderr is a terminal.
type statusLine struct {
	w     io.Writer
	tty   bool
	last  time.Time
	shown bool
}

// newStatusLine returns a status line on w, shown only if w is a terminal
// and show is set.
func newStatusLine(w io.Writer, show bool) *statusLine {
	s := &statusLine{w: w}
	if f, ok := w.(*os.File); ok && show && term.IsTerminal(int(f.Fd())) {
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
	fmt.Fprintf(s.w, "\r\033[Klivetrace: %v  %s  %d lost  %s  (Ctrl-C to stop)",
		sum.Duration.Round(100*time.Millisecond), plural(int(sum.Events), "event"), sum.Lost, plural(sum.Threads, "thread"))
}

func (s *statusLine) clear() {
	if s.shown {
		fmt.Fprint(s.w, "\r\033[K")
	}
}

// seconds is a flag's duration that may be a bare number of seconds, as
// timeout(1) and sleep(1) take it: "record -d 5" is five seconds.
type seconds time.Duration

// String is "0" for none, which the help does not print as a default.
func (d *seconds) String() string {
	if *d == 0 {
		return "0"
	}
	return time.Duration(*d).String()
}

func (d *seconds) Type() string { return "duration" }

func (d *seconds) Set(v string) error {
	if n, err := strconv.ParseFloat(v, 64); err == nil {
		if math.IsNaN(n) || math.IsInf(n, 0) || math.Abs(n) > math.MaxInt64/float64(time.Second) {
			return fmt.Errorf("%q is no number of seconds livetrace can wait", v)
		}
		*d = seconds(n * float64(time.Second))
		return nil
	}
	t, err := time.ParseDuration(v)
	if err != nil {
		return fmt.Errorf("%q is not a duration: give a number of seconds or a number with a unit (ns, us, ms, s, m, h), e.g. 10s", v)
	}
	*d = seconds(t)
	return nil
}
