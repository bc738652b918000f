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
package textpoke

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

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
	membarrierQuery        = 0
	membarrierSyncCore     = 1 << 5 // MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE
	membarrierRegisterSync = 1 << 6 // MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE
)

// Options configure an Engine.
type Options struct {
	// Mode is the protocol to use; ModeAuto picks one (see New).
	Mode Mode
	// Arch is the instruction set; nil means AMD64.
	Arch Arch
}

// Patch is one site to rewrite: the bytes expected there now, and the bytes
// to write.
type Patch struct {
	Addr uint64
	Old  []byte
	New  []byte
}

// Stats describe one batch, or the sum of several.
type Stats struct {
	Mode     Mode
	Sites    int           // sites written
	Syncs    int           // membarrier calls in the target
	Writes   int           // writes through /proc/PID/mem
	Traps    int           // INT3 hits emulated during the batch
	Duration time.Duration // wall time of the batch
	Paused   time.Duration // stop mode: how long every thread was stopped
}

// ErrVerify means a site did not hold the bytes the batch expected; nothing
// of the batch was written.
var ErrVerify = errors.New("unexpected bytes at site")

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
}

// maxSiteLen bounds Arch.SiteLen; site bytes live in fixed arrays so that a
// batch of 100,000 sites allocates nothing per site.
const maxSiteLen = 8

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

type trapTable struct {
	addrs []uint64 // sorted
	insns [][]byte
	origs []siteBytes // the bytes each site held before the engine first touched it
}

func (t *trapTable) lookup(addr uint64) []byte {
	if t == nil {
		return nil
	}
	i := sort.Search(len(t.addrs), func(i int) bool { return t.addrs[i] >= addr })
	if i < len(t.addrs) && t.addrs[i] == addr {
		return t.insns[i]
	}
	return nil
}

// New prepares an engine for process p: it asks the target's kernel for
// membarrier support (MEMBARRIER_CMD_QUERY) and registers the target for
// SYNC_CORE, then picks the mode. ModeAuto means live mode unless
// membarrier is unavailable or some thread blocks or ignores SIGTRAP (a
// forced trap would then reset the process-wide handler to SIG_DFL and kill
// the process: kernel/signal.c, force_sig_info_to_task), in which case stop
// mode is used; Reason says why.
func New(p *proc.Process, opts Options) (*Engine, error) {
	e := &Engine{p: p, arch: opts.Arch}
	if e.arch == nil {
		e.arch = AMD64{}
	}
	if e.arch.SiteLen() > maxSiteLen {
		return nil, fmt.Errorf("sites of %d bytes: at most %d", e.arch.SiteLen(), maxSiteLen)
	}
	if err := e.registerMembarrier(); err != nil {
		return nil, err
	}
	e.mode = opts.Mode
	if e.mode != ModeStop {
		var reasons []string
		if !e.membarrier {
			reasons = append(reasons, "membarrier SYNC_CORE is unavailable")
		}
		blocked, ignored, err := proc.SignalMasks(p.Pid(), unix.SIGTRAP)
		if err != nil {
			return nil, err
		}
		if blocked {
			reasons = append(reasons, "a thread blocks SIGTRAP")
		}
		if ignored {
			reasons = append(reasons, "the process ignores SIGTRAP")
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

func (e *Engine) registerMembarrier() error {
	r, err := e.p.HoldRemote()
	if err != nil {
		return fmt.Errorf("prepare pid %d for patching: %w", e.p.Pid(), err)
	}
	defer r.Release()
	mask, err := r.Syscall(proc.SysMembarrier, membarrierQuery, 0, 0)
	if err != nil {
		return fmt.Errorf("query membarrier in pid %d: %w", e.p.Pid(), err)
	}
	if int64(mask) < 0 || mask&membarrierSyncCore == 0 || mask&membarrierRegisterSync == 0 {
		return nil
	}
	if _, err := r.SyscallOK("membarrier register", proc.SysMembarrier, membarrierRegisterSync, 0, 0); err != nil {
		return nil //nolint:nilerr // no SYNC_CORE: stop mode
	}
	e.membarrier = true
	return nil
}

// Mode returns the protocol the engine uses: ModeLive or ModeStop.
func (e *Engine) Mode() Mode { return e.mode }

// Reason says why the engine uses stop mode ("" in live mode).
func (e *Engine) Reason() string { return e.why }

// Membarrier reports whether the target can sync its cores with membarrier.
func (e *Engine) Membarrier() bool { return e.membarrier }

// handleTrap runs on the ptrace thread for every INT3 SIGTRAP.
func (e *Engine) handleTrap(tid int, regs *unix.PtraceRegs) bool {
	addr := e.arch.TrapSite(e.arch.PC(regs))
	insn := e.table.Load().lookup(addr)
	if insn == nil {
		return false // not one of our sites: the application's SIGTRAP
	}
	err := e.arch.Emulate(regs, addr, insn, func(sp, val uint64) error {
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
// wraps ErrVerify and names the site and the bytes found).
func (e *Engine) Apply(patches []Patch) (Stats, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.apply(patches, e.mode)
}

// ApplyStop is Apply in stop mode, whatever the engine's mode.
func (e *Engine) ApplyStop(patches []Patch) (Stats, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.apply(patches, ModeStop)
}

func (e *Engine) apply(patches []Patch, mode Mode) (Stats, error) {
	// While INT3s are in the text, threads of the target wait on the
	// ptrace thread; on a machine whose cores they keep busy, it must not
	// wait for a CPU behind them.
	defer e.p.BoostThread(-10)()
	start := time.Now()
	st := Stats{Mode: mode}
	ps, err := e.prepare(patches)
	if err != nil || len(ps) == 0 {
		return st, err
	}
	tPrep := time.Now()
	runs, err := e.verify(ps)
	if err != nil {
		return st, err
	}
	for _, pt := range ps {
		if e.arch.Sled(pt.Old) && mode != ModeStop {
			return st, fmt.Errorf("site %#x is a NOP sled: convert sleds with ConvertSleds (stop mode) first", pt.Addr)
		}
	}
	if debugTiming {
		fmt.Fprintf(os.Stderr, "textpoke: prepare %v verify %v\n", tPrep.Sub(start), time.Since(tPrep))
	}
	writes0 := e.p.Mem().Writes()
	traps0 := e.traps.Load()
	if mode == ModeStop {
		err = e.applyStop(ps, runs, &st)
	} else {
		err = e.applyLive(ps, runs, &st)
	}
	if debugTiming {
		fmt.Fprintf(os.Stderr, "textpoke: batch total %v\n", time.Since(start))
	}
	st.Sites = len(ps)
	st.Writes = int(e.p.Mem().Writes() - writes0)
	st.Traps = int(e.traps.Load() - traps0)
	st.Duration = time.Since(start)
	return st, err
}

// prepare sorts the batch and rejects malformed or overlapping patches.
func (e *Engine) prepare(patches []Patch) ([]Patch, error) {
	n := e.arch.SiteLen()
	ps := make([]Patch, 0, len(patches))
	for _, pt := range patches {
		if len(pt.Old) != n || len(pt.New) != n {
			return nil, fmt.Errorf("site %#x: patch must be %d bytes old and new", pt.Addr, n)
		}
		if err := e.arch.Check(pt.Addr, pt.New); err != nil {
			return nil, err
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
		if ps[i].Addr < ps[i-1].Addr+uint64(n) {
			return nil, fmt.Errorf("sites %#x and %#x overlap", ps[i-1].Addr, ps[i].Addr)
		}
	}
	return ps, nil
}

// run is a stretch of text covering several nearby sites, written with one
// call. buf holds the bytes as they are now, and is updated as the protocol
// advances; rewriting unchanged bytes with their own values is harmless.
type run struct {
	addr  uint64
	buf   []byte
	sites []int // indices into the batch
}

// maxRunGap and maxRunLen bound coalescing: one /proc/PID/mem write costs
// about 1 µs plus a page-table walk per page, so merging sites that are a few
// KiB apart pays.
const (
	maxRunGap = 4096
	maxRunLen = 256 << 10
)

// readRuns groups the sites of ps (sorted by address) into runs and reads
// the text of each run.
func (e *Engine) readRuns(ps []Patch) ([]*run, error) {
	return e.readRunsFrom(e.p.Mem(), ps)
}

// readRunsFrom is readRuns from the memory m (another process's, say).
func (e *Engine) readRunsFrom(m *proc.Mem, ps []Patch) ([]*run, error) {
	n := uint64(e.arch.SiteLen())
	var runs []*run
	var cur *run
	var end uint64 // end of cur
	for i, pt := range ps {
		if cur != nil && pt.Addr+n-cur.addr <= maxRunLen && pt.Addr <= end+maxRunGap {
			end = pt.Addr + n
			cur.sites = append(cur.sites, i)
			continue
		}
		if cur != nil {
			cur.buf = make([]byte, end-cur.addr)
		}
		cur = &run{addr: pt.Addr, sites: []int{i}}
		end = pt.Addr + n
		runs = append(runs, cur)
	}
	if cur != nil {
		cur.buf = make([]byte, end-cur.addr)
	}
	for _, r := range runs {
		if err := m.Read(r.addr, r.buf); err != nil {
			return nil, err
		}
	}
	return runs, nil
}

// verify reads the text around every site, coalesced into runs, and checks
// that each site holds its Old bytes.
func (e *Engine) verify(ps []Patch) ([]*run, error) {
	n := uint64(e.arch.SiteLen())
	runs, err := e.readRuns(ps)
	if err != nil {
		return nil, fmt.Errorf("verify sites: %w", err)
	}
	var bad []string
	for _, r := range runs {
		for _, i := range r.sites {
			off := ps[i].Addr - r.addr
			got := r.buf[off : off+n]
			if !bytes.Equal(got, ps[i].Old) {
				bad = append(bad, fmt.Sprintf("site %#x holds % x, expected % x", ps[i].Addr, got, ps[i].Old))
			}
		}
	}
	if len(bad) > 0 {
		more := ""
		if len(bad) > 3 {
			more = fmt.Sprintf(" (and %d more)", len(bad)-3)
			bad = bad[:3]
		}
		return nil, fmt.Errorf("%w: %s%s; nothing was written", ErrVerify, strings.Join(bad, "; "), more)
	}
	return runs, nil
}

// writeRuns writes every run with write; set changes each run's buffer
// first.
func (e *Engine) writeRuns(runs []*run, ps []Patch, write func(addr uint64, b []byte) error, set func(buf []byte, pt Patch)) error {
	for _, r := range runs {
		for _, i := range r.sites {
			off := ps[i].Addr - r.addr
			set(r.buf[off:off+uint64(e.arch.SiteLen())], ps[i])
		}
		if err := write(r.addr, r.buf); err != nil {
			return err
		}
	}
	return nil
}

// publish makes the trap handler emulate the batch's new instructions. ps
// is sorted; the table is rebuilt by merging, never modified in place.
func (e *Engine) publish(ps []Patch) {
	old := e.table.Load()
	if old == nil {
		old = &trapTable{}
	}
	n := len(old.addrs) + len(ps)
	t := &trapTable{addrs: make([]uint64, 0, n), insns: make([][]byte, 0, n), origs: make([]siteBytes, 0, n)}
	i, j := 0, 0
	for i < len(old.addrs) || j < len(ps) {
		switch {
		case j == len(ps) || i < len(old.addrs) && old.addrs[i] < ps[j].Addr:
			t.addrs = append(t.addrs, old.addrs[i])
			t.insns = append(t.insns, old.insns[i])
			t.origs = append(t.origs, old.origs[i])
			i++
		default:
			// A site seen for the first time: its verified Old bytes are
			// its original ones.
			orig := mkSiteBytes(ps[j].Old)
			if i < len(old.addrs) && old.addrs[i] == ps[j].Addr {
				orig = old.origs[i]
				i++
			}
			t.addrs = append(t.addrs, ps[j].Addr)
			t.insns = append(t.insns, ps[j].New)
			t.origs = append(t.origs, orig)
			j++
		}
	}
	e.table.Store(t)
}

var debugTiming = os.Getenv("LIVETRACE_DEBUG_TIMING") != ""

func (e *Engine) applyLive(ps []Patch, runs []*run, st *Stats) error {
	// The whole protocol runs on the ptrace thread, so that INT3 hits are
	// emulated between the pieces of each write and during each sync,
	// instead of waiting for a goroutine hand-off.
	return e.p.Batch(func(b *proc.Batch) (err error) {
		t0 := time.Now()
		r, err := b.HoldRemote()
		if err != nil {
			return fmt.Errorf("patch pid %d: %w", e.p.Pid(), err)
		}
		if debugTiming {
			fmt.Fprintf(os.Stderr, "textpoke: hold %v\n", time.Since(t0))
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
		// The handler must know the new instructions before the first
		// INT3 lands.
		e.publish(ps)
		bp := e.arch.Breakpoint()
		steps := []func(buf []byte, pt Patch){
			func(buf []byte, pt Patch) { buf[0] = bp },
			func(buf []byte, pt Patch) { copy(buf[1:], pt.New[1:]) },
			func(buf []byte, pt Patch) { buf[0] = pt.New[0] },
		}
		for i, step := range steps {
			t0 := time.Now()
			if err := e.writeRuns(runs, ps, b.Write, step); err != nil {
				return fmt.Errorf("patch pid %d (step %d of 3): %w", e.p.Pid(), i+1, err)
			}
			t1 := time.Now()
			if err := sync(); err != nil {
				return fmt.Errorf("patch pid %d (sync %d of 3): %w", e.p.Pid(), i+1, err)
			}
			if debugTiming {
				fmt.Fprintf(os.Stderr, "textpoke: step %d write %v sync %v\n", i+1, t1.Sub(t0), time.Since(t1))
			}
		}
		return nil
	})
}

func (e *Engine) applyStop(ps []Patch, runs []*run, st *Stats) error {
	e.publish(ps)
	t0 := time.Now()
	if err := e.p.StopAll(); err != nil {
		_ = e.p.ResumeAll()
		return fmt.Errorf("stop pid %d: %w", e.p.Pid(), err)
	}
	defer func() {
		st.Paused = time.Since(t0)
	}()
	err := e.stopped(ps, runs, st)
	if rerr := e.p.ResumeAll(); err == nil && rerr != nil {
		err = rerr
	}
	return err
}

// stopped writes a batch while every thread is stopped.
func (e *Engine) stopped(ps []Patch, runs []*run, st *Stats) error {
	// Threads stopped inside a sled we are about to rewrite have only
	// NOPs left in front of them: move them to the end of the site.
	var sleds []Patch
	for _, pt := range ps {
		if e.arch.Sled(pt.Old) {
			sleds = append(sleds, pt)
		}
	}
	if len(sleds) > 0 {
		if err := e.fixSledPCs(sleds); err != nil {
			return err
		}
	}
	if err := e.writeRuns(runs, ps, e.p.WriteMem, func(buf []byte, pt Patch) { copy(buf, pt.New) }); err != nil {
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
	maps, err := proc.ReadMaps(e.p.Pid())
	if err != nil {
		return err
	}
	n := uint64(e.arch.SiteLen())
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
			v := binary.LittleEndian.Uint64(buf[off:])
			site, ok := inside(v)
			if !ok {
				continue
			}
			slot := sp + uint64(off)
			if !e.isSigframeRip(slot) {
				return fmt.Errorf("cannot convert the sled at %#x: the stack word at %#x holds %#x, inside the sled, and is not a signal frame; "+
					"retry, or build with clang -fpatchable-function-entry=5 (a single NOP5)", site, slot, v)
			}
			var b [8]byte
			binary.LittleEndian.PutUint64(b[:], site+n)
			if err := e.p.WriteMem(slot, b[:]); err != nil {
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
// mode (DESIGN.md §3.4). Afterwards the sites take the live protocol; the
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
		all[i] = Patch{Addr: a, New: t.origs[i].bytes()}
	}
	return all
}

// RestoreInto writes the original bytes of every touched site into m, the
// memory of a forked child of the target, which is stopped: a child must
// not run into our CALLs or INT3s. Each stretch of text is read and written
// back whole.
//
// It takes no lock: a fork can be reported in the middle of a batch.
func (e *Engine) RestoreInto(m *proc.Mem) error {
	all := e.origPatches()
	runs, err := e.readRunsFrom(m, all)
	if err != nil {
		return err
	}
	if err := e.writeRuns(runs, all, m.Write, func(buf []byte, pt Patch) { copy(buf, pt.New) }); err != nil {
		return fmt.Errorf("restore the text of a forked child: %w", err)
	}
	return nil
}

// RestoreAll puts back the original bytes of every site the engine ever
// touched, in one batch, whatever state a site is in now (even an INT3 left
// by a batch that failed midway).
func (e *Engine) RestoreAll() (Stats, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := uint64(e.arch.SiteLen())
	all := e.origPatches()
	runs, err := e.readRuns(all)
	if err != nil {
		return Stats{}, fmt.Errorf("restore sites: %w", err)
	}
	var ps []Patch
	for _, r := range runs {
		for _, i := range r.sites {
			off := all[i].Addr - r.addr
			if now := r.buf[off : off+n]; !bytes.Equal(now, all[i].New) {
				all[i].Old = now
				ps = append(ps, all[i])
			}
		}
	}
	// An INT3-headed site cannot be checked by Arch.Check as an old
	// value, and needs none: the live protocol starts by writing INT3.
	return e.apply(ps, e.mode)
}
