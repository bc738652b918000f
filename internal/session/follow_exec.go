package session

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/livetrace/livetrace/internal/proc"
	"github.com/livetrace/livetrace/internal/tracefile"
	"github.com/livetrace/livetrace/internal/tsc"
)

// Following exec (Options.Follow; docs/DESIGN-NOTES.md, "Following fork
// and exec").
//
// An exec replaces the address space: the agent, the stubs and the
// patched text of the old image are gone with it, and nothing needs
// undoing. The new image is attached afresh: proc hands it over parked at
// its entry point (after the dynamic loader, before the program's first
// instruction), and a session of its own, with the same options, selects
// its functions, injects a new agent and patches it, then lets it run.
// That session records into a file of its own; Close merges it into this
// recording (its modules, functions, symbols, threads and processes are
// appended, its events' function indexes shifted). A new image where no
// function matches is listed as a process of the recording with the
// reason, and let go.

// execImage is a new image a followed process exec'd into.
type execImage struct {
	img     *proc.Process
	pid     int
	former  int // the thread that called exec
	ppid    int
	tsc     uint64
	comm    string
	exe     string
	cmdline []string
	dir     string   // of the sub-session's recording
	sub     *Session // nil: not traced (why)
	why     string
}

// execed runs on the ptrace thread when a followed process (the target,
// a followed child, or an image followed before) calls exec.
func (s *Session) execed(img *proc.Process, former int) {
	x := &execImage{img: img, pid: img.Pid(), former: former, ppid: img.Parent(), tsc: tsc.Read(), comm: img.Comm()}
	x.exe, _ = os.Readlink(fmt.Sprintf("/proc/%d/exe", x.pid))
	x.cmdline = readCmdline(x.pid)
	s.mu.Lock()
	s.fl.execs = append(s.fl.execs, x)
	s.fl.starting.Add(1)
	s.mu.Unlock()
	go s.startImage(x)
}

// startImage starts the session of a new image, then lets it run. x.sub
// and x.why are written under s.mu (allEnded reads them).
func (s *Session) startImage(x *execImage) {
	defer s.fl.starting.Done()
	set := func(sub *Session, why string) {
		s.mu.Lock()
		x.sub, x.why = sub, why
		s.mu.Unlock()
	}
	fail := func(why string) {
		_ = x.img.Detach() // puts the entry point back if still parked
		set(nil, why)
	}
	if err := x.img.WaitParked(10 * time.Second); err != nil {
		fail(err.Error())
		return
	}
	s.mu.Lock()
	closing := s.fl.closing
	s.mu.Unlock()
	if closing {
		fail("the recording was ending")
		return
	}
	dir, err := os.MkdirTemp("", "livetrace-exec")
	if err != nil {
		fail(err.Error())
		return
	}
	x.dir = dir
	opts := s.opts
	opts.Output = filepath.Join(dir, "image.data")
	opts.OutputWriter, opts.OnEvents, opts.OnRaw, opts.OnFuncs, opts.Discard = nil, nil, nil, nil, false
	sub, err := StartProcess(x.img, opts) // detaches img on error
	if err != nil {
		os.RemoveAll(dir)
		set(nil, err.Error())
		return
	}
	why := ""
	if err := x.img.Release(); err != nil {
		why = err.Error()
	}
	set(sub, why)
}

// closeExecs closes the sessions of the new images (Close, after the
// children). Their recordings are merged by mergeExecs.
func (s *Session) closeExecs() error {
	s.fl.starting.Wait()
	s.mu.Lock()
	execs := append([]*execImage(nil), s.fl.execs...)
	s.mu.Unlock()
	var errs []error
	for i := len(execs) - 1; i >= 0; i-- {
		if x := execs[i]; x.sub != nil {
			if err := x.sub.Close(); err != nil {
				errs = append(errs, fmt.Errorf("exec'd image of pid %d: %w", x.pid, err))
			}
		}
	}
	return errors.Join(errs...)
}

// mergeExecs appends the recordings of the new images to m and to the
// writer, and removes them. s.mu and s.conv are held.
func (s *Session) mergeExecs(m *tracefile.Meta) error {
	var errs []error
	for _, x := range s.fl.execs {
		p := tracefile.Process{PID: x.pid, PPID: x.ppid, Comm: x.comm, Cmdline: x.cmdline, Exe: x.exe,
			ForkTSC: x.tsc, ExecFrom: x.former, Untraced: x.why}
		if x.sub == nil {
			m.Processes = append(m.Processes, p)
			continue
		}
		if err := s.mergeImage(m, x, p); err != nil {
			errs = append(errs, fmt.Errorf("merge the recording of pid %d after exec: %w", x.pid, err))
		}
		os.RemoveAll(x.dir)
	}
	return errors.Join(errs...)
}

func (s *Session) mergeImage(m *tracefile.Meta, x *execImage, p tracefile.Process) error {
	st, err := tracefile.OpenStream(x.sub.opts.Output, tracefile.StreamOptions{})
	if err != nil {
		return err
	}
	defer st.Close()
	sm := &st.Meta
	modOff, funcOff := len(m.Modules), len(m.Funcs)
	remap := func(i int) int {
		if i < 0 {
			return i
		}
		return i + modOff
	}
	m.Modules = append(m.Modules, sm.Modules...)
	for _, f := range sm.Funcs {
		f.Module = remap(f.Module)
		m.Funcs = append(m.Funcs, f)
	}
	for _, sy := range sm.Symbols {
		sy.Module = remap(sy.Module)
		m.Symbols = append(m.Symbols, sy)
	}
	known := map[uint32]bool{}
	for _, th := range m.Threads {
		known[th.TID] = true
	}
	for _, th := range sm.Threads {
		if th.PID == 0 {
			th.PID = sm.PID
		}
		if !known[th.TID] {
			m.Threads = append(m.Threads, th)
		}
	}
	m.Lost += sm.Lost
	m.ShadowOverflow += sm.ShadowOverflow
	m.JITCalls += sm.JITCalls
	// Its own list starts with the image itself, then what it followed.
	if len(sm.Processes) > 0 {
		p.Comm = sm.Processes[0].Comm
		p.Untraced = sm.Processes[0].Untraced // a passive image
		m.Processes = append(m.Processes, p)
		m.Processes = append(m.Processes, sm.Processes[1:]...)
	} else {
		m.Processes = append(m.Processes, p)
	}
	for {
		evs, ok := st.NextBatch()
		if !ok {
			break
		}
		for i := range evs {
			evs[i].Func += uint32(funcOff)
		}
		if err := s.w.WriteEvents(evs); err != nil {
			return err
		}
		s.events.Add(uint64(len(evs)))
	}
	return st.Err()
}

// followPassive decides, when discover failed with err, whether the
// session goes on without tracing the target itself: with Follow, a
// program where nothing matches (a shell, a launcher) is followed for the
// children and programs it starts, which are traced if they match.
func (s *Session) followPassive(err error) bool {
	if !s.opts.Follow || !errors.Is(err, ErrNoMatch) && !errors.Is(err, ErrNoSites) {
		return false
	}
	s.fl.passive = err.Error()
	var nm *NoMatchError
	if errors.As(err, &nm) {
		s.fl.passive = "no function matches " + strings.Join(nm.Globs, " ")
	}
	s.sel, s.refused = nil, nil
	return true
}

// startPassive is start for a passive session: no agent, no patch; the
// process is only followed.
func (s *Session) startPassive(p *proc.Process) (*Session, error) {
	defer s.unboost()
	s.p = p
	s.calib = tsc.Sample()
	s.meta.Cmdline = readCmdline(p.Pid())
	s.meta.Exe, _ = os.Readlink(fmt.Sprintf("/proc/%d/exe", p.Pid()))
	if err := s.openOutput(); err != nil {
		_ = s.Close()
		return nil, err
	}
	s.p.SetFollowHandler(s.follow)
	s.p.SetExecHandler(s.execed)
	s.clock0 = tsc.Sample()
	s.started = time.Now()
	s.checkpoint()
	return s, nil
}

// Passive says why nothing of the target itself is traced, "" when it is
// (see followPassive).
func (s *Session) Passive() string { return s.fl.passive }
