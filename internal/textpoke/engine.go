// Package textpoke rewrites instructions in the text of a running,
// multi-threaded process: the kernel's breakpoint protocol for
// cross-modifying code (arch/x86/kernel/alternative.c,
// smp_text_poke_batch_finish), done from outside the process through ptrace
// and /proc/PID/mem.
//
// A write through /proc/PID/mem is not atomic: a thread executing a 5-byte
// site while it is rewritten may fetch a mix of old and new bytes. The live
// protocol makes every intermediate state decodable:
//
//  1. verify the old bytes of every site of the batch;
//  2. write INT3 into byte 0 of every site, then sync every core: from now
//     on a thread reaching a site traps instead of decoding its tail;
//  3. write bytes 1..4 (the new tail), then sync: no core can still hold
//     the old tail in its pipeline;
//  4. write the new byte 0, then sync: the new instruction is whole
//     everywhere.
//
// Each write is preceded by a read of the same text: a site whose bytes are
// no longer what the engine last wrote (or verified) there was changed by
// another tool, most often a kernel uprobe, and is left alone from then on,
// never overwritten (uprobe.go). The reads and writes of a large batch
// are shared by two threads (partner); the INT3 hits are the ptrace
// thread's alone.
//
// "Sync" is membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE) run inside
// the target: it makes every running thread of the target execute a
// core-serializing instruction (Intel SDM vol. 3, 8.1.3 "Handling
// Self- and Cross-Modifying Code"). A batch of any size costs three syncs.
//
// A thread that hits one of our INT3s stops with SIGTRAP; the engine
// emulates the site's NEW instruction for it (a CALL pushes the return
// address and jumps; a NOP skips) and suppresses the signal, as the kernel's
// smp_text_poke_int3_handler does, so that no call is missed while tracing
// is turned on.
//
// Stop mode is the fallback: stop every thread, write the final bytes, sync,
// resume. It is used for sleds (five 1-byte NOPs, in which a thread can
// stop between instructions), when a thread blocks or ignores SIGTRAP, when
// membarrier is unavailable, or on request.
//
// A region (Patch.Region: the first instructions of a function without a
// NOP, replaced by `jmp stub`, package reloc) takes the same three passes,
// with one more step after the first sync (the kernel's optprobe, done
// from outside): with INT3 on every region's first byte, no thread can
// enter a region any more (package reloc proves that no branch lands
// inside one), so a thread that is not inside it now never will be. Each
// thread is then stopped in turn, alone, while the others run: one
// stopped strictly inside a region is single-stepped out (the displaced
// instructions hold no call, syscall or loop), and a signal frame on its
// stack that would resume inside one refuses the batch, which takes its
// INT3s out again. A thread that traps on a region's first byte meanwhile
// continues in the stub (the jmp, emulated) or, when the original bytes
// go back, in the relocated copy of them (Patch.Detour). In stop mode the
// same check runs with every thread stopped.
package textpoke

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/livetrace/livetrace/internal/gcpause"
	"github.com/livetrace/livetrace/internal/hugemem"
	"github.com/livetrace/livetrace/internal/proc"
	"golang.org/x/sys/unix"
)

// Mode selects the protocol.
type Mode int

const (
	// ModeAuto uses live mode when it is safe, else stop mode.
	ModeAuto Mode = iota
	// ModeLive is the batch INT3 protocol; threads keep running.
	ModeLive
	// ModeStop stops every thread while the text is written.
	ModeStop
)

func (m Mode) String() string {
	switch m {
	case ModeLive:
		return "live"
	case ModeStop:
		return "stop"
	}
	return "auto"
}

// membarrier(2) commands, include/uapi/linux/membarrier.h.
const (
	membarrierSyncCore     = 1 << 5 // MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE
	membarrierRegisterSync = 1 << 6 // MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE
)

// Options configure an Engine.
type Options struct {
	// Mode is the protocol to use; ModeAuto picks one (see New).
	Mode Mode
	// Arch is the instruction set; nil means AMD64.
	Arch Arch
	// Membarrier is the result of [RegisterMembarrier] when the caller
	// already ran it on a thread it held (MembarrierUnknown: New runs
	// it, holding a thread of its own).
	Membarrier MembarrierState
	// TrapStatus is the status of the threads when the caller has just
	// read it ([proc.ReadTrapStatus]); nil: New reads it.
	TrapStatus *proc.TrapStatus
}

// MembarrierState says whether the target was registered for
// MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE.
type MembarrierState uint8

// The membarrier states.
const (
	MembarrierUnknown     MembarrierState = iota // not tried yet
	MembarrierRegistered                         // registered: live mode can sync
	MembarrierUnavailable                        // the kernel has no SYNC_CORE
)

// Patch is one site to rewrite: the bytes expected there now, and the bytes
// to write.
type Patch struct {
	Addr uint64
	Old  []byte
	New  []byte
	// Region marks the bytes of a relocating site (package reloc): any
	// length from the site length to MaxRegionLen. Either New or Old
	// starts with `jmp rel32` to the site's stub; the rest are the
	// function's first instructions.
	Region bool
	// Detour, for a region, is the address of the relocated copy of the
	// region's original instructions (which jumps back to the end of the
	// region): a thread that reaches the region's first byte while a
	// batch puts the original bytes back continues there. A region that
	// gets its jmp needs none (the trap handler emulates the jmp); one
	// without a jmp and without a Detour is written in stop mode.
	Detour uint64

	// emul, when set, is the instruction the trap handler emulates
	// instead of New: New keeps a foreign INT3 in byte 0 (RestoreAll),
	// or New is a region's original bytes (the jmp to Detour).
	emul []byte
}

// size is the number of bytes the patch covers: the site length, or more
// for a region (a relocating site, see Region).
func (pt *Patch) size() uint64 {
	if pt.Old != nil {
		return uint64(len(pt.Old))
	}
	return uint64(len(pt.New))
}

// MaxRegionLen is the longest region a patch may cover: a relocating
// site's displaced instructions (package reloc).
const MaxRegionLen = 32

// insn is the instruction a thread that traps on the site runs.
func (pt *Patch) insn() []byte {
	if pt.emul != nil {
		return pt.emul
	}
	return pt.New
}

// Stats describe one batch, or the sum of several.
type Stats struct {
	Mode     Mode
	Sites    int           // sites written
	Syncs    int           // membarrier calls in the target
	Writes   int           // writes through /proc/PID/mem
	Traps    int           // INT3 hits emulated during the batch
	Held     int           // sites left alone: another tool changed them (see Engine.Held)
	Duration time.Duration // wall time of the batch
	Paused   time.Duration // stop mode: how long every thread was stopped
	Shared   bool          // a second thread wrote half of each pass (partner)
	Lent     int           // runs of the verify pass the ptrace thread took (spread)
	// Regions: threads found strictly inside a relocated region and
	// single-stepped out of it, and how long the check of every thread
	// took (live mode: each thread stopped alone).
	SteppedOut  int
	RegionCheck time.Duration
}

// ErrVerify means a site did not hold the bytes the batch expected; nothing
// of the batch was written.
var ErrVerify = errors.New("unexpected bytes at site")

// Held is a site the engine left alone because it held bytes the engine had
// not written there: another tool, most often a kernel uprobe, holds it
// (see uprobe.go).
type Held struct {
	Addr   uint64
	Found  []byte // what the site held when the engine last looked
	Uprobe bool   // recognised as a uprobe's INT3 or its branch into [uprobes…]
}

// Engine rewrites sites in one process. It remembers the original bytes of
// every site it ever touched, so RestoreAll can put the text back byte for
// byte. An Engine is safe for concurrent use; batches run one at a time.
type Engine struct {
	p          *proc.Process
	arch       Arch
	mode       Mode   // resolved: ModeLive or ModeStop
	why        string // why stop mode was chosen
	membarrier bool

	mu sync.Mutex // serializes batches

	// table lists every site the engine ever touched, sorted, with the
	// instruction it stands for (what the trap handler emulates) and its
	// original bytes (what RestoreAll and RestoreInto put back); what a
	// site holds now is read from the text itself. It is replaced, never
	// modified, so it is read without locks (the trap handler, a fork in
	// the middle of a batch).
	table atomic.Pointer[trapTable]
	traps atomic.Int64
	// breaking is set from the first INT3 of a live batch until its last
	// first byte is written (or the INT3s are taken out again): only then
	// can a trap's site still hold our INT3. A trap reported outside that
	// window is a late one (see handleTrap).
	breaking atomic.Bool
	// late counts the late traps: threads sent back to re-run the site.
	late atomic.Int64

	// held lists the sites left alone because their bytes changed under
	// the engine; guarded by mu.
	held map[uint64]Held
	// psBuf is the array prepareCopy sorts a batch into, kept for the next.
	psBuf []Patch
	// idxBuf is the array of batch.idx, kept for the next batch.
	idxBuf []int
	// spare is the instruction array of the table the last publish
	// replaced, which the next batch fills for its own table instead of
	// allocating 3.3 MB for 100,000 sites (verifier.table). Guarded by
	// mu. No reader can still hold it: the trap handler and FinishInto
	// run on the ptrace thread and are done with a table before the batch
	// that replaced it gets that thread (a live batch runs its passes on
	// it, a stop batch stops the threads through it), which is before the
	// next batch, and Fork copies the array it takes.
	spare []siteBytes
	// lend runs a function on the ptrace thread if it is idle
	// (proc.Process.Lend); BenchmarkBookkeeping lends a goroutine.
	lend func(fn func()) bool
	// arena holds the runs of the batch in progress (readRuns).
	arena runArena
	// readText reads the target's text for the verify pass and the
	// rechecks: process_vm_readv (proc.Mem.ReadVM). BenchmarkBookkeeping
	// gives a batch a text in memory instead.
	readText func(addr uint64, b []byte) error
	// areas caches the target's uprobe mappings as last read.
	areas atomic.Pointer[[]Area]
}

// maxSiteLen bounds Arch.SiteLen; site bytes live in fixed arrays so that a
// batch of 100,000 sites allocates nothing per site.
const maxSiteLen = MaxRegionLen

type siteBytes struct {
	n uint8
	b [maxSiteLen]byte
}

func mkSiteBytes(b []byte) siteBytes {
	var s siteBytes
	s.n = uint8(copy(s.b[:], b))
	return s
}

func (s *siteBytes) bytes() []byte { return s.b[:s.n] }

// set is s = mkSiteBytes(b) in place: for 100,000 sites the returned
// 33-byte value costs ten times as much as the copy itself.
func (s *siteBytes) set(b []byte) { s.n = uint8(copy(s.b[:], b)) }

type trapTable struct {
	addrs []uint64 // sorted
	// insns holds the instruction each site stands for, what the trap
	// handler emulates there; no region written in stop mode has one
	// (n == 0). Bytes, not slices of the batches' Patch.New: an array
	// without pointers lies in whole huge pages (hugemem.MakeFlat), where
	// slices cost a fault per 4 KiB page on fresh memory, 500 of them for
	// 100,000 sites, up to 60 µs each on the VMs this is measured on, and
	// the collector has nothing to scan in it.
	insns  []siteBytes
	origs  []siteBytes // the bytes each site held before the engine first touched it
	region []bool      // the site is a region (Patch.Region)
	detour []uint64    // for a region: Patch.Detour, as last given

	// written is what the engine last wrote to each site (or verified
	// there): a site that holds anything else was changed by another
	// tool. Unlike the rest of the table it changes after every batch;
	// it is guarded by Engine.mu.
	written []siteBytes
}

func (t *trapTable) index(addr uint64) int {
	if t == nil {
		return -1
	}
	i := sort.Search(len(t.addrs), func(i int) bool { return t.addrs[i] >= addr })
	if i < len(t.addrs) && t.addrs[i] == addr {
		return i
	}
	return -1
}

// lookup returns a copy of the instruction site addr stands for, and
// false if addr is not a site of the table. A copy: the array becomes the
// next batch's spare once a later table replaces this one.
func (t *trapTable) lookup(addr uint64) (siteBytes, bool) {
	if i := t.index(addr); i >= 0 {
		return t.insns[i], true
	}
	return siteBytes{}, false
}

// New prepares an engine for process p: it registers the target for
// membarrier's SYNC_CORE (which fails where the kernel has none), then
// picks the mode. ModeAuto means live mode unless
// membarrier is unavailable or some thread blocks or ignores SIGTRAP (a
// forced trap would then reset the process-wide handler to SIG_DFL and kill
// the process: kernel/signal.c, force_sig_info_to_task), in which case stop
// mode is used; Reason says why.
func New(p *proc.Process, opts Options) (*Engine, error) {
	e := &Engine{p: p, arch: opts.Arch, held: map[uint64]Held{}, readText: p.Mem().ReadVM, lend: p.Lend}
	if e.arch == nil {
		e.arch = AMD64{}
	}
	if e.arch.SiteLen() > maxSiteLen {
		return nil, fmt.Errorf("sites of %d bytes: at most %d", e.arch.SiteLen(), maxSiteLen)
	}
	switch opts.Membarrier {
	case MembarrierRegistered:
		e.membarrier = true
	case MembarrierUnavailable:
	default:
		if err := e.registerMembarrier(); err != nil {
			return nil, err
		}
	}
	e.mode = opts.Mode
	if e.mode != ModeStop {
		var reasons []string
		if !e.membarrier {
			reasons = append(reasons, "membarrier SYNC_CORE is unavailable")
		}
		var ts proc.TrapStatus
		if opts.TrapStatus != nil {
			ts = *opts.TrapStatus
		} else {
			var err error
			if ts, err = trapStatus(p.Pid()); err != nil {
				return nil, err
			}
		}
		if ts.Blocked {
			reasons = append(reasons, "a thread blocks SIGTRAP")
		}
		if ts.Ignored {
			reasons = append(reasons, "the process ignores SIGTRAP")
		}
		// The trap handler emulates a CALL by pushing its return
		// address on the stack: a CET shadow stack has no copy of it,
		// and the callee's ret would kill the thread with SIGSEGV. In
		// stop mode no thread runs a site while it is rewritten.
		if ts.ShadowStack {
			reasons = append(reasons, "threads run with a CET shadow stack")
		}
		if len(reasons) > 0 {
			if e.mode == ModeLive {
				return nil, fmt.Errorf("live mode is unsafe for pid %d: %s: use stop mode", p.Pid(), strings.Join(reasons, ", "))
			}
			e.mode = ModeStop
			e.why = strings.Join(reasons, ", ")
		} else {
			e.mode = ModeLive
		}
	} else {
		e.why = "requested"
	}
	p.SetTrapHandler(e.handleTrap)
	return e, nil
}

// trapStatus is proc.ReadTrapStatus; a test plays a process with a shadow
// stack, which this machine may not be able to run.
var trapStatus = proc.ReadTrapStatus

func (e *Engine) registerMembarrier() error {
	r, err := e.p.HoldRemote()
	if err != nil {
		return fmt.Errorf("prepare pid %d for patching: %w", e.p.Pid(), err)
	}
	defer r.Release()
	st, err := RegisterMembarrier(r)
	e.membarrier = st == MembarrierRegistered
	return err
}

// RegisterMembarrier runs in the target, on the thread r holds, the
// registration for
// MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE that the live protocol's
// syncs need. A caller that holds a thread anyway (the session, while it
// injects the agent) runs it there and passes the result in
// [Options.Membarrier], which saves [New] a hold of its own. The
// registration waits for an RCU grace period in the kernel (the
// kernel's sync_runqueues_membarrier_state): the held thread, not a
// running one, pays it.
func RegisterMembarrier(r *proc.Remote) (MembarrierState, error) {
	// No MEMBARRIER_CMD_QUERY first: the registration fails (EINVAL)
	// where the kernel has no SYNC_CORE, and a query is one more round
	// trip to a thread that must get a CPU.
	ret, err := r.Syscall(proc.SysMembarrier, membarrierRegisterSync, 0, 0)
	if err != nil {
		return MembarrierUnknown, fmt.Errorf("register membarrier in thread %d: %w", r.Tid(), err)
	}
	if int64(ret) < 0 {
		return MembarrierUnavailable, nil // no SYNC_CORE (or a seccomp filter refused it): stop mode
	}
	return MembarrierRegistered, nil
}

// Mode returns the protocol the engine uses: ModeLive or ModeStop.
func (e *Engine) Mode() Mode { return e.mode }

// Reason says why the engine uses stop mode ("" in live mode).
func (e *Engine) Reason() string { return e.why }

// Membarrier reports whether the target can sync its cores with membarrier.
func (e *Engine) Membarrier() bool { return e.membarrier }

// HandleTrap is the engine's trap handler (proc.TrapHandler), for a
// process that shares the target's memory (a followed vfork child): its
// INT3s are the engine's sites, emulated as a thread's.
func (e *Engine) HandleTrap(tid int, regs *unix.PtraceRegs, claim func() error) bool {
	return e.handleTrap(tid, regs, claim)
}

// handleTrap runs on the ptrace thread for every INT3 SIGTRAP.
func (e *Engine) handleTrap(tid int, regs *unix.PtraceRegs, claim func() error) bool {
	addr := e.arch.TrapSite(e.arch.PC(regs))
	insn, ok := e.table.Load().lookup(addr)
	if !ok {
		return false // not one of our sites: the application's SIGTRAP
	}
	// On the site's first byte again, before the return address is
	// pushed: a tracer that died now would leave the thread in the middle
	// of the instruction (proc.TrapHandler). Every state of the protocol
	// decodes from the first byte.
	if claim() != nil {
		return false
	}
	if !e.breaking.Load() {
		// A late trap: the thread ran our INT3, but the batch that
		// wrote it has written every site's first byte since. That
		// happens when the thread was stopped (a PTRACE_INTERRUPT of a
		// sync or of Close's quiesce was pending) right after the
		// INT3 and before it dequeued its SIGTRAP: the kernel reports
		// the interrupt first, and the SIGTRAP at the thread's next
		// resume, maybe much later. The site now holds a whole
		// instruction, old or new, that the thread simply re-runs.
		// Emulating the table's instruction instead would send a
		// thread trapped on a region that was put back to its Detour,
		// a stub that Close may have unmapped meanwhile: the thread
		// would die of SIGSEGV there.
		e.arch.SetPC(regs, addr)
		e.late.Add(1)
		e.traps.Add(1)
		return true
	}
	err := e.arch.Emulate(regs, addr, insn.bytes(), func(sp, val uint64) error {
		var b [8]byte
		binary.LittleEndian.PutUint64(b[:], val)
		return e.p.WriteMem(sp, b[:])
	})
	if err != nil {
		return false
	}
	e.traps.Add(1)
	return true
}

// Apply rewrites every site of the batch, all or nothing: it first checks
// that each site holds Old, and writes nothing if one does not (the error
// wraps ErrVerify and names the site and the bytes found). There is one
// exception: a site that a uprobe holds (see uprobe.go), or that the engine
// already left alone, is skipped, counted in Stats.Held and listed by
// Held. Before each of its writes the batch reads the text again and gives
// up any site whose bytes are no longer what the engine last wrote there:
// another tool changed it under us, and its bytes are never overwritten.
func (e *Engine) Apply(patches []Patch) (Stats, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.apply(patches, e.mode, false)
}

// ApplyStop is Apply in stop mode, whatever the engine's mode.
func (e *Engine) ApplyStop(patches []Patch) (Stats, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.apply(patches, ModeStop, false)
}

// batch is one batch in progress: its sites, sorted, the runs of text that
// cover them, and the sites it left alone.
type batch struct {
	ps   []Patch
	runs []*run
	drop []bool      // per site: left alone (another tool's bytes are there)
	last []siteBytes // per site dropped midway: what the engine last wrote
	idx  []int       // per site: its index in the published trap table
	gone []Held      // the sites dropped

	// table, when verify could prepare it, is the trap table publish
	// stores, with tidx the sites' indices in it; nil: publish merges.
	table *trapTable
	tidx  []int

	// The passes' view of the sites, laid out flat so that a pass over
	// 100,000 of them reads 1 MB in order instead of every 96-byte Patch
	// and the New bytes each points to, wherever they were allocated:
	// site i is at[i] bytes into the runs' text (runArena.buf), sz[i]
	// bytes long, and img holds the New bytes of the sites one after
	// the other, those of a run from its img offset on: 500 KB for
	// 100,000 sites, where an image at the sites' offsets in the text
	// was 6 MB, a cache line per site, written by verify and read by
	// every pass.
	at  []uint32
	sz  []uint8
	img []byte

	// lent: how many runs the ptrace thread verified (spread).
	lent int

	// sled is the first site kept whose old bytes are a NOP sled (-1:
	// none), which only stop mode rewrites; stopRegion: a region kept has
	// no instruction for the trap handler, and needs stop mode too.
	sled       int
	stopRegion bool
	// regions: some site is a region whose old bytes are not just a jmp
	// (liveRegions has something to find).
	regions bool

	// mu guards last and gone while a partner shares the passes (the
	// sites and runs are split between the two, drop included).
	mu sync.Mutex
	// partner, when set, takes part of each pass of a live batch.
	partner *partner
}

// apply runs one batch in mode. A lenient batch (RestoreAll) leaves any
// site that does not hold Old alone instead of refusing the batch.
func (e *Engine) apply(patches []Patch, mode Mode, lenient bool) (st Stats, err error) {
	// While INT3s are in the text, threads of the target wait on the
	// ptrace thread; on a machine whose cores they keep busy, it must not
	// wait for a CPU behind them.
	defer e.p.BoostThread(-10)()
	// So must the verify pass on this goroutine: at nice 0 beside two
	// busy threads of the target it got a third of a CPU, and read the
	// 6 MB of text of 100,000 sites in 10-45 ms instead of 2-3.
	defer proc.BoostCaller(-10)()
	// Both take the CPU as soon as they wake: the ptrace thread to serve
	// an INT3 hit, either one after a pacing nap (proc.ShortSlice).
	defer e.p.ShortSlice(proc.BatchSlice)()
	defer proc.ShortSlice(proc.BatchSlice)()
	// And no collection: its mark worker would take a CPU, and its write
	// barriers would slow every pointer the batch stores (gcpause).
	defer gcpause.Relax()()
	start := time.Now()
	st.Mode = mode
	// The batch is patches itself when its shape needs no change, the
	// common case of sorted sites of the site length, none a region:
	// copying 100,000 patches of 96 bytes cost 2 ms. Their shape is checked
	// by layRuns and their bytes by verify, which read them anyway (a pass
	// of its own over 100,000 patches cost 1 ms, and each patch's bytes are
	// small allocations, so every pass over them misses the cache); both
	// return errNotAsIs for prepareCopy to take over. Nothing a batch does
	// writes to the patches but RestoreAll's lenient verify, which passes
	// its own.
	ps := patches
	if len(ps) == 0 {
		return st, nil
	}
	tPrep := time.Now()
	bt, err := e.verify(ps, lenient, true)
	if errors.Is(err, errNotAsIs) {
		if ps, err = e.prepareCopy(patches); err != nil || len(ps) == 0 {
			return st, err
		}
		bt, err = e.verify(ps, lenient, false)
	}
	if err != nil {
		return st, err
	}
	if bt.stopRegion && mode != ModeStop {
		// A thread reaching such a region midway would have nowhere to
		// go: write the batch with every thread stopped.
		mode = ModeStop
		st.Mode = mode
	}
	if bt.sled >= 0 && mode != ModeStop {
		return st, fmt.Errorf("site %#x is a NOP sled: convert sleds with ConvertSleds (stop mode) first", ps[bt.sled].Addr)
	}
	if debugTiming {
		fmt.Fprintf(os.Stderr, "textpoke: verify %v, %d of %d runs on the ptrace thread\n", time.Since(tPrep), bt.lent, len(bt.runs))
	}
	writes0 := e.p.Mem().Writes()
	traps0 := e.traps.Load()
	if len(bt.gone) < len(ps) {
		if mode == ModeStop {
			err = e.applyStop(bt, &st)
		} else {
			err = e.applyLive(bt, &st)
		}
	}
	tSettle := time.Now()
	st.Held = e.settle(bt)
	if debugTiming {
		fmt.Fprintf(os.Stderr, "textpoke: settle %v batch total %v\n", time.Since(tSettle), time.Since(start))
	}
	st.Sites = len(ps) - len(bt.gone)
	st.Lent = bt.lent
	st.Writes = int(e.p.Mem().Writes() - writes0)
	st.Traps = int(e.traps.Load() - traps0)
	st.Duration = time.Since(start)
	return st, err
}

// errNotAsIs is verify's word that patches apply took as they were are
// not (a no-op or an instruction Check refuses): prepareCopy sorts it out.
var errNotAsIs = errors.New("patches not as is")

// prepareCopy copies a batch into the engine's own array: sorted, no-ops
// dropped, regions given what the trap handler emulates.
func (e *Engine) prepareCopy(patches []Patch) ([]Patch, error) {
	n := e.arch.SiteLen()
	// The array is reused from batch to batch (e.mu is held): for 100,000
	// sites a fresh one is 10 MB of new pages to fault in and zero.
	if cap(e.psBuf) < len(patches) {
		e.psBuf = make([]Patch, 0, len(patches))
	}
	ps := e.psBuf[:0]
	defer func() { e.psBuf = ps[:0] }()
	for _, pt := range patches {
		if len(pt.Old) != len(pt.New) || len(pt.Old) < n || len(pt.Old) > MaxRegionLen {
			return nil, fmt.Errorf("site %#x: patch must be %d bytes (a region: up to %d) old and new, the same length", pt.Addr, n, MaxRegionLen)
		}
		if len(pt.Old) != n && !pt.Region {
			return nil, fmt.Errorf("site %#x: a patch of %d bytes must be a region", pt.Addr, len(pt.Old))
		}
		if !pt.Region {
			if err := e.arch.Check(pt.Addr, pt.insn()); err != nil {
				return nil, err
			}
		} else {
			pt.emul = regionTrap(pt)
		}
		if bytes.Equal(pt.Old, pt.New) {
			continue
		}
		ps = append(ps, pt)
	}
	if !slices.IsSortedFunc(ps, func(a, b Patch) int { return cmp.Compare(a.Addr, b.Addr) }) {
		slices.SortFunc(ps, func(a, b Patch) int { return cmp.Compare(a.Addr, b.Addr) })
	}
	for i := 1; i < len(ps); i++ {
		if ps[i].Addr < ps[i-1].Addr+ps[i-1].size() {
			return nil, fmt.Errorf("sites %#x and %#x overlap", ps[i-1].Addr, ps[i].Addr)
		}
	}
	return ps, nil
}

// regionTrap returns what a thread that traps on region pt's first byte
// runs: New's `jmp stub`, or a jmp to the relocated copy of the original
// bytes that New puts back (Detour); nil when there is neither, and the
// region must be written in stop mode.
func regionTrap(pt Patch) []byte {
	if pt.New[0] == opJmp {
		return bytes.Clone(pt.New[:5])
	}
	if pt.Detour == 0 {
		return nil
	}
	jmp, err := Jmp(pt.Addr, pt.Detour)
	if err != nil {
		return nil
	}
	return jmp
}

// onlyJmp reports whether the bytes of a region are a single instruction
// and padding no thread executes (`jmp rel32` then INT3s): no thread can
// be stopped strictly inside them.
func onlyJmp(b []byte) bool {
	if len(b) < 5 || b[0] != opJmp {
		return false
	}
	for _, c := range b[5:] {
		if c != opInt3 {
			return false
		}
	}
	return true
}

// run is a stretch of text covering several nearby sites, written with one
// call. buf holds the bytes as the engine last wrote or verified them, and
// is updated as the protocol advances; rewriting unchanged bytes with their
// own values is harmless. now receives the text as read again just before
// each write.
type run struct {
	addr  uint64
	off   uint32 // of buf in the arena's text (batch.at)
	img   uint32 // of its sites' New bytes in batch.img
	buf   []byte
	now   []byte
	sites []int // indices into the batch
	// split: bytes of the run outside our sites changed under us (another
	// tool patches between our sites), so only our sites are written.
	split bool
	// settled: its last write is done and recorded in the trap table's
	// written bytes (share.work), which settle need not do again.
	settled bool
}

// maxRunGap and maxRunLen bound coalescing: one /proc/PID/mem write costs
// about 1 µs plus a page-table walk per page, so merging sites that are a few
// KiB apart pays. A run is also what a partner takes at a time (pass);
// tests shorten runs to share small batches.
const maxRunGap = 4096

var maxRunLen uint64 = 256 << 10

// readRuns groups the sites of ps (sorted by address) into runs and reads
// the text of each run. The runs live in the engine's arena (e.mu is held)
// until the next batch.
func (e *Engine) readRuns(ps []Patch) ([]*run, error) {
	return e.readRunsFrom(e.readText, ps, &e.arena)
}

// readRunsFrom is readRuns with the reader read (another process's
// memory, say), in arena a, or in fresh memory when a is nil.
func (e *Engine) readRunsFrom(read func(addr uint64, b []byte) error, ps []Patch, a *runArena) ([]*run, error) {
	runs, err := e.layRuns(ps, a, false)
	if err != nil {
		return nil, err
	}
	for _, r := range runs {
		if err := read(r.addr, r.buf); err != nil {
			return nil, err
		}
	}
	return runs, nil
}

// runArena holds the runs of a batch and their text, reused from batch to
// batch: for 100,000 sites the runs' text and its second copy for the
// rechecks are 12 MB, which a batch allocated, cleared and left to the
// collector every time.
type runArena struct {
	buf, now []byte
	idx      []int // 0, 1, 2, ...: the runs' sites are slices of it
	runs     []run
	ptrs     []*run
	// The batch's flat view of its sites (batch.at, sz, img) and its
	// drop flags; imgLen is the length of img the runs laid out need.
	at     []uint32
	sz     []uint8
	img    []byte
	imgLen int
	drop   []bool
}

// layRuns groups the sites of ps (sorted by address) into runs, in arena
// a or in fresh memory when a is nil, without reading them. With asIs it
// also checks the shape apply took on trust (sorted, apart, all of the
// site length, no regions), and returns errNotAsIs if it is not so.
func (e *Engine) layRuns(ps []Patch, a *runArena, asIs bool) ([]*run, error) {
	keep := a != nil
	if !keep {
		a = &runArena{}
	}
	if len(a.idx) < len(ps) {
		a.idx = make([]int, len(ps))
		for i := range a.idx {
			a.idx[i] = i
		}
	}
	// Group first, then lay the text out in one array.
	type span struct {
		addr, end uint64
		lo, hi    int
		img       uint64
	}
	var spans []span
	total := 0
	var img uint64
	sl := e.arch.SiteLen()
	var end uint64
	var pc proc.Pacer
	for i := range ps {
		if i%8192 == 0 {
			pc.Pace()
		}
		pt := &ps[i]
		if asIs {
			if pt.Region || pt.emul != nil || len(pt.Old) != sl || len(pt.New) != sl || pt.Addr < end {
				return nil, errNotAsIs
			}
			end = pt.Addr + uint64(sl)
		}
		n := pt.size()
		img += n
		if k := len(spans) - 1; k >= 0 && pt.Addr+n-spans[k].addr <= maxRunLen && pt.Addr <= spans[k].end+maxRunGap {
			spans[k].end = pt.Addr + n
			spans[k].hi = i + 1
			continue
		}
		if k := len(spans) - 1; k >= 0 {
			total += int(spans[k].end - spans[k].addr)
		}
		spans = append(spans, span{addr: pt.Addr, end: pt.Addr + n, lo: i, hi: i + 1, img: img - n})
	}
	a.imgLen = int(img)
	if k := len(spans) - 1; k >= 0 {
		total += int(spans[k].end - spans[k].addr)
	}
	if cap(a.buf) < total {
		a.buf = hugemem.MakeFlat[byte](total)
		a.now = nil
	}
	if keep && cap(a.now) < total {
		a.now = hugemem.MakeFlat[byte](total)
	}
	if cap(a.runs) < len(spans) {
		a.runs = make([]run, len(spans))
		a.ptrs = make([]*run, len(spans))
	}
	runs := a.ptrs[:len(spans)]
	off := 0
	for k, sp := range spans {
		n := int(sp.end - sp.addr)
		r := &a.runs[k]
		*r = run{addr: sp.addr, off: uint32(off), img: uint32(sp.img), buf: a.buf[off : off+n : off+n], sites: a.idx[sp.lo:sp.hi:sp.hi]}
		if keep {
			r.now = a.now[off : off+n : off+n]
		}
		runs[k] = r
		off += n
	}
	return runs, nil
}

// batch returns a batch of ps over runs, read into a, with its flat view
// and drop flags in a's arrays (e.mu is held: one batch at a time).
func (a *runArena) batch(ps []Patch, runs []*run) *batch {
	total := a.imgLen
	if cap(a.at) < len(ps) {
		a.at = make([]uint32, len(ps))
		a.sz = make([]uint8, len(ps))
		a.drop = make([]bool, len(ps))
	}
	if cap(a.img) < total {
		a.img = make([]byte, total)
	}
	drop := a.drop[:len(ps)]
	clear(drop)
	return &batch{ps: ps, runs: runs, drop: drop, at: a.at[:len(ps)], sz: a.sz[:len(ps)], img: a.img[:total], sled: -1}
}

// verify reads the text around every site, coalesced into runs, and checks
// that each site holds its Old bytes. A site that does not is left alone
// when a uprobe holds it, when the engine already gave it up, or when the
// batch is lenient; otherwise the batch is refused. Along the way it lays
// out the sites for the passes (batch.at, sz, img) and, when every site is
// in the published trap table already (a batch that toggles sites), fills
// in the table publish will store (verifier.table).
//
// The runs are shared with the ptrace thread when it is idle and the batch
// is large (spread): reading 6 MB of text and going over 100,000 patches
// took 6.5–10 ms on one thread.
func (e *Engine) verify(ps []Patch, lenient, asIs bool) (*batch, error) {
	tv0 := time.Now()
	runs, err := e.layRuns(ps, &e.arena, asIs)
	if err != nil {
		return nil, err
	}
	tv1 := time.Now()
	bt := e.arena.batch(ps, runs)
	v := &verifier{e: e, bt: bt, lenient: lenient, asIs: asIs, old: e.table.Load(), areas: e.lazyAreas(), sled: -1}
	v.table()
	tv2 := time.Now()
	bt.lent = e.spread(len(runs), bt.text() >= minPartnerText && partnerCPUs(), true, v.run)
	if debugTiming {
		fmt.Fprintf(os.Stderr, "textpoke: verify: lay %v table %v spread %v\n", tv1.Sub(tv0), tv2.Sub(tv1), time.Since(tv2))
	}
	switch {
	case v.err != nil:
		return nil, fmt.Errorf("verify sites: %w", v.err)
	case v.notAsIs:
		return nil, errNotAsIs
	case len(v.bad) > 0:
		slices.SortFunc(v.bad, func(a, b badSite) int { return cmp.Compare(a.addr, b.addr) })
		var bad []string
		for _, b := range v.bad[:min(3, len(v.bad))] {
			bad = append(bad, b.msg)
		}
		more := ""
		if len(v.bad) > 3 {
			more = fmt.Sprintf(" (and %d more)", len(v.bad)-3)
		}
		return nil, fmt.Errorf("%w: %s%s; nothing was written", ErrVerify, strings.Join(bad, "; "), more)
	}
	bt.sled, bt.stopRegion, bt.regions = v.sled, v.stopRegion, v.regions
	if v.nt != nil && !v.fresh.Load() {
		bt.table, bt.tidx = v.nt, v.idx
	}
	return bt, nil
}

// text returns how many bytes of text the batch's runs cover.
func (bt *batch) text() int {
	if len(bt.runs) == 0 {
		return 0
	}
	r := bt.runs[len(bt.runs)-1]
	return int(r.off) + len(r.buf)
}

// verifier is the verify pass of one batch, whose runs two threads may
// share (verify).
type verifier struct {
	e             *Engine
	bt            *batch
	lenient, asIs bool
	areas         func() []Area

	// old is the published table; nt, when set, the one being filled for
	// publish: old's arrays but for the instructions, idx each site's
	// index in it. fresh: a site is not in old, or its region flag or
	// detour changes, so publish must merge instead.
	old   *trapTable
	nt    *trapTable
	idx   []int
	fresh atomic.Bool

	// stop: a run failed, or the batch is not as apply took it; the
	// runs not started yet are skipped.
	stop atomic.Bool

	mu         sync.Mutex // guards the rest, and bt.gone
	err        error
	notAsIs    bool
	bad        []badSite
	sled       int
	stopRegion bool
	regions    bool
}

type badSite struct {
	addr uint64
	msg  string
}

// table starts the table publish will store, if the batch may toggle
// sites already published: the instruction array is the spare one.
func (v *verifier) table() {
	old, e := v.old, v.e
	if old == nil || len(old.addrs) < len(v.bt.ps) {
		return
	}
	t := *old
	if cap(e.spare) >= len(old.insns) {
		t.insns = e.spare[:len(old.insns)]
	} else {
		t.insns = hugemem.MakeFlat[siteBytes](len(old.insns))
	}
	// Reused from batch to batch (e.mu is held), like psBuf.
	if cap(e.idxBuf) < len(v.bt.ps) {
		e.idxBuf = hugemem.MakeFlat[int](len(v.bt.ps))
	}
	v.nt, v.idx = &t, e.idxBuf[:len(v.bt.ps)]
}

// run verifies the k-th run of the batch.
func (v *verifier) run(k int) {
	if v.stop.Load() {
		return
	}
	e, bt := v.e, v.bt
	r := bt.runs[k]
	if err := e.readText(r.addr, r.buf); err != nil {
		v.mu.Lock()
		if v.err == nil {
			v.err = err
		}
		v.mu.Unlock()
		v.stop.Store(true)
		return
	}
	// The part of the new table's instructions this run fills: those of
	// the old table's sites from this run's start to the next one's, the
	// batch's new ones and the old ones of the others, copied as the loop
	// passes them (a copy of the whole part first, which a batch toggling
	// every site overwrites, was 5 MB of memory traffic for 100,000).
	old, nt := v.old, v.nt
	var oi, hi int
	if nt != nil {
		oi, hi = 0, len(old.addrs)
		if k > 0 {
			oi, _ = slices.BinarySearch(old.addrs, r.addr)
		}
		if k+1 < len(bt.runs) {
			hi, _ = slices.BinarySearch(old.addrs, bt.runs[k+1].addr)
		}
	}
	fresh := false
	sled, stopRegion, regions := -1, false, false
	var gone []Held
	var bad []badSite
	img := r.img
	for _, i := range r.sites {
		pt := &bt.ps[i]
		off := pt.Addr - r.addr
		n := pt.size()
		bt.at[i], bt.sz[i] = r.off+uint32(off), uint8(n)
		got := r.buf[off : off+n]
		var same bool
		if n == 5 && len(pt.New) == 5 && len(pt.Old) == 5 {
			// As arrays: memmove and memequal calls for 5 bytes
			// were half of this loop's time.
			*(*[5]byte)(bt.img[img : img+5]) = [5]byte(pt.New)
			same = [5]byte(got) == [5]byte(pt.Old)
		} else {
			copy(bt.img[img:img+uint32(n)], pt.New)
			same = bytes.Equal(got, pt.Old)
		}
		img += uint32(n)
		if v.asIs && (bytes.Equal(pt.Old, pt.New) || e.arch.Check(pt.Addr, pt.New) != nil) {
			v.mu.Lock()
			v.notAsIs = true
			v.mu.Unlock()
			v.stop.Store(true)
			return
		}
		if !same {
			addr := pt.Addr
			ours := false
			if k := old.index(addr); k >= 0 {
				ours = bytes.Equal(got, old.written[k].bytes())
			}
			_, held := e.held[addr]
			switch {
			case ours && v.lenient:
				// Back to what we wrote (RestoreAll read it a
				// moment ago): still ours to restore.
				pt.Old = bytes.Clone(got)
			case !ours && (held || v.lenient || e.arch.UprobeHeld(addr, got, pt.Old, v.areas())):
				bt.drop[i] = true
				if nt != nil {
					v.idx[i] = -1
				}
				gone = append(gone, Held{Addr: addr, Found: bytes.Clone(got)})
				continue
			default:
				bad = append(bad, badSite{addr, fmt.Sprintf("site %#x holds % x, expected % x", addr, got, pt.Old)})
				continue
			}
		}
		if sled < 0 && e.arch.Sled(pt.Old) {
			sled = i
		}
		if pt.Region && pt.emul == nil {
			stopRegion = true
		}
		if !regions && pt.liveRegion() {
			regions = true
		}
		if nt != nil && !fresh {
			for oi < hi && old.addrs[oi] < pt.Addr {
				nt.insns[oi] = old.insns[oi]
				oi++
			}
			if oi == hi || old.addrs[oi] != pt.Addr || pt.Region && !old.region[oi] || pt.Detour != 0 && pt.Detour != old.detour[oi] {
				fresh = true
				v.fresh.Store(true)
				continue
			}
			v.idx[i] = oi
			nt.insns[oi].set(pt.insn())
			oi++
		}
	}
	if nt != nil && !fresh {
		copy(nt.insns[oi:hi], old.insns[oi:hi])
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	bt.gone = append(bt.gone, gone...)
	v.bad = append(v.bad, bad...)
	if sled >= 0 && (v.sled < 0 || sled < v.sled) {
		v.sled = sled
	}
	v.stopRegion = v.stopRegion || stopRegion
	v.regions = v.regions || regions
}

// spread calls fn(k) for every 0 <= k < n: on this goroutine and, when
// share is set and the ptrace thread is idle, on the ptrace thread too.
// The two take the ks one at a time from a counter, so this goroutine
// never waits for the other thread to start (its wake-up took 0.06–4 ms
// beside busy threads of the target), only for a k it has taken. With
// pace, both pace themselves (proc.Pacer). It returns how many ks the
// ptrace thread took.
func (e *Engine) spread(n int, share, pace bool, fn func(k int)) (lent int) {
	var next, busy, other atomic.Int64
	var joined atomic.Bool
	work := func() (did int64) {
		var pc proc.Pacer
		for {
			if pace {
				pc.Pace()
			}
			k := next.Add(1) - 1
			if k >= int64(n) {
				return did
			}
			fn(int(k))
			did++
		}
	}
	var done chan struct{}
	if share && n > 1 && e.lend != nil {
		done = make(chan struct{}, 1)
		if !e.lend(func() {
			// Raised before the counter is read: once this
			// goroutine's work is over, every k is taken, and a
			// helper that comes later takes none.
			busy.Add(1)
			joined.Store(true)
			other.Store(work())
			if busy.Add(-1) == 0 {
				done <- struct{}{}
			}
		}) {
			done = nil
		}
	}
	for testPartnerFirst && done != nil && !joined.Load() {
		runtime.Gosched()
	}
	work()
	if done != nil {
		for busy.Load() > 0 {
			<-done
		}
	}
	return int(other.Load())
}

// lazyAreas returns a function that reads the target's uprobe mappings on
// its first call and returns the same ones after: only a site that holds
// unexpected bytes needs them. It is safe for concurrent use.
func (e *Engine) lazyAreas() func() []Area {
	return sync.OnceValue(func() []Area {
		if e.p == nil {
			return nil // text in memory (BenchmarkBookkeeping)
		}
		maps, err := proc.ReadMaps(e.p.Pid())
		if err != nil {
			return nil
		}
		areas := uprobeAreas(maps)
		e.areas.Store(&areas)
		return areas
	})
}

// recheck reads run r again just before a write and gives up every site of
// it whose bytes are no longer what the engine last wrote (or verified):
// another tool wrote there meanwhile. When bytes between our sites changed
// too, the run is written site by site from then on.
func (e *Engine) recheck(bt *batch, r *run, read func(addr uint64, b []byte) error) error {
	if r.now == nil {
		r.now = make([]byte, len(r.buf))
	}
	if err := read(r.addr, r.now); err != nil {
		return err
	}
	if bytes.Equal(r.now, r.buf) {
		return nil
	}
	for _, i := range r.sites {
		off := bt.ps[i].Addr - r.addr
		n := bt.ps[i].size()
		was, now := r.buf[off:off+n], r.now[off:off+n]
		if bt.drop[i] || bytes.Equal(was, now) {
			continue
		}
		bt.drop[i] = true
		bt.mu.Lock()
		if bt.last == nil {
			bt.last = make([]siteBytes, len(bt.ps))
		}
		bt.last[i] = mkSiteBytes(was)
		bt.gone = append(bt.gone, Held{Addr: bt.ps[i].Addr, Found: bytes.Clone(now)})
		bt.mu.Unlock()
		copy(was, now)
	}
	if !bytes.Equal(r.now, r.buf) {
		r.split = true
		copy(r.buf, r.now)
	}
	return nil
}

// writeRun writes run r with write: whole when nothing in it changed under
// us, else in pieces that leave every dropped site (and, once the run is
// split, every byte between our sites) untouched.
func (e *Engine) writeRun(bt *batch, r *run, write func(addr uint64, b []byte) error) error {
	whole := !r.split
	for _, i := range r.sites {
		if bt.drop[i] {
			whole = false
			break
		}
	}
	if whole {
		return write(r.addr, r.buf)
	}
	var lo, hi uint64
	open := false
	flush := func() error {
		if !open {
			return nil
		}
		open = false
		return write(r.addr+lo, r.buf[lo:hi])
	}
	for _, i := range r.sites {
		off := bt.ps[i].Addr - r.addr
		if bt.drop[i] || r.split {
			if err := flush(); err != nil {
				return err
			}
		}
		if bt.drop[i] {
			continue
		}
		if !open {
			lo, open = off, true
		}
		hi = off + bt.ps[i].size()
	}
	return flush()
}

// step is what a pass writes into each site of a batch.
type step uint8

const (
	stepBreak   step = iota // the breakpoint into byte 0
	stepTail                // New's bytes after the first
	stepHead                // New's first byte
	stepNew                 // all of New (stop mode)
	stepUnbreak             // Old's first byte back (a live batch undone)
)

// apply writes st into every site of run r still ours. One loop per step,
// and 5-byte sites copied as arrays rather than through memmove: for
// 100,000 sites the loop is what a pass costs beyond the system calls.
func (bt *batch) apply(r *run, st step, bp byte) {
	buf, img := r.buf, bt.img
	at := r.img // of the site's New bytes in img
	for _, i := range r.sites {
		n := uint32(bt.sz[i])
		if bt.drop[i] {
			at += n
			continue
		}
		o := bt.at[i] - r.off
		switch {
		case st == stepBreak:
			buf[o] = bp
		case st == stepHead:
			buf[o] = img[at]
		case st == stepUnbreak:
			buf[o] = bt.ps[i].Old[0]
		case n == 5 && st == stepTail:
			*(*[4]byte)(buf[o+1 : o+5]) = [4]byte(img[at+1 : at+5])
		case n == 5:
			*(*[5]byte)(buf[o : o+5]) = [5]byte(img[at : at+5])
		case st == stepTail:
			copy(buf[o+1:o+n], img[at+1:at+n])
		default:
			copy(buf[o:o+n], img[at:at+n])
		}
		at += n
	}
}

// pass is one write of the protocol: for each run, read it again (recheck),
// apply st to every site still ours, and write it. With a partner, the
// two threads take the runs one at a time from a shared counter while
// this one handles the INT3 hits between its pieces (pump). The partner
// may wake late, or not at all before the runs are taken: this thread
// never waits for it to start, only for a run it has taken to be written,
// and meanwhile it looks for stops every pumpNap instead of spinning, which
// kept a CPU from the target's threads.
func (e *Engine) pass(bt *batch, write func(addr uint64, b []byte) error, st step, pump func() bool) error {
	// A pass with the target's threads running (live) paces itself; in
	// stop mode they wait for the pass to end, and a pause would only
	// lengthen the stop.
	sh := &share{e: e, bt: bt, st: st, pace: pump != nil}
	defer sh.report()
	p := bt.partner
	if pump == nil {
		return sh.stopped(write)
	}
	if p == nil {
		sh.work(write)
		return sh.err
	}
	p.cur.Store(sh)
	p.kick()
	for testPartnerFirst && !sh.joined.Load() {
		pump()
	}
	sh.work(write)
	t0 := time.Now()
	for sh.busy.Load() > 0 {
		if !pump() {
			proc.Nap(pumpNap)
		}
	}
	sh.wait = time.Since(t0)
	p.cur.Store(nil)
	return sh.err
}

// testPartnerFirst, set by a test, makes each shared pass wait for the
// partner to join before this thread takes a run, so that the partner
// surely writes some; and each shared verify wait for the ptrace thread
// (spread).
var testPartnerFirst bool

// share is one pass over a batch's runs, which a partner may help with.
type share struct {
	e    *Engine
	bt   *batch
	st   step
	pace bool // proc.Pacer between runs

	next   atomic.Int64 // the next run to take
	busy   atomic.Int64 // partners inside work
	joined atomic.Bool  // a partner came (testPartnerFirst)
	failed atomic.Bool  // a run failed: take no more
	mu     sync.Mutex   // guards err and the times
	err    error
	// How long reading, applying the step and writing took, summed over
	// the threads, and how long this thread waited for the partner's
	// last run (LIVETRACE_DEBUG_TIMING).
	read, apply, write, wait time.Duration
}

// work writes runs of the pass, taken one at a time, until none is left
// or one fails (then the others are left alone too).
func (sh *share) work(write func(addr uint64, b []byte) error) {
	var pc proc.Pacer
	for {
		if sh.pace {
			pc.Pace()
		}
		if sh.failed.Load() {
			return
		}
		k := int(sh.next.Add(1)) - 1
		if k >= len(sh.bt.runs) || !sh.run(k, write) {
			return
		}
	}
}

// run rechecks, steps and writes the k-th run of the pass. It reports
// false when that failed: then no run is taken any more.
func (sh *share) run(k int, write func(addr uint64, b []byte) error) bool {
	bt, e := sh.bt, sh.e
	fail := func(err error) bool {
		sh.failed.Store(true)
		sh.mu.Lock()
		if sh.err == nil {
			sh.err = err
		}
		sh.mu.Unlock()
		return false
	}
	r := bt.runs[k]
	t0 := time.Now()
	if err := e.recheck(bt, r, e.readText); err != nil {
		return fail(err)
	}
	t1 := time.Now()
	bt.apply(r, sh.st, e.arch.Breakpoint())
	t2 := time.Now()
	if err := e.writeRun(bt, r, write); err != nil {
		return fail(err)
	}
	if sh.st == stepHead || sh.st == stepNew {
		// While the run is in the cache, and on both threads:
		// settling 100,000 sites after the batch took 1.3 ms.
		bt.settleRun(e.table.Load(), r)
	}
	t3 := time.Now()
	sh.mu.Lock()
	sh.read, sh.apply, sh.write = sh.read+t1.Sub(t0), sh.apply+t2.Sub(t1), sh.write+t3.Sub(t2)
	sh.mu.Unlock()
	return true
}

// stopped runs a pass of a stop-mode batch: every thread of the target is
// stopped and waits for it. The ptrace thread, through which they were
// stopped, is idle, and takes runs too when the pass is large (a 100,000-site
// pass took 6-7 ms on one thread), without pacing. Even when both run
// real-time (the attach) on two CPUs, unlike a live pass (partnerCPUs):
// the target has no thread running to leave a CPU to.
func (sh *share) stopped(write func(addr uint64, b []byte) error) error {
	sh.e.spread(len(sh.bt.runs), sh.bt.text() >= minPartnerText, false, func(k int) {
		if !sh.failed.Load() {
			sh.run(k, write)
		}
	})
	return sh.err
}

// help is work on the partner's thread, for the pass in progress if any.
func (p *partner) help(write func(addr uint64, b []byte) error) {
	sh := p.cur.Load()
	if sh == nil {
		return
	}
	sh.busy.Add(1)
	defer sh.busy.Add(-1)
	sh.joined.Store(true)
	// Taken after busy is raised: a pass whose runs were all taken
	// before is over, and this takes none of them.
	sh.work(write)
}

func (sh *share) report() {
	if debugTiming {
		// Locked: a helper that came after the last run was taken may
		// still be adding its (zero) times.
		sh.mu.Lock()
		defer sh.mu.Unlock()
		fmt.Fprintf(os.Stderr, "textpoke: pass: read %v write %v step %v, waited %v for the partner\n", sh.read, sh.write, sh.apply, sh.wait)
	}
}

// settleRun records in t, the published table, what the batch wrote to
// each site of run r it kept (the written bytes), once the run's last
// write is done. A site dropped midway keeps what the engine last wrote
// there (batch.last), which settle records.
func (bt *batch) settleRun(t *trapTable, r *run) {
	r.settled = true
	if bt.idx == nil {
		return // not published: nothing was written
	}
	for _, i := range r.sites {
		if k := bt.idx[i]; k >= 0 && !bt.drop[i] {
			o := bt.at[i] - r.off
			t.written[k].set(r.buf[o : o+uint32(bt.sz[i])])
		}
	}
}

// settle records what the batch wrote to each site it kept, for the runs
// whose last write did not (a batch that failed midway), and the sites it
// left alone; it returns how many those are. e.mu is held.
func (e *Engine) settle(bt *batch) int {
	t := e.table.Load()
	if bt.idx != nil {
		for _, r := range bt.runs {
			if !r.settled {
				bt.settleRun(t, r)
			}
		}
		if bt.last != nil {
			for i := range bt.last {
				if k := bt.idx[i]; k >= 0 && bt.drop[i] && bt.last[i].n > 0 {
					t.written[k] = bt.last[i]
				}
			}
		}
	}
	if len(bt.gone) == 0 {
		return 0
	}
	areas := e.lazyAreas()
	exp := make(map[uint64][]byte, len(bt.gone))
	for _, pt := range bt.ps {
		exp[pt.Addr] = pt.Old
	}
	for _, h := range bt.gone {
		if old, ok := e.held[h.Addr]; ok && old.Uprobe && !h.Uprobe {
			h.Uprobe = bytes.Equal(old.Found, h.Found) || e.arch.UprobeHeld(h.Addr, h.Found, exp[h.Addr], areas())
		} else if !h.Uprobe {
			h.Uprobe = e.arch.UprobeHeld(h.Addr, h.Found, exp[h.Addr], areas())
		}
		if k := t.index(h.Addr); !h.Uprobe && k >= 0 {
			// A uprobe's INT3 over what the engine wrote last.
			h.Uprobe = e.arch.UprobeHeld(h.Addr, h.Found, t.written[k].bytes(), areas())
		}
		e.held[h.Addr] = h
	}
	return len(bt.gone)
}

// publish makes the trap handler emulate the batch's new instructions, for
// every site the batch kept. The table is replaced, never modified in place
// (except written, which only batches use): by the one verify prepared, or
// by merging the batch into the old one.
func (e *Engine) publish(bt *batch) {
	old := e.table.Load()
	defer func() {
		if old != nil {
			e.spare = old.insns
		}
	}()
	if bt.table != nil {
		bt.idx = bt.tidx
		e.table.Store(bt.table)
		return
	}
	if old == nil {
		old = &trapTable{}
	}
	ps := bt.ps
	// Reused from batch to batch (e.mu is held), like psBuf.
	if cap(e.idxBuf) < len(ps) {
		e.idxBuf = hugemem.MakeFlat[int](len(ps))
	}
	bt.idx = e.idxBuf[:len(ps)]
	n := len(old.addrs) + len(ps)
	t := &trapTable{addrs: hugemem.MakeFlat[uint64](n)[:0], insns: hugemem.MakeFlat[siteBytes](n)[:0], origs: hugemem.MakeFlat[siteBytes](n)[:0], written: hugemem.MakeFlat[siteBytes](n)[:0], region: hugemem.MakeFlat[bool](n)[:0], detour: hugemem.MakeFlat[uint64](n)[:0]}
	i, j := 0, 0
	var pc proc.Pacer
	for i < len(old.addrs) || j < len(ps) {
		if (i+j)%8192 == 0 {
			pc.Pace()
		}
		switch {
		case j < len(ps) && bt.drop[j]:
			bt.idx[j] = -1
			j++
		case j == len(ps) || i < len(old.addrs) && old.addrs[i] < ps[j].Addr:
			t.addrs = append(t.addrs, old.addrs[i])
			t.insns = append(t.insns, old.insns[i])
			t.origs = append(t.origs, old.origs[i])
			t.written = append(t.written, old.written[i])
			t.region = append(t.region, old.region[i])
			t.detour = append(t.detour, old.detour[i])
			i++
		default:
			// A site seen for the first time: its verified Old bytes are
			// its original ones.
			orig := mkSiteBytes(ps[j].Old)
			written := orig
			region, detour := ps[j].Region, ps[j].Detour
			if i < len(old.addrs) && old.addrs[i] == ps[j].Addr {
				orig, written = old.origs[i], old.written[i]
				region = region || old.region[i]
				if detour == 0 {
					detour = old.detour[i]
				}
				i++
			}
			t.region = append(t.region, region)
			t.detour = append(t.detour, detour)
			bt.idx[j] = len(t.addrs)
			t.addrs = append(t.addrs, ps[j].Addr)
			t.insns = t.insns[:len(t.insns)+1]
			t.insns[len(t.insns)-1].set(ps[j].insn())
			t.origs = append(t.origs, orig)
			t.written = append(t.written, written)
			j++
		}
	}
	e.table.Store(t)
}

var debugTiming = os.Getenv("LIVETRACE_DEBUG_TIMING") != ""

// testHookPass, when set by a test, runs on the ptrace thread before each
// of the three writes of a live batch, with the batch's sync: a test plays
// another tool writing into the text midway.
var testHookPass func(pass int, sync func() error)

// partner is the goroutine that called a live batch. While the ptrace
// thread runs the protocol, it helps with each pass (pass): the text of
// 100,000 sites is 6 MB, and reading it again and writing it through
// /proc/PID/mem is kernel work a second CPU halves. It only reads and
// writes memory; the INT3 hits stay with the ptrace thread. Between passes
// it sleeps on a futex (futex.go), which the ptrace thread wakes when a pass
// starts and when the batch ends (kick).
type partner struct {
	cur atomic.Pointer[share] // the pass in progress
	seq atomic.Uint32         // the futex word: bumped by kick
}

// kick wakes the partner to look at cur and at the batch's result again.
func (p *partner) kick() {
	p.seq.Add(1)
	futexWake(&p.seq)
}

// minPartnerText is the least text a batch shares with a partner: a pass
// over less takes about as long as the hand-over. Tests set it to 0 to
// share every batch.
var minPartnerText = 128 << 10

func (e *Engine) applyLive(bt *batch, st *Stats) error {
	// The handler must know the new instructions before the first INT3
	// lands. Published here, before a thread of the target is held: the
	// merge of 100,000 new sites into the table took 11-18 ms, which the
	// held thread waited through. The trap handler, which reads the
	// table, runs on the ptrace thread, so it is done with the old one
	// (e.spare) before the batch gets that thread.
	t1 := time.Now()
	e.publish(bt)
	if debugTiming {
		fmt.Fprintf(os.Stderr, "textpoke: publish %v\n", time.Since(t1))
	}
	last := bt.runs[len(bt.runs)-1]
	if len(bt.runs) < 2 || int(last.off)+len(last.buf) < minPartnerText || !partnerCPUs() {
		return e.applyLiveOn(bt, st)
	}
	// The caller's goroutine is locked to its thread and boosted (apply).
	p := &partner{}
	bt.partner = p
	st.Shared = true
	res := make(chan error, 1)
	go func() {
		res <- e.applyLiveOn(bt, st)
		p.kick()
	}()
	var helped *share
	for {
		// Read before looking, so that a kick after the look ends
		// the wait at once.
		seq := p.seq.Load()
		select {
		case err := <-res:
			return err
		default:
		}
		if sh := p.cur.Load(); sh != nil && sh != helped {
			helped = sh
			p.help(e.p.WriteMem)
			continue
		}
		futexWait(&p.seq, seq, partnerWait)
	}
}

// partnerCPUs reports whether the calling thread may be a partner: there
// is a second CPU for it, and, if it runs real-time (the attach, see
// proc.BoostAll), a third one, which the target keeps: two real-time
// threads writing text would leave the target's threads no CPU on a
// 2-CPU machine until the pass ends.
func partnerCPUs() bool {
	n := runtime.GOMAXPROCS(0)
	return n >= 3 || n == 2 && !proc.RealTime()
}

// applyLiveOn runs a live batch on the ptrace thread.
func (e *Engine) applyLiveOn(bt *batch, st *Stats) error {
	// The whole protocol runs on the ptrace thread, so that INT3 hits are
	// emulated between the pieces of each write and during each sync,
	// instead of waiting for a goroutine hand-off.
	call := time.Now()
	return e.p.Batch(func(b *proc.Batch) (err error) {
		t0 := time.Now()
		r, err := b.HoldRemote()
		if err != nil {
			return fmt.Errorf("patch pid %d: %w", e.p.Pid(), err)
		}
		if debugTiming {
			// From the call to the ptrace thread running the batch: it
			// waits for a CPU beside the target's busy threads.
			fmt.Fprintf(os.Stderr, "textpoke: to the ptrace thread %v hold %v\n", t0.Sub(call), time.Since(t0))
		}
		defer func() {
			if rerr := r.Release(); err == nil && rerr != nil {
				err = rerr
			}
		}()
		sync := func() error {
			st.Syncs++
			_, err := r.SyscallOK("membarrier", proc.SysMembarrier, membarrierSyncCore, 0, 0)
			return err
		}
		steps := []step{
			// 1. INT3 into byte 0: from the sync on, a thread that
			//    reaches the site traps instead of decoding its tail.
			stepBreak,
			// 2. The new tail: after the sync no core can still hold
			//    the old tail in its pipeline.
			stepTail,
			// 3. The new byte 0: after the sync the new instruction is
			//    whole on every core.
			stepHead,
		}
		// From the first INT3 on, a trap's site may hold one of ours.
		// Left set if the batch fails with INT3s in: emulation stays
		// right for them.
		e.breaking.Store(true)
		for i, step := range steps {
			if testHookPass != nil {
				testHookPass(i+1, sync)
			}
			t0 := time.Now()
			// Each write is preceded by a read of the same run: a site
			// that another tool (a uprobe) changed since our last write
			// is left alone, never overwritten.
			if err := e.pass(bt, b.Write, step, b.Pump); err != nil {
				return fmt.Errorf("patch pid %d (step %d of 3): %w", e.p.Pid(), i+1, err)
			}
			if step == stepHead {
				// Every site holds its whole new instruction: a trap
				// reported from now on is a late one.
				e.breaking.Store(false)
			}
			t1 := time.Now()
			if err := sync(); err != nil {
				return fmt.Errorf("patch pid %d (sync %d of 3): %w", e.p.Pid(), i+1, err)
			}
			if debugTiming {
				fmt.Fprintf(os.Stderr, "textpoke: step %d write %v sync %v\n", i+1, t1.Sub(t0), time.Since(t1))
			}
			if i > 0 {
				continue
			}
			t3 := time.Now()
			regions := bt.liveRegions()
			if debugTiming {
				fmt.Fprintf(os.Stderr, "textpoke: %d live regions found in %v\n", len(regions), time.Since(t3))
			}
			if len(regions) == 0 {
				continue
			}
			// No thread can enter a region any more: take every thread
			// that is inside one out. The borrowed thread is visited
			// too, so it is given back first.
			t2 := time.Now()
			if err := r.Release(); err != nil {
				return fmt.Errorf("patch pid %d: %w", e.p.Pid(), err)
			}
			cerr := e.fixRegionsLive(b, regions, st)
			st.RegionCheck = time.Since(t2)
			if r, err = b.HoldRemote(); err != nil {
				return fmt.Errorf("patch pid %d: %w", e.p.Pid(), err)
			}
			if debugTiming {
				fmt.Fprintf(os.Stderr, "textpoke: region check %v\n", time.Since(t2))
			}
			if cerr != nil {
				// Take the INT3s out again: the tails are still the
				// old ones.
				if err := e.pass(bt, b.Write, stepUnbreak, b.Pump); err != nil {
					return fmt.Errorf("patch pid %d: %w (and undoing the INT3s: %v)", e.p.Pid(), cerr, err)
				}
				e.breaking.Store(false)
				if err := sync(); err != nil {
					return fmt.Errorf("patch pid %d: %w (and the sync after undoing the INT3s: %v)", e.p.Pid(), cerr, err)
				}
				return fmt.Errorf("patch pid %d: %w; nothing was changed", e.p.Pid(), cerr)
			}
		}
		return nil
	})
}

// liveRegion reports whether a thread could be stopped strictly inside
// pt: a region whose old bytes are more than a jmp.
func (pt *Patch) liveRegion() bool { return pt.Region && !onlyJmp(pt.Old) }

// liveRegions returns the regions of the batch a thread could be stopped
// strictly inside of: those whose old bytes are not just a jmp. It runs
// on the ptrace thread while the INT3s are in, so a batch without such
// regions (verify says so) is not scanned: 100,000 patches took 1.2-2 ms.
func (bt *batch) liveRegions() []Patch {
	if !bt.regions {
		return nil
	}
	var regions []Patch
	for i := range bt.ps {
		if pt := &bt.ps[i]; !bt.drop[i] && pt.liveRegion() {
			regions = append(regions, *pt)
		}
	}
	return regions
}

// regionAt returns a function that finds the region of regions (sorted)
// that pc is strictly inside of: past its first byte, before its end.
func regionAt(regions []Patch) func(pc uint64) (Patch, bool) {
	return func(pc uint64) (Patch, bool) {
		i := sort.Search(len(regions), func(i int) bool { return regions[i].Addr+regions[i].size() > pc })
		if i < len(regions) && pc > regions[i].Addr && pc < regions[i].Addr+regions[i].size() {
			return regions[i], true
		}
		return Patch{}, false
	}
}

// fixRegionsLive runs once INT3 is on the first byte of every region of
// the batch and synced: from then on no thread can enter one. It stops the
// threads one at a time, single-steps one that is strictly inside a region
// out of it, and refuses when a signal frame on its stack would resume
// inside one (that thread would return into the middle of the new bytes).
func (e *Engine) fixRegionsLive(b *proc.Batch, regions []Patch, st *Stats) error {
	inside := regionAt(regions)
	maps, err := proc.ReadMaps(e.p.Pid())
	if err != nil {
		return err
	}
	return b.EachThread(maxRegionSteps, func(tid int, regs *unix.PtraceRegs) (uint64, uint64, error) {
		if rg, ok := inside(e.arch.PC(regs)); ok {
			st.SteppedOut++
			return rg.Addr + 1, rg.Addr + rg.size(), nil
		}
		return 0, 0, e.scanStacks(maps, []uint64{e.arch.SP(regs)}, func(slot, v uint64) error {
			if rg, ok := inside(v); ok && e.isSigframeRip(slot) {
				return fmt.Errorf("a signal frame of thread %d at %#x resumes at %#x, inside the relocated region at %#x: retry when the signal handler has returned", tid, slot, v, rg.Addr)
			}
			return nil
		})
	})
}

func (e *Engine) applyStop(bt *batch, st *Stats) error {
	e.publish(bt)
	t0 := time.Now()
	if err := e.p.StopAll(); err != nil {
		_ = e.p.ResumeAll()
		return fmt.Errorf("stop pid %d: %w", e.p.Pid(), err)
	}
	defer func() {
		st.Paused = time.Since(t0)
	}()
	err := e.stopped(bt, st)
	if rerr := e.p.ResumeAll(); err == nil && rerr != nil {
		err = rerr
	}
	return err
}

// stopped writes a batch while every thread is stopped.
func (e *Engine) stopped(bt *batch, st *Stats) error {
	// Threads stopped inside a sled we are about to rewrite have only
	// NOPs left in front of them: move them to the end of the site. Verify
	// found the first sled kept, if any: a batch without one is not
	// scanned while every thread waits (1-2 ms for 100,000 patches).
	var sleds []Patch
	for i := bt.sled; i >= 0 && i < len(bt.ps); i++ {
		if pt := &bt.ps[i]; !bt.drop[i] && e.arch.Sled(pt.Old) {
			sleds = append(sleds, *pt)
		}
	}
	if len(sleds) > 0 {
		if err := e.fixSledPCs(sleds); err != nil {
			return err
		}
	}
	if regions := bt.liveRegions(); len(regions) > 0 {
		if err := e.fixRegionPCs(regions, st); err != nil {
			return err
		}
	}
	if err := e.pass(bt, e.p.WriteMem, stepNew, nil); err != nil {
		return fmt.Errorf("patch pid %d: %w", e.p.Pid(), err)
	}
	if e.membarrier {
		r, err := e.p.HoldRemote()
		if err != nil {
			return fmt.Errorf("sync pid %d: %w", e.p.Pid(), err)
		}
		st.Syncs++
		_, err = r.SyscallOK("membarrier", proc.SysMembarrier, membarrierSyncCore, 0, 0)
		if rerr := r.Release(); err == nil {
			err = rerr
		}
		if err != nil {
			return fmt.Errorf("sync pid %d: %w", e.p.Pid(), err)
		}
	}
	return nil
}

// fixSledPCs moves every thread whose program counter is inside a sled to
// the end of the sled, and checks the program counters saved in signal
// frames on every thread's stack (a thread running a signal handler resumes
// at the saved one through rt_sigreturn).
func (e *Engine) fixSledPCs(sleds []Patch) error {
	n := uint64(e.arch.SiteLen())
	inside := func(pc uint64) (uint64, bool) {
		i := sort.Search(len(sleds), func(i int) bool { return sleds[i].Addr+n > pc })
		if i < len(sleds) && pc > sleds[i].Addr && pc < sleds[i].Addr+n {
			return sleds[i].Addr, true
		}
		return 0, false
	}
	var sps []uint64
	err := e.p.EditRegs(func(tid int, regs *unix.PtraceRegs) bool {
		sps = append(sps, e.arch.SP(regs))
		if site, ok := inside(e.arch.PC(regs)); ok {
			e.arch.SetPC(regs, site+n)
			return true
		}
		return false
	})
	if err != nil {
		return err
	}
	return e.fixSignalFrames(sps, inside)
}

// maxRegionSteps bounds the single steps that take a thread out of a
// region: its instructions hold no call, syscall or loop (package reloc),
// so each step moves forward, or back to the region's first byte.
const maxRegionSteps = 64

// fixRegionPCs single-steps every thread whose program counter is strictly
// inside a region (a relocating site: the first byte is an instruction
// boundary in the old and the new bytes) until it is out, and refuses when
// a signal frame saved a program counter strictly inside one: that thread
// would resume in the middle of the new bytes.
func (e *Engine) fixRegionPCs(regions []Patch, st *Stats) error {
	inside := regionAt(regions)
	var sps []uint64
	var in []int
	var ranges [][2]uint64
	err := e.p.EditRegs(func(tid int, regs *unix.PtraceRegs) bool {
		sps = append(sps, e.arch.SP(regs))
		if rg, ok := inside(e.arch.PC(regs)); ok {
			in = append(in, tid)
			ranges = append(ranges, [2]uint64{rg.Addr + 1, rg.Addr + rg.size()})
		}
		return false
	})
	if err != nil {
		return err
	}
	for k, tid := range in {
		if err := e.p.SingleStepOut(tid, ranges[k][0], ranges[k][1], maxRegionSteps); err != nil {
			return fmt.Errorf("step thread %d out of the region at %#x: %w", tid, ranges[k][0]-1, err)
		}
		st.SteppedOut++
	}
	return e.scanSignalFrames(sps, func(slot, v uint64) error {
		if _, ok := inside(v); ok && e.isSigframeRip(slot) {
			return fmt.Errorf("a signal frame at %#x resumes at %#x, inside a relocated region: retry when the signal handler has returned", slot, v)
		}
		return nil
	})
}

// Offsets in struct rt_sigframe (arch/x86/include/asm/sigframe.h): the
// return address of the handler (pretcode), then struct ucontext, whose
// uc_mcontext (struct sigcontext_64) starts 40 bytes in and holds r8..r15,
// rdi, rsi, rbp, rbx, rdx, rax, rcx, rsp, rip in that order.
const (
	sigframeRipOff = 8 + 40 + 16*8
	maxStackScan   = 8 << 20
)

// restorerCode is `mov $15, %rax; syscall` (rt_sigreturn), the body of
// glibc's __restore_rt and musl's __restore_rt, which every handler
// installed with SA_RESTORER returns through.
var restorerCode = []byte{0x48, 0xc7, 0xc0, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05}

// fixSignalFrames scans the live part of every stopped thread's stack for a
// saved program counter inside a sled. One that belongs to a signal frame
// (its pretcode points at an rt_sigreturn restorer) is moved to the end of
// the sled; any other is a word we cannot account for, and the conversion
// is refused rather than risk resuming a thread mid-instruction.
func (e *Engine) fixSignalFrames(sps []uint64, inside func(uint64) (uint64, bool)) error {
	n := uint64(e.arch.SiteLen())
	return e.scanSignalFrames(sps, func(slot, v uint64) error {
		site, ok := inside(v)
		if !ok {
			return nil
		}
		if !e.isSigframeRip(slot) {
			return fmt.Errorf("cannot convert the sled at %#x: the stack word at %#x holds %#x, inside the sled, and is not a signal frame; "+
				"retry, or build with clang -fpatchable-function-entry=5 (a single NOP5)", site, slot, v)
		}
		var b [8]byte
		binary.LittleEndian.PutUint64(b[:], site+n)
		return e.p.WriteMem(slot, b[:])
	})
}

// scanSignalFrames calls fn with the address and value of every 8-byte
// word of the live part of the stacks at sps.
func (e *Engine) scanSignalFrames(sps []uint64, fn func(slot, v uint64) error) error {
	maps, err := proc.ReadMaps(e.p.Pid())
	if err != nil {
		return err
	}
	return e.scanStacks(maps, sps, fn)
}

// scanStacks is scanSignalFrames with the target's mappings given.
func (e *Engine) scanStacks(maps []proc.Mapping, sps []uint64, fn func(slot, v uint64) error) error {
	for _, sp := range sps {
		var end uint64
		for _, m := range maps {
			if sp >= m.Start && sp < m.End {
				end = m.End
			}
		}
		if end == 0 {
			continue
		}
		sp &^= 7
		if end-sp > maxStackScan {
			end = sp + maxStackScan
		}
		buf := make([]byte, end-sp)
		if err := e.p.ReadMem(sp, buf); err != nil {
			return fmt.Errorf("scan stack at %#x: %w", sp, err)
		}
		for off := 0; off+8 <= len(buf); off += 8 {
			if err := fn(sp+uint64(off), binary.LittleEndian.Uint64(buf[off:])); err != nil {
				return err
			}
		}
	}
	return nil
}

func (e *Engine) isSigframeRip(slot uint64) bool {
	if slot < sigframeRipOff {
		return false
	}
	var b [8]byte
	if e.p.ReadMem(slot-sigframeRipOff, b[:]) != nil {
		return false
	}
	code := make([]byte, len(restorerCode))
	if e.p.ReadMem(binary.LittleEndian.Uint64(b[:]), code) != nil {
		return false
	}
	return bytes.Equal(code, restorerCode)
}

// ConvertSleds turns each five-NOP sled at addrs into one NOP5, in stop
// mode (docs/DESIGN.md §3.4). Afterwards the sites take the live protocol; the
// sled is what RestoreAll puts back.
func (e *Engine) ConvertSleds(addrs []uint64) (Stats, error) {
	sled := bytes.Repeat([]byte{opNop1}, 5)
	ps := make([]Patch, len(addrs))
	for i, a := range addrs {
		ps[i] = Patch{Addr: a, Old: sled, New: NOP5}
	}
	return e.ApplyStop(ps)
}

// origPatches returns, sorted by address, a patch with New = the original
// bytes for every site the engine touched.
func (e *Engine) origPatches() []Patch {
	t := e.table.Load()
	if t == nil {
		return nil
	}
	all := make([]Patch, len(t.addrs))
	for i, a := range t.addrs {
		all[i] = Patch{Addr: a, New: t.origs[i].bytes(), Region: t.region[i], Detour: t.detour[i]}
	}
	return all
}

// RestoreInto writes the original bytes of every touched site into m, the
// memory of a forked child of the target, which is stopped: a child must
// not run into our CALLs or INT3s. Each stretch of text is read and written
// back whole, except for sites that hold a uprobe's branch into its
// trampoline (copied from the parent, see uprobe.go), which are left alone.
//
// It takes no lock: a fork can be reported in the middle of a batch.
func (e *Engine) RestoreInto(m *proc.Mem) error {
	all := e.origPatches()
	runs, err := e.readRunsFrom(m.ReadVM, all, nil)
	if err != nil {
		return err
	}
	var areas []Area
	if a := e.areas.Load(); a != nil {
		areas = *a
	}
	bt := &batch{ps: all, runs: runs, drop: make([]bool, len(all))}
	for _, r := range runs {
		for _, i := range r.sites {
			off := all[i].Addr - r.addr
			now := r.buf[off : off+all[i].size()]
			// An INT3 is restored whatever put it there: ours, the child
			// would die of it.
			if now[0] != e.arch.Breakpoint() && e.arch.UprobeHeld(all[i].Addr, now, all[i].New, areas) {
				bt.drop[i] = true
				continue
			}
			copy(now, all[i].New)
		}
		if err := e.writeRun(bt, r, m.Write); err != nil {
			return fmt.Errorf("restore the text of a forked child: %w", err)
		}
	}
	return nil
}

// RestoreAll puts back the original bytes of every site the engine ever
// touched, in one batch, whatever state the engine left a site in (even an
// INT3 left by a batch that failed midway). A site whose bytes another tool
// changed is left alone (see uprobe.go), with two repairs: under a uprobe's
// INT3 over our CALL, the CALL's tail is replaced by the original one and
// the INT3 kept; and the original first byte in front of our tail (a
// uprobe that came and went: the kernel put the file's byte back) gets the
// original tail. Held lists the sites left alone afterwards.
func (e *Engine) RestoreAll() (Stats, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	t := e.table.Load()
	if t == nil {
		return Stats{}, nil
	}
	bp := e.arch.Breakpoint()
	all := e.origPatches()
	runs, err := e.readRuns(all)
	if err != nil {
		return Stats{}, fmt.Errorf("restore sites: %w", err)
	}
	var ps []Patch
	var gone []Held
	for _, r := range runs {
		for _, i := range r.sites {
			addr, orig := all[i].Addr, all[i].New
			off := addr - r.addr
			now := r.buf[off : off+all[i].size()]
			w := t.written[i].bytes() // all lists the table's sites in order
			switch {
			case bytes.Equal(now, orig):
				// Nothing to do (a tool that held the site is gone).
				delete(e.held, addr)
			case bytes.Equal(now, w) || bytes.Equal(now, t.insns[i].bytes()):
				all[i].Old = bytes.Clone(now)
				ps = append(ps, all[i])
			case now[0] == bp && w[0] != bp && bytes.Equal(now[1:], w[1:]):
				// A uprobe's INT3 over what we wrote: the tail is ours.
				gone = append(gone, Held{Addr: addr, Found: bytes.Clone(now), Uprobe: true})
				if !bytes.Equal(now[1:], orig[1:]) {
					nw := append([]byte{bp}, orig[1:]...)
					ps = append(ps, Patch{Addr: addr, Old: bytes.Clone(now), New: nw, emul: orig, Region: all[i].Region, Detour: all[i].Detour})
				}
			case now[0] == orig[0] && w[0] != orig[0] && bytes.Equal(now[1:], w[1:]):
				// A uprobe placed over what we wrote and removed
				// again: the kernel writes the file's first byte
				// back over its INT3, in front of our tail, which
				// makes a broken instruction. Ours to put back.
				all[i].Old = bytes.Clone(now)
				ps = append(ps, all[i])
			default:
				gone = append(gone, Held{Addr: addr, Found: bytes.Clone(now)})
			}
		}
	}
	// An INT3-headed site cannot be checked by Arch.Check as an old
	// value, and needs none: the live protocol starts by writing INT3.
	st, err := e.apply(ps, e.mode, true)
	areas := e.lazyAreas()
	for _, h := range gone {
		if !h.Uprobe {
			h.Uprobe = e.arch.UprobeHeld(h.Addr, h.Found, t.origs[t.index(h.Addr)].bytes(), areas())
		}
		e.held[h.Addr] = h
	}
	st.Held += len(gone)
	return st, err
}

// Held returns the sites the engine left alone, sorted by address: another
// tool changed their bytes (see uprobe.go). After RestoreAll these are the
// sites that do not hold their original bytes because of that tool. It is
// safe for concurrent use.
func (e *Engine) Held() []Held {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]Held, 0, len(e.held))
	for _, h := range e.held {
		out = append(out, h)
	}
	slices.SortFunc(out, func(a, b Held) int { return cmp.Compare(a.Addr, b.Addr) })
	return out
}

// SignalFrameIn reports whether a signal frame on the stack of a stopped
// thread (one stack pointer of sps each) would resume at a program counter
// for which inside is true: that code must stay mapped until the handler
// returns. Only valid between StopAll and ResumeAll.
func (e *Engine) SignalFrameIn(sps []uint64, inside func(pc uint64) bool) (bool, error) {
	found := false
	err := e.scanSignalFrames(sps, func(slot, v uint64) error {
		if !found && inside(v) && e.isSigframeRip(slot) {
			found = true
		}
		return nil
	})
	return found, err
}
