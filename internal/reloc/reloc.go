// Package reloc decides whether the first instructions of an x86-64
// function can be moved out of the way of a 5-byte jmp, and moves them: the
// user-space form of the kernel's optprobe, which lets livetrace trace a
// function that was compiled without a patchable NOP (docs/DESIGN-NOTES.md).
//
// It is pure: bytes in, a [Plan] or a [Refusal] out, and relocated bytes
// from [Plan.Relocate]. Nothing here touches a process.
//
// # What is displaced
//
// [Analyze] takes the bytes of one function (symbol start to symbol end, or
// an .eh_frame FDE range) and its address. A leading ENDBR64 is kept in
// place, so that indirect branches into the function still land on it; the
// region starts after it. The region is the shortest run of whole
// instructions that covers at least 5 bytes (the size of `jmp rel32`):
// [Plan.Entry, Plan.Entry+Plan.Len).
//
// # The proof
//
// Writing `jmp stub` over the region is safe for every thread that enters
// the function afterwards only if no control transfer lands strictly inside
// the region, (Entry, Entry+Len): such a thread would execute the tail of
// the jmp. Analyze decodes the whole function linearly and refuses
//   - any direct jmp, jcc, call, loop or xbegin whose target lies inside;
//   - any function whose indirect jumps might go through a jump table (see
//     [Analyze]): the table is data the bytes do not show;
//   - any function it cannot decode to the end (data in text, or an
//     instruction golang.org/x/arch/x86/x86asm does not know, but for
//     ENDBR64/32, RDPKRU and WRPKRU, decoded by hand): a linear sweep
//     that lost its way proves nothing.
//
// Branches from outside the function are not seen here. Compilers do jump
// into a function from its split-off cold part (gcc's foo.cold) or from a
// shared tail; pass their targets in [Options.ExtraTargets], collected with
// [BranchTargets] over those ranges (or over the whole executable section).
//
// A branch to Entry itself is harmless: Entry holds the jmp to the stub,
// which runs the displaced instructions again, as the original would have
// done. Such branches are listed in [Plan.EntryBranches], because a tracer
// that records an event in the stub sees one event per taken branch.
//
// The displaced instructions themselves must be relocatable exactly: no
// call (its return address would point into the stub, and a thread could
// later return into a stub that was removed; with [Options.EmulateCalls] a
// call that is the last displaced instruction becomes push Entry+Len; jmp
// callee), no syscall or int (the kernel
// may report or restart at an address in the stub), no loop/jrcxz (rel8
// only), no xbegin, and no RIP-relative VEX/EVEX instruction (x86asm
// decodes their [rip+disp] as an absolute address, so they are detected by
// hand and refused).
//
// A return or jmp may end the region only as its last instruction: then
// the stub ends with it and needs no jump back. One that ends before 5
// bytes are covered is refused, the bytes after it belong to another
// block, unless only NOP padding follows it up to 5 bytes (gcc and clang
// align the loop that a leading `jmp test` skips over): no fall-through
// reaches the padding and, by the proof, no branch lands in it, so it is
// overwritten with the rest of the region and not copied into the stub.
//
// # What the caller must still do
//
//   - Check that no thread is inside the region, or returns into it, when
//     the jmp goes in or out, as the sled conversion does
//     (docs/DESIGN-NOTES.md): the proof here covers
//     only threads that enter the function afterwards.
//   - Place the stub within ±2 GiB of the function: [Plan.Patch] needs it,
//     and so do RIP-relative operands ([ErrOutOfReach]); branches fall back
//     to absolute jumps.
//   - Know that a fault in a displaced instruction (a push on a full stack,
//     a load from a bad pointer) is reported at the stub's address: a
//     signal handler that looks up the faulting pc (the Go runtime, a JIT)
//     or an unwinder without CFI for the stub sees an unknown address. An
//     emulated call returns to the original code, where the function's own
//     CFI describes the frame.
package reloc

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sort"

	"golang.org/x/arch/x86/x86asm"

	"github.com/livetrace/livetrace/internal/radix"
)

// JmpLen is the length of `jmp rel32`, the instruction written at
// [Plan.Entry]: the least number of bytes a region covers.
const JmpLen = 5

// endbr64 and endbr32 are decoded by hand: x86asm decodes them as a REP
// prefix followed by Op(0).
var (
	endbr64 = []byte{0xf3, 0x0f, 0x1e, 0xfa}
	endbr32 = []byte{0xf3, 0x0f, 0x1e, 0xfb}
)

// byHand are the instructions decoded by hand, which x86asm does not
// know: none has an operand in its encoding or transfers control, so each
// is copied as is and the linear sweep goes on after it. RDPKRU and WRPKRU
// (glibc's pkey_get and pkey_set) only read or write the PKRU register
// through eax, ecx and edx.
var byHand = []struct {
	name string
	b    []byte
}{
	{"ENDBR64", endbr64},
	{"ENDBR32", endbr32},
	{"RDPKRU", []byte{0x0f, 0x01, 0xee}},
	{"WRPKRU", []byte{0x0f, 0x01, 0xef}},
}

// handDecoded returns the name and length of the instruction of byHand
// that b starts with, or "", 0.
func handDecoded(b []byte) (string, int) {
	for _, h := range byHand {
		if len(b) >= len(h.b) && string(b[:len(h.b)]) == string(h.b) {
			return h.name, len(h.b)
		}
	}
	return "", 0
}

// Reason is why [Analyze] refuses a function. Its String is a short, fixed
// phrase, suitable for counting refusals; [Refusal] adds where.
type Reason int

const (
	// TooShort: the function has fewer than 5 bytes after its ENDBR64.
	TooShort Reason = iota + 1
	// BranchTarget: a direct branch (or an address in
	// [Options.ExtraTargets]) lands strictly inside the region.
	BranchTarget
	// DisplacedCall: a call is among the displaced instructions.
	DisplacedCall
	// EarlyExit: a return or jump ends the region before 5 bytes, and
	// the bytes after it up to 5 are not all NOP padding.
	EarlyExit
	// Unrelocatable: a displaced instruction cannot run at another
	// address with the same effect (syscall, int3, loop, jrcxz, xbegin...).
	Unrelocatable
	// VEXRIPRelative: a displaced VEX/EVEX/XOP instruction has a
	// RIP-relative operand, which x86asm does not report.
	VEXRIPRelative
	// Undecodable: the linear sweep of the function met bytes that do not
	// decode, or decode to an instruction that crosses the function end.
	Undecodable
	// JumpTable: the function has an indirect jmp that may go through a
	// jump table, whose targets cannot be checked.
	JumpTable
)

var reasonNames = map[Reason]string{
	TooShort:       "function shorter than 5 bytes",
	BranchTarget:   "branch target in region",
	DisplacedCall:  "displaced call",
	EarlyExit:      "ends in a return/jump before 5 bytes",
	Unrelocatable:  "unrelocatable instruction",
	VEXRIPRelative: "RIP-relative VEX/EVEX instruction",
	Undecodable:    "undecodable instruction",
	JumpTable:      "indirect jump through a possible jump table",
}

func (r Reason) String() string {
	if s, ok := reasonNames[r]; ok {
		return s
	}
	return fmt.Sprintf("Reason(%d)", int(r))
}

// Refusal is the error [Analyze] returns for a function it will not
// relocate: the [Reason], where (Off, from the function's address), and
// the instruction concerned. Use errors.As to get it.
type Refusal struct {
	Reason Reason
	Off    int    // offset from the function address of the culprit
	Inst   string // the culprit instruction in Intel syntax, if any
}

// Error returns, for example, "branch target at +3", "displaced call at +4
// (CALL .+16)" or "unrelocatable instruction SYSCALL at +1".
func (r *Refusal) Error() string {
	switch r.Reason {
	case TooShort:
		return fmt.Sprintf("function shorter than %d bytes (%d after ENDBR64)", JmpLen, r.Off)
	case BranchTarget:
		if r.Inst != "" {
			return fmt.Sprintf("branch target at +%d (from %s)", r.Off, r.Inst)
		}
		return fmt.Sprintf("branch target at +%d", r.Off)
	case Unrelocatable:
		return fmt.Sprintf("unrelocatable instruction %s at +%d", r.Inst, r.Off)
	case Undecodable:
		return fmt.Sprintf("undecodable at +%d", r.Off)
	}
	if r.Inst != "" {
		return fmt.Sprintf("%s at +%d (%s)", r.Reason, r.Off, r.Inst)
	}
	return fmt.Sprintf("%s at +%d", r.Reason, r.Off)
}

// Options tunes [Analyze]. The zero value is the default.
type Options struct {
	// MinLen is the least number of bytes to displace (default and
	// minimum [JmpLen]).
	MinLen int
	// EmulateCalls lets a call be the last displaced instruction: the
	// stub pushes the original return address, Entry+Len (outside the
	// region), and jumps to the callee, which returns into the original
	// code. Do not set it for a process with a CET shadow stack (Linux
	// /proc/PID/status "x86_Thread_features: shstk"): the callee's ret
	// would not match the shadow stack and the process would get SIGSEGV.
	// A call before the last instruction is always refused: its return
	// address would be inside the region.
	EmulateCalls bool
	// ExtraTargets are branch targets from outside the function's bytes
	// (its cold part, other functions), sorted in increasing order, as
	// [BranchTargets] returns them. A target strictly inside the region
	// refuses the function.
	ExtraTargets []uint64
	// ReadOnly, for a position-dependent executable (ELF ET_EXEC) only,
	// lets Analyze check absolute jump tables instead of refusing them
	// (see [ReadOnly]).
	ReadOnly *ReadOnly
	// KeepFirst leaves the function's first instruction in place, and
	// starts the region after it ([Plan.Kept]), when a stub can make up
	// for it having run before the tracer's call: a push of a register
	// other than rsp, r10 and r11 or a sub $imm,%rsp (undone before the
	// call and run again after), or an instruction that neither moves the
	// stack pointer nor writes memory (its flags and registers kept
	// across the call). A kernel uprobe placed on the function while the
	// jmp is in takes the first instruction from the file, not from the
	// process, and resumes right after it: inside the jmp, or on the
	// INT3s that pad it, when the region starts at the function, on the
	// jmp when it starts after the kept instruction. And removing the
	// uprobe writes the file's first byte back, which over a jmp leaves
	// a broken instruction; over the kept instruction, the same byte.
	// Analyze falls back to a region at the function's start when any
	// branch lands right after the kept instruction (it would enter the
	// stub without having run it) or the rest cannot be displaced.
	KeepFirst bool
}

// ReadOnly describes the read-only data of a position-dependent
// executable (ELF ET_EXEC), so that [Analyze] can check the absolute jump
// tables its compiler emitted, `jmp [index*8+table]`, rather than refuse
// every function that has one. Build it with [NewReadOnly].
//
// The proof: such a jmp goes to the 8-byte address stored at table +
// 8*index. A compiler puts the whole table in read-only data, and in a
// position-dependent executable its entries are link-time addresses
// written in the file: no relocation changes them at run time. So when
// the table lies in read-only data, and no 8-byte word at any byte offset
// of all the read-only data holds an address strictly inside the region,
// no entry of that table can send a thread there, whatever its bounds.
// A table anywhere else (writable data, outside the file) is refused.
//
// Do not use it for a shared library or a PIE: there, tables are
// relative offsets, or absolute addresses written by relocations.
type ReadOnly struct {
	// Ranges are the [lo, hi) link-time addresses of the read-only,
	// non-executable bytes of the file, sorted.
	Ranges [][2]uint64
	// Pointers are sorted: the values of the 8-byte little-endian words
	// at every byte offset of Ranges that fall in the executable code.
	Pointers []uint64
}

// NewReadOnly scans the read-only, non-executable segments of a
// position-dependent executable: segs[i] is the file's bytes at link-time
// address addrs[i] (the file-backed part of a PT_LOAD without PF_W and
// PF_X). code are the [lo, hi) ranges of its executable segments: only
// words that point into them are kept.
func NewReadOnly(addrs []uint64, segs [][]byte, code [][2]uint64) *ReadOnly {
	ro := &ReadOnly{}
	for i, b := range segs {
		ro.Ranges = append(ro.Ranges, [2]uint64{addrs[i], addrs[i] + uint64(len(b))})
		for _, r := range code {
			ScanWords(b, r[0], r[1], func(v uint64) { ro.Pointers = append(ro.Pointers, v) })
		}
	}
	sort.Slice(ro.Ranges, func(i, j int) bool { return ro.Ranges[i][0] < ro.Ranges[j][0] })
	radix.SortBy(ro.Pointers, 0)
	return ro
}

// ScanWords calls fn with each 8-byte little-endian word, at every byte
// offset of b, whose value lies in [lo, hi): what [ReadOnly.Pointers]
// holds, gathered a piece of the read-only data at a time (pieces that
// overlap by 7 bytes see every word once).
func ScanWords(b []byte, lo, hi uint64, fn func(v uint64)) {
	if hi <= lo {
		return
	}
	span := hi - lo
	for off := 0; off+8 <= len(b); off++ {
		if v := binary.LittleEndian.Uint64(b[off:]); v-lo < span {
			fn(v)
		}
	}
}

// MayHaveAbsoluteTable reports whether fn's bytes hold the encoding of an
// absolute jump table's jmp, `jmp *disp32(,%reg,8)` (FF 24 and a SIB byte
// of scale 8 and no base), anywhere: only for such a function does
// [Analyze] consult [ReadOnly.Pointers]. A byte test, so it may say yes
// for bytes that are no such instruction; never no for one that is.
func MayHaveAbsoluteTable(fn []byte) bool {
	for i := 0; i+2 < len(fn); i++ {
		if fn[i] == 0xff && fn[i+1] == 0x24 && fn[i+2]&7 == 5 && fn[i+2]>>6 == 3 {
			return true
		}
	}
	return false
}

// absoluteTable reports whether m is the operand of an absolute jump
// table that ro lets Analyze check: a qword [index*8+disp32], no base
// register, no segment, the table in read-only data.
func (ro *ReadOnly) absoluteTable(in x86asm.Inst, m x86asm.Mem) bool {
	if ro == nil || in.MemBytes != 8 || m.Base != 0 || m.Index == 0 || m.Scale != 8 || m.Segment != 0 {
		return false
	}
	t := uint64(m.Disp)
	for _, r := range ro.Ranges {
		if t >= r[0] && t < r[1] {
			return true
		}
	}
	return false
}

// pointsInside returns a stored pointer strictly inside (lo, hi), if any.
func (ro *ReadOnly) pointsInside(lo, hi uint64) (uint64, bool) {
	ps := ro.Pointers
	i := sort.Search(len(ps), func(i int) bool { return ps[i] > lo })
	if i < len(ps) && ps[i] < hi {
		return ps[i], true
	}
	return 0, false
}

// pointsAt reports whether a stored pointer equals v.
func (ro *ReadOnly) pointsAt(v uint64) bool {
	_, found := slices.BinarySearch(ro.Pointers, v)
	return found
}

// Inst is one displaced instruction.
type Inst struct {
	Off   int    // offset from Plan.Entry
	Bytes []byte // the original encoding
	Text  string // Intel syntax, for messages
	inst  x86asm.Inst
	kind  kind
}

type kind int

const (
	kPlain   kind = iota
	kRIPRel       // memory operand [rip+disp32] at inst.PCRelOff
	kJcc          // conditional rel8/rel32 branch
	kJmp          // unconditional rel8/rel32 jmp (ends the stub)
	kExit         // ret or indirect jmp (ends the stub), copied as is
	kJmpRIP       // jmp [rip+disp32] (ends the stub), disp rewritten
	kCall         // call rel32, last: push Resume; jmp target
	kCallInd      // call reg/[mem], last: push Resume; jmp reg/[mem]
	kDead         // NOP padding after the exit that ends the stub: not copied
)

// Plan is the verdict of [Analyze] on a function it accepts: the region to
// displace and how. A Plan is immutable and safe for concurrent use.
type Plan struct {
	// Addr is the function address given to Analyze.
	Addr uint64
	// Entry is the address of the first displaced instruction: Addr, or
	// Addr+4 after an ENDBR64.
	Entry uint64
	// Len is the number of displaced bytes, at least 5: the region is
	// [Entry, Entry+Len).
	Len int
	// Endbr reports a leading ENDBR64 that stays in place.
	Endbr bool
	// Kept is the first instruction when it stays in place before the
	// region ([Options.KeepFirst]): then Entry is Addr+len(Kept).
	// KeptDelta is how far it moves the stack pointer down (8 for a push,
	// n for sub $n,%rsp): the stub undoes that before it calls the
	// tracer, so that [rsp] is the return address, and runs Kept again
	// after (0: nothing to undo, see KeptLive).
	Kept      []byte
	KeptDelta int
	// KeptLive: Kept does not move the stack pointer but leaves flags
	// or an r11 that the displaced instructions may read (`test
	// %rdi,%rdi` before a `je`): the stub must keep every register and
	// the flags around its call. With KeptDelta 0 the stub runs nothing
	// again either way.
	KeptLive bool
	// Insts are the displaced instructions, in order.
	Insts []Inst
	// EntryBranches are the addresses of the direct branches of the
	// function that target Entry (or Addr, when Endbr or Kept stays
	// there): each one runs the stub again.
	EntryBranches []uint64
	// enteredAfterKept: a branch lands on Entry, right after Kept (the
	// plan is not used then).
	enteredAfterKept bool
	// Exits reports that the last displaced instruction is a return, a
	// jmp or an emulated call ([Options.EmulateCalls]): the stub needs no
	// jump back.
	Exits bool
}

// Orig returns the original bytes of the region.
func (p *Plan) Orig() []byte {
	var b []byte
	for _, in := range p.Insts {
		b = append(b, in.Bytes...)
	}
	return b
}

// Moved returns the plan of the same bytes at fnAddr+delta (delta
// wraps): the plan Analyze gives for them there, whose proof does not
// depend on where they are, for options that say the same of them. Its
// instructions are shared with p.
func (p *Plan) Moved(delta uint64) *Plan {
	q := *p
	q.Addr += delta
	q.Entry += delta
	q.EntryBranches = make([]uint64, len(p.EntryBranches))
	for i, b := range p.EntryBranches {
		q.EntryBranches[i] = b + delta
	}
	return &q
}

// Resume is the address the stub jumps back to: Entry+Len.
func (p *Plan) Resume() uint64 { return p.Entry + uint64(p.Len) }

// decode decodes one instruction of code at off, handling those of
// byHand by hand (then the bool is true and the Inst has only a Len). It
// fails when x86asm fails, reports Op(0), or the instruction runs past the
// end of code.
func decode(code []byte, off int) (x86asm.Inst, bool, error) {
	rest := code[off:]
	if _, n := handDecoded(rest); n > 0 {
		return x86asm.Inst{Len: n}, true, nil
	}
	// x86asm reports a truncated instruction as a lone prefix: decode
	// with zeros after the end, and see whether the instruction fits.
	buf := rest
	if len(buf) < maxInstLen {
		buf = append(append(make([]byte, 0, maxInstLen+len(buf)), rest...), make([]byte, maxInstLen)...)
	}
	in, err := x86asm.Decode(buf, 64)
	if err != nil {
		return in, false, err
	}
	if in.Op == 0 || in.Len <= 0 {
		return in, false, errUnknown
	}
	if in.Len > len(rest) {
		return in, false, x86asm.ErrTruncated
	}
	return in, false, nil
}

// maxInstLen is the longest x86 instruction.
const maxInstLen = 15

var errUnknown = errors.New("unknown instruction")

// isJcc reports a conditional branch with a rel8 or rel32 form.
func isJcc(op x86asm.Op) bool {
	switch op {
	case x86asm.JA, x86asm.JAE, x86asm.JB, x86asm.JBE, x86asm.JE, x86asm.JG,
		x86asm.JGE, x86asm.JL, x86asm.JLE, x86asm.JNE, x86asm.JNO, x86asm.JNP,
		x86asm.JNS, x86asm.JO, x86asm.JP, x86asm.JS:
		return true
	}
	return false
}

// directTarget returns the target of a direct (relative) control transfer:
// jmp, jcc, call, loop*, j*cxz, xbegin.
func directTarget(in x86asm.Inst, pc uint64) (uint64, bool) {
	rel, ok := in.Args[0].(x86asm.Rel)
	if !ok {
		return 0, false
	}
	switch {
	case isJcc(in.Op), in.Op == x86asm.JMP, in.Op == x86asm.CALL,
		in.Op == x86asm.LOOP, in.Op == x86asm.LOOPE, in.Op == x86asm.LOOPNE,
		in.Op == x86asm.JCXZ, in.Op == x86asm.JECXZ, in.Op == x86asm.JRCXZ,
		in.Op == x86asm.XBEGIN:
		return pc + uint64(in.Len) + uint64(int64(rel)), true
	}
	return 0, false
}

// legacyPrefixes returns the number of legacy prefix bytes and of a REX
// byte that start b.
func legacyPrefixes(b []byte) int {
	n := 0
	for n < len(b) {
		switch b[n] {
		case 0x66, 0x67, 0xf0, 0xf2, 0xf3, 0x2e, 0x36, 0x3e, 0x26, 0x64, 0x65:
			n++
			continue
		}
		break
	}
	if n < len(b) && b[n]&0xf0 == 0x40 {
		n++
	}
	return n
}

// hasPrefix reports whether the legacy prefixes of b include p.
// rel16 reports whether the relative branch b has an operand-size prefix
// that counts: 0x66 without REX.W, rel16 on AMD and rel32 on Intel, so its
// target depends on the CPU. REX.W overrides 0x66 on both: the
// general-dynamic TLS sequence every PIC module with thread-local data
// has, `data16 data16 rex.W call __tls_get_addr`, relies on it (5,357
// functions of libjvm.so hold one).
func rel16(b []byte) bool {
	if !hasPrefix(b, 0x66) {
		return false
	}
	n := legacyPrefixes(b)
	return n == 0 || b[n-1]&0xf8 != 0x48
}

func hasPrefix(b []byte, p byte) bool {
	for _, c := range b[:legacyPrefixes(b)] {
		if c == p {
			return true
		}
	}
	return false
}

// vexModRM returns the position of the ModRM byte of a VEX, EVEX or XOP
// encoded instruction b (after its legacy prefixes), or -1 when b is not
// one or has no ModRM.
func vexModRM(b []byte, n int) int {
	if n >= len(b) {
		return -1
	}
	var pos int
	switch b[n] {
	case 0xc5: // 2-byte VEX: c5 P0 opcode modrm
		pos = n + 3
	case 0xc4: // 3-byte VEX: c4 P0 P1 opcode modrm
		pos = n + 4
	case 0x62: // EVEX: 62 P0 P1 P2 opcode modrm (62 is not BOUND in 64-bit mode)
		pos = n + 5
	case 0x8f: // XOP when ModRM.reg of the would-be POP is not 0
		if n+1 >= len(b) || b[n+1]&0x38 == 0 {
			return -1
		}
		pos = n + 4
	default:
		return -1
	}
	return pos
}

// isRIPModRM reports ModRM mod=00 rm=101: [rip+disp32] in 64-bit mode.
func isRIPModRM(m byte) bool { return m&0xc7 == 0x05 }

// classify checks that in, at offset off of the function, can run
// elsewhere, and says how it is rewritten. last reports that it is the
// last displaced instruction.
func classify(in x86asm.Inst, b []byte, off int, last, emulateCalls bool) (kind, *Refusal) {
	// The instruction's text only for a refusal: x86asm's String costs
	// microseconds, and most instructions pass.
	refuse := func(r Reason) (kind, *Refusal) { return 0, &Refusal{Reason: r, Off: off, Inst: in.String()} }

	// VEX/EVEX/XOP: x86asm shows [rip+disp] as [disp] and no PCRel.
	n := legacyPrefixes(b)
	if pos := vexModRM(b, n); pos >= 0 {
		if pos < in.Len && isRIPModRM(b[pos]) {
			return refuse(VEXRIPRelative)
		}
		return kPlain, nil
	}

	if rel16(b) && in.PCRel != 0 && in.Op != x86asm.NOP {
		// A relative branch with an operand-size prefix is rel16 on AMD
		// and rel32 on Intel: its meaning depends on the CPU.
		if _, ok := in.Args[0].(x86asm.Rel); ok {
			return refuse(Unrelocatable)
		}
	}
	switch in.Op {
	case x86asm.LCALL:
		return refuse(DisplacedCall)
	case x86asm.CALL:
		if !emulateCalls || !last {
			return refuse(DisplacedCall)
		}
		switch a := in.Args[0].(type) {
		case x86asm.Rel:
			return kCall, nil
		case x86asm.Reg:
			if a == x86asm.RSP || a == x86asm.ESP || b[n] != 0xff {
				return refuse(DisplacedCall)
			}
			return kCallInd, nil
		case x86asm.Mem:
			// The pushed return address moves rsp: refuse operands
			// that use it.
			if a.Base == x86asm.RSP || a.Base == x86asm.ESP || b[n] != 0xff {
				return refuse(DisplacedCall)
			}
			if a.Base == x86asm.RIP && (in.PCRel != 4 || in.PCRelOff != n+2 || !isRIPModRM(b[n+1])) {
				return refuse(Unrelocatable)
			}
			return kCallInd, nil
		}
		return refuse(DisplacedCall)
	case x86asm.SYSCALL, x86asm.SYSENTER, x86asm.SYSRET, x86asm.SYSEXIT,
		x86asm.INT, x86asm.INTO, x86asm.IRET, x86asm.IRETD, x86asm.IRETQ,
		x86asm.LOOP, x86asm.LOOPE, x86asm.LOOPNE,
		x86asm.JCXZ, x86asm.JECXZ, x86asm.JRCXZ,
		x86asm.XBEGIN, x86asm.XABORT, x86asm.XEND,
		x86asm.LJMP, x86asm.LRET:
		return refuse(Unrelocatable)
	}
	if b[n] == 0xcc || b[n] == 0xf1 { // int3, int1
		return refuse(Unrelocatable)
	}

	exit := false
	k := kPlain
	switch {
	case isJcc(in.Op):
		if _, ok := in.Args[0].(x86asm.Rel); !ok {
			return refuse(Unrelocatable)
		}
		k = kJcc
	case in.Op == x86asm.JMP:
		exit = true
		switch a := in.Args[0].(type) {
		case x86asm.Rel:
			k = kJmp
		case x86asm.Mem:
			if a.Base == x86asm.RIP {
				k = kJmpRIP
			} else {
				k = kExit
			}
		default:
			k = kExit
		}
	case in.Op == x86asm.RET:
		exit = true
		k = kExit
	}
	if exit && !last {
		return refuse(EarlyExit)
	}

	// RIP-relative memory operand: x86asm reports the disp32 as PCRel.
	// Cross-check with the ModRM byte that precedes it, so that an
	// encoding x86asm got wrong is refused, not silently miscopied.
	rip := false
	for _, a := range in.Args {
		if m, ok := a.(x86asm.Mem); ok && m.Base == x86asm.RIP {
			rip = true
		}
	}
	if rip {
		if in.PCRel != 4 || in.PCRelOff < 1 || in.PCRelOff+4 > in.Len || !isRIPModRM(b[in.PCRelOff-1]) {
			return refuse(Unrelocatable)
		}
		if k == kPlain {
			k = kRIPRel
		}
		return k, nil
	}
	if k == kPlain && in.PCRel != 0 {
		// A relative operand this package does not know how to move.
		return refuse(Unrelocatable)
	}
	return k, nil
}

// Analyze decides whether the function whose bytes are fn, at address
// fnAddr, can be entered through a jmp written over its first
// instructions, and returns the [Plan] to do so. It returns a *[Refusal]
// when it cannot prove that safe (see the package documentation), and a
// plain error for bad arguments.
//
// Indirect jumps may dispatch through a table of addresses inside the
// function, which the bytes do not show. The rule ([JumpTable] refusals):
//   - jmp [rip+disp] (no index) is a tail call through the GOT: allowed;
//   - jmp [base+index*scale+disp] is a jump table: refused, except the
//     absolute table of a position-dependent executable, jmp
//     [index*8+table], when [Options.ReadOnly] proves that no entry of it
//     can lead into the region (see [ReadOnly]);
//   - jmp reg and jmp [base+disp] are refused when the function also loads
//     a register from an indexed memory operand (mov/movsxd reg,
//     [base+index*scale]): gcc and clang dispatch PIC jump tables as
//     `lea base(%rip); movslq (base,idx,4),r; add base,r; jmp *r`.
//     Without such a load they are tail calls through a function pointer.
//     A tail call through an array of function pointers is refused too:
//     the rule is conservative.
//
// Analyze is safe for concurrent use.
func Analyze(fn []byte, fnAddr uint64, opts Options) (*Plan, error) {
	minLen := opts.MinLen
	if minLen < JmpLen {
		minLen = JmpLen
	}
	if fnAddr+uint64(len(fn)) < fnAddr {
		return nil, fmt.Errorf("analyze function at %#x: %d bytes wrap around the address space", fnAddr, len(fn))
	}
	p := &Plan{Addr: fnAddr, Entry: fnAddr}
	start := 0
	if len(fn) >= 4 && string(fn[:4]) == string(endbr64) {
		p.Endbr = true
		p.Entry += 4
		start = 4
	} else if opts.KeepFirst {
		if n, delta, live := keepFirst(fn); n > 0 {
			p.Kept, p.KeptDelta, p.KeptLive = append([]byte(nil), fn[:n]...), delta, live
			p.Entry += uint64(n)
			plan, err := analyze(fn, fnAddr, opts, p, n, minLen)
			if err == nil && !plan.enteredAfterKept {
				return plan, nil
			}
			opts.KeepFirst = false
			return Analyze(fn, fnAddr, opts)
		}
	}
	return analyze(fn, fnAddr, opts, p, start, minLen)
}

// keepFirst returns the length of fn's first instruction when
// [Options.KeepFirst] may keep it in place (0 when it may not), how far it
// moves the stack pointer down (Keepable), and whether it leaves flags or
// an r11 that the tracer's call would clobber (live): a move, load, lea,
// test, compare or arithmetic on registers that writes no memory and not
// rsp. A test or compare before a `je` needs a stub that keeps every
// register and the flags around its call; a move does not (the call keeps
// every register but r11, and the flags are dead at a function's entry).
func keepFirst(fn []byte) (n, delta int, live bool) {
	if n, delta := Keepable(fn); n > 0 {
		return n, delta, false
	}
	in, hand, err := decode(fn, 0)
	if err != nil || hand || vexModRM(fn[:in.Len], legacyPrefixes(fn[:in.Len])) >= 0 {
		return 0, 0, false
	}
	switch in.Op {
	case x86asm.MOV, x86asm.MOVZX, x86asm.MOVSX, x86asm.MOVSXD, x86asm.LEA:
	case x86asm.TEST, x86asm.CMP, x86asm.XOR, x86asm.AND, x86asm.OR, x86asm.ADD, x86asm.SUB,
		x86asm.INC, x86asm.DEC, x86asm.SHL, x86asm.SHR, x86asm.SAR:
		live = true // writes the flags
	default:
		return 0, 0, false
	}
	for i, a := range in.Args {
		switch a := a.(type) {
		case nil:
		case x86asm.Reg:
			if i == 0 && (a == x86asm.RSP || a == x86asm.ESP || a == x86asm.SP || a == x86asm.SPB) {
				return 0, 0, false // moves the stack pointer
			}
			if i == 0 && (a == x86asm.R11 || a == x86asm.R11L || a == x86asm.R11W || a == x86asm.R11B) {
				live = true // the stub's scratch register
			}
		case x86asm.Mem:
			// A load runs in place as before; a store could write
			// below the stack pointer, where the tracer's call goes.
			if i == 0 && in.Op != x86asm.TEST && in.Op != x86asm.CMP {
				return 0, 0, false
			}
		case x86asm.Imm:
		default:
			return 0, 0, false
		}
	}
	return in.Len, 0, live
}

// Keepable returns the length of fn's first instruction and how far it
// moves the stack pointer down when [Options.KeepFirst] may keep it in
// place (0 when it may not): push r64 but rsp, r10 and r11 (the stub's
// own scratch registers, which the redo would push changed), or sub
// $imm,%rsp with a positive immediate. Both have an exact undo that
// leaves the flags alone (lea n(%rsp),%rsp).
func Keepable(fn []byte) (n, delta int) {
	switch {
	case len(fn) >= 1 && fn[0] >= 0x50 && fn[0] <= 0x57 && fn[0] != 0x54:
		return 1, 8
	case len(fn) >= 2 && fn[0] == 0x41 && fn[1] >= 0x50 && fn[1] <= 0x57 && fn[1] != 0x52 && fn[1] != 0x53:
		return 2, 8
	case len(fn) >= 4 && fn[0] == 0x48 && fn[1] == 0x83 && fn[2] == 0xec && fn[3] > 0 && fn[3] < 0x80:
		return 4, int(fn[3])
	case len(fn) >= 7 && fn[0] == 0x48 && fn[1] == 0x81 && fn[2] == 0xec:
		if d := int32(binary.LittleEndian.Uint32(fn[3:])); d > 0 {
			return 7, int(d)
		}
	}
	return 0, 0
}

// analyze is Analyze from the region's first byte, fn[start:], at
// p.Entry.
func analyze(fn []byte, fnAddr uint64, opts Options, p *Plan, start, minLen int) (*Plan, error) {
	if len(fn)-start < minLen {
		return nil, &Refusal{Reason: TooShort, Off: len(fn) - start}
	}

	// The region: whole instructions covering at least minLen bytes.
	off := start
	var exit *Refusal // an exit before minLen bytes, followed by padding
	for off-start < minLen {
		in, hand, err := decode(fn, off)
		if err != nil && exit != nil {
			return nil, exit
		}
		if err != nil {
			if errors.Is(err, x86asm.ErrTruncated) {
				return nil, &Refusal{Reason: TooShort, Off: len(fn) - start}
			}
			return nil, &Refusal{Reason: Undecodable, Off: off}
		}
		b := append([]byte(nil), fn[off:off+in.Len]...) // the Plan owns its bytes
		if exit != nil {
			// After the exit: only NOP padding, never executed, is
			// displaced with it (and not copied into the stub).
			if hand || in.Op != x86asm.NOP || vexModRM(b, legacyPrefixes(b)) >= 0 {
				return nil, exit
			}
			p.Insts = append(p.Insts, Inst{Off: off - start, Bytes: b, Text: in.String(), inst: in, kind: kDead})
			off += in.Len
			continue
		}
		text, _ := handDecoded(b)
		k := kPlain
		if !hand {
			text = in.String()
			last := off+in.Len-start >= minLen
			var r *Refusal
			k, r = classify(in, b, off, last, opts.EmulateCalls)
			if r != nil && r.Reason == EarlyExit && off+in.Len < len(fn) {
				// A ret or jmp before minLen bytes: no fall-through
				// reaches the bytes after it. Where they are NOP
				// padding (compilers align the loop that `jmp test`
				// skips to), they can be overwritten as well; the sweep
				// below proves that no branch lands in them.
				if k2, r2 := classify(in, b, off, true, opts.EmulateCalls); r2 == nil {
					k, r, exit = k2, nil, r
				}
			}
			if r != nil {
				if r.Reason == EarlyExit && off+in.Len == len(fn) {
					r = &Refusal{Reason: TooShort, Off: len(fn) - start, Inst: r.Inst}
				}
				return nil, r
			}
			if k == kJmp || k == kExit || k == kJmpRIP || k == kCall || k == kCallInd {
				p.Exits = true
			}
		}
		p.Insts = append(p.Insts, Inst{Off: off - start, Bytes: b, Text: text, inst: in, kind: k})
		off += in.Len
	}
	p.Len = off - start
	lo, hi := p.Entry, p.Entry+uint64(p.Len)
	inside := func(t uint64) bool { return t > lo && t < hi }

	// The proof: sweep the whole function.
	type ijmp struct {
		off  int
		text string
	}
	var indirect, tables []ijmp
	indexedLoad := false
	for off = 0; off < len(fn); {
		// Neither an indirect jmp nor a load that may index a jump table
		// (see quickProof): only its length and branch target matter. A
		// target inside the region is refused below, through x86asm,
		// which names the instruction.
		if n, t, branch, ok := quickProof(fn[off:], fnAddr+uint64(off)); ok && !(branch && inside(t)) {
			if branch && t == lo && p.Kept != nil {
				p.enteredAfterKept = true
			}
			if branch && (t == lo || (p.Endbr || p.Kept != nil) && t == fnAddr) && fn[off] != 0xe8 {
				p.EntryBranches = append(p.EntryBranches, fnAddr+uint64(off))
			}
			off += n
			continue
		}
		in, hand, err := decode(fn, off)
		if err != nil {
			return nil, &Refusal{Reason: Undecodable, Off: off}
		}
		pc := fnAddr + uint64(off)
		if !hand {
			if t, ok := directTarget(in, pc); ok {
				if rel16(fn[off : off+in.Len]) {
					// rel16 on AMD, rel32 on Intel: the target is unknown.
					return nil, &Refusal{Reason: Undecodable, Off: off}
				}
				if inside(t) {
					return nil, &Refusal{Reason: BranchTarget, Off: int(t - fnAddr), Inst: fmt.Sprintf("%s at +%d", in, off)}
				}
				if t == lo && p.Kept != nil {
					p.enteredAfterKept = true
				}
				if (t == lo || (p.Endbr || p.Kept != nil) && t == fnAddr) && in.Op != x86asm.CALL {
					p.EntryBranches = append(p.EntryBranches, pc)
				}
			}
			switch in.Op {
			case x86asm.JMP:
				switch a := in.Args[0].(type) {
				case x86asm.Mem:
					if a.Index != 0 {
						if opts.ReadOnly.absoluteTable(in, a) {
							tables = append(tables, ijmp{off, in.String()})
							break
						}
						return nil, &Refusal{Reason: JumpTable, Off: off, Inst: in.String()}
					}
					if a.Base != x86asm.RIP {
						indirect = append(indirect, ijmp{off, in.String()})
					}
				case x86asm.Reg:
					indirect = append(indirect, ijmp{off, in.String()})
				}
			case x86asm.MOV, x86asm.MOVSXD:
				if _, ok := in.Args[0].(x86asm.Reg); ok {
					if m, ok := in.Args[1].(x86asm.Mem); ok && m.Index != 0 {
						indexedLoad = true
					}
				}
			}
		}
		off += in.Len
	}
	if indexedLoad && len(indirect) > 0 {
		return nil, &Refusal{Reason: JumpTable, Off: indirect[0].off, Inst: indirect[0].text}
	}
	if len(tables) > 0 {
		if v, ok := opts.ReadOnly.pointsInside(lo, hi); ok {
			return nil, &Refusal{Reason: JumpTable, Off: tables[0].off, Inst: fmt.Sprintf("%s; read-only data holds %#x", tables[0].text, v)}
		}
		// An entry of the table may be the region's first byte: as for
		// a direct branch there (above), the stub would be entered
		// without the kept instruction having run.
		if p.Kept != nil && opts.ReadOnly.pointsAt(lo) {
			p.enteredAfterKept = true
		}
	}
	ts := opts.ExtraTargets
	if i := sort.Search(len(ts), func(i int) bool { return ts[i] > lo }); i < len(ts) && inside(ts[i]) {
		return nil, &Refusal{Reason: BranchTarget, Off: int(ts[i] - fnAddr)}
	}
	if _, found := slices.BinarySearch(ts, lo); found && p.Kept != nil {
		p.enteredAfterKept = true
	}
	return p, nil
}

// BranchTargets decodes code, at address addr, linearly and returns the
// sorted, deduplicated targets of its direct jmp, jcc, call, loop, j*cxz and
// xbegin instructions. Most instructions are measured by quickDecode, the
// rest by x86asm. Bytes that do not decode are skipped one at a time
// (a sweep over a whole section meets padding and data). Use it on the
// parts of a program that may branch into a function from outside its
// bytes, and pass the result as [Options.ExtraTargets].
func BranchTargets(code []byte, addr uint64) []uint64 {
	var ts []uint64
	SweepBranches(code, addr, len(code), func(t uint64) { ts = append(ts, t) })
	radix.SortBy(ts, 0)
	return slices.Compact(ts)
}

// SweepBranches is BranchTargets' sweep, a piece of a section at a time:
// it decodes the instructions of code (at address addr) that start before
// offset limit, calls target with each direct branch's target, and
// returns the offset where the sweep goes on (limit or a little past it,
// where the last instruction ends). An instruction may run past limit to
// len(code): give 15 bytes beyond limit (x86's longest instruction) unless
// code ends where the section does, and the pieces' targets are those of
// one sweep over the section.
func SweepBranches(code []byte, addr uint64, limit int, target func(uint64)) int {
	off := 0
	for off < limit && off < len(code) {
		if n, rel, branch, ok := quickBranch(code[off:]); ok {
			if branch {
				target(addr + uint64(off) + uint64(n) + uint64(rel))
			}
			off += n
			continue
		}
		in, hand, err := decode(code, off)
		if err != nil {
			off++
			continue
		}
		if !hand {
			if t, ok := directTarget(in, addr+uint64(off)); ok {
				target(t)
			}
		}
		off += in.Len
	}
	return off
}
