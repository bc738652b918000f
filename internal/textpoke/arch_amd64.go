package textpoke

import (
	"bytes"
	"encoding/binary"
	"fmt"

	"golang.org/x/sys/unix"
)

// AMD64 is the x86-64 implementation of [Arch]. Sites are 5 bytes: a NOP5
// (0f 1f 44 00 xx), a sled of five 1-byte NOPs (90), or a CALL rel32
// (e8 xx xx xx xx).
type AMD64 struct{}

const (
	opInt3 = 0xcc
	opCall = 0xe8
	opJmp  = 0xe9
	opNop1 = 0x90
)

// NOP5 is the canonical 5-byte NOP that sleds are converted to.
var NOP5 = []byte{0x0f, 0x1f, 0x44, 0x00, 0x00}

func (AMD64) SiteLen() int              { return 5 }
func (AMD64) Breakpoint() byte          { return opInt3 }
func (AMD64) TrapSite(pc uint64) uint64 { return pc - 1 }

func isNop5(b []byte) bool {
	return len(b) == 5 && b[0] == 0x0f && b[1] == 0x1f && b[2] == 0x44 && b[3] == 0x00
}

func (AMD64) Sled(b []byte) bool {
	if len(b) != 5 {
		return false
	}
	for _, c := range b {
		if c != opNop1 {
			return false
		}
	}
	return true
}

func (a AMD64) Check(site uint64, insn []byte) error {
	switch {
	case len(insn) != 5:
		return fmt.Errorf("site %#x: instruction is %d bytes, want 5", site, len(insn))
	case isNop5(insn), a.Sled(insn), insn[0] == opCall:
		return nil
	}
	return fmt.Errorf("site %#x: % x is not a NOP5, a NOP sled or a CALL", site, insn)
}

// Emulate runs a site's instruction for a thread that trapped on it: the
// instructions Check accepts, and the `jmp rel32` of a relocated region.
func (a AMD64) Emulate(regs *unix.PtraceRegs, site uint64, insn []byte, push func(sp, val uint64) error) error {
	switch {
	case isNop5(insn), a.Sled(insn):
		regs.Rip = site + 5
		return nil
	case len(insn) == 5 && insn[0] == opCall:
		rel := int32(binary.LittleEndian.Uint32(insn[1:]))
		sp := regs.Rsp - 8
		if err := push(sp, site+5); err != nil {
			return err
		}
		regs.Rsp = sp
		regs.Rip = uint64(int64(site+5) + int64(rel))
		return nil
	case len(insn) == 5 && insn[0] == opJmp:
		// A relocated region's jmp to its stub, or to the relocated
		// copy of its original bytes (Patch.Detour).
		rel := int32(binary.LittleEndian.Uint32(insn[1:]))
		regs.Rip = uint64(int64(site+5) + int64(rel))
		return nil
	}
	return fmt.Errorf("site %#x: cannot emulate % x", site, insn)
}

func (AMD64) UprobeHeld(site uint64, now, expected []byte, areas []Area) bool {
	if len(now) != 5 || len(expected) != 5 {
		return false
	}
	switch now[0] {
	case opInt3:
		// uprobe_write_opcode writes byte 0 only.
		return bytes.Equal(now[1:], expected[1:])
	case opCall, opJmp:
		rel := int32(binary.LittleEndian.Uint32(now[1:]))
		return inAreas(uint64(int64(site+5)+int64(rel)), areas)
	}
	return false
}

func (AMD64) PC(regs *unix.PtraceRegs) uint64        { return regs.Rip }
func (AMD64) SetPC(regs *unix.PtraceRegs, pc uint64) { regs.Rip = pc }
func (AMD64) SP(regs *unix.PtraceRegs) uint64        { return regs.Rsp }

// Call returns the 5-byte CALL rel32 at site to target, or an error when
// target is out of reach (±2 GiB).
func Call(site, target uint64) ([]byte, error) {
	rel := int64(target) - int64(site+5)
	if rel < -1<<31 || rel >= 1<<31 {
		return nil, fmt.Errorf("site %#x: call target %#x is out of rel32 reach", site, target)
	}
	b := make([]byte, 5)
	b[0] = opCall
	binary.LittleEndian.PutUint32(b[1:], uint32(int32(rel)))
	return b, nil
}

// Jmp returns `jmp rel32` from site to target: what a relocated region
// (package reloc) starts with.
func Jmp(site, target uint64) ([]byte, error) {
	b, err := Call(site, target)
	if err != nil {
		return nil, err
	}
	b[0] = 0xe9
	return b, nil
}
