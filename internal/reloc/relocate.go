package reloc

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// Sizes of the encodings [Plan.Relocate] emits.
const (
	// JmpRel32Len is `jmp rel32` (e9 rel32).
	JmpRel32Len = 5
	// JmpAbsLen is `jmp *0(%rip); .quad target` (ff 25 00000000 + 8
	// bytes): the fallback when a target is beyond ±2 GiB of the stub.
	JmpAbsLen = 14
	// JccRel32Len is `jcc rel32` (0f 8x rel32).
	JccRel32Len = 6
	// JccAbsLen is `j!cc +14; jmp *0(%rip); .quad target`: a jcc whose
	// target is beyond ±2 GiB.
	JccAbsLen = 2 + JmpAbsLen
	// PushImmLen is `push imm32`: the return address of an emulated call
	// when it is below 2 GiB ([Options.EmulateCalls]).
	PushImmLen = 5
	// PushAbsLen is `lea -8(%rsp),%rsp; movl lo,(%rsp); movl hi,4(%rsp)`:
	// the return address of an emulated call above 2 GiB, pushed without
	// touching the flags.
	PushAbsLen = 5 + 7 + 8
)

// appendPush pushes the 64-bit value v without changing the flags.
func appendPush(b []byte, v uint64) []byte {
	if v < 1<<31 {
		return binary.LittleEndian.AppendUint32(append(b, 0x68), uint32(v))
	}
	b = append(b, 0x48, 0x8d, 0x64, 0x24, 0xf8) // lea -8(%rsp),%rsp
	b = binary.LittleEndian.AppendUint32(append(b, 0xc7, 0x04, 0x24), uint32(v))
	return binary.LittleEndian.AppendUint32(append(b, 0xc7, 0x44, 0x24, 0x04), uint32(v>>32))
}

// ErrOutOfReach is returned (wrapped) by [Plan.Relocate] when a
// RIP-relative operand of a displaced instruction cannot address its
// original target from the stub, and by [Plan.Patch] when the stub is
// beyond a jmp rel32 from Entry: place the stub within ±2 GiB of the
// function.
var ErrOutOfReach = errors.New("out of rel32 reach")

// MaxStubLen returns an upper bound of the length of the bytes
// [Plan.Relocate] returns, whatever the stub address: each jcc may grow
// to [JccAbsLen], each jmp to [JmpAbsLen], other instructions keep their
// length, and the jump back takes at most [JmpAbsLen].
func (p *Plan) MaxStubLen() int {
	n := 0
	for _, in := range p.Insts {
		switch in.kind {
		case kJcc:
			n += JccAbsLen
		case kJmp:
			n += JmpAbsLen
		case kCall:
			n += PushAbsLen + JmpAbsLen
		case kCallInd:
			n += PushAbsLen + len(in.Bytes)
		case kDead:
		default:
			n += len(in.Bytes)
		}
	}
	if !p.Exits {
		n += JmpAbsLen
	}
	return n
}

// rel32 returns the displacement from the end of an instruction at next
// to target, if it fits in an int32.
func rel32(target, next uint64) (int32, bool) {
	d := int64(target - next)
	if d < math.MinInt32 || d > math.MaxInt32 {
		return 0, false
	}
	return int32(d), true
}

func appendJmp(b []byte, at, target uint64) []byte {
	if d, ok := rel32(target, at+JmpRel32Len); ok {
		b = append(b, 0xe9)
		return binary.LittleEndian.AppendUint32(b, uint32(d))
	}
	b = append(b, 0xff, 0x25, 0, 0, 0, 0)
	return binary.LittleEndian.AppendUint64(b, target)
}

// Relocate returns the displaced instructions re-encoded to run at
// stubAddr, followed by a jump back to [Plan.Resume] unless the region
// ends in a return or jmp ([Plan.Exits]):
//   - [rip+disp32] operands get the displacement that reaches the same
//     address from the stub (ErrOutOfReach if it does not fit);
//   - jcc rel8/rel32 become `jcc rel32` (0f 8x) to the same absolute
//     target, or [JccAbsLen] bytes when beyond ±2 GiB; branch hint and
//     BND prefixes are dropped;
//   - jmp rel8/rel32 become `jmp rel32`, or [JmpAbsLen] bytes;
//   - a call (last, with [Options.EmulateCalls]) becomes a push of
//     Resume ([PushImmLen] or [PushAbsLen] bytes) and a jmp to the callee;
//   - NOP padding after a ret or jmp that ends the region early is left
//     out;
//   - every other instruction is copied as is.
//
// A branch of the region to Entry stays a branch to Entry, whose jmp leads
// back to the stub: the same as the original loop. The result is at most
// [Plan.MaxStubLen] bytes. Relocate is safe for concurrent use.
func (p *Plan) Relocate(stubAddr uint64) ([]byte, error) {
	var out []byte
	for _, in := range p.Insts {
		orig := p.Entry + uint64(in.Off)
		at := stubAddr + uint64(len(out))
		switch in.kind {
		case kPlain, kExit:
			out = append(out, in.Bytes...)
		case kDead:
			// Padding after the exit: never executed.
		case kRIPRel, kJmpRIP:
			o := in.inst.PCRelOff
			disp := int32(binary.LittleEndian.Uint32(in.Bytes[o:]))
			target := orig + uint64(len(in.Bytes)) + uint64(int64(disp))
			d, ok := rel32(target, at+uint64(len(in.Bytes)))
			if !ok {
				return nil, fmt.Errorf("relocate %s from %#x to %#x: operand %#x: %w", in.Text, orig, at, target, ErrOutOfReach)
			}
			b := append([]byte(nil), in.Bytes...)
			binary.LittleEndian.PutUint32(b[o:], uint32(d))
			out = append(out, b...)
		case kJcc:
			target, _ := directTarget(in.inst, orig)
			n := legacyPrefixes(in.Bytes)
			cc := in.Bytes[n] & 0x0f // 7x rel8
			if in.Bytes[n] == 0x0f {
				cc = in.Bytes[n+1] & 0x0f // 0f 8x rel32
			}
			if d, ok := rel32(target, at+JccRel32Len); ok {
				out = append(out, 0x0f, 0x80|cc)
				out = binary.LittleEndian.AppendUint32(out, uint32(d))
			} else {
				// The inverse condition skips the absolute jmp.
				out = append(out, 0x70|(cc^1), JmpAbsLen, 0xff, 0x25, 0, 0, 0, 0)
				out = binary.LittleEndian.AppendUint64(out, target)
			}
		case kJmp:
			target, _ := directTarget(in.inst, orig)
			out = appendJmp(out, at, target)
		case kCall:
			target, _ := directTarget(in.inst, orig)
			out = appendPush(out, p.Resume())
			out = appendJmp(out, stubAddr+uint64(len(out)), target)
		case kCallInd:
			// call r/m (ff /2) becomes jmp r/m (ff /4) after the push.
			out = appendPush(out, p.Resume())
			at = stubAddr + uint64(len(out))
			b := append([]byte(nil), in.Bytes...)
			n := legacyPrefixes(b)
			b[n+1] = b[n+1]&^0x38 | 4<<3
			if o := in.inst.PCRelOff; in.inst.PCRel == 4 {
				disp := int32(binary.LittleEndian.Uint32(b[o:]))
				target := orig + uint64(len(b)) + uint64(int64(disp))
				d, ok := rel32(target, at+uint64(len(b)))
				if !ok {
					return nil, fmt.Errorf("relocate %s from %#x to %#x: operand %#x: %w", in.Text, orig, at, target, ErrOutOfReach)
				}
				binary.LittleEndian.PutUint32(b[o:], uint32(d))
			}
			out = append(out, b...)
		default:
			return nil, fmt.Errorf("relocate %s: unknown kind %d", in.Text, in.kind)
		}
	}
	if !p.Exits {
		out = appendJmp(out, stubAddr+uint64(len(out)), p.Resume())
	}
	return out, nil
}

// Patch returns the Len bytes to write over the region: `jmp rel32` to
// stubAddr, then int3 up to Entry+Len (never executed: no branch lands
// there). It fails with ErrOutOfReach when stubAddr is beyond ±2 GiB of
// Entry.
func (p *Plan) Patch(stubAddr uint64) ([]byte, error) {
	d, ok := rel32(stubAddr, p.Entry+JmpRel32Len)
	if !ok {
		return nil, fmt.Errorf("patch %#x with a jmp to %#x: %w", p.Entry, stubAddr, ErrOutOfReach)
	}
	b := binary.LittleEndian.AppendUint32([]byte{0xe9}, uint32(d))
	for len(b) < p.Len {
		b = append(b, 0xcc)
	}
	return b, nil
}
