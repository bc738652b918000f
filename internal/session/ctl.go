package session

import (
	"errors"
	"fmt"
	"path"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/livetrace/livetrace/internal/agent"
	"github.com/livetrace/livetrace/internal/elfsite"
	"github.com/livetrace/livetrace/internal/proc"
	"github.com/livetrace/livetrace/internal/textpoke"
	"github.com/livetrace/livetrace/internal/tracefile"
	"github.com/livetrace/livetrace/internal/tsc"
)

// Changing what is traced while attached (livetrace ctl, docs/DESIGN-NOTES.md,
// "Changing what is traced while attached").
//
// Enable and Disable each rewrite sites in one patch batch of the engine,
// with the live protocol, while the target runs and the consumer polls.
// Disable writes a site's original bytes back; its stub stays, so a thread
// already in it runs on. Enable of a function prepared before re-patches
// it. A function never prepared gets what Start gives one: its site is
// checked against the file, a relocating one analyzed again at its
// runtime address; a stub slot in a stub region near its module (made
// here, through a remote mmap, with spare room for later calls); an entry
// appended to the agent's site table (inject leaves spare room), whose
// index is the index in s.sel and in the recording's Funcs; and every
// stub region is in the owner record, so that `livetrace restore` finds
// all of it if the tracer dies.

// spareSites is the room inject leaves in the agent's site table for the
// functions Enable adds.
const spareSites = 4096

// ctlStubBytes is the least size of a stub region Enable maps: later
// Enables of the same module fill it before another is mapped (the owner
// record holds at most agent.MaxStubRegions).
const ctlStubBytes = 64 << 10

// ctlState is what Enable keeps between calls; guarded by Session.ctlMu
// (written without it only by Start, before anything runs concurrently).
type ctlState struct {
	regions []ctlStubRegion
	// auto caches record -a's DWARF specs by module (args.go, autoOf).
	auto map[int]autoModule
	// noStrings, when set, is what the target's seccomp filter does on
	// the process_vm_readv the agent reads strings with: none are read
	// (inject.go, checkSeccomp; args.go, checkStrings).
	noStrings string
}

// ctlStubRegion is a stub region Enable mapped for module mod; the bytes
// from used on are free.
type ctlStubRegion struct {
	mod              int
	addr, size, used uint64
}

// ErrClosed means the session has ended.
var ErrClosed = errors.New("the recording has ended")

// ChangeResult says what Enable or Disable did.
type ChangeResult struct {
	// Changed are the functions whose state changed, in the order of
	// their index.
	Changed []string
	// Already counts the functions matched that were in that state.
	Already int
	// Refused are functions matched that cannot be traced, and why.
	Refused []RefusedSite
}

// Enable starts tracing the functions whose name matches one of globs, in
// one patch batch, without detaching. A glob that matches no function
// (traced or not) is an error, and nothing changes. Functions excluded at
// the start (-N) are enabled when named; -m still bounds the modules.
// Enable is safe for concurrent use, and while the consumer polls.
func (s *Session) Enable(globs []string) (ChangeResult, error) {
	return s.change(globs, true, nil)
}

// EnableArgs is Enable, and the functions it prepares capture the values
// rules name too (ctl enable -A/-R), on top of the session's own specs
// (record -A, -R, -a), which apply to every function Enable prepares as at
// the start. A function prepared before keeps what it captures (its stub
// says whether it captures): a rule that would change it is an error, and
// nothing changes.
func (s *Session) EnableArgs(globs []string, rules []ArgRule) (ChangeResult, error) {
	return s.change(globs, true, rules)
}

// Disable stops tracing the functions whose name matches one of globs, in
// one patch batch: their sites get their original bytes back. A glob that
// matches no traced function is an error, and nothing changes.
func (s *Session) Disable(globs []string) (ChangeResult, error) {
	return s.change(globs, false, nil)
}

func (s *Session) change(globs []string, enable bool, rules []ArgRule) (res ChangeResult, err error) {
	if s.fl.passive != "" {
		return res, fmt.Errorf("nothing is traced in process %d (%s): it is only followed (--follow) for the programs it starts", s.pid, s.fl.passive)
	}
	if len(globs) == 0 {
		return res, errors.New("no function pattern given: name the functions with shell globs")
	}
	for _, g := range globs {
		if _, err := path.Match(g, ""); err != nil {
			return res, fmt.Errorf("bad pattern %q: %w", g, err)
		}
	}
	s.ctlMu.Lock()
	defer s.ctlMu.Unlock()
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed || s.eng == nil || s.inj == nil {
		return res, ErrClosed
	}
	select {
	case <-s.p.Exited():
		return res, ErrClosed
	default:
	}

	// Functions prepared already, matched by each glob, by their own
	// names or by an IFUNC's that picked them (ifunc.go).
	matched := make([]bool, len(globs))
	picked := s.pickedByGlobs(globs)
	var idx []int
	for i, x := range s.sel {
		if x.gone {
			continue // its module was unloaded (dlopen.go)
		}
		hit := false
		for gi, g := range globs {
			if s.mods[x.mod].Spec.MatchSite(x.site, g) {
				matched[gi], hit = true, true
			}
		}
		for _, gi := range picked[[2]int{x.mod, x.site.Func}] {
			matched[gi], hit = true, true
		}
		if !hit {
			continue
		}
		if x.off != enable {
			res.Already++
			continue
		}
		idx = append(idx, i)
	}
	var fresh []selected
	if enable {
		fresh, res.Refused = s.candidates(globs, matched)
	} else {
		// A glob that names only functions never traced is no error
		// for disable: they are off already. Only one that names no
		// function at all is.
		var rest []string
		var at []int
		for gi, g := range globs {
			if !matched[gi] {
				rest, at = append(rest, g), append(at, gi)
			}
		}
		if len(rest) > 0 {
			m := make([]bool, len(rest))
			s.candidates(rest, m)
			for k, ok := range m {
				matched[at[k]] = ok
			}
		}
	}
	for gi, g := range globs {
		if !matched[gi] {
			within := ""
			if len(s.opts.Modules) > 0 {
				within = fmt.Sprintf(" (within the modules of -m %s, which bounds this recording)", strings.Join(s.opts.Modules, " -m "))
			}
			return res, fmt.Errorf("%w %q in process %d%s: see livetrace list -p %d for the functions it has", ErrNoMatch, g, s.pid, within, s.pid)
		}
	}
	if len(rules) > 0 {
		if err := s.checkEnableRules(rules); err != nil {
			return res, err
		}
	}
	for i := range fresh {
		s.setCapture(&fresh[i], rules)
	}
	if err := s.checkStrings(fresh); err != nil {
		return res, err
	}
	if len(idx) == 0 && len(fresh) == 0 {
		return res, nil
	}
	var sleds []uint64
	if len(fresh) > 0 {
		added, err := s.prepare(fresh)
		if err != nil {
			return res, err
		}
		idx = append(idx, added...)
		for _, i := range added {
			if s.sel[i].site.Form == elfsite.FormSled {
				// Never traced yet: converted once, in stop mode, as
				// at the start (Disable writes the NOP5 back).
				sleds = append(sleds, s.sel[i].addr)
			}
		}
	}

	ps := make([]textpoke.Patch, 0, len(idx))
	for _, i := range idx {
		x := &s.sel[i]
		p, err := x.patch()
		if err != nil {
			return res, fmt.Errorf("patch %s: %w", x.name, err)
		}
		if !enable {
			p.Old, p.New = p.New, p.Old
		}
		ps = append(ps, p)
	}
	if len(sleds) > 0 {
		st, err := s.eng.ConvertSleds(sleds)
		s.mu.Lock()
		s.addStats(st)
		s.mu.Unlock()
		if err != nil {
			return res, err
		}
	}
	st, err := s.eng.Apply(ps)
	s.mu.Lock()
	s.addStats(st)
	s.mu.Unlock()
	if err != nil {
		// The engine put every site of the batch back as it was.
		return res, fmt.Errorf("patch batch: %w", err)
	}
	now, t := time.Now(), tsc.Read()
	ch := tracefile.Change{Time: now, TSC: t, Op: "disable", Globs: append([]string(nil), globs...)}
	if enable {
		ch.Op = "enable"
	}
	sort.Ints(idx)
	s.mu.Lock()
	for _, i := range idx {
		s.sel[i].off = !enable
		ch.Funcs = append(ch.Funcs, uint32(i))
		res.Changed = append(res.Changed, s.sel[i].name)
	}
	s.changes = append(s.changes, ch)
	s.mu.Unlock()
	if len(fresh) > 0 {
		// A recording cut short (read with --recover) must know the new
		// functions to keep their events. A checkpoint holds all the
		// metadata, symbols included: not one per change.
		s.checkpoint()
	}
	return res, nil
}

// candidates returns the functions matching globs that were never
// prepared: NOP sites, and (unless OnlyNop) relocating ones, of the
// modules -m selects; it marks the globs that matched one (or one that
// cannot be traced) in matched. Functions that cannot be traced come back
// as refused.
func (s *Session) candidates(globs []string, matched []bool) (fresh []selected, refused []RefusedSite) {
	have := make(map[uint64]bool, len(s.sel))
	for _, x := range s.sel {
		if !x.gone {
			have[x.addr] = true
		}
	}
	mark := func(spec *elfsite.Spec, st elfsite.Site) bool {
		hit := false
		for gi, g := range globs {
			if spec.MatchSite(st, g) {
				matched[gi], hit = true, true
			}
		}
		return hit
	}
	for mi, m := range s.mods {
		if !matchModule(m.Path, s.opts.Modules) || s.loader.gone[mi] {
			continue
		}
		// add takes a site not taken yet.
		add := func(st elfsite.Site) {
			addr, name := m.Runtime(st.Addr), m.Spec.SiteName(st)
			if s.opts.Graph && st.GraphUnsafe != "" {
				refused = append(refused, RefusedSite{Name: name, Reason: st.GraphUnsafe + " (graph mode)"})
				return
			}
			have[addr] = true
			fresh = append(fresh, selected{mod: mi, site: st, name: name, addr: addr, orig: append([]byte(nil), st.Bytes[:]...)})
		}
		sites := m.Spec.Patchable()
		if !s.opts.OnlyNop {
			var idx []int
			for i := range m.Spec.Funcs {
				if i > 0 && m.Spec.Funcs[i-1].Addr == m.Spec.Funcs[i].Addr {
					continue // an alias: matched with the first one
				}
				fs := elfsite.Site{Addr: m.Spec.Funcs[i].Addr, Func: i}
				if m.Spec.MatchSite(fs, globs...) && !have[m.Runtime(fs.Addr)] {
					idx = append(idx, i)
				}
			}
			m.Spec.PrepareReloc(idx) // one pass over the module for all
			var ifuncs []int
			for _, i := range idx {
				fs := elfsite.Site{Addr: m.Spec.Funcs[i].Addr, Func: i}
				st, why, ok := m.Spec.RelocFunc(i)
				switch {
				case !ok:
				case why != "" && m.Spec.Funcs[i].IFunc:
					mark(m.Spec, fs)
					ifuncs = append(ifuncs, i) // its implementation, below
				case why != "":
					mark(m.Spec, fs)
					refused = append(refused, RefusedSite{Name: m.Spec.SiteName(fs), Reason: why})
				default:
					sites = append(sites, st)
				}
			}
			// The implementations the IFUNCs picked, which the globs
			// need not name.
			var impls []elfsite.Site
			s.implementations(m, nil, ifuncs, &impls, func(elfsite.Site) bool { return true }, func(fs elfsite.Site, why string) {
				refused = append(refused, RefusedSite{Name: m.Spec.SiteName(fs), Reason: why})
			})
			for _, st := range impls {
				if !have[m.Runtime(st.Addr)] && !mark(m.Spec, st) { // (named itself: with sites below)
					add(st)
				}
			}
		}
		for _, st := range sites {
			if !st.Form.Patchable() && st.Form != elfsite.FormReloc {
				continue
			}
			if !have[m.Runtime(st.Addr)] && mark(m.Spec, st) {
				add(st)
			}
		}
	}
	sort.Slice(fresh, func(i, j int) bool { return fresh[i].addr < fresh[j].addr })
	return fresh, refused
}

// prepare readies functions never traced for their first patch: it checks
// their live bytes, analyzes relocating ones, writes their stubs, appends
// them to the agent's site table and to s.sel. It returns their indexes.
// s.ctlMu is held.
func (s *Session) prepare(fresh []selected) ([]int, error) {
	addrs := make([]uint64, len(fresh))
	for i, x := range fresh {
		addrs[i] = x.addr
	}
	live, err := elfsite.ReadSiteBytes(s.p.Pid(), addrs)
	if err != nil {
		return nil, err
	}
	for i := range fresh {
		x := &fresh[i]
		if string(live[i][:]) != string(x.orig[:len(live[i])]) {
			return nil, fmt.Errorf("refusing to patch %s at %#x: it holds % x, the file has % x; is another tracer (a uprobe, or a crashed livetrace) patching this process?", x.name, x.addr, live[i][:], x.orig)
		}
		if err := s.planRelocSite(x); err != nil {
			return nil, err
		}
	}
	room := s.inj.cfg.SiteCap
	if len(s.sel)+len(fresh) > room {
		return nil, fmt.Errorf("cannot add %d functions: this recording has room for %d in all (%d traced or prepared); start a new recording with -F naming them", len(fresh), room, len(s.sel))
	}
	base := len(s.sel)
	for i := range fresh {
		fresh[i].off = true // until the batch has patched it
	}
	if err := s.writeStubs(fresh, base); err != nil {
		return nil, err
	}
	sites := make([]agent.Site, len(fresh))
	for i := range fresh {
		sites[i] = fresh[i].agentSite()
	}
	// The table before the site: the SIGTRAP backstop must know a site
	// before an INT3 of ours can be on it.
	if err := agent.AppendSites(s.inj.shared, s.inj.cfg, base, sites); err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.conv.Lock()
	s.sel = append(s.sel, fresh...)
	s.conv.Unlock()
	s.mu.Unlock()
	if s.opts.OnFuncs != nil {
		s.opts.OnFuncs()
	}
	idx := make([]int, len(fresh))
	for i := range idx {
		idx[i] = base + i
	}
	return idx, nil
}

// writeStubs gives each of fresh (the sites of indexes base, base+1...) a
// stub slot, and a relocating one its relocation stub, in a stub region
// near its module, mapping one when those Enable made have no room left.
func (s *Session) writeStubs(fresh []selected, base int) error {
	byMod := map[int][]int{}
	var mods []int
	for i, x := range fresh {
		if _, ok := byMod[x.mod]; !ok {
			mods = append(mods, x.mod)
		}
		byMod[x.mod] = append(byMod[x.mod], i)
	}
	entry := s.inj.addrs.Entry
	for _, m := range mods {
		idx := byMod[m]
		need := uint64(0)
		for _, i := range idx {
			need += agent.StubSize
			fresh[i].keep = s.keepSite(&fresh[i])
			if p := fresh[i].plan; p != nil {
				need += roundUp(relocStubLen(p, fresh[i].keep), agent.StubSize)
			}
		}
		lo, hi := fresh[idx[0]].addr, fresh[idx[len(idx)-1]].addr+5
		rg, err := s.stubRoom(m, need, lo, hi)
		if err != nil {
			return err
		}
		at := rg.addr + rg.used
		code := make([]byte, need)
		slot, reloc := at, at+agent.StubSize*uint64(len(idx))
		for _, i := range idx {
			x := &fresh[i]
			sidx := keepIndex(agent.StubIndex(uint32(base+i), x.capture.spec), x.keep)
			stub, err := agent.StubCode(sidx, slot, entry)
			if err != nil {
				stub, err = agent.StubCode(sidx, slot, rg.addr) // the springboard
			}
			if err != nil {
				return fmt.Errorf("stub for %s: %w", x.name, err)
			}
			copy(code[slot-at:], stub[:])
			x.stub = slot
			if x.plan != nil {
				b, err := relocStub(x.plan, reloc, slot, x.keep)
				if err != nil {
					return fmt.Errorf("stub for %s: %w", x.name, err)
				}
				copy(code[reloc-at:], b)
				x.stub = reloc
				reloc += roundUp(relocStubLen(x.plan, x.keep), agent.StubSize)
			}
			slot += agent.StubSize
		}
		// Bytes nothing executes yet (no site points at them before the
		// batch), written through /proc/PID/mem into the R+X region.
		if err := s.p.WriteMem(at, code); err != nil {
			return err
		}
		rg.used += need
	}
	return nil
}

// stubRoom returns a stub region of module m with need free bytes within
// reach of [lo, hi), mapping a new one if none has room.
func (s *Session) stubRoom(m int, need, lo, hi uint64) (*ctlStubRegion, error) {
	for i := range s.ctl.regions {
		rg := &s.ctl.regions[i]
		// Any module's region within reach: a module loaded and
		// unloaded over and over (dlopen.go) must not use up the
		// owner record's stub regions.
		if rg.size-rg.used >= need && withinReach(rg.addr, rg.addr+rg.size, lo, hi) {
			return rg, nil
		}
	}
	inj := s.inj
	nstubs := 0
	for _, r := range inj.regions {
		if r.what == "stubs" {
			nstubs++
		}
	}
	if nstubs >= agent.MaxStubRegions {
		return nil, fmt.Errorf("cannot add functions of %s: the agent has its %d stub regions already; start a new recording with -F naming them", s.mods[m].Path, agent.MaxStubRegions)
	}
	size := roundUp(max(need+agent.StubSize, ctlStubBytes), pageSize)
	r, err := s.p.HoldRemote()
	if err != nil {
		return nil, fmt.Errorf("map stubs: %w", err)
	}
	defer r.Release()
	// The target's threads run meanwhile and may map the range first:
	// mapNear reads the maps again and tries another.
	addr, err := mapNear(s.p.Pid(), size, lo, hi, func(addr uint64) error {
		// Listed in the owner record before it exists (restore checks
		// each listed mapping before it removes it, orphan.go), and
		// after.
		inj.planned = &remoteRegion{addr, size, "stubs"}
		if err := s.publishOwner(); err != nil {
			inj.planned = nil
			return err
		}
		// R+X at once, as inject maps them (the springboard is written
		// through /proc/PID/mem).
		ret, err := r.SyscallOK("mmap stubs", proc.SysMmap, addr, size, unix.PROT_READ|unix.PROT_EXEC, uint64(unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|mapFixedNoreplace), ^uint64(0), 0)
		inj.planned = nil
		if err == nil && ret != addr {
			_, _ = r.Syscall(proc.SysMunmap, ret, size)
			err = fmt.Errorf("mmap stubs at %#x returned %#x", addr, ret)
		}
		if err != nil {
			_ = s.publishOwner()
		}
		return err
	})
	if errors.Is(err, errNoRange) {
		return nil, fmt.Errorf("no free address range within reach of %s for its stubs", s.mods[m].Path)
	}
	if err != nil {
		return nil, fmt.Errorf("map stubs: %w", err)
	}
	inj.regions = append(inj.regions, remoteRegion{addr, size, "stubs"})
	if err := s.publishOwner(); err != nil {
		return nil, err
	}
	spring := agent.Springboard(inj.addrs.Entry)
	if err := s.p.WriteMem(addr, spring[:]); err != nil {
		return nil, err
	}
	inj.stubs = append(inj.stubs, remoteRegion{addr, size, "stubs"})
	s.ctl.regions = append(s.ctl.regions, ctlStubRegion{mod: m, addr: addr, size: size, used: agent.StubSize})
	return &s.ctl.regions[len(s.ctl.regions)-1], nil
}

// FuncState is one function of the session and whether it is traced now.
type FuncState struct {
	Name   string
	Traced bool
}

// Funcs lists the functions prepared in this session, in the order of
// their index in the recording, and whether each is traced now.
func (s *Session) Funcs() []FuncState {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]FuncState, len(s.sel))
	for i, x := range s.sel {
		out[i] = FuncState{Name: x.name, Traced: !x.off}
	}
	return out
}

// Graph reports whether the session records exits too (graph mode).
func (s *Session) Graph() bool { return s.opts.Graph }

// Changes returns the changes made with Enable and Disable so far.
func (s *Session) Changes() []tracefile.Change {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]tracefile.Change(nil), s.changes...)
}
