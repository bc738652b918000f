package session

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/livetrace/livetrace/internal/agent"
	"github.com/livetrace/livetrace/internal/elfsite"
	"github.com/livetrace/livetrace/internal/proc"
	"github.com/livetrace/livetrace/internal/textpoke"
)

// RestoreResult says what [Restore] did.
type RestoreResult struct {
	Pid   int
	Base  uint64 // where the agent was
	Owner int    // pid of the livetrace that had left it
	// OwnerStart is that livetrace's start time (field 22 of
	// /proc/PID/stat): with Owner, it names the livetrace.
	OwnerStart uint64
	Sites      int  // sites in the agent's table
	Restored   int  // sites given their original bytes back (the others held them already)
	Returns    int  // hijacked return addresses put back
	Hooks      int  // GOT slots put back
	Sigtrap    bool // the application's SIGTRAP action was put back
	Regions    int  // mappings removed
	// Rbrk says the INT3 over the loader's r_brk (dlopen.go) was
	// replaced by its `ret` again.
	Rbrk bool
}

// String says what was done, in one line.
func (r *RestoreResult) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "restored %s in pid %d", plural(r.Restored, "site"), r.Pid)
	if r.Restored != r.Sites {
		fmt.Fprintf(&b, " (%d of %d held their original bytes already)", r.Sites-r.Restored, r.Sites)
	}
	if r.Returns > 0 {
		fmt.Fprintf(&b, ", %s", plural(r.Returns, "hijacked return address"))
	}
	if r.Hooks > 0 {
		fmt.Fprintf(&b, ", %s", plural(r.Hooks, "GOT slot"))
	}
	if r.Rbrk {
		b.WriteString(", the loader's r_brk")
	}
	if r.Sigtrap {
		b.WriteString(", the SIGTRAP action")
	}
	fmt.Fprintf(&b, "; removed agent at %#x (%s) left by livetrace pid %d", r.Base, plural(r.Regions, "mapping"), r.Owner)
	return b.String()
}

func plural(n int, what string) string {
	switch {
	case n == 1:
		return "1 " + what
	case strings.HasSuffix(what, "s"):
		return fmt.Sprint(n, " ", what, "es")
	}
	return fmt.Sprint(n, " ", what, "s")
}

// ErrNoAgent means Restore found no agent in the process.
var ErrNoAgent = errors.New("no livetrace agent")

// maxStubRegion bounds a stub region listed in an owner record: one slot
// per site and the springboard.
const maxStubRegion = (agent.MaxSites + 1) * agent.StubSize

// Restore adopts the orphaned agent in process pid (see orphan.go) and
// undoes it the way a recording's detach does: it turns the agent off,
// writes every site's original bytes back with the batch protocol, puts
// back the unwinder's GOT slots and every hijacked return address with all
// threads stopped, steps threads out of the agent, restores the SIGTRAP
// action, unmaps every mapping the agent's tracer made, and detaches.
//
// Everything read from the target is checked first, and nothing is written
// unless all of it makes sense: each region must be mapped as the tracer
// mapped it, each site must lie in an executable file mapping, hold a
// known original form in the table, and hold now either that form or the
// CALL to its own stub (or an INT3 over either); each GOT slot must lie in
// a file mapping and hold the agent's hook. It refuses when the agent's
// tracer is still running.
func Restore(pid int) (*RestoreResult, error) {
	o, err := FindOrphan(pid)
	if err != nil {
		return nil, err
	}
	if o == nil {
		return nil, fmt.Errorf("%w in pid %d: nothing to restore", ErrNoAgent, pid)
	}
	if o.Alive {
		return nil, o.Err()
	}
	p, err := proc.Attach(pid)
	if err != nil {
		return nil, err
	}
	res, err := adopt(p, o.Base)
	if derr := p.Detach(); derr != nil && err == nil && !errors.Is(derr, proc.ErrExited) {
		err = derr
	}
	return res, err
}

// adoption is what adopt validated.
type adoption struct {
	inj     *injection
	owner   agent.Owner
	sites   []agent.Site
	patches []textpoke.Patch
	priv    bool // the private region is mapped (shadow stacks, saved SIGTRAP action)
	code    bool // the code is in and executable
	rbrk    bool // the owner's r_brk holds its INT3 (dlopen.go)
	rbrkPad bool // the padding after it holds the second `ret`
}

func adopt(p *proc.Process, base uint64) (*RestoreResult, error) {
	pid := p.Pid()
	ad, err := validateOrphan(p, base)
	if err != nil {
		return nil, fmt.Errorf("restore pid %d: %w; nothing was changed", pid, err)
	}
	res := &RestoreResult{Pid: pid, Base: base, Owner: int(ad.owner.Pid), OwnerStart: ad.owner.Start, Sites: len(ad.sites)}
	inj := ad.inj
	// Take the agent over: this process owns it now (a restore that dies
	// leaves it to the next one), and it records nothing more.
	own := ad.owner
	own.Pid, own.Start, own.Lease = uint64(os.Getpid()), selfStart, 0
	if b, err := own.Encode(); err == nil {
		if err := p.WriteMem(inj.addrs.Owner, b); err != nil {
			return nil, fmt.Errorf("restore pid %d: %w", pid, err)
		}
	}
	if err := inj.setCtl(p, agent.Ctl{}); err != nil {
		return nil, fmt.Errorf("restore pid %d: %w", pid, err)
	}
	if ad.code && ad.priv {
		if ours, err := inj.sigtrapIsOurs(p); err != nil {
			return nil, fmt.Errorf("restore pid %d: %w", pid, err)
		} else if ours {
			if err := inj.checkOldSigtrap(p); err != nil {
				return nil, fmt.Errorf("restore pid %d: %w", pid, err)
			}
			inj.backstop = true
			p.SetSyscallGadget(inj.gadget(p))
		}
	}
	res.Sigtrap = inj.backstop
	if ad.owner.Rbrk != 0 {
		// First the loader's `ret`, while the agent's backstop still
		// serves the INT3; a trap taken before the write and reported
		// later has its `ret` emulated by proc.
		p.SetBreakpoint(ad.owner.Rbrk, nil)
		if ad.rbrk {
			if err := p.WriteMem(ad.owner.Rbrk, []byte{opRet}); err != nil {
				return nil, fmt.Errorf("restore pid %d: put back the loader's r_brk: %w", pid, err)
			}
			res.Rbrk = true
		}
		if ad.rbrkPad {
			if err := p.WriteMem(ad.owner.Rbrk+1, []byte{byte(ad.owner.RbrkPad)}); err != nil {
				return nil, fmt.Errorf("restore pid %d: put back the padding after the loader's r_brk: %w", pid, err)
			}
			res.Rbrk = true
		}
	}
	if err := closeMemfds(p); err != nil {
		return nil, fmt.Errorf("restore pid %d: %w", pid, err)
	}
	// The sites, with the protocol of a recording's patch and detach.
	eng, err := textpoke.New(p, textpoke.Options{})
	if err != nil {
		return nil, fmt.Errorf("restore pid %d: %w", pid, err)
	}
	if _, err := eng.Apply(ad.patches); err != nil {
		return nil, fmt.Errorf("restore pid %d: put the sites back: %w", pid, err)
	}
	res.Restored = len(ad.patches)
	// Then as a recording's Close: threads out of the agent, GOT slots and
	// return addresses back, SIGTRAP action back, unmap.
	s := &Session{pid: pid, p: p, inj: inj, eng: eng, opts: Options{Graph: ad.priv}}
	hooks := len(inj.hooks)
	if err := s.quiesce(); err != nil {
		return res, fmt.Errorf("restore pid %d: %w", pid, err)
	}
	res.Hooks = hooks - len(inj.hooks)
	res.Returns = s.restoredReturns
	if err := inj.remove(p); err != nil {
		return res, fmt.Errorf("restore pid %d: %w", pid, err)
	}
	res.Regions = len(inj.regions)
	return res, nil
}

// validateOrphan reads the agent at base and checks all of it against the
// target's mappings (see Restore). It changes nothing.
func validateOrphan(p *proc.Process, base uint64) (*adoption, error) {
	maps, err := proc.ReadMaps(p.Pid())
	if err != nil {
		return nil, err
	}
	a := agent.AddrsAt(base)
	buf := make([]byte, agent.SizeofOwner)
	if err := p.ReadMem(a.Owner, buf); err != nil {
		return nil, fmt.Errorf("read the agent's owner record: %w", err)
	}
	o, err := agent.DecodeOwner(buf)
	if err != nil {
		return nil, fmt.Errorf("read the agent's owner record: %w", err)
	}
	if o.Base != base {
		return nil, fmt.Errorf("the agent's owner record says base %#x, not %#x", o.Base, base)
	}
	ad := &adoption{owner: o, inj: &injection{addrs: a}}
	inj := ad.inj
	anon := func(m proc.Mapping) bool { return m.Path == "" }
	region := func(addr, size uint64, what string, ok func(proc.Mapping) bool) bool {
		if size == 0 || !covered(maps, addr, addr+size, ok) {
			return false
		}
		inj.regions = append(inj.regions, remoteRegion{addr, size, what})
		return true
	}
	// The agent's own regions, in the order inject maps them (remove
	// unmaps them in reverse).
	if !region(a.Ctl, agent.CtlSize, "agent control page", anon) {
		return nil, fmt.Errorf("no agent control page mapped at %#x", a.Ctl)
	}
	// The code is missing, or still writable, if its tracer died while
	// injecting: nothing can have run it then.
	if region(a.Base, agent.CodeSize, "agent code", anon) {
		ad.code = covered(maps, a.Base, a.Base+agent.CodeSize, func(m proc.Mapping) bool { return m.Perms == "r-xp" })
	}
	ad.priv = region(a.Priv, agent.PrivSize, "agent private region", anon)
	var shared bool
	if o.SharedSize != 0 {
		if o.SharedSize%pageSize != 0 || o.SharedSize > 1<<40 {
			return nil, fmt.Errorf("the owner record gives a shared memory of %d bytes", o.SharedSize)
		}
		shared = region(a.Shared, o.SharedSize, "shared memory", func(m proc.Mapping) bool {
			return strings.HasPrefix(m.Path, "/memfd:livetrace") && m.Perms == "rw-s"
		})
		// Or still the anonymous reservation of it that inject's first
		// mmap made, if the tracer died before it mapped the memfd
		// there: no magic in it (zeros), so no site is patched.
		shared = shared || region(a.Shared, o.SharedSize, "shared memory", func(m proc.Mapping) bool {
			return m.Path == "" && m.Perms == "rw-p"
		})
	}
	agentEnd := a.Shared + max(o.SharedSize, pageSize)
	for _, r := range o.Stubs {
		if r.Addr%pageSize != 0 || r.Size%pageSize != 0 || r.Size == 0 || r.Size > roundUp(maxStubRegion, pageSize) || r.End() < r.Addr ||
			r.Addr < agentEnd && r.End() > a.Base {
			return nil, fmt.Errorf("the owner record lists a bad stub region %#x+%#x", r.Addr, r.Size)
		}
		// Listed just before it was mapped: only an anonymous mapping
		// of exactly that range is the agent's, executable and starting
		// with the springboard to this agent, or holding nothing but
		// zeros: the stubs are mapped R+X and written through
		// /proc/PID/mem afterwards (inject), so a tracer that died in
		// between left them empty. (A writable one is an older
		// tracer's, which mapped them RW first.)
		m, ok := mappingAt(maps, r.Addr, r.Size)
		if !ok || m.Start != r.Addr || m.End != r.End() || m.Path != "" {
			continue
		}
		if m.Perms == "r-xp" {
			code := make([]byte, r.Size)
			spring := agent.Springboard(a.Entry)
			if p.ReadMem(r.Addr, code) != nil || !bytes.Equal(code[:agent.StubSize], spring[:]) && !allZero(code) {
				continue
			}
		} else if m.Perms != "rw-p" {
			continue
		}
		if region(r.Addr, r.Size, "stubs", anon) {
			inj.stubs = append(inj.stubs, remoteRegion{r.Addr, r.Size, "stubs"})
		}
	}
	for i, r := range inj.stubs {
		for _, q := range inj.stubs[:i] {
			if r.addr < q.addr+q.size && q.addr < r.addr+r.size {
				return nil, fmt.Errorf("the owner record lists overlapping stub regions at %#x and %#x", q.addr, r.addr)
			}
		}
	}

	// The GOT hooks: slots in a module's data, holding one of this
	// agent's hooks; a slot that holds something else is not ours any
	// more and stays as it is (unhookUnwind).
	for _, h := range o.Hooks {
		m, ok := mappingAt(maps, h.Slot, 8)
		if !ok || h.Slot%8 != 0 || !m.FileBacked() || m.Exec() {
			return nil, fmt.Errorf("GOT hook at %#x: not in a module's data", h.Slot)
		}
		if !isRuntimeHook(a, h.Hook) {
			return nil, fmt.Errorf("GOT hook at %#x: %#x is not one of the agent's hooks", h.Slot, h.Hook)
		}
		if m, ok := mappingAt(maps, h.Orig, 1); !ok || !m.Exec() || !m.FileBacked() {
			return nil, fmt.Errorf("GOT hook at %#x: its original value %#x is not in a module's code", h.Slot, h.Orig)
		}
		inj.hooks = append(inj.hooks, gotHook{addr: h.Slot, orig: h.Orig, hook: h.Hook, what: fmt.Sprintf("GOT slot %#x", h.Slot)})
	}

	if o.Rbrk != 0 {
		// The INT3 over the `ret` of the loader's r_brk: in a module's
		// code, holding the INT3 (a `ret` there is already back).
		// With the padding after it, two bytes.
		n := uint64(1)
		if o.RbrkPad != 0 {
			n = 2
		}
		m, ok := mappingAt(maps, o.Rbrk, n)
		if !ok || !m.Exec() || !m.FileBacked() {
			return nil, fmt.Errorf("the owner record puts the loader's r_brk at %#x, outside any module's code", o.Rbrk)
		}
		b := make([]byte, n)
		if err := p.ReadMem(o.Rbrk, b); err != nil {
			return nil, fmt.Errorf("read the loader's r_brk: %w", err)
		}
		switch b[0] {
		case opInt3:
			ad.rbrk = true
		case opRet:
		default:
			return nil, fmt.Errorf("the loader's r_brk at %#x holds %#x, neither the INT3 livetrace put there nor a ret", o.Rbrk, b[0])
		}
		// The padding after it: the second `ret` livetrace put there,
		// or its original byte back already.
		if o.RbrkPad != 0 {
			if o.RbrkPad>>8 != 1 {
				return nil, fmt.Errorf("the owner record's padding after the loader's r_brk (%#x) is not a byte of its code", o.RbrkPad)
			}
			switch b[1] {
			case opRet:
				ad.rbrkPad = true
			case byte(o.RbrkPad):
			default:
				return nil, fmt.Errorf("the padding after the loader's r_brk at %#x holds %#x, neither the ret livetrace put there nor its original %#x", o.Rbrk+1, b[1], byte(o.RbrkPad))
			}
		}
	}
	if !shared {
		return ad, nil // died before the site table was written: no site is patched
	}
	hdr := make([]byte, agent.SharedHdrPage)
	if err := p.ReadMem(a.Shared, hdr); err != nil {
		return nil, fmt.Errorf("read the agent's shared memory: %w", err)
	}
	if le.Uint32(hdr[agent.SharedHdrMagicOff:]) != agent.Magic {
		return ad, nil // not formatted yet: no site is patched
	}
	end := agent.SiteTableEnd(hdr, o.SharedSize)
	table := make([]byte, end)
	if err := p.ReadMem(a.Shared, table); err != nil {
		return nil, fmt.Errorf("read the agent's site table: %w", err)
	}
	ad.sites, err = agent.SharedSites(table, o.SharedSize)
	if err != nil {
		return nil, err
	}
	// Sites retired with their module (address 0, agent.DropSites) are
	// gone with it, and so are sites at an address nothing maps any more:
	// their module was unloaded after the tracer died (dlopen.go). Either
	// way there is nothing to put back.
	live := ad.sites[:0]
	for _, st := range ad.sites {
		if _, mapped := mappingAt(maps, st.Addr, 1); st.Addr != 0 && mapped {
			live = append(live, st)
		}
	}
	ad.sites = live
	addrs := make([]uint64, len(ad.sites))
	for i, st := range ad.sites {
		addrs[i] = st.Addr
	}
	bytesNow, err := elfsite.ReadSiteBytes(p.Pid(), addrs)
	if err != nil {
		return nil, fmt.Errorf("read the sites: %w", err)
	}
	var bad []string
	for i, st := range ad.sites {
		var pt *textpoke.Patch
		var err error
		if st.Region {
			pt, err = inj.regionPatch(p, maps, st)
		} else {
			pt, err = inj.sitePatch(maps, st, bytesNow[i])
		}
		if err != nil {
			bad = append(bad, err.Error())
			continue
		}
		if pt != nil {
			ad.patches = append(ad.patches, *pt)
		}
	}
	if len(bad) > 0 {
		more := ""
		if len(bad) > 3 {
			more = fmt.Sprintf(" (and %d more)", len(bad)-3)
			bad = bad[:3]
		}
		return nil, fmt.Errorf("%s%s", strings.Join(bad, "; "), more)
	}
	return ad, nil
}

// sitePatch checks one entry of the site table against the text, and
// returns the patch that puts its original bytes back (nil: it holds them).
func (inj *injection) sitePatch(maps []proc.Mapping, st agent.Site, now [5]byte) (*textpoke.Patch, error) {
	if !inCode(maps, st.Addr, 5) {
		return nil, fmt.Errorf("site %#x is not in a module's code", st.Addr)
	}
	orig := [5]byte(st.Orig[:5])
	form := elfsite.Classify(orig)
	if !form.Patchable() {
		return nil, fmt.Errorf("site %#x: the table gives original bytes % x, which are no site form livetrace patches", st.Addr, orig[:])
	}
	if !inj.isStub(st.Target) {
		return nil, fmt.Errorf("site %#x: its stub %#x is not in the agent's stubs", st.Addr, st.Target)
	}
	call, err := textpoke.Call(st.Addr, st.Target)
	if err != nil {
		return nil, fmt.Errorf("site %#x: %w", st.Addr, err)
	}
	// What a site may hold: its original bytes, the NOP5 a sled becomes,
	// the CALL to its stub, or an INT3 over any of them (a batch cut short).
	known := [][]byte{orig[:], call}
	if form == elfsite.FormSled {
		known = append(known, textpoke.NOP5)
	}
	if bytes.Equal(now[:], orig[:]) {
		return nil, nil
	}
	for _, k := range known {
		// The original first byte over our tail: a uprobe placed over
		// it and removed again (the kernel puts the file's byte back).
		if bytes.Equal(now[:], k) || (now[0] == 0xcc || now[0] == orig[0]) && bytes.Equal(now[1:], k[1:]) {
			return &textpoke.Patch{Addr: st.Addr, Old: append([]byte(nil), now[:]...), New: orig[:]}, nil
		}
	}
	return nil, fmt.Errorf("site %#x holds % x, which livetrace did not write (original % x, call % x): another tool patches it", st.Addr, now[:], orig[:], call)
}

// regionPatch checks one relocated region (a function without a NOP,
// whose first st.Len bytes became `jmp stub`) against the text, and returns
// the patch that puts its original bytes back (nil: it holds them).
func (inj *injection) regionPatch(p *proc.Process, maps []proc.Mapping, st agent.Site) (*textpoke.Patch, error) {
	n := uint64(st.Len)
	if !inCode(maps, st.Addr, n) {
		return nil, fmt.Errorf("region %#x is not in a module's code", st.Addr)
	}
	if !inj.isStub(st.Target) {
		return nil, fmt.Errorf("region %#x: its stub %#x is not in the agent's stubs", st.Addr, st.Target)
	}
	orig := st.Orig[:n]
	now := make([]byte, n)
	if err := p.ReadMem(st.Addr, now); err != nil {
		return nil, fmt.Errorf("read region %#x: %w", st.Addr, err)
	}
	jmp, err := textpoke.Jmp(st.Addr, st.Target)
	if err != nil {
		return nil, fmt.Errorf("region %#x: %w", st.Addr, err)
	}
	for len(jmp) < len(orig) {
		jmp = append(jmp, 0xcc)
	}
	if bytes.Equal(now, orig) {
		return nil, nil
	}
	if bytes.Equal(now, jmp) || now[0] == 0xcc && (bytes.Equal(now[1:], jmp[1:]) || bytes.Equal(now[1:], orig[1:])) ||
		now[0] == orig[0] && bytes.Equal(now[1:], jmp[1:]) {
		// The last: the original first byte over our jmp's tail, a
		// uprobe placed over it and removed again.
		n := uint64(maxStubHead)
		if m, ok := mappingAt(maps, st.Target, 1); ok {
			n = min(n, m.End-st.Target) // the last stub of its region may be shorter
		}
		head := make([]byte, n)
		if err := p.ReadMem(st.Target, head); err != nil {
			return nil, fmt.Errorf("read the stub of region %#x: %w", st.Addr, err)
		}
		off, err := stubBodyOff(head)
		if err != nil {
			return nil, fmt.Errorf("the stub of region %#x: %w", st.Addr, err)
		}
		return &textpoke.Patch{Addr: st.Addr, Old: now, New: bytes.Clone(orig), Region: true, Detour: st.Target + off}, nil
	}
	return nil, fmt.Errorf("region %#x holds % x, which livetrace did not write (original % x, jmp % x): another tool patches it", st.Addr, now, orig, jmp)
}

// closeMemfds closes, in the target, any fd of the agent's shared memory:
// a tracer that dies between memfd_create and its close leaves one open.
func closeMemfds(p *proc.Process) error {
	dir := fmt.Sprintf("/proc/%d/fd", p.Pid())
	ents, err := os.ReadDir(dir)
	if err != nil {
		return proc.ProcError(p.Pid(), err)
	}
	var fds []uint64
	for _, e := range ents {
		link, _ := os.Readlink(dir + "/" + e.Name())
		if fd, err := strconv.ParseUint(e.Name(), 10, 31); err == nil && strings.HasPrefix(link, "/memfd:livetrace ") {
			fds = append(fds, fd)
		}
	}
	if len(fds) == 0 {
		return nil
	}
	r, err := p.HoldRemote()
	if err != nil {
		return err
	}
	defer r.Release()
	for _, fd := range fds {
		if _, err := r.SyscallOK("close", proc.SysClose, fd); err != nil {
			return fmt.Errorf("close the agent's memfd: %w", err)
		}
	}
	return nil
}

// isStub reports whether addr is a stub slot (not the springboard) in one
// of the agent's stub regions.
func (inj *injection) isStub(addr uint64) bool {
	for _, r := range inj.stubs {
		if addr >= r.addr+agent.StubSize && addr < r.addr+r.size && (addr-r.addr)%agent.StubSize == 0 {
			return true
		}
	}
	return false
}

// sigtrapIsOurs reads the target's SIGTRAP action (a remote rt_sigaction
// with no new action) and reports whether it is the agent's handler.
func (inj *injection) sigtrapIsOurs(p *proc.Process) (bool, error) {
	r, err := p.HoldRemote()
	if err != nil {
		return false, err
	}
	defer r.Release()
	stage := inj.addrs.Ctl + agent.CtlSize - agent.SizeofSigaction
	if _, err := r.SyscallOK("rt_sigaction SIGTRAP", proc.SysRtSigaction, uint64(unix.SIGTRAP), 0, stage, 8); err != nil {
		return false, fmt.Errorf("read the SIGTRAP action: %w", err)
	}
	b := make([]byte, agent.SizeofSigaction)
	if err := p.ReadMem(stage, b); err != nil {
		return false, err
	}
	_ = p.WriteMem(stage, make([]byte, len(b)))
	sa, err := agent.DecodeSigaction(b)
	return err == nil && sa.Handler == inj.addrs.Sigtrap, err
}

// checkOldSigtrap checks the application's SIGTRAP action the agent saved
// (the target could have changed it): a handler and restorer must lie in
// a module's code. Anything else is replaced with SIG_DFL, which is what
// the application had if it never set one.
func (inj *injection) checkOldSigtrap(p *proc.Process) error {
	b := make([]byte, agent.SizeofSigaction)
	if err := p.ReadMem(inj.addrs.OldSigtrap, b); err != nil {
		return err
	}
	sa, _ := agent.DecodeSigaction(b)
	maps, err := proc.ReadMaps(p.Pid())
	if err != nil {
		return err
	}
	code := func(x uint64) bool {
		m, ok := mappingAt(maps, x, 1)
		return ok && m.Exec() && m.FileBacked()
	}
	ok := sa.Handler <= 1 || code(sa.Handler) && (sa.Flags&0x04000000 == 0 || code(sa.Restorer))
	if ok {
		return nil
	}
	return p.WriteMem(inj.addrs.OldSigtrap, make([]byte, agent.SizeofSigaction))
}

// mappingAt returns the mapping that holds [addr, addr+n).
func mappingAt(maps []proc.Mapping, addr, n uint64) (proc.Mapping, bool) {
	i := sort.Search(len(maps), func(i int) bool { return maps[i].End > addr })
	if i < len(maps) && maps[i].Start <= addr && addr+n <= maps[i].End && addr+n > addr {
		return maps[i], true
	}
	return proc.Mapping{}, false
}

// inCode reports whether [addr, addr+n) lies in one mapping of a module's
// code, mapped private as the loader maps it: livetrace never patches a
// file's code mapped shared (a write there would change the file, which
// the kernel refuses anyway), so a site table that puts a site there lies.
func inCode(maps []proc.Mapping, addr, n uint64) bool {
	m, ok := mappingAt(maps, addr, n)
	return ok && m.Exec() && m.FileBacked() && strings.HasSuffix(m.Perms, "p")
}

// covered reports whether [lo, hi) is wholly mapped by mappings for which
// ok holds.
func covered(maps []proc.Mapping, lo, hi uint64, ok func(proc.Mapping) bool) bool {
	if hi <= lo {
		return false
	}
	i := sort.Search(len(maps), func(i int) bool { return maps[i].End > lo })
	for at := lo; at < hi; i++ {
		if i >= len(maps) || maps[i].Start > at || !ok(maps[i]) {
			return false
		}
		at = maps[i].End
	}
	return true
}

// isRuntimeHook reports whether addr is one of the agent's runtime hooks
// (agent.Addrs.RuntimeHooks).
func isRuntimeHook(a agent.Addrs, addr uint64) bool {
	for _, h := range a.RuntimeHooks() {
		if h.Hook == addr {
			return true
		}
	}
	return false
}

// allZero reports whether b holds only zero bytes.
func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
