package session

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/livetrace/livetrace/internal/agent"
	"github.com/livetrace/livetrace/internal/elfsite"
	"github.com/livetrace/livetrace/internal/textpoke"
	"github.com/livetrace/livetrace/internal/tracefile"
	"github.com/livetrace/livetrace/internal/tsc"
	"golang.org/x/arch/x86/x86asm"
)

// Following dlopen and dlclose (docs/DESIGN-NOTES.md, "dlopen and
// dlclose").
//
// glibc's dynamic loader tells debuggers of every change to its link map
// through the rendezvous structure `_r_debug` (<link.h>): before and after
// each change it sets r_state (RT_ADD, RT_DELETE, then RT_CONSISTENT) and
// calls the empty function at r_brk (`_dl_debug_state`), with its lock
// held. gdb (solib-svr4) and delve put a breakpoint there; so does the
// session: an INT3 over r_brk's `ret`. A thread that hits it is parked by
// proc (internal/proc/breakpoint.go) while the session acts, then its
// `ret` is emulated:
//
//   - RT_CONSISTENT: the link map is stable. Modules mapped since the last
//     look (a dlopen: relocation and constructors have not run yet, dlopen
//     has not returned) are parsed, their functions that match the
//     session's filters prepared and patched in one live batch, as Enable
//     does; the recording gets a "load" change. Modules whose mapping is
//     gone are dropped (see RT_DELETE).
//   - RT_DELETE: modules are about to be unmapped, and r_debug does not
//     say which. From this stop until the next RT_CONSISTENT (at most
//     unloadWait) the session holds ctlMu, so that no patch batch, Enable,
//     Disable or Close writes any site meanwhile; at RT_CONSISTENT the
//     sites of every module whose mapping went are dropped without a write
//     (the engine forgets them, their site table entries become
//     tombstones, their indexes stay) and the recording gets an "unload"
//     change. A module mapped later at the same address is a new module
//     with new sites.
//
// If the tracer dies, the agent's SIGTRAP backstop emulates the `ret`
// (lt_sigtrap reads the INT3's address from lt_priv.rbrk, kept in a forked
// child too), and `livetrace restore` puts the `ret` back (the owner
// record's rbrk). Close puts it back first.
//
// A tracer killed while a thread sits in the INT3's SIGTRAP stop does not
// get that signal delivered: the kernel drops it with the ptrace-stop and
// the thread runs on one past the INT3 (docs/DESIGN-NOTES.md, "A tracer
// killed while a thread sits in a trap of ours"). proc puts a stopped
// thread back onto the INT3 at once, which leaves only the time until it
// does so; and where the `ret` is followed by alignment padding (glibc's
// ld.so: `ret` and 15 bytes of NOPs before the next function), the
// padding's first byte becomes a second `ret` for the duration, so that a
// thread running on past the INT3 returns as it should. Nothing jumps into
// padding; the byte goes back with the `ret`.

// The x86-64 layout of glibc's struct r_debug (<link.h>).
const (
	rDebugSize    = 40
	rDebugVersion = 0
	rDebugBrk     = 16
	rDebugState   = 24
)

// r_state values.
const (
	rtConsistent = 0
	rtAdd        = 1
	rtDelete     = 2
)

const (
	opRet  = 0xc3
	opInt3 = 0xcc
)

// unloadWait bounds how long the session waits, holding off every patch
// batch, between a dlclose's RT_DELETE and its RT_CONSISTENT.
const unloadWait = time.Second

var endbr64 = []byte{0xf3, 0x0f, 0x1e, 0xfa}

// loaderState is what the session knows of the dynamic loader.
type loaderState struct {
	rdebug uint64
	// addr is the INT3 over r_brk's `ret`, 0 while not following; set
	// before the INT3 is written, read by the fork handler.
	addr atomic.Uint64
	// pad is 0x100 | the original byte at addr+1 when that padding holds
	// a second `ret` (0: none); set before addr.
	pad atomic.Uint64
	why string // why dlopen is not followed (addr 0)
	// waiting: -m matched no module at the start (waitForModules).
	waiting bool
	// dirty: functions were added since the last checkpoint, written at
	// checkpointed (under ctlMu).
	dirty        bool
	checkpointed time.Time

	quick    atomic.Int64 // breakpoint hits answered by the filter (RT_ADD)
	hits     chan int
	stop     chan struct{}
	stopOnce sync.Once
	deleting bool // between RT_DELETE and RT_CONSISTENT, ctlMu held (loaderLoop only)

	// Under s.mu (written with ctlMu held too):
	gone    map[int]bool // indexes in s.mods of unloaded modules
	loads   int          // modules loaded while attached
	unloads int          // modules unloaded while attached
	stops   int          // breakpoint hits handed to loaderLoop
	errs    []string     // modules loaded that could not be traced, and why
}

// LoaderStatus says whether the session follows dlopen and dlclose.
type LoaderStatus struct {
	// Following is true when the session traces the modules the target
	// loads while attached; Why says why not, otherwise.
	Following bool
	Why       string
	// Loads and Unloads count the modules loaded and unloaded while
	// attached; Stops the loader's stops at its r_brk.
	Loads, Unloads, Stops int
	// Errors are loaded modules whose functions could not be traced.
	Errors []string
}

// Loader returns whether the session follows dlopen and dlclose, and what
// it saw so far. It is safe for concurrent use.
func (s *Session) Loader() LoaderStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	ld := &s.loader
	return LoaderStatus{Following: ld.addr.Load() != 0, Why: ld.why, Loads: ld.loads, Unloads: ld.unloads, Stops: ld.stops + int(ld.quick.Load()),
		Errors: append([]string(nil), ld.errs...)}
}

// waitForModules reports whether a selection whose -m matches no module
// yet may start empty: asked to (Options.WaitModules), and the process has
// a dynamic loader to follow, so the modules it loads later are traced
// (Waiting says so). s.mods is read.
func (s *Session) waitForModules() bool {
	if len(s.opts.Modules) == 0 || !s.opts.WaitModules {
		return false
	}
	if _, _, err := elfsite.Rendezvous(s.pid, s.mods); err != nil {
		return false
	}
	s.loader.waiting = true
	return true
}

// Waiting reports whether the session started with no function selected
// because no module matched -m yet: it traces the modules the target
// loads that match.
func (s *Session) Waiting() bool { return s.loader.waiting }

// followLoader puts the breakpoint on the loader's r_brk. It fails only
// when the target is left in a state that needs undoing; a target with
// nothing to follow (statically linked, stop mode) gets a reason in
// loader.why.
func (s *Session) followLoader() error {
	ld := &s.loader
	ld.gone = map[int]bool{}
	if s.inj == nil || !s.inj.backstop {
		ld.why = "the process blocks or ignores SIGTRAP, or runs with a CET shadow stack (stop mode): a breakpoint on the loader would not be safe"
		return nil
	}
	rd, mi, err := elfsite.Rendezvous(s.pid, s.mods)
	if errors.Is(err, elfsite.ErrNoRendezvous) {
		ld.why = "the process has no dynamic loader (statically linked): it loads no modules"
		return nil
	}
	if err != nil {
		ld.why = err.Error()
		return nil
	}
	var b [rDebugSize]byte
	if err := s.p.ReadMem(rd, b[:]); err != nil {
		ld.why = fmt.Sprintf("read the loader's r_debug: %v", err)
		return nil
	}
	le := binary.LittleEndian
	brk := le.Uint64(b[rDebugBrk:])
	if le.Uint32(b[rDebugVersion:]) == 0 || brk == 0 {
		ld.why = "the loader has not set up its r_debug yet"
		return nil
	}
	if !inExec(s.mods[mi], brk) {
		ld.why = fmt.Sprintf("the loader's r_brk %#x is outside its code", brk)
		return nil
	}
	code := make([]byte, 5)
	if err := s.p.ReadMem(brk, code); err != nil {
		ld.why = fmt.Sprintf("read the loader's r_brk: %v", err)
		return nil
	}
	at := brk
	if bytes.HasPrefix(code, endbr64) {
		at, code = at+4, code[4:]
	}
	if code[0] != opRet {
		ld.why = fmt.Sprintf("the loader's r_brk at %#x is not an empty function (% x)", brk, code)
		return nil
	}
	var pad uint64
	if n := 16 - (at+1)%16; n < 16 {
		b := make([]byte, n)
		if s.p.ReadMem(at+1, b) == nil && alignPad(b) {
			pad = 0x100 | uint64(b[0])
		}
	}
	ld.rdebug = rd
	ld.hits = make(chan int, 16)
	ld.stop = make(chan struct{})
	// The backstop and the owner record know the INT3 before it is
	// there: a tracer killed from now on leaves nothing unhandled.
	var ab [8]byte
	le.PutUint64(ab[:], at)
	if err := s.p.WriteMem(s.inj.addrs.Priv+agent.PrivRbrkOff, ab[:]); err != nil {
		return fmt.Errorf("follow dlopen: %w", err)
	}
	s.inj.rbrk, s.inj.rbrkPad = at, pad
	if err := s.publishOwner(); err != nil {
		return fmt.Errorf("follow dlopen: %w", err)
	}
	ld.pad.Store(pad)
	ld.addr.Store(at)
	// RT_ADD needs nothing (the new modules are not mapped yet): answered
	// on the ptrace thread, without a hand-off.
	s.p.SetBreakpointFilter(func(int) bool {
		var b [4]byte
		if s.p.ReadMem(rd+rDebugState, b[:]) == nil && binary.LittleEndian.Uint32(b[:]) == rtAdd {
			ld.quick.Add(1)
			return false
		}
		return true
	})
	s.p.SetBreakpoint(at, func(tid int) {
		select {
		case ld.hits <- tid:
		case <-ld.stop:
			_ = s.p.Unpark(tid)
		}
	})
	// The second `ret` first: until the INT3 is there, nothing runs it.
	err = nil
	if pad != 0 {
		err = s.p.WriteMem(at+1, []byte{opRet})
	}
	if err == nil {
		err = s.p.WriteMem(at, []byte{opInt3})
	}
	if err != nil {
		if pad != 0 {
			_ = s.p.WriteMem(at+1, []byte{byte(pad)})
		}
		ld.addr.Store(0)
		s.p.SetBreakpoint(0, nil)
		return fmt.Errorf("follow dlopen: write the breakpoint at r_brk %#x: %w", at, err)
	}
	// Modules loaded since they were listed (between discover and now),
	// unless a change is under way: its RT_CONSISTENT will tell.
	var st [4]byte
	if s.p.ReadMem(rd+rDebugState, st[:]) == nil && le.Uint32(st[:]) == rtConsistent {
		s.ctlMu.Lock()
		s.syncModules()
		s.ctlMu.Unlock()
	}
	go s.loaderLoop()
	return nil
}

// alignPad reports whether b, the bytes after r_brk's `ret` up to the next
// 16-byte boundary, is the padding a toolchain leaves between functions:
// at least one byte, all NOPs or INT3s, so that no function starts there.
func alignPad(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for len(b) > 0 {
		if b[0] == opInt3 {
			b = b[1:]
			continue
		}
		in, err := x86asm.Decode(b, 64)
		if err != nil || in.Op != x86asm.NOP || in.Len == 0 {
			return false
		}
		b = b[in.Len:]
	}
	return true
}

// inExec reports whether addr is in an executable mapping of m.
func inExec(m *elfsite.Module, addr uint64) bool {
	for _, mp := range m.Mappings {
		if mp.Exec() && addr >= mp.Start && addr < mp.End {
			return true
		}
	}
	return false
}

// unfollowLoader puts the `ret` back on r_brk and lets any parked thread
// go. Traps taken before and reported later get their `ret` emulated by
// proc. s.ctlMu is held.
func (s *Session) unfollowLoader() error {
	ld := &s.loader
	at := ld.addr.Load()
	if at == 0 {
		return nil
	}
	ld.stopOnce.Do(func() { close(ld.stop) })
	s.p.SetBreakpoint(at, nil)
	err := s.p.WriteMem(at, []byte{opRet})
	for _, tid := range s.p.Parked() {
		if uerr := s.p.Unpark(tid); err == nil {
			err = uerr
		}
	}
	// The padding last: a thread still to be told of a trap taken before
	// the `ret` went back returns through either.
	if pad := ld.pad.Load(); pad != 0 && err == nil {
		err = s.p.WriteMem(at+1, []byte{byte(pad)})
	}
	if err != nil {
		return fmt.Errorf("put back the loader's r_brk: %w", err)
	}
	return nil
}

// loaderLoop handles the loader's stops, one at a time (the loader holds
// its lock around them).
func (s *Session) loaderLoop() {
	ld := &s.loader
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	tick := time.NewTicker(checkpointEvery)
	defer tick.Stop()
	defer func() {
		if ld.deleting {
			ld.deleting = false
			s.ctlMu.Unlock()
		}
	}()
	for {
		select {
		case tid := <-ld.hits:
			s.loaderStop(tid, timer)
		case <-timer.C:
			// A dlclose that did not reach RT_CONSISTENT in time (its
			// thread is stopped by a debugger, say): drop what is gone
			// now and let batches run again.
			if ld.deleting {
				s.syncModules()
				if err := s.writeCode(); err != nil {
					s.loaderErr(err.Error())
				}
				ld.deleting = false
				s.ctlMu.Unlock()
			}
		case <-tick.C:
			if !ld.deleting && s.ctlMu.TryLock() {
				if ld.dirty && !s.isClosed() {
					s.loaderCheckpoint()
				}
				s.ctlMu.Unlock()
			}
		case <-ld.stop:
			return
		case <-s.p.Exited():
			return
		}
	}
}

// loaderStop acts on one stop of thread tid at r_brk, then lets it return.
func (s *Session) loaderStop(tid int, timer *time.Timer) {
	ld := &s.loader
	var b [4]byte
	state := uint32(rtConsistent)
	if s.p.ReadMem(ld.rdebug+rDebugState, b[:]) == nil {
		state = binary.LittleEndian.Uint32(b[:])
	}
	s.mu.Lock()
	ld.stops++
	s.mu.Unlock()
	switch state {
	case rtDelete:
		if !ld.deleting {
			// Held until RT_CONSISTENT: nothing of ours may write a
			// site of a module that is being unmapped.
			s.ctlMu.Lock()
			ld.deleting = true
			timer.Reset(unloadWait)
			// And graph mode knows no code until then: the text
			// going may be followed by JIT code at its addresses.
			if err := s.beginCode(); err != nil {
				s.loaderErr(err.Error())
			}
		}
	case rtConsistent:
		if ld.deleting {
			timer.Stop()
		} else {
			s.ctlMu.Lock()
		}
		ld.deleting = false
		s.syncModules()
		if err := s.writeCode(); err != nil {
			s.loaderErr(err.Error())
		}
		s.ctlMu.Unlock()
	}
	// RT_ADD: the new modules are not mapped yet; RT_CONSISTENT follows.
	_ = s.p.Unpark(tid)
}

// syncModules drops the modules whose mapping is gone and traces the ones
// mapped since the last look. s.ctlMu is held.
func (s *Session) syncModules() {
	if s.isClosed() {
		return
	}
	added, removed, err := elfsite.ModuleChanges(s.pid, s.mods, func(i int) bool { return s.loader.gone[i] })
	if err != nil {
		s.loaderErr(fmt.Sprintf("read the modules of pid %d: %v", s.pid, err))
		return
	}
	for _, mi := range removed {
		if err := s.dropModule(mi); err != nil {
			s.loaderErr(err.Error())
		}
	}
	for _, m := range added {
		if len(s.mods) >= maxModules {
			// A program that loads modules over and over: each load
			// is a module of the recording (and its symbols).
			s.loaderErr(fmt.Sprintf("%s: not traced: %d modules loaded already, the most one recording keeps", m.Path, maxModules))
			continue
		}
		if err := s.loadModule(m); err != nil {
			s.loaderErr(fmt.Sprintf("%s: %v", m.Path, err))
		}
	}
}

func (s *Session) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

func (s *Session) loaderErr(msg string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.loader.errs) < 100 {
		s.loader.errs = append(s.loader.errs, msg)
	}
}

// dropModule forgets every site of module mi, whose text the target
// unmapped (or is unmapping): nothing writes them again. s.ctlMu is held.
func (s *Session) dropModule(mi int) error {
	var idx []int
	var addrs []uint64
	for i, x := range s.sel {
		if x.mod == mi && !x.gone {
			idx = append(idx, i)
			addrs = append(addrs, x.addr)
		}
	}
	s.eng.Forget(addrs)
	var err error
	if len(idx) > 0 && s.inj.shared != nil {
		err = agent.DropSites(s.inj.shared, s.inj.cfg, idx)
	}
	ch := tracefile.Change{Time: time.Now(), TSC: tsc.Read(), Op: "unload", Globs: []string{s.mods[mi].Path}}
	s.mu.Lock()
	s.conv.Lock()
	for _, i := range idx {
		s.sel[i].gone, s.sel[i].off = true, true
		ch.Funcs = append(ch.Funcs, uint32(i))
	}
	s.loader.gone[mi] = true
	s.loader.unloads++
	s.changes = append(s.changes, ch)
	s.conv.Unlock()
	s.mu.Unlock()
	return err
}

// loadModule adds module m, mapped while attached, to the session and
// traces its functions that match the session's filters, in one batch.
// s.ctlMu is held.
func (s *Session) loadModule(m *elfsite.Module) error {
	s.mu.Lock()
	s.conv.Lock()
	mi := len(s.mods)
	s.mods = append(s.mods, m)
	s.loader.loads++
	s.conv.Unlock()
	s.mu.Unlock()
	ch := tracefile.Change{Op: "load", Globs: []string{m.Path}}
	err := s.traceModule(mi, &ch)
	ch.Time, ch.TSC = time.Now(), tsc.Read()
	s.mu.Lock()
	s.changes = append(s.changes, ch)
	s.mu.Unlock()
	if len(ch.Funcs) > 0 {
		// A recording cut short must know the new functions (see change),
		// but a checkpoint holds all the metadata: in a program that
		// loads modules over and over, at most one a second.
		s.loader.dirty = true
		if time.Since(s.loader.checkpointed) >= checkpointEvery {
			s.loaderCheckpoint()
		}
	}
	return err
}

// maxModules bounds the modules of one session (those of the attach and
// those loaded since, unloaded or not).
const maxModules = 16384

// checkpointEvery is the least time between two checkpoints written for
// modules loaded while attached.
const checkpointEvery = time.Second

// loaderCheckpoint writes a checkpoint for the modules loaded since the
// last one. s.ctlMu is held.
func (s *Session) loaderCheckpoint() {
	s.loader.dirty = false
	s.loader.checkpointed = time.Now()
	s.checkpoint()
}

// traceModule prepares and patches the selected functions of module mi,
// and lists them in ch. s.ctlMu is held.
func (s *Session) traceModule(mi int, ch *tracefile.Change) error {
	fresh := s.moduleSites(mi)
	if len(fresh) == 0 {
		return nil
	}
	// What record -A/-R/-a and -G/--caller give every function, as
	// Enable does.
	for i := range fresh {
		s.setCapture(&fresh[i], nil)
	}
	if err := s.checkStrings(fresh); err != nil {
		return err
	}
	idx, err := s.prepare(fresh)
	if err != nil {
		return err
	}
	var sleds []uint64
	ps := make([]textpoke.Patch, 0, len(idx))
	for _, i := range idx {
		x := &s.sel[i]
		if x.site.Form == elfsite.FormSled {
			sleds = append(sleds, x.addr)
		}
		p, err := x.patch()
		if err != nil {
			return fmt.Errorf("patch %s: %w", x.name, err)
		}
		ps = append(ps, p)
	}
	if len(sleds) > 0 {
		st, err := s.eng.ConvertSleds(sleds)
		s.mu.Lock()
		s.addStats(st)
		s.mu.Unlock()
		if err != nil {
			return err
		}
	}
	// In stop mode: no thread hits an INT3 of this batch. A tracer killed
	// while a thread sits in the SIGTRAP stop of such a hit sometimes
	// leaves it running past the INT3 without the signal (Linux 6.18),
	// inside our bytes: TestDlopenTracerKilled crashed the target in about
	// 1 run of 8 with the live protocol here, in none of 24 since.
	// The loader's thread is parked meanwhile; the stop costs the other
	// threads a few ms per dlopen that loads a traced module.
	st, err := s.eng.ApplyStop(ps)
	s.mu.Lock()
	s.addStats(st)
	s.mu.Unlock()
	if err != nil {
		return fmt.Errorf("patch batch: %w", err)
	}
	s.mu.Lock()
	for _, i := range idx {
		s.sel[i].off = false
		ch.Funcs = append(ch.Funcs, uint32(i))
	}
	s.mu.Unlock()
	return nil
}

// moduleSites returns the sites of module mi that the session's filters
// select, as selectSites picks them at attach (-F, -N, -m, graph mode's
// refusals; functions without a NOP when functions or modules are named).
func (s *Session) moduleSites(mi int) []selected {
	m := s.mods[mi]
	if !matchModule(m.Path, s.opts.Modules) {
		return nil
	}
	f := s.siteFilter()
	var out []selected
	seen := map[uint64]bool{}
	eachCandidate(m, f.include, f.withReloc, func(elfsite.Site, string) {}, func(st elfsite.Site) {
		if !f.include.Match(m.Spec, st) || f.exclude.Match(m.Spec, st) {
			return
		}
		if s.opts.Graph && st.GraphUnsafe != "" {
			return
		}
		addr := m.Runtime(st.Addr)
		if seen[addr] {
			return
		}
		seen[addr] = true
		out = append(out, selected{mod: mi, site: st, name: m.Spec.SiteName(st), addr: addr, orig: append([]byte(nil), st.Bytes[:]...)})
	})
	sort.Slice(out, func(i, j int) bool { return out[i].addr < out[j].addr })
	return out
}
