package textpoke

import "golang.org/x/sys/unix"

// Arch is the instruction-set half of the protocol: what a site looks like,
// which byte traps, and how to emulate a site's instruction for a thread that
// trapped on it. A second ISA (arm64: one aligned 4-byte NOP <-> BL store,
// docs/DESIGN.md §3.5) is a new implementation of this interface, not a rewrite of
// the engine.
type Arch interface {
	// SiteLen is the length of a site in bytes.
	SiteLen() int
	// Breakpoint is the byte that traps when executed (x86: INT3).
	Breakpoint() byte
	// TrapSite returns the site address for a thread that trapped with
	// program counter pc.
	TrapSite(pc uint64) uint64
	// Check reports an error when insn is not an instruction the engine
	// may write and emulate at site.
	Check(site uint64, insn []byte) error
	// Sled reports whether insn is a multi-instruction NOP sled, in which
	// a thread can stop between instructions (docs/DESIGN.md §3.4).
	Sled(insn []byte) bool
	// Emulate executes insn, placed at site, for a thread whose
	// registers are regs: push writes a return address onto its stack.
	Emulate(regs *unix.PtraceRegs, site uint64, insn []byte, push func(sp, val uint64) error) error
	// PC returns and SetPC sets the program counter in regs.
	PC(regs *unix.PtraceRegs) uint64
	SetPC(regs *unix.PtraceRegs, pc uint64)
	// SP returns the stack pointer in regs.
	SP(regs *unix.PtraceRegs) uint64
	// UprobeHeld reports whether now, found at site where expected was
	// due, is what a kernel uprobe leaves there: its breakpoint over the
	// expected instruction, or a branch into areas, the kernel's uprobe
	// mappings (see uprobe.go).
	UprobeHeld(site uint64, now, expected []byte, areas []Area) bool
}
