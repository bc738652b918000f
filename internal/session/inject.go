package session

import (
	"encoding/binary"
	"fmt"
	"os"
	"sort"

	"golang.org/x/sys/unix"

	"github.com/livetrace/livetrace/internal/agent"
	"github.com/livetrace/livetrace/internal/proc"
	"github.com/livetrace/livetrace/internal/textpoke"
)

// injection is everything the session put into the target: the agent's
// region (code, control page, private region, shared memfd) and one stub
// region per traced module.
type injection struct {
	addrs   agent.Addrs
	size    uint64 // of the whole agent region
	shared  []byte // the tracer's own mapping of the memfd
	regions []remoteRegion
	stubs   []remoteRegion // code the target may execute: stubs
	keep    bool           // a thread may still be inside the agent: leave it mapped
	// sharedSize is the size of the shared memory mapping, set just
	// before it is made (for the owner record).
	sharedSize uint64
	// planned is a stub region about to be mapped (for the owner record).
	planned *remoteRegion
	// backstop says our SIGTRAP handler is installed.
	backstop bool
	// hooks are the GOT slots pointed at the agent's unwinder hooks
	// (graph mode, see unwind.go); they go back before the agent goes.
	hooks []gotHook
}

type remoteRegion struct {
	addr, size uint64
	what       string
}

// DefaultChunks is the default size of the shared event buffer, in chunks
// of 4096 records (64 KiB): 16 MiB, about 10 ms of one thread calling a
// traced function at full speed, enough to ride out the consumer's
// scheduling hiccups.
const DefaultChunks = 256

const (
	mapFixedNoreplace = 0x100000 // MAP_FIXED_NOREPLACE, Linux 4.17
	madvWipeOnFork    = 18       // MADV_WIPEONFORK, Linux 4.14
	mfdCloexec        = 1
	reach             = 1<<31 - 1<<20 // rel32 reach, less a safety margin
	pageSize          = 4096
)

// inject maps the agent into the target, next to the traced code, and one
// stub region next to each traced module; it formats the shared memory and
// enables recording. Nothing in the target points at any of it until the
// sites are patched.
func (s *Session) inject() (err error) {
	inj := &injection{}
	s.inj = inj
	r, err := s.p.HoldRemote()
	if err != nil {
		return fmt.Errorf("inject agent: %w", err)
	}
	defer func() {
		if rerr := r.Release(); err == nil && rerr != nil {
			err = rerr
		}
	}()
	maps, err := proc.ReadMaps(s.p.Pid())
	if err != nil {
		return err
	}
	chunks := s.opts.Chunks
	if chunks == 0 {
		chunks = DefaultChunks
	}
	cfg := agent.Config{Chunks: chunks, ChunkRecords: s.opts.ChunkRecords}
	// The site table is filled in below, once the stubs have addresses;
	// its size is known now.
	cfg.Sites = make([]agent.Site, len(s.sel))
	for i := range cfg.Sites {
		cfg.Sites[i].Addr = uint64(i + 1)
	}
	sharedSize := agent.SharedSize(cfg)
	if sharedSize == 0 {
		return fmt.Errorf("inject agent: %w", agent.InitShared(nil, cfg))
	}
	inj.size = agent.RegionSize(sharedSize)

	// Group the selected sites by module.
	byMod := map[int][]int{}
	for i, x := range s.sel {
		byMod[x.mod] = append(byMod[x.mod], i)
	}
	mods := make([]int, 0, len(byMod))
	for m := range byMod {
		mods = append(mods, m)
	}
	sort.Slice(mods, func(i, j int) bool { return len(byMod[mods[i]]) > len(byMod[mods[j]]) })

	// The agent goes next to the module with the most traced sites.
	first := byMod[mods[0]]
	base, ok := findGap(maps, inj.size, s.sel[first[0]].addr, s.sel[first[len(first)-1]].addr+5)
	if !ok {
		return fmt.Errorf("inject agent: no free address range of %d MiB within reach of %s", inj.size>>20, s.mods[mods[0]].Path)
	}
	inj.addrs = agent.AddrsAt(base)
	a := inj.addrs
	s.lap("inject: planned")
	mmap := func(addr, size uint64, prot, flags int, fd int64, what string) error {
		switch what {
		case "shared memory", "stubs":
			// Listed before they exist (the others are at fixed
			// offsets from the control page): restore checks that
			// each mapping is the agent's before it removes it
			// (orphan.go).
			if what == "shared memory" {
				inj.sharedSize = size
			} else {
				inj.planned = &remoteRegion{addr, size, what}
			}
			if err := s.publishOwner(); err != nil {
				return err
			}
		}
		ret, err := r.SyscallOK("mmap "+what, proc.SysMmap, addr, size, uint64(prot), uint64(flags|mapFixedNoreplace), uint64(fd), 0)
		inj.planned = nil
		if err != nil {
			return fmt.Errorf("inject agent: %w", err)
		}
		if ret != addr {
			// A kernel without MAP_FIXED_NOREPLACE treats it as a hint.
			_, _ = r.Syscall(proc.SysMunmap, ret, size)
			return fmt.Errorf("inject agent: mmap %s at %#x returned %#x", what, addr, ret)
		}
		inj.regions = append(inj.regions, remoteRegion{addr, size, what})
		// Every mapping is listed in the owner record at once, so that
		// `livetrace restore` can remove it if this tracer dies.
		return s.publishOwner()
	}
	anon := unix.MAP_PRIVATE | unix.MAP_ANONYMOUS
	// The control page first: from then on the owner record in it lists
	// every mapping that follows (orphan.go).
	if err := mmap(a.Ctl, agent.CtlSize, unix.PROT_READ|unix.PROT_WRITE, anon, -1, "agent control page"); err != nil {
		return err
	}
	// A forked child must see the control page as zeros: enabled = 0,
	// so it never records into the parent's buffers (DESIGN.md §4).
	if _, err := r.SyscallOK("madvise", proc.SysMadvise, a.Ctl, agent.CtlSize, madvWipeOnFork); err != nil {
		return fmt.Errorf("inject agent: %w", err)
	}
	if err := mmap(a.Base, agent.CodeSize, unix.PROT_READ|unix.PROT_WRITE, anon, -1, "agent code"); err != nil {
		return err
	}
	if err := mmap(a.Priv, agent.PrivSize, unix.PROT_READ|unix.PROT_WRITE, anon|unix.MAP_NORESERVE, -1, "agent private region"); err != nil {
		return err
	}

	// The shared memory: a memfd made inside the target, mapped by both.
	name := append([]byte("livetrace"), 0)
	if err := s.p.WriteMem(a.Ctl, name); err != nil {
		return err
	}
	fd, err := r.SyscallOK("memfd_create", proc.SysMemfdCreate, a.Ctl, mfdCloexec)
	if err != nil {
		return fmt.Errorf("inject agent: %w", err)
	}
	if err := s.p.WriteMem(a.Ctl, make([]byte, len(name))); err != nil {
		return err
	}
	closeFd := func() {
		_, _ = r.Syscall(proc.SysClose, fd)
	}
	if _, err := r.SyscallOK("ftruncate", proc.SysFtruncate, fd, uint64(sharedSize)); err != nil {
		closeFd()
		return fmt.Errorf("inject agent: %w", err)
	}
	if err := mmap(a.Shared, uint64(sharedSize), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED, int64(fd), "shared memory"); err != nil {
		closeFd()
		return err
	}
	f, err := os.OpenFile(fmt.Sprintf("/proc/%d/fd/%d", s.p.Pid(), fd), os.O_RDWR, 0)
	if err != nil {
		closeFd()
		return fmt.Errorf("inject agent: open the shared memory: %w", err)
	}
	inj.shared, err = unix.Mmap(int(f.Fd()), 0, sharedSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	f.Close()
	// The target's fd is not needed once the memory is mapped.
	closeFd()
	if err != nil {
		return fmt.Errorf("inject agent: map the shared memory: %w", err)
	}

	// The code, W^X: written while RW, then R+X. Then the SIGTRAP
	// backstop, and from then on remote syscalls run at lt_remote: if the
	// tracer dies while a thread is borrowed, the handler gives the thread
	// its registers back. This comes as early as it can: the syscalls
	// before it (a dozen, a few milliseconds) are the only ones a tracer
	// killed by SIGKILL can leave a thread stranded in.
	if err := s.p.WriteMem(a.Base, agent.Blob); err != nil {
		return err
	}
	if _, err := r.SyscallOK("mprotect agent", proc.SysMprotect, a.Base, agent.CodeSize, unix.PROT_READ|unix.PROT_EXEC); err != nil {
		return fmt.Errorf("inject agent: %w", err)
	}
	if s.backstop() {
		if err := inj.installBackstop(s.p, r); err != nil {
			return err
		}
		s.p.SetSyscallGadget(inj.gadget(s.p))
	}
	s.lap("inject: agent and backstop in")
	// Fill the target's page tables for the buffer now, rather than let
	// each first touch fault while tracing: a write through
	// /proc/PID/mem faults the pages in for the target (and zeroes them).
	if err := s.p.WriteMem(a.Shared, make([]byte, sharedSize)); err != nil {
		return err
	}

	// Stubs: one 16-byte slot per site, next to its module, jumping to
	// lt_entry directly or through a springboard at the region's start.
	for _, m := range mods {
		idx := byMod[m]
		size := roundUp(uint64(agent.StubSize*(len(idx)+1)), pageSize)
		lo, hi := s.sel[idx[0]].addr, s.sel[idx[len(idx)-1]].addr+5
		var sbase uint64
		maps, err = proc.ReadMaps(s.p.Pid())
		if err != nil {
			return err
		}
		sbase, ok = findGap(maps, size, lo, hi)
		if !ok {
			return fmt.Errorf("inject agent: no free address range within reach of %s for its stubs", s.mods[m].Path)
		}
		if err := mmap(sbase, size, unix.PROT_READ|unix.PROT_WRITE, anon, -1, "stubs"); err != nil {
			return err
		}
		code := make([]byte, size)
		spring := agent.Springboard(a.Entry)
		copy(code, spring[:])
		for k, i := range idx {
			at := sbase + uint64(agent.StubSize*(k+1))
			stub, err := agent.StubCode(uint32(i), at, a.Entry)
			if err != nil {
				stub, err = agent.StubCode(uint32(i), at, sbase)
			}
			if err != nil {
				return fmt.Errorf("inject agent: %w", err)
			}
			copy(code[agent.StubSize*(k+1):], stub[:])
			s.sel[i].stub = at
		}
		if err := s.p.WriteMem(sbase, code); err != nil {
			return err
		}
		if _, err := r.SyscallOK("mprotect stubs", proc.SysMprotect, sbase, size, unix.PROT_READ|unix.PROT_EXEC); err != nil {
			return fmt.Errorf("inject agent: %w", err)
		}
		inj.stubs = append(inj.stubs, remoteRegion{sbase, size, "stubs"})
	}

	for i, x := range s.sel {
		cfg.Sites[i] = agent.Site{Addr: x.addr, Target: x.stub}
		copy(cfg.Sites[i].Orig[:], x.orig)
	}
	if err := agent.InitShared(inj.shared, cfg); err != nil {
		return fmt.Errorf("inject agent: %w", err)
	}
	cons, err := agent.NewConsumer(inj.shared)
	if err != nil {
		return fmt.Errorf("inject agent: %w", err)
	}
	s.cons = cons

	return s.inj.setCtl(s.p, agent.Ctl{Enabled: true, Graph: s.opts.Graph})
}

// backstop reports whether to install the agent's SIGTRAP handler: in live
// mode only. Stop mode never leaves an INT3 in the text, and it is what a
// process that blocks or ignores SIGTRAP gets (see textpoke.New).
func (s *Session) backstop() bool {
	if s.opts.Mode == textpoke.ModeStop {
		return false
	}
	blocked, ignored, err := proc.SignalMasks(s.pid, unix.SIGTRAP)
	return err == nil && !blocked && !ignored
}

func (inj *injection) setCtl(p *proc.Process, c agent.Ctl) error {
	return p.WriteMem(inj.addrs.Ctl, c.Encode())
}

// contains reports whether pc is in the agent's code or in a stub region,
// and returns that range.
func (inj *injection) contains(pc uint64) (lo, hi uint64, ok bool) {
	if pc >= inj.addrs.Base && pc < inj.addrs.Base+agent.CodeSize {
		return inj.addrs.Base, inj.addrs.Base + agent.CodeSize, true
	}
	for _, r := range inj.stubs {
		if pc >= r.addr && pc < r.addr+r.size {
			return r.addr, r.addr + r.size, true
		}
	}
	return 0, 0, false
}

// busy reports whether some thread slot says its thread is inside the
// agent (interrupted there by a signal handler, since every thread's own
// program counter is outside by now).
func (inj *injection) busy(p *proc.Process) bool {
	slots, err := inj.readThreads(p)
	if err != nil {
		return false
	}
	for _, slot := range slots {
		if slot.InUse() && slot.Busy != 0 {
			return true
		}
	}
	return false
}

// remove unmaps everything inject mapped (unless a thread may still be
// inside the agent: then the code and control page stay, and are
// reported).
func (inj *injection) remove(p *proc.Process) error {
	r, err := p.HoldRemote()
	if err != nil {
		return fmt.Errorf("remove agent: %w", err)
	}
	defer r.Release()
	// Tear down through the vDSO again: the gadget and its handler go away.
	p.SetSyscallGadget(nil)
	var firstErr error
	if err := inj.uninstallBackstop(p, r); err != nil {
		firstErr = err
	}
	for i := len(inj.regions) - 1; i >= 0; i-- {
		rg := inj.regions[i]
		if inj.keep && (rg.what == "agent code" || rg.what == "agent control page" || rg.what == "agent private region" || rg.what == "stubs") {
			continue
		}
		if _, err := r.SyscallOK("munmap "+rg.what, proc.SysMunmap, rg.addr, rg.size); err != nil && firstErr == nil {
			firstErr = fmt.Errorf("remove agent: %w", err)
		}
	}
	if inj.keep && firstErr == nil {
		firstErr = fmt.Errorf("remove agent: a thread was interrupted inside the agent by a signal handler; its code stays mapped at %#x", inj.addrs.Base)
	}
	return firstErr
}

// unmapLocal drops the tracer's mapping of the shared memory.
func (inj *injection) unmapLocal() {
	if inj.shared != nil {
		_ = unix.Munmap(inj.shared)
		inj.shared = nil
	}
}

func roundUp(x, a uint64) uint64 { return (x + a - 1) / a * a }

// withinReach reports whether every byte of [rlo, rhi) is within rel32
// reach of every site in [lo, hi).
func withinReach(rlo, rhi, lo, hi uint64) bool {
	return rhi <= lo+reach && rlo+reach >= hi
}

// findGap finds a page-aligned free range of size bytes, as close as
// possible to [lo, hi), and within rel32 reach of all of it. maps are the
// target's mappings; the range keeps a page of distance from them.
func findGap(maps []proc.Mapping, size, lo, hi uint64) (uint64, bool) {
	const minAddr = 1 << 16
	const maxAddr = 0x7ffffffff000
	type gap struct{ start, end uint64 }
	var gaps []gap
	prev := uint64(minAddr)
	for _, m := range maps {
		if m.Start > prev {
			gaps = append(gaps, gap{prev, m.Start})
		}
		if m.End > prev {
			prev = m.End
		}
	}
	if prev < maxAddr {
		gaps = append(gaps, gap{prev, maxAddr})
	}
	best, bestDist := uint64(0), uint64(1<<63)
	for _, g := range gaps {
		start := roundUp(g.start+pageSize, pageSize)
		if g.end < pageSize || start+size > g.end-pageSize {
			continue
		}
		last := (g.end - pageSize - size) &^ (pageSize - 1)
		// The candidate closest to [lo, hi) in this gap.
		cand := start
		if start < lo {
			cand = min(last, (lo-size)&^(pageSize-1))
			if cand < start {
				cand = start
			}
		}
		if !withinReach(cand, cand+size, lo, hi) {
			continue
		}
		var dist uint64
		if cand >= hi {
			dist = cand - hi
		} else {
			dist = lo - min(lo, cand+size)
		}
		if dist < bestDist {
			best, bestDist = cand, dist
		}
	}
	return best, best != 0
}

// readThreads reads the agent's whole thread table.
func (inj *injection) readThreads(p *proc.Process) ([]agent.ThreadSlot, error) {
	buf := make([]byte, agent.MaxThreads*agent.SizeofThread)
	if err := p.ReadMem(inj.addrs.ThreadSlotAddr(0), buf); err != nil {
		return nil, err
	}
	slots := make([]agent.ThreadSlot, agent.MaxThreads)
	for i := range slots {
		slots[i], _ = agent.DecodeThreadSlot(buf[i*agent.SizeofThread:])
	}
	return slots, nil
}

// restoreReturns puts back every return address the agent hijacked in
// graph mode (DESIGN.md §4, "Detach in graph mode"). Every thread must be
// stopped, and none inside the agent. Each thread's shadow stack is walked
// newest to oldest; a stack slot that still holds lt_return gets its
// original return address back. A slot that holds something else belongs
// to a frame that already returned (or was abandoned by longjmp): it is
// left alone. It returns how many return addresses it restored.
func (inj *injection) restoreReturns(p *proc.Process) (int, error) {
	slots, err := inj.readThreads(p)
	if err != nil {
		return 0, err
	}
	restored := 0
	buf := make([]byte, agent.ShadowDepth*agent.SizeofShadow)
	var word [8]byte
	for i, slot := range slots {
		n := slot.Frames()
		if !slot.InUse() || n == 0 {
			continue
		}
		if err := p.ReadMem(inj.addrs.ShadowStackAddr(i), buf[:n*agent.SizeofShadow]); err != nil {
			return restored, err
		}
		entries := agent.DecodeShadowStack(buf, n)
		for j := len(entries) - 1; j >= 0; j-- {
			e := entries[j]
			if p.ReadMem(e.Slot, word[:]) != nil {
				continue // the stack is gone (a stale frame)
			}
			if binary.LittleEndian.Uint64(word[:]) != inj.addrs.Return {
				continue
			}
			binary.LittleEndian.PutUint64(word[:], e.Orig)
			if err := p.WriteMem(e.Slot, word[:]); err != nil {
				return restored, err
			}
			restored++
		}
	}
	return restored, nil
}

// installBackstop installs the agent's SIGTRAP handler, which emulates our
// sites if the tracer dies with an INT3 still in the text, and saves the
// previous action in the agent's private region for chaining and for
// uninstallBackstop.
func (inj *injection) installBackstop(p *proc.Process, r *proc.Remote) error {
	act := inj.addrs.SigtrapAction().Encode()
	// The new action is staged in the control page's spare bytes.
	stage := inj.addrs.Ctl + agent.CtlSize - uint64(len(act))
	if err := p.WriteMem(stage, act); err != nil {
		return err
	}
	_, err := r.SyscallOK("rt_sigaction SIGTRAP", proc.SysRtSigaction, uint64(unix.SIGTRAP), stage, inj.addrs.OldSigtrap, 8)
	_ = p.WriteMem(stage, make([]byte, len(act)))
	if err != nil {
		return fmt.Errorf("install SIGTRAP backstop: %w", err)
	}
	inj.backstop = true
	return nil
}

// uninstallBackstop puts the application's SIGTRAP action back.
func (inj *injection) uninstallBackstop(p *proc.Process, r *proc.Remote) error {
	if !inj.backstop {
		return nil
	}
	_, err := r.SyscallOK("rt_sigaction SIGTRAP", proc.SysRtSigaction, uint64(unix.SIGTRAP), inj.addrs.OldSigtrap, 0, 8)
	if err != nil {
		return fmt.Errorf("restore the SIGTRAP action: %w", err)
	}
	inj.backstop = false
	return nil
}

// gadget returns the proc.Gadget that runs remote syscalls at lt_remote and
// keeps the borrowed thread's registers where lt_sigtrap finds them.
func (inj *injection) gadget(p *proc.Process) *proc.Gadget {
	save := inj.addrs.RemoteSave
	return &proc.Gadget{
		Insn: inj.addrs.Remote,
		Save: func(tid int, regs *unix.PtraceRegs) error {
			// The registers first, then the tid that validates them.
			b := make([]byte, agent.SizeofRemoteSave-agent.RemoteSaveRegsOff)
			for i, v := range userRegs(regs) {
				binary.LittleEndian.PutUint64(b[8*i:], v)
			}
			if err := p.WriteMem(save+agent.RemoteSaveRegsOff, b); err != nil {
				return err
			}
			return p.WriteMem(save+agent.RemoteSaveTidOff, binary.LittleEndian.AppendUint64(nil, uint64(tid)))
		},
		Clear: func(int) error {
			return p.WriteMem(save+agent.RemoteSaveTidOff, make([]byte, 8))
		},
	}
}

// userRegs lists regs in the order of the kernel's user_regs_struct.
func userRegs(r *unix.PtraceRegs) [27]uint64 {
	return [27]uint64{r.R15, r.R14, r.R13, r.R12, r.Rbp, r.Rbx, r.R11, r.R10, r.R9, r.R8,
		r.Rax, r.Rcx, r.Rdx, r.Rsi, r.Rdi, r.Orig_rax, r.Rip, r.Cs, r.Eflags, r.Rsp,
		r.Ss, r.Fs_base, r.Gs_base, r.Ds, r.Es, r.Fs, r.Gs}
}
