package agent

import (
	"encoding/binary"
	"fmt"
	"math/bits"
)

// Addrs are the addresses of the agent's parts in a target where its
// region starts at Base (page aligned).
type Addrs struct {
	Base       uint64
	Entry      uint64 // lt_entry: stub target
	Return     uint64 // lt_return: hijacked return address
	ReturnKeep uint64 // lt_return_keep: hijacked return address of a keep site's frame
	Sigtrap    uint64 // lt_sigtrap: SIGTRAP handler (SA_SIGINFO)
	Restorer   uint64 // lt_restorer: SA_RESTORER
	Ctl        uint64 // control page (map private anonymous, MADV_WIPEONFORK)
	Enabled    uint64 // u32 in the control page
	Graph      uint64 // u32 in the control page
	Owner      uint64 // struct lt_owner in the control page (see [Owner])
	Priv       uint64 // private region (map private anonymous)
	OldSigtrap uint64 // struct sigaction slot for the previous SIGTRAP action
	Remote     uint64 // lt_remote: `syscall; int3` for the tracer's remote syscalls
	RemoteSave uint64 // struct lt_remote_save: registers to give a stranded thread back
	Shared     uint64 // shared memfd (map MAP_SHARED)
	// HookRaise and HookResumeOrRethrow run in place of libgcc's
	// _Unwind_RaiseException and _Unwind_Resume_or_Rethrow (graph mode):
	// point the callers' GOT slots at them, after writing the real
	// functions' addresses at UnwindRaise and UnwindResumeOrRethrow (u64s
	// in the private region).
	HookRaise             uint64
	HookResumeOrRethrow   uint64
	UnwindRaise           uint64
	UnwindResumeOrRethrow uint64
}

// RuntimeHook is an agent function that runs in place of a function of the C or
// C++ runtime in graph mode (doc.go, "Unwinder hooks"): the tracer writes
// the real function's address at Real, then points the callers' GOT slots
// of Sym at Hook.
type RuntimeHook struct {
	Sym  string // the function it replaces
	Hook uint64 // the hook's address
	Real uint64 // u64 in the private region: the real function's address
}

// RuntimeHooks returns every hook of the agent, _Unwind_RaiseException first.
func (a Addrs) RuntimeHooks() []RuntimeHook {
	real := a.Priv + PrivUnwindOff
	return []RuntimeHook{
		{"_Unwind_RaiseException", a.HookRaise, a.UnwindRaise},
		{"_Unwind_Resume_or_Rethrow", a.HookResumeOrRethrow, a.UnwindResumeOrRethrow},
		{"__cxa_begin_catch", a.Base + HookBeginCatchOff, real + UnwindRealBeginCatchOff},
		{"longjmp", a.Base + HookLongjmpOff, real + UnwindRealLongjmpOff},
		{"_longjmp", a.Base + HookLongjmpUOff, real + UnwindRealLongjmpUOff},
		{"siglongjmp", a.Base + HookSiglongjmpOff, real + UnwindRealSiglongjmpOff},
		{"__longjmp_chk", a.Base + HookLongjmpChkOff, real + UnwindRealLongjmpChkOff},
	}
}

// AddrsAt returns the addresses of the agent's parts for base.
func AddrsAt(base uint64) Addrs {
	return Addrs{
		Base:       base,
		Entry:      base + EntryOff,
		Return:     base + ReturnOff,
		ReturnKeep: base + ReturnKeepOff,
		Sigtrap:    base + SigtrapOff,
		Restorer:   base + RestorerOff,
		Ctl:        base + CtlOff,
		Enabled:    base + CtlOff + CtlEnabledOff,
		Graph:      base + CtlOff + CtlGraphOff,
		Owner:      base + CtlOff + CtlOwnerOff,
		Priv:       base + PrivOff,
		OldSigtrap: base + PrivOff + PrivOldSigtrapOff,
		Remote:     base + RemoteOff,
		RemoteSave: base + PrivOff + PrivRemoteOff,
		Shared:     base + SharedOff,

		HookRaise:             base + HookRaiseOff,
		HookResumeOrRethrow:   base + HookResumeOrRethrowOff,
		UnwindRaise:           base + PrivOff + PrivUnwindOff + UnwindRealRaiseOff,
		UnwindResumeOrRethrow: base + PrivOff + PrivUnwindOff + UnwindRealResumeOrRethrowOff,
	}
}

// ThreadSlotAddr returns the address of thread slot i (0 <= i < MaxThreads).
func (a Addrs) ThreadSlotAddr(i int) uint64 {
	return a.Priv + PrivThreadsOff + uint64(i)*SizeofThread
}

// ShadowEntryAddr returns the address of entry j (0 <= j < ShadowDepth)
// of the shadow stack of thread slot i.
func (a Addrs) ShadowEntryAddr(i, j int) uint64 {
	return a.Priv + PrivShadowOff + (uint64(i)*ShadowDepth+uint64(j))*SizeofShadow
}

// ShadowStackAddr returns the address of the shadow stack of thread slot i
// (ShadowDepth entries of SizeofShadow bytes).
func (a Addrs) ShadowStackAddr(i int) uint64 { return a.ShadowEntryAddr(i, 0) }

// ThreadHash returns the thread table slot where the agent starts probing
// for thread pointer tp (the thread's fs_base); it probes up to MaxProbes
// consecutive slots, wrapping around.
func ThreadHash(tp uint64) int {
	return int((tp * 0x9e3779b97f4a7c15) >> (64 - bits.TrailingZeros(MaxThreads)))
}

// ThreadSlot is a decoded thread table slot (struct lt_thread).
type ThreadSlot struct {
	Key   uint64 // thread pointer, KeyEmpty or KeyRetired
	Tid   uint32
	Depth uint32 // shadow entries in use (clamp with [ThreadSlot.Frames])
	Chunk uint64 // offset of the thread's OWNED chunk in shared memory, 0: none
	Pos   uint32 // records written in Chunk
	Lost  uint32 // events dropped since Chunk was taken
	Busy  uint64 // nonzero while the thread runs in the agent
}

// InUse reports whether the slot belongs to a thread.
func (s ThreadSlot) InUse() bool { return s.Key != KeyEmpty && s.Key != KeyRetired }

// Frames returns the number of valid shadow entries, Depth clamped to
// ShadowDepth (the target's memory is untrusted).
func (s ThreadSlot) Frames() int { return int(min(s.Depth, ShadowDepth)) }

// DecodeThreadSlot decodes a slot from the SizeofThread bytes read at
// [Addrs.ThreadSlotAddr].
func DecodeThreadSlot(b []byte) (ThreadSlot, error) {
	if len(b) < SizeofThread {
		return ThreadSlot{}, fmt.Errorf("decode thread slot: %d bytes, need %d", len(b), SizeofThread)
	}
	le := binary.LittleEndian
	return ThreadSlot{
		Key:   le.Uint64(b[ThreadKeyOff:]),
		Tid:   le.Uint32(b[ThreadTidOff:]),
		Depth: le.Uint32(b[ThreadDepthOff:]),
		Chunk: le.Uint64(b[ThreadChunkOff:]),
		Pos:   le.Uint32(b[ThreadPosOff:]),
		Lost:  le.Uint32(b[ThreadLostOff:]),
		Busy:  le.Uint64(b[ThreadBusyOff:]),
	}, nil
}

// RetiredKey returns the 8 bytes to write at ThreadSlotAddr(i)+ThreadKeyOff
// to retire the slot of an exited thread (see the package documentation).
func RetiredKey() []byte {
	return binary.LittleEndian.AppendUint64(nil, KeyRetired)
}

// ShadowEntry is a decoded shadow stack entry (struct lt_shadow): one
// hijacked return.
type ShadowEntry struct {
	Orig uint64 // the original return address
	Slot uint64 // stack address that held it and now holds lt_return
	Site uint32 // site index of the hijacked frame
}

// DecodeShadowEntry decodes one entry from SizeofShadow bytes.
func DecodeShadowEntry(b []byte) (ShadowEntry, error) {
	if len(b) < SizeofShadow {
		return ShadowEntry{}, fmt.Errorf("decode shadow entry: %d bytes, need %d", len(b), SizeofShadow)
	}
	le := binary.LittleEndian
	return ShadowEntry{
		Orig: le.Uint64(b[ShadowOrigOff:]),
		Slot: le.Uint64(b[ShadowSlotOff:]),
		Site: le.Uint32(b[ShadowSiteOff:]) &^ Capture,
	}, nil
}

// DecodeShadowStack decodes the first n entries of a shadow stack read
// from [Addrs.ShadowStackAddr], oldest first. n is clamped to what b holds.
func DecodeShadowStack(b []byte, n int) []ShadowEntry {
	n = max(0, min(n, len(b)/SizeofShadow, ShadowDepth))
	out := make([]ShadowEntry, n)
	for i := range out {
		out[i], _ = DecodeShadowEntry(b[i*SizeofShadow:])
	}
	return out
}

// Sigaction is the kernel's struct sigaction on x86-64 (rt_sigaction).
type Sigaction struct {
	Handler, Flags, Restorer, Mask uint64
}

const (
	saSiginfo  = 0x4
	saOnstack  = 0x08000000
	saRestart  = 0x10000000
	saRestorer = 0x04000000
)

// SigtrapAction returns the action the tracer installs for SIGTRAP (with
// the previous one saved at [Addrs.OldSigtrap] by the same rt_sigaction):
// lt_sigtrap with SA_SIGINFO|SA_RESTORER|SA_ONSTACK|SA_RESTART and
// lt_restorer, blocking nothing extra.
func (a Addrs) SigtrapAction() Sigaction {
	return Sigaction{Handler: a.Sigtrap, Flags: saSiginfo | saRestorer | saOnstack | saRestart, Restorer: a.Restorer}
}

// Encode returns the SizeofSigaction bytes of s.
func (s Sigaction) Encode() []byte {
	b := make([]byte, SizeofSigaction)
	le := binary.LittleEndian
	le.PutUint64(b[SigactionHandlerOff:], s.Handler)
	le.PutUint64(b[SigactionFlagsOff:], s.Flags)
	le.PutUint64(b[SigactionRestorerOff:], s.Restorer)
	le.PutUint64(b[SigactionMaskOff:], s.Mask)
	return b
}

// DecodeSigaction decodes SizeofSigaction bytes.
func DecodeSigaction(b []byte) (Sigaction, error) {
	if len(b) < SizeofSigaction {
		return Sigaction{}, fmt.Errorf("decode sigaction: %d bytes, need %d", len(b), SizeofSigaction)
	}
	le := binary.LittleEndian
	return Sigaction{
		Handler:  le.Uint64(b[SigactionHandlerOff:]),
		Flags:    le.Uint64(b[SigactionFlagsOff:]),
		Restorer: le.Uint64(b[SigactionRestorerOff:]),
		Mask:     le.Uint64(b[SigactionMaskOff:]),
	}, nil
}

// Ctl is the decoded control page.
type Ctl struct {
	Enabled, Graph bool
}

// ctlFlagsSize is the size of the flags at the start of the control page
// (enabled and graph); the owner record follows them.
const ctlFlagsSize = CtlGraphOff + 4

// Encode returns the bytes to write at [Addrs.Ctl]: the flags only, never
// the owner record after them.
func (c Ctl) Encode() []byte {
	b := make([]byte, ctlFlagsSize)
	if c.Enabled {
		binary.LittleEndian.PutUint32(b[CtlEnabledOff:], 1)
	}
	if c.Graph {
		binary.LittleEndian.PutUint32(b[CtlGraphOff:], 1)
	}
	return b
}

// DecodeCtl decodes the flags read at [Addrs.Ctl].
func DecodeCtl(b []byte) (Ctl, error) {
	if len(b) < ctlFlagsSize {
		return Ctl{}, fmt.Errorf("decode control page: %d bytes, need %d", len(b), ctlFlagsSize)
	}
	le := binary.LittleEndian
	return Ctl{Enabled: le.Uint32(b[CtlEnabledOff:]) != 0, Graph: le.Uint32(b[CtlGraphOff:]) != 0}, nil
}

// Span is an address range [Lo, Hi).
type Span struct{ Lo, Hi uint64 }

// CodeTable is the agent's code table (lt_priv.code): the address ranges
// of the target's modules, where graph mode may hijack a return address
// (a return address anywhere else is in JIT-compiled code, whose runtime
// may read it back; doc.go, "Graph mode"). Write keeps its generation.
type CodeTable struct {
	gen uint32 // the last generation written, even; 0: none yet
}

// Write makes spans the code table of the agent at a, through write (the
// target's memory), as the agent's seqlock wants it: the generation made
// odd (lookups fail: calls are left alone meanwhile), the count and the
// spans, then the generation even and new, which also voids every
// thread's cached ranges. spans must be sorted and disjoint; beyond
// MaxCode the rest is left out (calls from there are left alone).
func (c *CodeTable) Write(write func(addr uint64, b []byte) error, a Addrs, spans []Span) error {
	if err := c.Begin(write, a); err != nil {
		return err
	}
	spans = spans[:min(len(spans), MaxCode)]
	b := make([]byte, 4+len(spans)*SizeofSpan)
	le := binary.LittleEndian
	le.PutUint32(b, uint32(len(spans)))
	for i, s := range spans {
		le.PutUint64(b[4+i*SizeofSpan+SpanLoOff:], s.Lo)
		le.PutUint64(b[4+i*SizeofSpan+SpanHiOff:], s.Hi)
	}
	if err := write(a.Priv+PrivNcodeOff, b); err != nil {
		return fmt.Errorf("write the code table: %w", err)
	}
	return c.setGen(write, a, c.gen+1)
}

// Begin makes the generation odd, if it is not yet: until the next Write
// the agent knows no code, and graph mode leaves every new call alone.
// For a dlclose, between RT_DELETE and RT_CONSISTENT: a module's text is
// about to go, and another mapping may take its place.
func (c *CodeTable) Begin(write func(addr uint64, b []byte) error, a Addrs) error {
	if c.gen&1 != 0 {
		return nil
	}
	return c.setGen(write, a, c.gen+1)
}

func (c *CodeTable) setGen(write func(addr uint64, b []byte) error, a Addrs, gen uint32) error {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], gen)
	if err := write(a.Priv+PrivCodeGenOff, b[:]); err != nil {
		return fmt.Errorf("write the code table: %w", err)
	}
	c.gen = gen
	return nil
}
