// Package session is the lifecycle of one live recording (docs/DESIGN.md §5):
//
//	attach → discover sites → inject agent → patch (batch) → consume →
//	unpatch → remove agent → detach
//
// A Session owns every resource it creates in the target and in the tracer
// (ptrace attachment, remote mappings, the shared memory, the recording
// file) and undoes all of it in Close, on every path out: normal end,
// Ctrl-C, target exit, target exec, or an error midway through Start.
package session

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/livetrace/livetrace/internal/agent"
	"github.com/livetrace/livetrace/internal/elfsite"
	"github.com/livetrace/livetrace/internal/gcpause"
	"github.com/livetrace/livetrace/internal/proc"
	"github.com/livetrace/livetrace/internal/reloc"
	"github.com/livetrace/livetrace/internal/textpoke"
	"github.com/livetrace/livetrace/internal/tracefile"
	"github.com/livetrace/livetrace/internal/tsc"
	"golang.org/x/sys/unix"
)

// Options configure a recording.
type Options struct {
	// Funcs are shell globs selecting the functions to trace (all when
	// empty); Exclude removes functions from the selection.
	Funcs, Exclude []string
	// Graph records exits too (return-address hijack).
	Graph bool
	// Mode is the patching protocol; ModeAuto picks one.
	Mode textpoke.Mode
	// Chunks and ChunkRecords size the shared event buffer (0: defaults).
	Chunks, ChunkRecords int
	// Output is the recording file to write.
	Output string
	// OutputWriter, if set, receives the recording instead of the file
	// Output (which then only names it in messages), for example standard
	// output. The caller flushes and closes it after Close.
	OutputWriter io.Writer
	// Filters are stored in the recording for the readers.
	Filters tracefile.RecordFilters
	// AllowUnwind lets graph mode trace a C++ program, at the risk that an
	// exception thrown through a traced frame kills it.
	AllowUnwind bool
	// OnlyNop keeps the selection to compiler NOP sites: functions
	// without one (relocating sites, elfsite.FormReloc) are not traced.
	OnlyNop bool
	// Modules are shell globs restricting the selection to the modules
	// whose path or base name matches one (all when empty).
	Modules []string
	// WaitModules lets Modules match no module at the start: the
	// session then traces the matching modules the process loads later
	// (dlopen.go), instead of failing.
	WaitModules bool
	// NoSpool converts each chunk taken from the shared buffer into the
	// recording at once, instead of spooling it raw for a converter at
	// low priority (spool.go): for comparisons, and for tests.
	NoSpool bool
	// OnEvents, when set, gets every batch of events as it is taken from
	// the shared memory (at most drainEvery after the calls), before it is
	// written: the events of one thread, named thread. evs is only valid
	// during the call, which must be quick and must not call the Session.
	// It implies NoSpool.
	OnEvents func(evs []tracefile.Event, thread string)
	// OnRaw, when set instead of OnEvents, gets each chunk's records as
	// the agent wrote them and the number of events they hold, for a
	// reader that shows only some of the events and decodes those
	// (Decode) instead of paying for every one: live, when calls come
	// faster than a terminal shows them. raw is only valid during the
	// call, which runs as OnEvents does. It implies NoSpool and Discard.
	OnRaw func(tid uint32, raw []byte, events int, thread string)
	// Discard writes no recording (Output is ignored): for OnEvents alone.
	Discard bool
	// Args are the argument and return value specs (args.go); StringMax
	// bounds the bytes of a string argument (0: DefaultStringMax).
	Args      []ArgRule
	StringMax int
	// AutoArgs (record -a) captures the arguments, and in graph mode the
	// return value, that the DWARF of each module describes (autoargs.go);
	// Args override it.
	AutoArgs bool
	// GraphFuncs (record -G) keeps the calls made while a function that
	// matches one of these globs is on the thread's stack; CallerFuncs
	// (--caller) keeps the calls of the matching functions and of their
	// callers. Both are applied by the agent and need Graph.
	GraphFuncs, CallerFuncs []string
	// Follow records the children the target forks as processes of the
	// same recording (follow.go).
	Follow bool
	// OnThreadPID, with Follow, is told the process of each thread the
	// first time one of its events is taken, before OnEvents gets them
	// (under the same lock: it must be quick and not call the Session).
	OnThreadPID func(tid uint32, pid int)
	// OnFuncs, when set, is called when Enable has added functions to
	// the session (Funcs and Meta list them), before they are patched:
	// no event of theirs comes before it. It may call the Session's
	// methods, but not Enable or Disable.
	OnFuncs func()
	// BeforeInject, when set, is called once after discover and the
	// attach, before the first change to the target (the agent's
	// injection; for a passive session, before the first child is
	// followed): the last moment for the caller to be ready to undo
	// what comes, such as record catching the signals that would
	// otherwise kill it.
	BeforeInject func()
}

// ErrNoMatch means no patchable function matches the selection.
var ErrNoMatch = errors.New("no function matches")

// ErrNoSites means the process has no function that can be patched at all.
var ErrNoSites = errors.New("no patchable sites")

// NoMatchError says which globs matched nothing and lists names that exist.
type NoMatchError struct {
	Globs []string
	Names []string // every patchable function name, for suggestions
	// Excluded counts the functions that Globs matched and
	// Options.Exclude removed (all of them, since nothing is left).
	Excluded int
	// Stripped names the modules searched that name only their exported
	// functions (no .symtab, no debug file): the function asked for may
	// be one of the others. The program alone without -m.
	Stripped []string
}

func (e *NoMatchError) Error() string {
	return fmt.Sprintf("no patchable function matches %s", strings.Join(e.Globs, " "))
}

func (e *NoMatchError) Unwrap() error { return ErrNoMatch }

// selected is one traced site.
type selected struct {
	mod  int // index in s.mods
	site elfsite.Site
	name string
	addr uint64 // runtime site address
	stub uint64
	orig []byte
	// plan is the relocator's plan at runtime addresses, for a
	// relocating site (site.Form == elfsite.FormReloc).
	plan *reloc.Plan
	// capture is what the agent captures there (args.go).
	capture capture
	// off: not traced now (Disable), its site holds its original bytes.
	off bool
	// keep: a relocated site whose stub keeps every register
	// (keepregs.go); set when its stub is written.
	keep bool
	// gone: its module was unloaded (dlopen.go); never written again.
	gone bool
}

// Session is one live recording. Its methods are safe for concurrent use.
type Session struct {
	pid       int
	opts      Options
	lapT      time.Time
	lapCPU    time.Duration
	lapFaults int64
	unboost   func() // undoes proc.BoostAll; idempotent
	// unrelax undoes gcpause.Relax; idempotent. The collector
	// stays relaxed from discover until the first events: restored
	// right after discover, it started a cycle over the parse's heap at
	// once, 14 ms of CPU on the attach path.
	unrelax func()
	ckpt    chan struct{} // closed when the first checkpoint is written
	ckptMu  sync.Mutex    // serializes checkpoints
	p       *proc.Process
	eng     *textpoke.Engine
	mods    []*elfsite.Module
	// sel are the traced sites; index = site index in records and in the
	// agent's site table. Sorted by addr up to the sites chosen at
	// attach; Enable appends (under mu and conv, see ctl.go).
	sel     []selected
	refused []RefusedSite
	// untraceable are named functions the relocator refuses.
	untraceable []RefusedSite
	// ifuncs says, for each IFUNC symbol the globs matched, which
	// implementation is traced for it (ifunc.go).
	ifuncs []string

	inj *injection
	// quiescedEach says Close checked the threads one at a time
	// (quiesce.go); quiesceStepped counts the threads it stepped out.
	quiescedEach   bool
	quiesceStepped int
	// membarrier is the engine's membarrier registration, done by inject.
	membarrier textpoke.MembarrierState
	// trap is the status of the target's threads, read once by inject
	// (checkSeccomp) for itself and for the engine.
	trap   *proc.TrapStatus
	unwind *unwindPlan // graph mode: the unwinder's GOT slots to hook
	keep   keepState

	mu       sync.Mutex // guards the consumer, the spool's input and the counters
	cons     *agent.Consumer
	w        *tracefile.Writer // written under conv (and closed under mu)
	meta     tracefile.Meta
	corrupt  uint64 // chunks of unknown threads (countForeign)
	lost     map[uint32]uint64
	threads  map[uint32]string // tid -> name, as first seen
	spool    *spool            // raw chunks waiting to be converted (nil: convert at once)
	spooled  uint64            // records put in the spool
	spoolErr error             // the spool could not be written: converted at once since (Summary)
	drained  time.Time         // when the partly filled chunks were last taken (consume)
	ended    time.Time         // when Close stopped tracing

	// conv guards the conversion of records into events (convertLocked):
	// the spool's converter goroutine, or deliverRaw without a spool.
	conv       sync.Mutex
	events     atomic.Uint64 // events written
	badRecords atomic.Uint64 // malformed records dropped
	unspooled  atomic.Uint64 // records taken out of the spool
	evbuf      []tracefile.Event
	argsArena  tracefile.ArgsArena // the events' Args strings (conv)
	clock0     tsc.Pair            // at the patch batch
	calib      tsc.Pair            // taken earlier, to know the TSC rate before the end
	started    time.Time
	patched    bool
	stats      textpoke.Stats
	counters   agent.Counters // the agent's counters, kept once its memory is gone
	// restoredReturns counts the return addresses put back at detach.
	restoredReturns int
	// skipped lists the selected sites that another tool (a uprobe)
	// held at the start; they are not traced.
	skipped []HeldSite
	leasing bool // renewLease runs (orphan.go)
	// ctlMu serializes Enable, Disable and Close (ctl.go).
	ctlMu    sync.Mutex
	changes  []tracefile.Change // under mu
	ctl      ctlState           // under ctlMu
	loader   loaderState        // dlopen and dlclose (dlopen.go)
	closed   bool
	closeErr error
	fl       followState // followed children (follow.go), under mu
}

// Start attaches to process pid, selects the functions to trace, injects
// the agent, patches the sites and starts recording. On error, everything
// done so far is undone.
func Start(pid int, opts Options) (*Session, error) {
	s := &Session{pid: pid, opts: opts, lost: map[uint32]uint64{}, threads: map[uint32]string{}}
	// Until the patch batch, the tracer only parses and prepares: let it
	// run ahead of the target's threads, for a short attach latency.
	s.unboost = proc.BoostAll(-10)
	s.unrelax = gcpause.Relax()
	// The attach (seizing every thread: no thread stops) runs beside
	// discover: it is mostly waiting, for the ptrace thread to start and
	// for the kernel, 0.5-4 ms that the attach path no longer pays
	// after discover. When discover fails, its error wins and the target
	// is detached, untouched.
	type attached struct {
		p   *proc.Process
		err error
	}
	ach := make(chan attached, 1)
	go func() {
		p, err := proc.Attach(pid)
		ach <- attached{p, err}
	}()
	if err := s.discover(); err != nil && !s.followPassive(err) {
		if a := <-ach; a.err == nil {
			a.p.Detach()
		}
		s.unboost()
		s.unrelax()
		return nil, err
	}
	s.lap("discover: arguments and filters")
	a := <-ach
	s.lap("attach")
	if a.err != nil {
		s.unboost()
		s.unrelax()
		return nil, a.err
	}
	return s.start(a.p)
}

// StartProcess is Start for a process that is already seized, such as one
// started by [proc.Launch]. On error the process is detached.
func StartProcess(p *proc.Process, opts Options) (*Session, error) {
	s := &Session{pid: p.Pid(), opts: opts, lost: map[uint32]uint64{}, threads: map[uint32]string{}}
	s.unboost = proc.BoostAll(-10)
	s.unrelax = gcpause.Relax()
	if err := s.discover(); err != nil && !s.followPassive(err) {
		s.unboost()
		s.unrelax()
		p.Detach()
		return nil, err
	}
	return s.start(p)
}

// ErrUnwindUnsafe means graph mode was refused for the process: it can
// unwind its stack through traced frames (C++ exceptions) and the agent
// cannot hook its unwinder (see unwind.go), or its threads run with a CET
// shadow stack; the error says why.
var ErrUnwindUnsafe = errors.New("graph mode is not supported for this process")

// trapStatus is proc.ReadTrapStatus; a test plays a process with a shadow
// stack, which this machine may not be able to run.
var trapStatus = proc.ReadTrapStatus

func (s *Session) discover() error {
	s.lap("")
	// With -m, the modules it leaves out are read for their symbols only
	// (the recording names addresses with them): their sites and
	// relocation are neither read nor prepared.
	var lopts elfsite.LiveOptions
	if len(s.opts.Modules) > 0 {
		lopts.Full = func(p string) bool { return matchModule(p, s.opts.Modules) }
	}
	mods, _, err := elfsite.LiveModulesWith(s.pid, lopts)
	if err != nil {
		return err
	}
	s.mods = mods
	s.lap("discover: modules")
	if s.opts.Graph {
		// A CET shadow stack checks every ret against the return
		// address its call stored there: the agent's return trampoline
		// would kill the thread with SIGSEGV at the first traced return.
		if ts, err := trapStatus(s.pid); err != nil {
			return err
		} else if ts.ShadowStack {
			return fmt.Errorf("%w: its threads run with a CET shadow stack (x86_Thread_features: shstk in /proc/%d/status), "+
				"which checks every return address against its own copy, and graph mode replaces return addresses: the process would crash; "+
				"trace it without --graph", ErrUnwindUnsafe, s.pid)
		}
		// A C++ exception (or a forced unwind) that crosses a frame whose
		// return address the agent hijacked finds no unwind information
		// for the agent's return trampoline, and the program would die in
		// std::terminate. The agent hooks the unwinder's entry points
		// (unwind.go); graph mode refuses a C++ program only when it
		// cannot, unless told to take the risk.
		plan, err := planUnwind(s.pid, mods)
		if err != nil && !s.opts.AllowUnwind {
			return fmt.Errorf("%w: %v; a C++ exception thrown through a traced frame would crash it in graph mode: "+
				"trace it without --graph, or pass --graph-unwind-unsafe if it never throws through traced functions", ErrUnwindUnsafe, err)
		}
		s.unwind = plan
	}
	if err := s.selectSites(); err != nil {
		return err
	}
	s.lap("discover: select")
	if err := s.applyArgRules(); err != nil {
		return err
	}
	return s.applyFilters()
}

func (s *Session) start(p *proc.Process) (_ *Session, err error) {
	if s.unrelax != nil {
		defer s.unrelax()
	}
	if s.opts.BeforeInject != nil {
		s.opts.BeforeInject()
	}
	if s.fl.passive != "" {
		return s.startPassive(p) // follow_exec.go
	}
	defer s.unboost()
	s.p = p
	s.calib = tsc.Sample()
	pid := p.Pid()
	defer func() {
		if err != nil {
			_ = s.Close()
		}
	}()
	if err := s.checkSites(); err != nil {
		return nil, err
	}
	if err := s.planReloc(); err != nil {
		return nil, err
	}
	s.meta.Cmdline = readCmdline(pid)
	s.meta.Exe, _ = os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err := s.openOutput(); err != nil {
		return nil, err
	}
	// The agent goes in first, so that the engine's remote syscalls
	// (membarrier) already run where a dying tracer cannot strand a thread.
	if err := s.inject(); err != nil {
		return nil, err
	}
	s.lap("inject")
	if s.opts.Graph {
		// Before any site is patched: no frame is hijacked yet.
		if err := s.hookUnwind(); err != nil {
			if !s.opts.AllowUnwind {
				return nil, err
			}
			// --graph-unwind-unsafe: go on without the hooks.
			if err := s.p.StopAll(); err != nil {
				return nil, err
			}
			uerr := s.inj.unhookUnwind(s.p)
			s.p.ResumeAll()
			if uerr != nil {
				return nil, uerr
			}
		}
		s.lap("hook unwinder")
	}
	s.eng, err = textpoke.New(s.p, textpoke.Options{Mode: s.opts.Mode, Membarrier: s.membarrier, TrapStatus: s.trap})
	if err != nil {
		return nil, err
	}
	s.lap("engine")
	s.p.SetThreadExitHandler(s.threadExit)
	s.p.SetForkHandler(s.forked)
	if s.opts.Follow {
		s.p.SetFollowHandler(s.follow)
		s.p.SetExecHandler(s.execed)
	}
	// The boost lasts through the batch and through following the loader:
	// with threads trapping at every call, the ptrace thread wakes for each
	// trap, and at a nice value each wake-up could wait for a tick
	// (proc/nice.go). Ended before the batch, the attach of 10,000
	// functions took 50-67 ms instead of 40-48, and calling threads
	// stalled 80-112 ms instead of 32-44. Ended after the batch, the
	// loader's breakpoint (remote syscalls, a rendezvous) took 1-20 ms of
	// wall time for 2-7 ms of CPU, racing the buffer's fill for a CPU; so
	// the fill and the collector wait until the session is attached
	// (docs/DESIGN-NOTES.md, "Real-time while attaching"). The tracer's
	// other threads are idle meanwhile.
	err = s.patch()
	if err != nil {
		return nil, err // the deferred unboost ends the boost
	}
	s.lap("patch")
	if err := s.followLoader(); err != nil {
		return nil, err
	}
	if s.loader.waiting && s.loader.addr.Load() == 0 {
		return nil, fmt.Errorf("no module of process %d matches -m %s, and livetrace cannot wait for one: %s", s.pid, strings.Join(s.opts.Modules, " "), s.loader.why)
	}
	s.unboost()
	s.lap("follow dlopen")
	s.inj.startFill()
	if s.unrelax != nil {
		s.unrelax()
	}
	// The first checkpoint (the metadata, so that a recording survives the
	// tracer's death) takes 30-50 ms of CPU for a program of 10,000
	// functions: written here, before Start returns, it kept the caller
	// from polling, and the first 130-210 ms of events overflowed the
	// shared buffer at full speed. finish waits for it.
	s.ckpt = make(chan struct{})
	go func() {
		defer close(s.ckpt)
		t0 := time.Now()
		s.checkpoint()
		if debugTiming {
			fmt.Fprintf(os.Stderr, "session: checkpoint %v (in the background)\n", time.Since(t0))
		}
	}()
	stamp("attached")
	return s, nil
}

// stamp prints when an event happened on CLOCK_MONOTONIC (attached: Start
// returns; detach and detached: Close begins, and lets the process go), with
// LIVETRACE_DEBUG_TIMING set, for the benchmarks that split the time of a
// recording (cmd/livetrace BenchmarkAttachLatency).
func stamp(event string) {
	if debugTiming {
		var ts unix.Timespec
		_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
		fmt.Fprintf(os.Stderr, "session: %s at CLOCK_MONOTONIC %d ns\n", event, ts.Nano())
	}
}

var debugTiming = os.Getenv("LIVETRACE_DEBUG_TIMING") != ""

// lap prints how long the last step of Start took, with
// LIVETRACE_DEBUG_TIMING set.
func (s *Session) lap(step string) {
	if !debugTiming {
		return
	}
	now := time.Now()
	cpu, faults := processUsage()
	if s.lapT.IsZero() {
		// For the time from the tracer's exec to here (bench/ltbench).
		var ts unix.Timespec
		_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
		fmt.Fprintf(os.Stderr, "session: start at CLOCK_MONOTONIC %d ns (tracer CPU %v, %d page faults)\n", ts.Nano(), cpu, faults)
	}
	if !s.lapT.IsZero() {
		fmt.Fprintf(os.Stderr, "session: %s %v (tracer CPU %v, %d page faults)\n", step, now.Sub(s.lapT), cpu-s.lapCPU, faults-s.lapFaults)
	}
	s.lapT, s.lapCPU, s.lapFaults = now, cpu, faults
}

// processUsage returns the user and system time the tracer has used, and
// the page faults it has taken, minor and major: on a VM a first touch of
// a page can cost 10-20 µs.
func processUsage() (time.Duration, int64) {
	var ru unix.Rusage
	if unix.Getrusage(unix.RUSAGE_SELF, &ru) != nil {
		return 0, 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), ru.Minflt + ru.Majflt
}

// RefusedSite is a selected function that graph mode does not trace.
type RefusedSite struct {
	Name   string
	Reason string
}

// ErrGraphUnsafe means graph mode was refused for every selected function.
var ErrGraphUnsafe = errors.New("graph mode cannot trace the selected functions")

// Refused returns the selected functions that graph mode left untraced,
// and why: those whose return address is not at [rsp] at the site (see
// elfsite.Site.GraphUnsafe). Entry mode traces them.
func (s *Session) Refused() []RefusedSite { return s.refused }

// eachCandidate calls fn for each site of module m that the globs
// include may select: its patchable NOP sites and, with withReloc, the
// relocating sites of the functions include names (only those are
// analyzed). refused gets each such function that relocation cannot
// trace, and why. It returns how many functions relocation could
// trace were left unanalyzed because include does not name them.
func eachCandidate(m *elfsite.Module, include elfsite.Globs, withReloc bool, refused func(fs elfsite.Site, why string), fn func(st elfsite.Site)) (unnamed int) {
	for _, st := range m.Spec.Sites {
		if st.Form.Patchable() {
			fn(st)
		}
	}
	if !withReloc {
		return
	}
	var idx []int
	for i := range m.Spec.Funcs {
		// Neither an alias (matched with the first one) nor a function
		// with a NOP site (its site is above), to be matched by name.
		if !m.Spec.RelocCandidate(i) {
			continue
		}
		if include.Match(m.Spec, elfsite.Site{Addr: m.Spec.Funcs[i].Addr, Func: i}) {
			idx = append(idx, i)
		} else {
			unnamed++
		}
	}
	// One pass over the module's bytes for all of them.
	m.Spec.PrepareReloc(idx)
	for _, i := range idx {
		fs := elfsite.Site{Addr: m.Spec.Funcs[i].Addr, Func: i}
		st, why, ok := m.Spec.RelocFunc(i)
		switch {
		case !ok:
		case why != "":
			refused(fs, why)
		default:
			fn(st)
		}
	}
	return unnamed
}

// candidateNames returns the names of the functions of module m that
// eachCandidate may select, for suggestions: the relocation candidates
// are named, not analyzed.
func candidateNames(m *elfsite.Module, withReloc bool) []string {
	var names []string
	for _, st := range m.Spec.Sites {
		if st.Form.Patchable() {
			names = append(names, m.Spec.SiteName(st))
		}
	}
	if withReloc {
		for i := range m.Spec.Funcs {
			if m.Spec.RelocCandidate(i) {
				names = append(names, m.Spec.SiteName(elfsite.Site{Addr: m.Spec.Funcs[i].Addr, Func: i}))
			}
		}
	}
	return names
}

// siteFilter is the session's choice of functions, its globs compiled
// once for the thousands of sites of a module.
type siteFilter struct {
	include, exclude elfsite.Globs
	// withReloc: functions without a NOP are traced when the user names
	// functions or modules: "every function" of every module would take
	// in all of libc.
	withReloc bool
}

func (s *Session) siteFilter() siteFilter {
	include := s.opts.Funcs
	if len(include) == 0 {
		include = []string{"*"}
	}
	return siteFilter{
		include:   elfsite.NewGlobs(include...),
		exclude:   elfsite.NewGlobs(s.opts.Exclude...),
		withReloc: !s.opts.OnlyNop && (len(s.opts.Funcs) > 0 || len(s.opts.Modules) > 0),
	}
}

// selectSites picks the patchable sites whose function matches the globs.
func (s *Session) selectSites() error {
	include := s.opts.Funcs
	if len(include) == 0 {
		include = []string{"*"}
	}
	for _, g := range append(append([]string(nil), include...), s.opts.Exclude...) {
		if _, err := path.Match(g, ""); err != nil {
			return fmt.Errorf("bad pattern %q: %w", g, err)
		}
	}
	for _, g := range s.opts.Modules {
		if _, err := path.Match(g, ""); err != nil {
			return fmt.Errorf("bad module pattern %q: %w", g, err)
		}
	}
	f := s.siteFilter()
	nall := 0     // patchable functions in the modules -m selects
	nunnamed := 0 // and those relocation could trace, not analyzed (eachCandidate)
	var keep []elfsite.Site
	nmods, excluded := 0, 0
	// Functions a wildcard matched that cannot be traced: how many, and
	// the first, for the error when nothing else is left.
	var nrefused int
	var firstRefused RefusedSite
	for mi, m := range s.mods {
		if !matchModule(m.Path, s.opts.Modules) {
			continue
		}
		nmods++
		// The sites kept are gathered first: s.sel, of large elements,
		// grows once per module.
		keep = slices.Grow(keep[:0], len(m.Spec.Sites))
		refuse := func(fs elfsite.Site, why string) {
			if literalMatch(m.Spec, fs, include) {
				s.untraceable = append(s.untraceable, RefusedSite{Name: m.Spec.SiteName(fs), Reason: why})
			}
			if nrefused++; nrefused == 1 {
				firstRefused = RefusedSite{Name: m.Spec.SiteName(fs), Reason: why}
			}
		}
		// take says whether a site the globs selected is kept.
		take := func(st elfsite.Site) bool {
			nall++
			if f.exclude.Match(m.Spec, st) {
				excluded++
				return false
			}
			if s.opts.Graph && st.GraphUnsafe != "" {
				// Graph mode would overwrite [rsp], which is not the
				// return address here (elfsite.Site.GraphUnsafe).
				s.refused = append(s.refused, RefusedSite{Name: m.Spec.SiteName(st), Reason: st.GraphUnsafe})
				return false
			}
			return true
		}
		var ifuncs []int
		// Functions relocation could trace that the globs do not name:
		// with some, a selection of none is NoMatchError (below), not
		// ErrNoSites.
		nunnamed += eachCandidate(m, f.include, f.withReloc, func(fs elfsite.Site, why string) {
			if m.Spec.Funcs[fs.Func].IFunc {
				ifuncs = append(ifuncs, fs.Func) // its implementation, below
				return
			}
			refuse(fs, why)
		}, func(st elfsite.Site) {
			if !f.include.Match(m.Spec, st) {
				nall++
				return
			}
			if take(st) {
				keep = append(keep, st)
			}
		})
		notes := s.implementations(m, include, ifuncs, &keep, take, refuse)
		s.ifuncs = append(s.ifuncs, notes...)
		s.sel = slices.Grow(s.sel, len(keep))
		// One array for the original bytes of the module's sites, not
		// one allocation each.
		origs := make([]byte, 0, len(keep)*len(elfsite.Site{}.Bytes))
		for _, st := range keep {
			at := len(origs)
			origs = append(origs, st.Bytes[:]...)
			s.sel = append(s.sel, selected{
				mod: mi, site: st, name: m.Spec.SiteName(st),
				addr: m.Runtime(st.Addr),
				orig: origs[at:len(origs):len(origs)],
			})
		}
	}
	if nmods == 0 {
		if s.waitForModules() {
			return nil // dlopen.go: traced when the loader maps one
		}
		return fmt.Errorf("no module of process %d matches -m %s: see livetrace list -p %d for its modules", s.pid, strings.Join(s.opts.Modules, " "), s.pid)
	}
	if nall == 0 && len(s.untraceable) > 0 {
		return fmt.Errorf("no function of process %d can be traced: %s: %s", s.pid, s.untraceable[0].Name, s.untraceable[0].Reason)
	}
	if nall == 0 && nrefused > 0 {
		return fmt.Errorf("none of the %s -F matches in process %d can be traced, e.g. %s: %s; `livetrace list --all -p %d` says why for each",
			plural(nrefused, "function"), s.pid, firstRefused.Name, firstRefused.Reason, s.pid)
	}
	if nall == 0 && nunnamed == 0 {
		if !f.withReloc && !s.opts.OnlyNop {
			return fmt.Errorf("%w in process %d (%s): name the functions to trace with -F (functions without a compiler NOP are then traced by relocation), or build it with clang -fpatchable-function-entry=5 (see docs/BUILDING.md)", ErrNoSites, s.pid, s.mods[0].Path)
		}
		return fmt.Errorf("%w in process %d (%s): build it with clang -fpatchable-function-entry=5 (see docs/BUILDING.md)", ErrNoSites, s.pid, s.mods[0].Path)
	}
	if len(s.sel) == 0 && len(s.refused) > 0 {
		return fmt.Errorf("%w: every selected function is unsafe in graph mode (%s: %s): trace it without --graph", ErrGraphUnsafe, s.refused[0].Name, s.refused[0].Reason)
	}
	if len(s.sel) == 0 {
		// The names, for suggestions, are gathered only here: 10,000
		// of them cost a millisecond of every attach.
		var all, stripped []string
		exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", s.pid)) // s.meta.Exe is read later
		for _, m := range s.mods {
			if !matchModule(m.Path, s.opts.Modules) {
				continue
			}
			all = append(all, candidateNames(m, f.withReloc)...)
			if m.Spec.Stripped && len(m.Spec.Funcs) > 0 && (m.Path == exe || len(s.opts.Modules) > 0) {
				stripped = append(stripped, m.Path)
			}
		}
		return &NoMatchError{Globs: include, Names: all, Excluded: excluded, Stripped: stripped}
	}
	if len(s.sel) > agent.MaxSites {
		return fmt.Errorf("%d functions selected, at most %d per session: narrow the selection with -F", len(s.sel), agent.MaxSites)
	}
	sort.Slice(s.sel, func(i, j int) bool { return s.sel[i].addr < s.sel[j].addr })
	return nil
}

// hasReloc reports whether a relocating site is selected.
func (s *Session) hasReloc() bool {
	for _, x := range s.sel {
		if x.plan != nil {
			return true
		}
	}
	return false
}

// Untraceable returns the functions named by a glob without wildcards that
// have no compiler NOP and cannot be relocated, and why.
func (s *Session) Untraceable() []RefusedSite { return s.untraceable }

// Nameless returns the paths of the modules -m selects (the program
// alone without -m) that are stripped, name no function and have no NOP
// site, when -F names functions: the globs cannot select anything of
// theirs, which a user who names a function of a stripped program
// (Debian's memcached) would not guess. Without -m the libraries are
// left out: a data-only one (postgres maps libicudata) was named at
// every -F.
func (s *Session) Nameless() []string {
	if len(s.opts.Funcs) == 0 {
		return nil
	}
	var out []string
	for _, m := range s.mods {
		if len(s.opts.Modules) == 0 && m.Path != s.meta.Exe {
			continue
		}
		if !m.Spec.Stripped || !matchModule(m.Path, s.opts.Modules) || len(m.Spec.Patchable()) > 0 {
			continue // (a stripped file's NOP sites are named by address)
		}
		named := false
		for i := range m.Spec.Funcs {
			if m.Spec.Funcs[i].Size > 0 {
				named = true
				break
			}
		}
		if !named {
			out = append(out, m.Path)
		}
	}
	return out
}

// matchModule reports whether the module at path matches one of globs,
// by its path or its base name (all when globs is empty).
func matchModule(p string, globs []string) bool {
	return len(globs) == 0 || tracefile.MatchModule(p, globs)
}

// literalMatch reports whether a glob of globs without wildcards names the
// function of st.
func literalMatch(spec *elfsite.Spec, st elfsite.Site, globs []string) bool {
	for _, g := range globs {
		if !strings.ContainsAny(g, `*?[\`) && spec.MatchSite(st, g) {
			return true
		}
	}
	return false
}

// planReloc reads each selected relocating function from the live text
// and analyzes it again at its runtime address: the stub's bytes depend
// on it, and the live bytes must be the file's.
func (s *Session) planReloc() error {
	for i := range s.sel {
		if err := s.planRelocSite(&s.sel[i]); err != nil {
			return err
		}
	}
	return nil
}

// planRelocSite is planReloc for one site (nothing for a NOP site).
func (s *Session) planRelocSite(x *selected) error {
	if x.site.Form != elfsite.FormReloc {
		return nil
	}
	m := s.mods[x.mod]
	fn := m.Spec.Funcs[x.site.Func]
	code := make([]byte, fn.Size)
	if err := s.p.ReadMem(m.Runtime(fn.Addr), code); err != nil {
		return fmt.Errorf("read %s: %w", x.name, err)
	}
	if k := x.site.Plan.Kept; len(k) > 0 && len(code) >= len(k) && code[0] == 0xcc && k[0] != 0xcc && bytes.Equal(code[1:len(k)], k[1:]) {
		// A breakpoint on the first instruction, which stays in place
		// before the region: a uprobe placed before the attach. The
		// kernel runs the file's instruction at each hit and resumes
		// on the region, which livetrace patches as usual.
		copy(code, k)
	}
	if file, ok := m.Spec.FuncText(x.site.Func); ok && bytes.Equal(code, file) {
		// The file's very bytes: the file's proof holds, moved to where
		// they run (the live analysis would give this plan; it took 20
		// µs a function, 1.6 s of an attach of every function of node).
		x.plan = x.site.Plan.Moved(m.Runtime(fn.Addr) - fn.Addr)
		x.orig = x.plan.Orig()
		if x.plan.Entry != x.addr {
			return fmt.Errorf("refusing to patch %s: its region is at %#x, not at %#x", x.name, x.plan.Entry, x.addr)
		}
		return nil
	}
	var ropts reloc.Options
	if m.Bias == 0 {
		// A position-dependent executable runs at its link-time
		// addresses: its read-only data proves its jump tables.
		ropts = m.Spec.RelocOptions()
	}
	// The same layout as the file's analysis chose (which also saw the
	// branches into the function from outside it).
	ropts.KeepFirst = x.site.Plan.Kept != nil
	plan, err := reloc.Analyze(code, m.Runtime(fn.Addr), ropts)
	if err != nil {
		return fmt.Errorf("refusing to patch %s: its live text is not the file's (%v); is another tool patching this process?", x.name, err)
	}
	if plan.Entry != x.addr || !bytes.Equal(plan.Orig(), x.site.Plan.Orig()) {
		return fmt.Errorf("refusing to patch %s at %#x: its live text % x is not the file's % x; is another tool patching this process?", x.name, x.addr, plan.Orig(), x.site.Plan.Orig())
	}
	x.plan = plan
	x.orig = plan.Orig()
	return nil
}

// HeldSite is a site of a selected function that another tool holds:
// livetrace does not trace it, and never writes over its bytes.
type HeldSite struct {
	Name   string
	Addr   uint64
	Uprobe bool // a kernel uprobe (bpftrace, perf probe) holds it
}

// checkSites reads every selected site from the live text: the file's bytes
// must be there. A site that a uprobe holds (textpoke/uprobe.go) is dropped
// from the selection and reported by Held; any other CALL or INT3 belongs to
// another tool, or to a livetrace that died, and the recording is refused.
func (s *Session) checkSites() error {
	addrs := make([]uint64, len(s.sel))
	for i, x := range s.sel {
		addrs[i] = x.addr
	}
	live, err := elfsite.ReadSiteBytes(s.p.Pid(), addrs)
	if err != nil {
		return err
	}
	var areas []textpoke.Area
	var bad []string
	keep := s.sel[:0]
	for i, b := range live {
		x := s.sel[i]
		if string(b[:]) == string(x.orig[:len(b)]) {
			keep = append(keep, x)
			continue
		}
		if areas == nil {
			if areas, err = textpoke.UprobeAreas(s.p.Pid()); err != nil {
				return err
			}
		}
		if textpoke.HeldByUprobe(x.addr, b[:], x.orig, areas) {
			s.skipped = append(s.skipped, HeldSite{Name: x.name, Addr: x.addr, Uprobe: true})
			continue
		}
		bad = append(bad, fmt.Sprintf("%s at %#x holds % x, the file has % x", x.name, x.addr, b[:], x.orig))
	}
	s.sel = keep
	if len(bad) == 0 && len(s.sel) == 0 && len(s.skipped) > 0 {
		return fmt.Errorf("every selected function is held by a uprobe (%s): stop the other tracer (bpftrace, perf probe) or select other functions", heldNames(s.skipped))
	}
	if len(bad) > 0 {
		more := ""
		if len(bad) > 3 {
			more = fmt.Sprintf(" (and %d more)", len(bad)-3)
			bad = bad[:3]
		}
		return fmt.Errorf("refusing to patch: %s%s; is another tracer (or a crashed livetrace) patching this process?", strings.Join(bad, "; "), more)
	}
	return nil
}

// patch converts sleds (stop mode), then turns every selected NOP into a
// CALL to its stub and every relocated region into a jmp to its stub, in
// one batch.
func (s *Session) patch() error {
	var sleds []uint64
	for _, x := range s.sel {
		if x.site.Form == elfsite.FormSled {
			sleds = append(sleds, x.addr)
		}
	}
	if len(sleds) > 0 {
		st, err := s.eng.ConvertSleds(sleds)
		if err != nil {
			return err
		}
		s.addStats(st)
	}
	ps := make([]textpoke.Patch, len(s.sel))
	for i, x := range s.sel {
		p, err := x.patch()
		if err != nil {
			return err
		}
		ps[i] = p
	}
	// One batch: NOP sites and regions (relocating sites) alike take the
	// live protocol (textpoke).
	s.clock0 = tsc.Sample()
	s.started = time.Now()
	st, err := s.eng.Apply(ps)
	s.addStats(st)
	if err != nil {
		return err
	}
	s.patched = true
	return nil
}

// patch returns the patch that makes x traced: its NOP becomes a CALL to
// its stub, or its relocated region a jmp to its relocation stub. The
// reverse patch (Old and New swapped) makes it untraced again.
func (x *selected) patch() (textpoke.Patch, error) {
	if x.plan != nil {
		jmp, err := x.plan.Patch(x.stub)
		if err != nil {
			return textpoke.Patch{}, err
		}
		return textpoke.Patch{Addr: x.addr, Old: x.orig, New: jmp, Region: true, Detour: x.stub + relocBodyOff(x.plan, x.keep)}, nil
	}
	old := x.orig
	if x.site.Form == elfsite.FormSled {
		old = textpoke.NOP5
	}
	call, err := textpoke.Call(x.addr, x.stub)
	if err != nil {
		return textpoke.Patch{}, err
	}
	return textpoke.Patch{Addr: x.addr, Old: old, New: call}, nil
}

func (s *Session) addStats(st textpoke.Stats) {
	s.stats.Sites += st.Sites
	s.stats.Syncs += st.Syncs
	s.stats.Writes += st.Writes
	s.stats.Traps += st.Traps
	s.stats.Duration += st.Duration
	s.stats.Paused += st.Paused
	s.stats.SteppedOut += st.SteppedOut
	s.stats.RegionCheck += st.RegionCheck
	s.stats.Mode = st.Mode
}

// Held returns the sites of selected functions that another tool holds,
// sorted by address: those a uprobe held at the start (not traced), and
// those whose bytes another tool changed while livetrace patched or
// restored them (left as that tool made them, see textpoke.Engine.Held).
// After Close, the latter are the sites not restored because of that tool.
func (s *Session) Held() []HeldSite {
	out := append([]HeldSite(nil), s.skipped...)
	if s.eng != nil {
		s.mu.Lock()
		names := make(map[uint64]string, len(s.sel))
		for _, x := range s.sel {
			if !x.gone {
				names[x.addr] = x.name
			}
		}
		s.mu.Unlock()
		for _, h := range s.eng.Held() {
			name, ok := names[h.Addr]
			if !ok {
				name = fmt.Sprintf("%#x", h.Addr)
			}
			out = append(out, HeldSite{Name: name, Addr: h.Addr, Uprobe: h.Uprobe})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Addr < out[j].Addr })
	return out
}

// DescribeHeld tells the user about hs, as "VERB 2 sites held by uprobes:
// f, g" (and "VERB 1 site that another tool changed: h" for sites no uprobe
// is known to hold), one line per kind.
func DescribeHeld(verb string, hs []HeldSite) []string {
	var up, other []HeldSite
	for _, h := range hs {
		if h.Uprobe {
			up = append(up, h)
		} else {
			other = append(other, h)
		}
	}
	var out []string
	count := func(n int) string {
		if n == 1 {
			return "1 site"
		}
		return fmt.Sprintf("%d sites", n)
	}
	if len(up) > 0 {
		out = append(out, fmt.Sprintf("%s %s held by uprobes: %s", verb, count(len(up)), heldNames(up)))
	}
	if len(other) > 0 {
		out = append(out, fmt.Sprintf("%s %s that another tool changed: %s", verb, count(len(other)), heldNames(other)))
	}
	return out
}

// heldNames lists up to ten names of hs.
func heldNames(hs []HeldSite) string {
	var names []string
	for i, h := range hs {
		if i == 10 {
			names = append(names, fmt.Sprintf("and %d more", len(hs)-10))
			break
		}
		names = append(names, h.Name)
	}
	return strings.Join(names, ", ")
}

// Functions returns how many functions are traced now.
func (s *Session) Functions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, x := range s.sel {
		if !x.off {
			n++
		}
	}
	return n
}

// BufferChunks returns the size of the shared event buffer, in chunks
// (Options.Chunks, or the default for the target's CPUs).
func (s *Session) BufferChunks() int {
	if s.inj == nil {
		return s.opts.Chunks
	}
	return s.inj.cfg.Chunks
}

// Pid returns the target's process ID.
func (s *Session) Pid() int { return s.p.Pid() }

// Mode returns the patching protocol in use and why, for stop mode.
func (s *Session) Mode() (textpoke.Mode, string) {
	if s.eng == nil {
		return textpoke.ModeLive, "" // a passive session (follow_exec.go) patches nothing
	}
	return s.eng.Mode(), s.eng.Reason()
}

// PatchStats returns the statistics of the patch batches so far.
func (s *Session) PatchStats() textpoke.Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// Exited is closed when the target exits or calls exec; with
// Options.Follow, once every process followed has (follow.go).
func (s *Session) Exited() <-chan struct{} {
	if s.opts.Follow {
		return s.followExited()
	}
	return s.p.Exited()
}

// EndReason says how the target ended, once Exited is closed.
func (s *Session) EndReason() string {
	if r := s.followEndReason(); r != "" {
		return r
	}
	ws, execed := s.p.ExitStatus()
	switch {
	case execed:
		return fmt.Sprintf("process %d called exec: the new program is not traced", s.pid)
	case ws.Signaled():
		return fmt.Sprintf("process %d was killed by %s (%v)", s.pid, unix.SignalName(ws.Signal()), ws.Signal())
	default:
		return fmt.Sprintf("process %d exited with status %d", s.pid, ws.ExitStatus())
	}
}

// Summary is what a recording holds so far.
type Summary struct {
	Events, Lost, Corrupt uint64
	// JITCalls counts the calls graph mode did not trace because their
	// return address was in no module (agent.CodeTable).
	JITCalls uint64
	Threads  int
	Duration time.Duration
	Output   string
	// SpoolErr is why the spool could not be written (the disk is
	// full): the loop that empties the shared buffer converted events
	// itself from then on, which is slower; nothing put in the spool
	// was lost.
	SpoolErr error
}

// Summary returns the counts so far.
func (s *Session) Summary() Summary {
	s.mu.Lock()
	defer s.mu.Unlock()
	var lost uint64
	for _, n := range s.lost {
		lost += n
	}
	c := s.counters
	if s.cons != nil {
		c = s.cons.Counters()
	}
	lost = max(lost, c.Lost+c.TableFull+c.Reentered)
	d := time.Since(s.started)
	if !s.ended.IsZero() {
		d = s.ended.Sub(s.started)
	}
	// Records still in the spool count as events: they are safe, only
	// not encoded yet. Once the spool is finished the count is exact.
	// (No s.conv here: the converter holds it at nice 19, and the loop
	// that empties the buffer calls Summary.)
	events := s.events.Load() + (s.spooled - s.unspooled.Load())
	corrupt := s.corrupt + s.badRecords.Load()
	return Summary{Events: events, Lost: lost, Corrupt: corrupt, JITCalls: c.JITCalls, Threads: len(s.threads), Duration: d, Output: s.opts.Output, SpoolErr: s.spoolErr}
}

func (s *Session) openOutput() error {
	if s.opts.OnRaw != nil {
		s.opts.Discard = true // OnRaw's reader decodes what it keeps
	}
	if s.opts.Output == "" && !s.opts.Discard && s.opts.OutputWriter == nil {
		s.opts.Output = "livetrace.data"
	}
	spoolDir := filepath.Dir(s.opts.Output)
	switch {
	case s.opts.Discard:
		w, err := tracefile.NewWriter(io.Discard)
		if err != nil {
			return err
		}
		s.w = w
		return nil // nothing to spool for
	case s.opts.OutputWriter != nil:
		w, err := tracefile.NewWriter(s.opts.OutputWriter)
		if err != nil {
			return err // "write recording header: ..."
		}
		s.w = w
		spoolDir = os.TempDir()
	default:
		w, err := tracefile.Create(s.opts.Output)
		if err != nil {
			return err // "create PATH: ..."
		}
		s.w = w
	}
	if s.opts.NoSpool || s.opts.OnEvents != nil {
		return nil
	}
	sp, err := openSpool(spoolDir, s.convert)
	if err != nil {
		return err
	}
	s.spool = sp
	return nil
}

// Close stops tracing and undoes everything: it disables the agent, puts
// back every original byte, drains the remaining events, removes the agent
// from the target, detaches, and finishes the recording file. It is
// idempotent.
func (s *Session) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return s.closeErr
	}
	s.closed = true
	s.mu.Unlock()
	stamp("detach")
	// An Enable or Disable under way ends first; none starts after.
	s.ctlMu.Lock()
	defer s.ctlMu.Unlock()

	var errs []error
	note := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	gone := func() bool {
		select {
		case <-s.p.Exited():
			return true
		default:
			return false
		}
	}
	if s.opts.Follow {
		note(s.closeMembers())
		note(s.closeExecs())
	}
	clock1 := tsc.Sample()
	s.mu.Lock()
	s.ended = time.Now() // tracing ends here; converting the spool does not count
	s.mu.Unlock()
	if s.p != nil && !gone() {
		if s.inj != nil {
			// Enabled and graph off: no new records, no new hijacks.
			note(s.inj.setCtl(s.p, agent.Ctl{}))
		}
		note(s.unfollowLoader())
		if s.eng != nil {
			st, err := s.eng.RestoreAll()
			s.addStats(st)
			note(err)
		}
		if s.inj != nil && !gone() {
			note(s.quiesce())
		}
	}
	s.consume(true)
	if s.p != nil && s.inj != nil && !gone() {
		s.attributePendingLoss()
	}
	if s.p != nil && s.inj != nil && len(s.inj.hooks) > 0 && !gone() {
		// quiesce did not get to it: the GOT must not point into an
		// unmapped agent (if this fails too, the agent stays mapped).
		note(s.inj.unhookUnwind(s.p))
	}
	if s.p != nil && s.inj != nil && !gone() {
		note(s.inj.remove(s.p))
	}
	if s.p != nil {
		// Detach closes Exited too: from here on only Ended tells an
		// exit from our own detach.
		if err := s.p.Detach(); err != nil && !errors.Is(err, proc.ErrExited) && !s.p.Ended() {
			note(err)
		}
		if len(errs) > 0 && s.p.Ended() {
			// The process exited (or exec'd) while we detached: whatever
			// failed to be undone went with its memory. The failures are
			// reads and writes of a vanishing address space, not news.
			errs = nil
		}
	}
	stamp("detached")
	s.mu.Lock()
	if s.cons != nil {
		s.counters = s.cons.Counters()
		s.cons = nil // its memory goes away now
	}
	s.mu.Unlock()
	if s.inj != nil {
		s.inj.unmapLocal()
	}
	if s.w != nil {
		note(s.finish(clock1))
	}
	s.closeErr = errors.Join(errs...)
	return s.closeErr
}

// quiesceTries bounds how often quiesce looks again for a thread held
// inside the agent or a stub before it leaves the agent mapped. Such a
// hold is usually a moment long: a signal handler that interrupted a thread
// in the agent returns within microseconds, and a vfork child (which runs
// on the thread slot of the thread that vforked, sharing its memory and
// thread pointer) is in the agent only until it execs. A busy Python,
// spawning a process every 50 ms, kept the agent in 2 of 12 detaches
// when quiesce looked once, in none of 12 without its spawns. The waits
// between tries grow by a millisecond: 45 ms in all at most.
const quiesceTries = 10

// testHookQuiesceHeld, when set by a test, runs after a quiesce try that
// found a thread held inside the agent or a stub, with the threads
// running again.
var testHookQuiesceHeld func(try int)

// quiesce stops every thread and makes sure none of them is inside the
// agent or a stub, so that the agent can be unmapped. A thread whose
// program counter is inside is single-stepped out (the trampolines are
// straight-line code). A thread interrupted inside the agent by a signal
// handler shows as busy in its thread slot; then the process runs on a
// little and quiesce looks again, and only if the hold outlasts
// quiesceTries is the agent left mapped.
func (s *Session) quiesce() error {
	if done, err := s.quiesceEach(); done || err != nil {
		return err
	}
	for try := 1; ; try++ {
		held, err := s.quiesceAll(try == quiesceTries)
		if err != nil || !held {
			return err
		}
		if testHookQuiesceHeld != nil {
			testHookQuiesceHeld(try)
		}
		time.Sleep(time.Duration(try) * time.Millisecond)
	}
}

// quiesceAll is one try of quiesce with every thread stopped. It reports
// held when a thread is held inside the agent or a stub and this is not
// the last try; on the last, the agent is kept mapped (inj.keep).
func (s *Session) quiesceAll(last bool) (held bool, err error) {
	if err := s.p.StopAll(); err != nil {
		return false, err
	}
	defer s.p.ResumeAll()
	// The unwinder's GOT slots first, while every thread is stopped: one
	// that was about to jump through a slot now goes to the real
	// function, one already in a hook is stepped out below.
	unhookErr := s.inj.unhookUnwind(s.p)
	if unhookErr != nil {
		unhookErr = fmt.Errorf("restore the unwinder's GOT slots: %w", unhookErr)
	}
	// Step every thread out of the stubs and the agent. One stepped out
	// of a stub lands in the agent (a stub jumps to lt_entry), one stepped
	// out of lt_return lands in its caller: step until no thread is in
	// any of our regions.
	for round := 0; ; round++ {
		ips, err := s.p.StoppedIPs()
		if err != nil {
			return false, err
		}
		inside := false
		for tid, ip := range ips {
			if lo, hi, in := s.inj.contains(ip); in {
				inside = true
				if err := s.p.SingleStepOut(tid, lo, hi, 10000); err != nil {
					return false, err
				}
			}
		}
		if !inside {
			break
		}
		if round == 8 {
			return false, fmt.Errorf("a thread is still inside the agent after %d rounds of single-stepping", round+1)
		}
	}
	in := s.inj.busy(s.p)
	if !in && s.eng != nil && s.hasReloc() {
		// A signal handler that interrupted a thread in a relocation
		// stub (running displaced instructions, outside the agent, so
		// not busy) returns into the stub: keep it mapped.
		var sps []uint64
		if err := s.p.EditRegs(func(_ int, regs *unix.PtraceRegs) bool {
			sps = append(sps, regs.Rsp)
			return false
		}); err != nil {
			return false, err
		}
		framed, err := s.eng.SignalFrameIn(sps, func(pc uint64) bool {
			_, _, ok := s.inj.contains(pc)
			return ok
		})
		in = err != nil || framed
	}
	if in && !last {
		return true, unhookErr
	}
	if in {
		s.inj.keep = true
	}
	if s.opts.Graph {
		n, err := s.inj.restoreReturns(s.p)
		s.restoredReturns = n
		if err != nil {
			return false, errors.Join(unhookErr, fmt.Errorf("restore hijacked return addresses: %w", err))
		}
	}
	return false, unhookErr
}

// Checkpointed is closed once the first checkpoint, written in the
// background when Start returns, is on disk: from then on the recording
// can be read even if the tracer dies. Poll meanwhile.
func (s *Session) Checkpointed() <-chan struct{} {
	if s.ckpt == nil {
		c := make(chan struct{})
		close(c)
		return c
	}
	return s.ckpt
}

// finish converts what is left in the spool, writes the metadata and
// closes the recording.
func (s *Session) finish(clock1 tsc.Pair) error {
	if s.ckpt != nil {
		<-s.ckpt // the first checkpoint, written while tracing began
	}
	var serr error
	if s.spool != nil {
		serr = s.spool.finish()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.spool = nil
	m := s.buildMeta(&clock1)
	s.conv.Lock()
	defer s.conv.Unlock()
	merr := s.mergeExecs(&m) // record --follow: the images exec'd
	err := errors.Join(merr, s.w.Close(m))
	s.w = nil
	// A spool that could not be written (s.spoolErr: the disk is full)
	// is no error: its chunks were converted at once instead.
	return errors.Join(serr, err)
}

// Meta returns the recording's metadata as known now: modules, symbols,
// the traced functions (an event's Func indexes Funcs) and the clock.
func (s *Session) Meta() tracefile.Meta {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buildMeta(nil)
}

// checkpoint writes the metadata known at the start into the recording, so
// that a recording cut short (the tracer killed) can still be read with
// --recover. Only the metadata is assembled under s.mu: encoding and
// writing it (tens of milliseconds with the symbols of a program and its
// libc) happen outside, under the writer's own lock, so that the consumer
// keeps emptying the shared buffer meanwhile (it takes s.mu). The
// checkpoints are not concurrent: Start's comes before anything else can
// call the Session, ctl's are serialized by ctlMu, which Close also takes.
func (s *Session) checkpoint() {
	// One at a time, so that the file's last checkpoint is the newest
	// snapshot (the first one runs in the background, and ctl or a
	// dlopen may write another meanwhile).
	s.ckptMu.Lock()
	defer s.ckptMu.Unlock()
	s.mu.Lock()
	w := s.w
	var meta tracefile.Meta
	if w != nil {
		meta = s.buildMeta(nil)
	}
	s.mu.Unlock()
	if w != nil {
		_ = w.Checkpoint(meta)
	}
}

// buildMeta assembles the recording's metadata; clock1 is the end pair
// (nil for a checkpoint). s.mu must be held.
func (s *Session) buildMeta(clock1 *tsc.Pair) tracefile.Meta {
	m := s.meta
	m.Modules, m.Funcs, m.Symbols, m.Threads = nil, nil, nil, nil
	m.Mode = tracefile.ModeEntry
	if s.opts.Graph {
		m.Mode = tracefile.ModeGraph
	}
	m.PID = s.pid
	if s.p != nil {
		m.Comm = s.p.Comm()
	}
	m.Host, _ = os.Hostname()
	m.Start = s.started
	if m.Start.IsZero() {
		m.Start = time.Now()
	}
	m.Clock = tracefile.Clock{TSC0: s.clock0.TSC, Mono0: s.clock0.Mono, TSCHz: tsc.Hz(s.calib, s.clock0)}
	if clock1 != nil {
		m.End = s.ended
		if m.End.IsZero() {
			m.End = time.Now()
		}
		m.Clock.TSC1, m.Clock.Mono1 = clock1.TSC, clock1.Mono
		if hz := tsc.Hz(s.clock0, *clock1); hz != 0 {
			m.Clock.TSCHz = hz
		}
	}
	for _, mod := range s.mods {
		tm := tracefile.Module{Path: strings.TrimSuffix(mod.Path, " (deleted)"), Bias: mod.Bias, BuildID: mod.Spec.BuildID}
		if len(mod.Mappings) > 0 {
			tm.Base = mod.Mappings[0].Start
			tm.Limit = mod.Mappings[len(mod.Mappings)-1].End
		}
		m.Modules = append(m.Modules, tm)
		for i, f := range mod.Spec.Funcs {
			m.Symbols = append(m.Symbols, tracefile.Symbol{Name: mod.Spec.Name(i), Module: len(m.Modules) - 1, Addr: mod.Runtime(f.Addr), Size: f.Size})
		}
	}
	for _, x := range s.sel {
		f := tracefile.Func{Name: x.name, Module: x.mod, Site: x.addr}
		mod := s.mods[x.mod]
		if x.site.Func >= 0 && x.site.Func < len(mod.Spec.Funcs) {
			fn := mod.Spec.Funcs[x.site.Func]
			f.Addr, f.Size = mod.Runtime(fn.Addr), fn.Size
		} else {
			f.Addr = x.addr
		}
		f.Args, f.Ret = x.capture.args, x.capture.ret
		m.Funcs = append(m.Funcs, f)
	}
	var tids []uint32
	for tid := range s.threads {
		tids = append(tids, tid)
	}
	sort.Slice(tids, func(i, j int) bool { return tids[i] < tids[j] })
	m.Lost = 0
	for _, tid := range tids {
		m.Threads = append(m.Threads, tracefile.Thread{TID: tid, Name: s.threads[tid], Lost: s.lost[tid]})
		m.Lost += s.lost[tid]
	}
	c := s.counters
	if s.cons != nil {
		c = s.cons.Counters()
	}
	m.Lost = max(m.Lost, c.Lost) + c.TableFull + c.Reentered
	m.ShadowOverflow = c.Overflow
	m.JITCalls = c.JITCalls
	m.Changes = append([]tracefile.Change(nil), s.changes...)
	m.Filters = s.opts.Filters
	if len(m.Filters.Patterns) == 0 {
		m.Filters.Patterns = s.opts.Funcs
	}
	s.followMeta(&m)
	return m
}

func readCmdline(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || len(b) == 0 {
		return nil
	}
	return strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00")
}

func threadName(pid, tid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/comm", pid, tid))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}
