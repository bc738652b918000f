package session

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sort"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/livetrace/livetrace/internal/agent"
	"github.com/livetrace/livetrace/internal/proc"
	"github.com/livetrace/livetrace/internal/reloc"
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
	// tids are the target's threads, which chunk headers must name
	// (consume.go); foreign is the consumer's count of records dropped
	// for naming another, already added to the session's corrupt count.
	tids    *tidSet
	foreign uint64
	// cfg is the shared memory's layout (Enable appends sites to it).
	cfg agent.Config
	// code is the agent's code table (codetable.go).
	code agent.CodeTable
	// hooks are the GOT slots pointed at the agent's unwinder hooks
	// (graph mode, see unwind.go); they go back before the agent goes.
	hooks []gotHook
	// rbrk is the INT3 over the loader's r_brk (dlopen.go), 0: none;
	// rbrkPad, 0x100 | the original byte of the padding after it that
	// holds a second `ret` (0: none).
	rbrk, rbrkPad uint64
	// fill is a descriptor of the shared memory, kept until startFill
	// allocates its pages; filled is closed once it has (nil before
	// startFill).
	fill   *os.File
	filled chan struct{}
}

type remoteRegion struct {
	addr, size uint64
	what       string
}

// The default size of the shared event buffer, in chunks of 4096 records
// (64 KiB): 16 MiB for each CPU the target may run on (ChunksPerCPU), at
// most 64 MiB (MaxDefaultChunks). 16 MiB is about 10 ms of one thread
// calling a traced function at full speed; the consumer's scheduling
// hiccups last as long whatever the rate, so the buffer grows with the
// number of threads that can fill it at once, as ftrace's and perf's
// per-CPU buffers do. Beyond 4 CPUs a single consumer cannot keep up
// with every CPU calling at full speed anyway, and the target's memory
// matters more (docs/DESIGN-NOTES.md, "The shared buffer").
const (
	ChunksPerCPU     = 256
	MaxDefaultChunks = 1024
)

// DefaultChunks returns the default buffer size, in chunks, for a target
// that may run on cpus CPUs.
func DefaultChunks(cpus int) int {
	return min(max(cpus, 1)*ChunksPerCPU, MaxDefaultChunks)
}

// targetCPUs returns the number of CPUs pid may run on: its affinity mask
// (a container's cpuset, taskset), or every CPU online when that cannot be
// read.
func targetCPUs(pid int) int {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(pid, &set); err == nil && set.Count() > 0 {
		return set.Count()
	}
	return runtime.NumCPU()
}

const (
	mapFixedNoreplace = 0x100000      // MAP_FIXED_NOREPLACE, Linux 4.17
	madvWipeOnFork    = 18            // MADV_WIPEONFORK, Linux 4.14
	mfdCloexec        = 1             // MFD_CLOEXEC
	mfdAllowSealing   = 2             // MFD_ALLOW_SEALING
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
	// Before the first system call livetrace makes in the target.
	if err := s.checkSeccomp(); err != nil {
		return err
	}
	r, err := s.p.HoldRemote()
	if err != nil {
		return fmt.Errorf("inject agent: %w", err)
	}
	defer func() {
		if rerr := r.Release(); err == nil && rerr != nil {
			err = rerr
		}
	}()
	chunks := s.opts.Chunks
	if chunks == 0 {
		chunks = DefaultChunks(targetCPUs(s.p.Pid()))
	}
	cfg := agent.Config{Chunks: chunks, ChunkRecords: s.opts.ChunkRecords, StringMax: s.stringMax()}
	// The site table is filled in below, once the stubs have addresses;
	// its size is known now.
	cfg.Sites = make([]agent.Site, len(s.sel))
	// Room for the functions Enable may add while attached (ctl.go).
	cfg.SiteCap = min(agent.MaxSites, len(s.sel)+spareSites)
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

	// The agent goes next to the module with the most traced sites (the
	// program itself when none is selected yet, see dlopen.go).
	near := s.mods[0]
	lo, hi := near.Mappings[0].Start, near.Mappings[len(near.Mappings)-1].End
	if len(mods) > 0 {
		first := byMod[mods[0]]
		near, lo, hi = s.mods[mods[0]], s.sel[first[0]].addr, s.sel[first[len(first)-1]].addr+5
	}
	// The shared memory is mapped later, at the end of the region: the
	// owner record names its size from the start, and the first mmap
	// reserves its range (see below).
	inj.sharedSize = uint64(sharedSize)
	s.lap("inject: planned")
	mmap := func(addr, size uint64, prot, flags int, fd int64, what string) error {
		switch what {
		case "stubs":
			// Listed before they exist (the others are at fixed
			// offsets from the control page): restore checks that
			// each mapping is the agent's before it removes it
			// (orphan.go).
			inj.planned = &remoteRegion{addr, size, what}
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
	// Until the SIGTRAP backstop is in, a remote syscall runs at a
	// `syscall` of the vDSO, and a tracer killed by SIGKILL while a thread
	// is borrowed leaves that thread running on with the tracer's
	// registers. So the gadget comes first, after two such calls (see
	// docs/DESIGN-NOTES.md, "A tracer killed with SIGKILL must not strand
	// a borrowed thread"):
	//  1. one mmap of the code, the control page and the private region
	//     (contiguous in agent.ld), RW; the owner record is written into
	//     the control page as soon as it returns;
	//  2. a second mmap puts a fresh R+X mapping over the code's part of
	//     the first, and the blob is written into it through /proc/PID/mem
	//     (which writes what the target cannot, as for the stubs): the
	//     code is never writable in the target, and never made executable
	//     by mprotect, which a process under systemd's
	//     MemoryDenyWriteExecute (a seccomp filter that refuses mprotect
	//     with PROT_EXEC; Debian's redis-server.service sets it) or
	//     prctl(PR_SET_MDWE) is refused;
	// then rt_sigaction installs lt_sigtrap through the gadget itself
	// (safe: a thread left there runs the call, which installs the very
	// handler that rescues it at the int3), and everything else runs
	// through the gadget. lt_sigtrap only chains until lt_priv.shared_ready
	// says the shared memory is there.
	s.lap("inject: unprotected syscalls start")
	//
	// The first mmap also reserves the range of the shared memory, which
	// is mapped over it later (MAP_FIXED, as the code is): the target's
	// threads run meanwhile, and their own mmaps, placed top-down, land
	// next to the modules, where the agent goes too. A range that was
	// free when the maps were read was taken by a SQLite thread's
	// mapping of its WAL index before the shared memory's mmap came
	// (EEXIST). So the whole region is claimed in one call, and that call
	// is tried again, with the maps read again, when the target took its
	// range first.
	_, err = mapNear(s.p.Pid(), inj.size, lo, hi, func(base uint64) error {
		inj.addrs = agent.AddrsAt(base)
		return mmap(base, inj.size, unix.PROT_READ|unix.PROT_WRITE, anon|unix.MAP_NORESERVE, -1, "agent")
	})
	if errors.Is(err, errNoRange) {
		return fmt.Errorf("inject agent: no free address range of %d MiB within reach of %s", inj.size>>20, near.Path)
	}
	if err != nil {
		return err
	}
	a := inj.addrs
	// Listed as the regions restore and remove know (they unmap each on
	// its own, in reverse order); the shared memory's is the reservation
	// until the memfd is mapped over it.
	inj.regions = append(inj.regions[:len(inj.regions)-1],
		remoteRegion{a.Ctl, agent.CtlSize, "agent control page"},
		remoteRegion{a.Base, agent.CodeSize, "agent code"},
		remoteRegion{a.Priv, agent.PrivSize, "agent private region"},
		remoteRegion{a.Shared, uint64(sharedSize), "shared memory"})
	if err := s.publishOwner(); err != nil {
		return err
	}
	// MAP_FIXED replaces what is there: the first mmap's own pages.
	ret, err := r.SyscallOK("mmap agent code", proc.SysMmap, a.Base, agent.CodeSize, unix.PROT_READ|unix.PROT_EXEC, uint64(anon|unix.MAP_FIXED), ^uint64(0), 0)
	if err != nil {
		return fmt.Errorf("inject agent: %w", err)
	}
	if ret != a.Base {
		return fmt.Errorf("inject agent: mmap agent code at %#x returned %#x", a.Base, ret)
	}
	if err := s.p.WriteMem(a.Base, agent.Blob); err != nil {
		return err
	}
	if s.backstop() {
		s.p.SetSyscallGadget(inj.gadget(s.p))
		s.lap("inject: gadget in")
		if err := inj.installBackstop(s.p, r); err != nil {
			s.p.SetSyscallGadget(nil)
			return err
		}
	}
	s.lap("inject: agent and backstop in")
	// The engine's membarrier registration, on the thread held here
	// rather than on one it would hold again (textpoke.RegisterMembarrier).
	if s.membarrier, err = textpoke.RegisterMembarrier(r); err != nil {
		return fmt.Errorf("inject agent: %w", err)
	}
	s.lap("inject: membarrier registered")
	// A forked child must see the control page as zeros: enabled = 0,
	// so it never records into the parent's buffers (docs/DESIGN.md §4).
	// Nothing is enabled before this call. The owner record, on the page
	// after it, is kept: restore finds the agent of a child forked after
	// its tracer died by it.
	if _, err := r.SyscallOK("madvise", proc.SysMadvise, a.Ctl, agent.CtlOwnerOff, madvWipeOnFork); err != nil {
		return fmt.Errorf("inject agent: %w", err)
	}

	// The shared memory: a memfd made inside the target, mapped by both.
	name := append([]byte("livetrace"), 0)
	if err := s.p.WriteMem(a.Ctl, name); err != nil {
		return err
	}
	// Sealable, so that the tracer can seal it against shrinking (a target
	// that truncated it would make the tracer fault on its own mapping).
	fd, err := r.SyscallOK("memfd_create", proc.SysMemfdCreate, a.Ctl, mfdCloexec|mfdAllowSealing)
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
	testHookShared("sized", int(fd))
	// The tracer's copy of the fd is taken, checked and sealed before the
	// target maps it (see takeShared).
	f, err := takeShared(s.p.Pid(), int(fd), int64(sharedSize))
	if err != nil {
		closeFd()
		return fmt.Errorf("inject agent: %w", err)
	}
	defer f.Close()
	testHookShared("taken", int(fd))
	// Over the reservation the first mmap made (MAP_FIXED replaces it).
	ret, err = r.SyscallOK("mmap shared memory", proc.SysMmap, a.Shared, uint64(sharedSize), unix.PROT_READ|unix.PROT_WRITE, uint64(unix.MAP_SHARED|unix.MAP_FIXED), uint64(fd), 0)
	if err == nil && ret != a.Shared {
		err = fmt.Errorf("mmap shared memory at %#x returned %#x", a.Shared, ret)
	}
	if err != nil {
		closeFd()
		return fmt.Errorf("inject agent: %w", err)
	}
	if err := s.publishOwner(); err != nil {
		closeFd()
		return err
	}
	testHookShared("mapped", int(fd))
	// The target's fd is not needed once the memory is mapped.
	closeFd()
	// The target may have put another file at that fd number between
	// pidfd_getfd and its mmap: what it mapped must be our memfd.
	if err := sameFile(s.p.Pid(), a.Shared, f); err != nil {
		return fmt.Errorf("inject agent: %w", err)
	}
	inj.shared, err = unix.Mmap(int(f.Fd()), 0, sharedSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("inject agent: map the shared memory: %w", err)
	}

	s.lap("inject: shared memory mapped")
	// The buffer's pages are allocated once the sites are patched
	// (startFill), so that the agent's first touch of a page is a minor
	// fault, not an allocation and a zeroing.
	if dup, err := unix.Dup(int(f.Fd())); err == nil {
		inj.fill = os.NewFile(uintptr(dup), "livetrace shared memory")
	}

	// Stubs: one 16-byte slot per site, next to its module, jumping to
	// lt_entry directly or through a springboard at the region's start.
	for _, m := range mods {
		idx := byMod[m]
		// A relocating site also gets its relocation stub after the
		// slots: `call slot; displaced instructions; jmp back`.
		relocAt := uint64(agent.StubSize * (len(idx) + 1))
		size := relocAt
		for _, i := range idx {
			s.sel[i].keep = s.keepSite(&s.sel[i])
			if p := s.sel[i].plan; p != nil {
				size += roundUp(relocStubLen(p, s.sel[i].keep), agent.StubSize)
			}
		}
		size = roundUp(size, pageSize)
		lo, hi := s.sel[idx[0]].addr, s.sel[idx[len(idx)-1]].addr+5
		// Mapped R+X at once: the tracer writes the code through
		// /proc/PID/mem, which may write a mapping the target cannot, so
		// the stubs are never writable in the target and need no
		// mprotect (a remote syscall fewer).
		sbase, err := mapNear(s.p.Pid(), size, lo, hi, func(addr uint64) error {
			return mmap(addr, size, unix.PROT_READ|unix.PROT_EXEC, anon, -1, "stubs")
		})
		if errors.Is(err, errNoRange) {
			return fmt.Errorf("inject agent: no free address range within reach of %s for its stubs", s.mods[m].Path)
		}
		if err != nil {
			return err
		}
		code := make([]byte, size)
		spring := agent.Springboard(a.Entry)
		copy(code, spring[:])
		for k, i := range idx {
			at := sbase + uint64(agent.StubSize*(k+1))
			sidx := keepIndex(s.stubIndex(i), s.sel[i].keep)
			stub, err := agent.StubCode(sidx, at, a.Entry)
			if err != nil {
				stub, err = agent.StubCode(sidx, at, sbase)
			}
			if err != nil {
				return fmt.Errorf("inject agent: %w", err)
			}
			copy(code[agent.StubSize*(k+1):], stub[:])
			s.sel[i].stub = at
			if p := s.sel[i].plan; p != nil {
				rs := sbase + relocAt
				b, err := relocStub(p, rs, at, s.sel[i].keep)
				if err != nil {
					return fmt.Errorf("inject agent: stub for %s: %w", s.sel[i].name, err)
				}
				copy(code[relocAt:], b)
				relocAt += roundUp(relocStubLen(p, s.sel[i].keep), agent.StubSize)
				s.sel[i].stub = rs
			}
		}
		if err := s.p.WriteMem(sbase, code); err != nil {
			return err
		}
		inj.stubs = append(inj.stubs, remoteRegion{sbase, size, "stubs"})
	}

	s.lap("inject: stubs")
	for i := range s.sel {
		cfg.Sites[i] = s.sel[i].agentSite()
	}
	// The memfd is new: InitShared need not clear it, which would
	// allocate its pages here rather than in the goroutine above (about
	// 10 ms of the attach for 16 MiB).
	cfg.Zeroed = true
	if err := agent.InitShared(inj.shared, cfg); err != nil {
		return fmt.Errorf("inject agent: %w", err)
	}
	inj.cfg = cfg
	inj.cfg.Sites = nil // the layout stays: SiteCap is at least their number
	// From now on lt_sigtrap may look up sites in the shared memory.
	if err := inj.setSharedReady(s.p, true); err != nil {
		return fmt.Errorf("inject agent: %w", err)
	}
	cons, err := agent.NewConsumer(inj.shared)
	if err != nil {
		return fmt.Errorf("inject agent: %w", err)
	}
	inj.tids = newTIDSet(s.p.Pid(), s.p.Threads())
	cons.SetTIDFilter(inj.tids.accept)
	s.mu.Lock() // renewLease reads it
	s.cons = cons
	s.mu.Unlock()

	if err := s.writeCode(); err != nil {
		return fmt.Errorf("inject agent: %w", err)
	}
	return s.inj.setCtl(s.p, agent.Ctl{Enabled: true, Graph: s.opts.Graph})
}

// agentSite is x's entry of the agent's site table: its original bytes (a
// relocated region's, plan.Orig(), as many as the region covers) and
// whether the stub is jumped to (a region) or called (a NOP site).
func (x *selected) agentSite() agent.Site {
	st := agent.Site{Addr: x.addr, Target: x.stub, Len: uint32(len(x.orig)), Spec: x.capture.spec, Region: x.plan != nil}
	copy(st.Orig[:], x.orig)
	return st
}

// relocCallLen is the length of the `call rel32` that starts a relocation
// stub.
const relocCallLen = 5

// relocStub returns the relocation stub of plan placed at at: `call slot`
// (the site's slot, `mov $idx,%r11d; jmp lt_entry`, which sees the same
// stack as from a NOP site's CALL: [rsp] a return address, [rsp+8] the
// caller's return address), then the displaced instructions relocated, and
// the jump back to the rest of the function. When the function's first
// instruction stays in place (plan.Kept, a push or sub of the stack
// pointer), the stub first undoes it (lea) and runs it again after the
// call. A keep stub (keepregs.go)
// saves the flags and rax..r11 before the call and restores them after;
// lt_entry finds the return slot above them (agent.Keep).
func relocStub(plan *reloc.Plan, at, slot uint64, keep bool) ([]byte, error) {
	var out []byte
	if plan.KeptDelta > 0 {
		out = append(out, undo(plan.KeptDelta)...)
	}
	if keep {
		out = append(out, keepPrologue...)
	}
	call, err := textpoke.Call(at+uint64(len(out)), slot)
	if err != nil {
		return nil, err
	}
	out = append(out, call...)
	if keep {
		out = append(out, keepEpilogue...)
	}
	if plan.KeptDelta > 0 {
		out = append(out, plan.Kept...)
	}
	body, err := plan.Relocate(at + uint64(len(out)))
	if err != nil {
		return nil, err
	}
	return append(out, body...), nil
}

// relocStubLen is the most bytes relocStub returns for plan.
func relocStubLen(plan *reloc.Plan, keep bool) uint64 {
	return relocBodyOff(plan, keep) + uint64(plan.MaxStubLen())
}

// backstop reports whether to install the agent's SIGTRAP handler: in live
// mode only. Stop mode never leaves an INT3 in the text, and it is what a
// process that blocks or ignores SIGTRAP gets (see textpoke.New), or whose
// threads run with a CET shadow stack: the handler emulates a CALL or a
// RET on the stack alone, which the shadow stack would not match.
func (s *Session) backstop() bool {
	if s.opts.Mode == textpoke.ModeStop {
		return false
	}
	// checkSeccomp, the first step of inject, read the threads' status.
	ts := s.trap
	return ts != nil && !ts.Blocked && !ts.Ignored && !ts.ShadowStack
}

// setSharedReady sets or clears lt_priv.shared_ready, which tells
// lt_sigtrap whether the shared memory (its site table) is mapped.
func (inj *injection) setSharedReady(p *proc.Process, ready bool) error {
	var b [8]byte
	if ready {
		b[0] = 1
	}
	return p.WriteMem(inj.addrs.Priv+agent.PrivSharedReadyOff, b[:])
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
	var firstErr error
	unmap := func(rg remoteRegion) {
		if _, err := r.SyscallOK("munmap "+rg.what, proc.SysMunmap, rg.addr, rg.size); err != nil && firstErr == nil {
			firstErr = fmt.Errorf("remove agent: %w", err)
		}
	}
	agentOwn := func(rg remoteRegion) bool {
		return rg.what == "agent code" || rg.what == "agent control page" || rg.what == "agent private region"
	}
	// A handler that stays (see uninstallBackstop) must not look at the
	// shared memory once it is gone.
	for _, rg := range inj.regions {
		if rg.what == "agent private region" {
			_ = inj.setSharedReady(p, false)
		}
	}
	// The shared memory and the stubs first, still through the gadget: a
	// tracer killed meanwhile leaves the borrowed thread to the agent's
	// handler, which gives it its registers back.
	for i := len(inj.regions) - 1; i >= 0; i-- {
		rg := inj.regions[i]
		if agentOwn(rg) || inj.keep && rg.what == "stubs" {
			continue
		}
		unmap(rg)
	}
	// Then through the vDSO: the handler and the gadget go away. These
	// last calls (the SIGTRAP action, the agent's own pages) are the only
	// ones of the teardown a SIGKILL can strand a thread in.
	p.SetSyscallGadget(nil)
	if err := inj.uninstallBackstop(p, r); err != nil && firstErr == nil {
		firstErr = err
	}
	for i := len(inj.regions) - 1; i >= 0; i-- {
		if rg := inj.regions[i]; agentOwn(rg) && !inj.keep {
			unmap(rg)
		}
	}
	if inj.keep && firstErr == nil {
		firstErr = fmt.Errorf("remove agent: a thread was interrupted inside the agent or a stub by a signal handler; its code stays mapped at %#x (the text is restored): `livetrace restore -p %d` removes it once that handler has returned", inj.addrs.Base, p.Pid())
	}
	return firstErr
}

// unmapLocal drops the tracer's mapping of the shared memory.
// startFill allocates the shared memory's pages in the background (about
// 7 ms of CPU for 16 MiB). Filling it through /proc/PID/mem, or with
// MAP_POPULATE, cost 20–70 ms of attach (docs/DESIGN-NOTES.md, "Attach");
// a goroutine started during the injection took a CPU from the injection
// and the patch on a busy machine, so it starts once the sites are
// patched, and at the tracer's own priority.
func (inj *injection) startFill() {
	f := inj.fill
	if f == nil {
		return
	}
	inj.fill = nil
	shared := inj.shared
	done := make(chan struct{})
	inj.filled = done
	go func() {
		defer close(done)
		defer f.Close()
		_ = unix.Fallocate(int(f.Fd()), 0, 0, int64(inj.sharedSize))
		// A page fallocate made is not up to date until first
		// faulted, and the kernel maps only up-to-date pages around a
		// fault: the agent's read of each new chunk's pages
		// (lt_prefault) then faulted once a page, not once in 16. A
		// write fault of the tracer's own mapping brings every page
		// up to date (and maps it here) without changing a byte:
		// 8,000 minor faults of the target's first lap over 32 MiB
		// became 650 (docs/DESIGN-NOTES.md, "Attach"). Linux 5.14 on;
		// an older kernel refuses it and the agent faults as before.
		_ = unix.Madvise(shared, unix.MADV_POPULATE_WRITE)
		// The first read of each page still costs about 5 µs on a
		// VM with shadow page tables, 40 ms for 32 MiB: paid here
		// rather than by the poll loop during its first lap, where
		// it made the longest poll of the first second 11 ms instead
		// of 7 (medians of five alternating runs).
		var sum byte
		page := unix.Getpagesize()
		for i := 0; i < len(shared); i += page {
			sum += shared[i]
		}
		touched.Store(uint32(sum))
	}()
}

// touched keeps the sum of startFill's reads, so that the compiler keeps
// the reads.
var touched atomic.Uint32

func (inj *injection) unmapLocal() {
	if inj.fill != nil {
		inj.fill.Close()
		inj.fill = nil
	}
	if inj.filled != nil {
		<-inj.filled // its populate uses the mapping
	}
	if inj.shared != nil {
		_ = unix.Munmap(inj.shared)
		inj.shared = nil
	}
}

// testHookShared lets tests act at each step of setting up the shared
// memory (the target's fd number of the memfd is fd): "sized" after its
// ftruncate, "taken" once the tracer holds its copy, "mapped" once the
// target has mapped it.
var testHookShared = func(stage string, fd int) {}

// ErrSharedTampered means the file the target handed over as the shared
// memory is not the sealed memfd of the agent's size that livetrace made:
// the target swapped its fd, resized it or sealed it first.
var ErrSharedTampered = errors.New("the target tampered with the shared memory")

// sharedSeals are the seals the shared memfd carries: its size is fixed
// for good, so neither side can make the other fault by truncating it.
const sharedSeals = unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_SEAL

// takeShared takes the shared memfd from fd number fd of the target with
// pidfd_getfd, never by path: opening /proc/PID/fd/N would reopen, as
// root and read-write, whatever the target had put at that number (an
// O_PATH fd of a file it may not even read). The file must be a memfd of
// exactly size bytes, open read-write; it is sealed against shrinking and
// growing before anything maps it.
func takeShared(pid, fd int, size int64) (_ *os.File, err error) {
	f, err := proc.TakeFd(pid, fd)
	if err != nil {
		return nil, fmt.Errorf("take the shared memory: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
		}
	}()
	bad := func(format string, args ...any) error {
		return fmt.Errorf("take the shared memory: %w: %s; is something else in the process playing with livetrace's memfd?", ErrSharedTampered, fmt.Sprintf(format, args...))
	}
	nfd := int(f.Fd())
	if link, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", nfd)); err != nil || !strings.HasPrefix(link, "/memfd:") {
		return nil, bad("fd %d is %q, not a memfd", fd, link)
	}
	if fl, err := unix.FcntlInt(uintptr(nfd), unix.F_GETFL, 0); err != nil || fl&unix.O_ACCMODE != unix.O_RDWR || fl&unix.O_PATH != 0 {
		return nil, bad("fd %d is not open read-write", fd)
	}
	// Only memfds (shmem and hugetlbfs files) know F_GET_SEALS.
	if _, err := unix.FcntlInt(uintptr(nfd), unix.F_GET_SEALS, 0); err != nil {
		return nil, bad("fd %d cannot be sealed: %v", fd, err)
	}
	if _, err := unix.FcntlInt(uintptr(nfd), unix.F_ADD_SEALS, sharedSeals); err != nil {
		return nil, bad("seal fd %d: %v", fd, err)
	}
	seals, err := unix.FcntlInt(uintptr(nfd), unix.F_GET_SEALS, 0)
	if err != nil || seals&sharedSeals != sharedSeals || seals&(unix.F_SEAL_WRITE|unix.F_SEAL_FUTURE_WRITE) != 0 {
		return nil, bad("fd %d has seals %#x", fd, seals)
	}
	// Sealed: the size checked now is the size for good.
	var st unix.Stat_t
	if err := unix.Fstat(nfd, &st); err != nil {
		return nil, fmt.Errorf("take the shared memory: %w", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size != size {
		return nil, bad("fd %d has mode %#o and size %d, want a regular file of %d bytes", fd, st.Mode, st.Size, size)
	}
	return f, nil
}

// sameFile checks that the mapping of pid at addr is of file f (device
// and inode, as /proc/PID/maps shows them).
func sameFile(pid int, addr uint64, f *os.File) error {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return fmt.Errorf("check the shared memory: %w", err)
	}
	maps, err := proc.ReadMaps(pid)
	if err != nil {
		return err
	}
	for _, m := range maps {
		if m.Start != addr {
			continue
		}
		if m.Inode != st.Ino || m.Dev != fmt.Sprintf("%02x:%02x", unix.Major(st.Dev), unix.Minor(st.Dev)) {
			return fmt.Errorf("check the shared memory: %w: the target mapped %s (inode %d) at %#x, not livetrace's memfd (inode %d)", ErrSharedTampered, m.Path, m.Inode, addr, st.Ino)
		}
		return nil
	}
	return fmt.Errorf("check the shared memory: %w: nothing is mapped at %#x", ErrSharedTampered, addr)
}

func roundUp(x, a uint64) uint64 { return (x + a - 1) / a * a }

// withinReach reports whether every byte of [rlo, rhi) is within rel32
// reach of every site in [lo, hi).
func withinReach(rlo, rhi, lo, hi uint64) bool {
	return rhi <= lo+reach && rlo+reach >= hi
}

// maxMapTries bounds the tries of a mapping whose free range the target
// took between the read of its maps and the mmap (EEXIST).
const maxMapTries = 8

// testHookMapNear is called with each range mapNear is about to map.
var testHookMapNear = func(addr, size uint64) {}

// errNoRange is mapNear's error when no free range is within reach.
var errNoRange = errors.New("no free address range within reach")

// mapNear reads the maps of process pid, finds a free range of size bytes
// within rel32 reach of [lo, hi) (findGap) and calls mmap with its address,
// which maps it with MAP_FIXED_NOREPLACE. The target's threads run
// meanwhile: when one of them mapped something in that range first
// (EEXIST), it tries again with the maps read again, at most maxMapTries
// times.
func mapNear(pid int, size, lo, hi uint64, mmap func(addr uint64) error) (uint64, error) {
	for try := 1; ; try++ {
		maps, err := proc.ReadMaps(pid)
		if err != nil {
			return 0, err
		}
		addr, ok := findGap(maps, size, lo, hi)
		if !ok {
			return 0, errNoRange
		}
		testHookMapNear(addr, size)
		err = mmap(addr)
		if err == nil {
			return addr, nil
		}
		if !errors.Is(err, unix.EEXIST) || try == maxMapTries {
			return 0, err
		}
	}
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
// graph mode (docs/DESIGN.md §4, "Detach in graph mode"). Every thread must be
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
			if w := binary.LittleEndian.Uint64(word[:]); w != inj.addrs.Return && w != inj.addrs.ReturnKeep {
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

// uninstallBackstop puts the application's SIGTRAP action back, unless the
// application installed an action of its own meanwhile: then its action
// stays. (The agent's saved action at OldSigtrap goes away with the agent;
// nothing reads it once lt_sigtrap is no longer the handler. An
// application handler that chains to the action it replaced, lt_sigtrap,
// would jump into the unmapped agent: livetrace cannot know it does.)
func (inj *injection) uninstallBackstop(p *proc.Process, r *proc.Remote) error {
	if !inj.backstop {
		return nil
	}
	// rt_sigaction's oldact comes back in the control page's spare bytes.
	stage := inj.addrs.Ctl + agent.CtlSize - agent.SizeofSigaction
	current := func() (agent.Sigaction, error) {
		b := make([]byte, agent.SizeofSigaction)
		if err := p.ReadMem(stage, b); err != nil {
			return agent.Sigaction{}, err
		}
		return agent.DecodeSigaction(b)
	}
	defer p.WriteMem(stage, make([]byte, agent.SizeofSigaction))
	if _, err := r.SyscallOK("rt_sigaction SIGTRAP", proc.SysRtSigaction, uint64(unix.SIGTRAP), 0, stage, 8); err != nil {
		return fmt.Errorf("read the SIGTRAP action: %w", err)
	}
	cur, err := current()
	if err != nil {
		return fmt.Errorf("read the SIGTRAP action: %w", err)
	}
	if cur.Handler != inj.addrs.Sigtrap {
		// The application replaced lt_sigtrap: its action stays.
		inj.backstop = false
		return nil
	}
	if _, err := r.SyscallOK("rt_sigaction SIGTRAP", proc.SysRtSigaction, uint64(unix.SIGTRAP), inj.addrs.OldSigtrap, stage, 8); err != nil {
		return fmt.Errorf("restore the SIGTRAP action: %w", err)
	}
	inj.backstop = false
	// Another thread may have installed its action between the two
	// calls: then the action just replaced is that one, and it goes back.
	if cur, err := current(); err == nil && cur.Handler != inj.addrs.Sigtrap {
		if _, err := r.SyscallOK("rt_sigaction SIGTRAP", proc.SysRtSigaction, uint64(unix.SIGTRAP), stage, 0, 8); err != nil {
			return fmt.Errorf("restore the application's SIGTRAP action: %w", err)
		}
	}
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

// ErrSeccomp means the target's seccomp filter forbids a system call that
// livetrace or its agent must make inside the target.
var ErrSeccomp = proc.ErrSeccomp

// sysUse is one system call livetrace or its agent makes inside the
// target, with the arguments a filter might look at (addresses and fds
// are stand-ins: they are not known before the call).
type sysUse struct {
	name string
	nr   uint64
	args [6]uint64
}

// remoteSyscalls are the system calls made inside the target: the
// tracer's remote syscalls (inject, remove), and the agent's own calls
// (agent.c: lt_claim, lt_remote, lt_sigtrap). Whoever adds a remote
// syscall adds it here, or a seccomp filter can kill the target.
var remoteSyscalls = []sysUse{
	{"mmap", unix.SYS_MMAP, [6]uint64{0, 1 << 20, unix.PROT_READ | unix.PROT_WRITE, unix.MAP_PRIVATE | unix.MAP_ANONYMOUS | mapFixedNoreplace, ^uint64(0), 0}},
	{"mmap", unix.SYS_MMAP, [6]uint64{0, 1 << 20, unix.PROT_READ | unix.PROT_WRITE, unix.MAP_PRIVATE | unix.MAP_ANONYMOUS | unix.MAP_NORESERVE | mapFixedNoreplace, ^uint64(0), 0}},
	{"mmap", unix.SYS_MMAP, [6]uint64{0, 1 << 20, unix.PROT_READ | unix.PROT_WRITE, unix.MAP_SHARED | mapFixedNoreplace, 3, 0}},
	{"madvise", unix.SYS_MADVISE, [6]uint64{0, pageSize, madvWipeOnFork}},
	{"memfd_create", unix.SYS_MEMFD_CREATE, [6]uint64{0, mfdCloexec | mfdAllowSealing}},
	{"ftruncate", unix.SYS_FTRUNCATE, [6]uint64{3, 1 << 20}},
	{"close", unix.SYS_CLOSE, [6]uint64{3}},
	{"mmap", unix.SYS_MMAP, [6]uint64{0, 1 << 20, unix.PROT_READ | unix.PROT_EXEC, unix.MAP_PRIVATE | unix.MAP_ANONYMOUS | unix.MAP_FIXED, ^uint64(0), 0}},
	{"mmap", unix.SYS_MMAP, [6]uint64{0, 1 << 20, unix.PROT_READ | unix.PROT_EXEC, unix.MAP_PRIVATE | unix.MAP_ANONYMOUS | mapFixedNoreplace, ^uint64(0), 0}}, // stubs
	{"munmap", unix.SYS_MUNMAP, [6]uint64{0, pageSize}},
	{"rt_sigaction", unix.SYS_RT_SIGACTION, [6]uint64{uint64(unix.SIGTRAP), 1, 1, 8}},
	{"rt_sigaction", unix.SYS_RT_SIGACTION, [6]uint64{uint64(unix.SIGTRAP), 0, 1, 8}},
	{"rt_sigaction", unix.SYS_RT_SIGACTION, [6]uint64{uint64(unix.SIGTRAP), 1, 0, 8}},
	{"rt_sigprocmask", unix.SYS_RT_SIGPROCMASK, [6]uint64{0, 1, 1, 8}}, // SIG_BLOCK
	{"rt_sigprocmask", unix.SYS_RT_SIGPROCMASK, [6]uint64{2, 1, 0, 8}}, // SIG_SETMASK
	{"rt_sigreturn", unix.SYS_RT_SIGRETURN, [6]uint64{}},
	{"gettid", unix.SYS_GETTID, [6]uint64{}},
	{"getpid", unix.SYS_GETPID, [6]uint64{}},
	{"tgkill", unix.SYS_TGKILL, [6]uint64{1, 1, uint64(unix.SIGTRAP)}},
}

// membarrier commands the engine uses (textpoke.New and its syncs), in
// order: QUERY, REGISTER_PRIVATE_EXPEDITED_SYNC_CORE,
// PRIVATE_EXPEDITED_SYNC_CORE.
var membarrierUses = []sysUse{
	{"membarrier(QUERY)", unix.SYS_MEMBARRIER, [6]uint64{0}},
	{"membarrier(REGISTER_PRIVATE_EXPEDITED_SYNC_CORE)", unix.SYS_MEMBARRIER, [6]uint64{1 << 6}},
	{"membarrier(PRIVATE_EXPEDITED_SYNC_CORE)", unix.SYS_MEMBARRIER, [6]uint64{1 << 5}},
}

// checkSeccomp refuses a target whose seccomp filter would refuse a system
// call livetrace makes inside it. The remote syscalls run in the target,
// under its filter: one it refuses with an errno leaves livetrace with an
// error halfway through an injection, and one it answers with
// SECCOMP_RET_KILL kills the target. Probing is no option (the probe
// itself could kill it), so the filter is read (PTRACE_SECCOMP_GET_FILTER,
// with every thread stopped) and run here on each call livetrace will
// make, before it makes any.
//
//   - Seccomp strict mode: refused.
//   - A filter that refuses any of remoteSyscalls: refused, naming the
//     call.
//   - membarrier refused with an errno, from the first command on (the
//     query) or from the registration on: the engine finds SYNC_CORE
//     unavailable and uses stop mode. Any other refusal of membarrier,
//     or a filter that lets the engine register but not sync: refused.
//   - A filter that cannot be read (no CAP_SYS_ADMIN, a kernel without
//     CONFIG_CHECKPOINT_RESTORE): refused, since what it does is unknown.
//
// A filter that looks at the instruction pointer is run with 0; a thread
// that installs a new filter while traced is not seen.
func (s *Session) checkSeccomp() error {
	pid := s.p.Pid()
	// One read of every thread's status serves this check, the backstop
	// and the engine (textpoke.New): a read costs 0.1-0.25 ms a thread
	// beside busy threads on a VM, and the attach read them four times.
	s.trap = nil
	ts, err := trapStatus(pid)
	if err != nil {
		return fmt.Errorf("trace pid %d: %w", pid, err)
	}
	s.trap = &ts
	strict, filtered := ts.SeccompStrict, ts.SeccompFilter
	if strict {
		return fmt.Errorf("trace pid %d: %w: a thread is in seccomp strict mode, where any system call livetrace made in it would kill it", pid, ErrSeccomp)
	}
	if !filtered {
		return nil
	}
	if err := s.p.StopAll(); err != nil {
		return err
	}
	var sets [][][]unix.SockFilter
	seen := map[string]bool{} // threads mostly share one chain of filters
	var rerr error
	for _, tid := range s.p.Threads() {
		f, err := s.p.SeccompFilters(tid)
		if err != nil {
			rerr = err
			break
		}
		if key := fmt.Sprint(f); !seen[key] {
			seen[key] = true
			sets = append(sets, f)
		}
	}
	s.p.ResumeAll()
	if rerr != nil {
		return fmt.Errorf("trace pid %d: %w: livetrace cannot check which system calls it allows (%v), and one it refuses could kill the process; "+
			"run livetrace with CAP_SYS_ADMIN on a kernel with CONFIG_CHECKPOINT_RESTORE to let it read the filter", pid, ErrSeccomp, rerr)
	}
	refused := func(u sysUse) (uint32, bool) {
		for _, f := range sets {
			if a := proc.SeccompAction(f, u.nr, u.args, 0); !proc.SeccompAllows(a) {
				return a, true
			}
		}
		return 0, false
	}
	for _, u := range remoteSyscalls {
		if u.nr == unix.SYS_RT_SIGACTION && !s.backstop() {
			continue
		}
		if a, no := refused(u); no {
			return fmt.Errorf("trace pid %d: %w: it would %s on %s, which livetrace must make inside the process; allow it in the process's seccomp policy to trace it", pid, ErrSeccomp, proc.SeccompActionName(a), u.name)
		}
	}
	// The agent reads string arguments (/s) with process_vm_readv
	// (agent.c, lt_copy): with a filter that refuses it, the agent is
	// told to read none (args.go, noStrings) and never calls it.
	if a, no := refused(sysUse{"process_vm_readv", unix.SYS_PROCESS_VM_READV, [6]uint64{uint64(pid), 1, 1, 1, 1, 0}}); no {
		s.ctl.noStrings = proc.SeccompActionName(a)
		if err := s.checkStrings(s.sel); err != nil {
			return fmt.Errorf("trace pid %d: %w", pid, err)
		}
	}
	for i, u := range membarrierUses {
		a, no := refused(u)
		if !no {
			continue
		}
		if i < 2 && a&0xffff0000 == proc.SeccompRetErrno {
			return nil // textpoke.New finds no SYNC_CORE: stop mode
		}
		return fmt.Errorf("trace pid %d: %w: it would %s on %s, which livetrace must make inside the process (refusing membarrier with an errno from the query or the registration on is fine: livetrace then uses stop mode); change the process's seccomp policy to trace it", pid, ErrSeccomp, proc.SeccompActionName(a), u.name)
	}
	return nil
}
