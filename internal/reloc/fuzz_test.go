package reloc

import (
	"encoding/binary"
	"math/rand"
	"testing"
)

// genInst is one instruction of a generated sequence, before layout.
type genInst struct {
	enc  func(off, n int) []byte // encoding at offset off, n = its length
	n    int                     // length (jumps: recomputed at layout)
	jump int                     // -1, or the index of the instruction jumped to (len = the final ret)
	jcc  int                     // condition of a jcc, or -1 for jmp
	long bool                    // rel32 form
	push int                     // +1 push, -1 pop
	call bool                    // call rel32 to the callee after the ret
}

// byteSource hands out the bytes of a fuzz input, then zeros.
type byteSource struct {
	b []byte
	i int
}

func (s *byteSource) next() int {
	if s.i >= len(s.b) {
		return 0
	}
	s.i++
	return int(s.b[s.i-1])
}

func (s *byteSource) reg() int { // any GPR but rsp
	r := s.next() % 15
	if r >= 4 {
		r++
	}
	return r
}

func (s *byteSource) u32() uint32 {
	return uint32(s.next()) | uint32(s.next())<<8 | uint32(s.next())<<16 | uint32(s.next())<<24
}

func rex(w bool, r, x, b int) byte {
	v := byte(0x40)
	if w {
		v |= 8
	}
	if r >= 8 {
		v |= 4
	}
	if x >= 8 {
		v |= 2
	}
	if b >= 8 {
		v |= 1
	}
	return v
}

func modrm(mod, reg, rm int) byte { return byte(mod<<6 | (reg&7)<<3 | rm&7) }

func fixed(b ...byte) genInst {
	return genInst{enc: func(int, int) []byte { return b }, n: len(b), jump: -1}
}

// ripInst is an instruction with a [rip+disp32] operand at dataAddr+slot:
// pre, ModRM-reg reg, then the disp32 and tail.
func ripInst(pre []byte, reg, slot int, tail ...byte) genInst {
	n := len(pre) + 1 + 4 + len(tail)
	return genInst{n: n, jump: -1, enc: func(off, n int) []byte {
		b := append(append([]byte(nil), pre...), modrm(0, reg, 5))
		disp := int32(int64(dataAddr+slot) - int64(codeAddr+off+n))
		b = binary.LittleEndian.AppendUint32(b, uint32(disp))
		return append(b, tail...)
	}}
}

// genSeq turns a fuzz input into a function: up to 14 instructions from a
// menu of encodable templates (mov/add/sub/xor/and/or/adc/sbb/cmp/test/
// imul/lea/cmov/setcc/shift/unary with register, immediate and
// RIP-relative operands into the data page; push/pop; jcc and jmp
// forward; call to a callee placed after the ret), pops to balance the stack, then ret. Jumps are taken only
// where nothing is pushed and land where nothing is pushed.
func genSeq(input []byte) []byte {
	s := &byteSource{b: input}
	var insts []genInst
	var pre []byte
	if s.next()%4 == 0 {
		pre = endbr
	}
	count := 1 + s.next()%14
	depth := 0
	depths := []int{} // stack depth before each instruction
	for len(insts) < count {
		depths = append(depths, depth)
		op := s.next() % 26
		r1, r2 := s.reg(), s.reg()
		slot := (s.next() % (dataLen / 8)) * 8
		var in genInst
		switch op {
		case 0: // mov r64, simm32
			in = fixed(append([]byte{rex(true, 0, 0, r1), 0xc7, modrm(3, 0, r1)}, binary.LittleEndian.AppendUint32(nil, s.u32())...)...)
		case 1: // mov r32, imm32
			b := []byte{0xb8 + byte(r1&7)}
			if r1 >= 8 {
				b = []byte{0x41, b[0]}
			}
			in = fixed(binary.LittleEndian.AppendUint32(b, s.u32())...)
		case 2, 3: // alu r64, r64
			ops := []byte{0x01, 0x29, 0x31, 0x39, 0x85, 0x21, 0x09, 0x11, 0x19, 0x89}
			in = fixed(rex(true, r2, 0, r1), ops[s.next()%len(ops)], modrm(3, r2, r1))
		case 4: // alu r64, simm8
			in = fixed(rex(true, 0, 0, r1), 0x83, modrm(3, s.next()%8, r1), byte(s.next()))
		case 5, 6: // op r64, [rip+d]
			ops := []byte{0x8b, 0x03, 0x2b, 0x33, 0x3b, 0x23, 0x0b, 0x8d, 0x85}
			in = ripInst([]byte{rex(true, r1, 0, 0), ops[s.next()%len(ops)]}, r1, slot)
		case 7: // op [rip+d], r64
			ops := []byte{0x89, 0x01, 0x29, 0x31, 0x21, 0x09}
			in = ripInst([]byte{rex(true, r1, 0, 0), ops[s.next()%len(ops)]}, r1, slot)
		case 8: // op qword [rip+d], simm8 (disp followed by an immediate)
			in = ripInst([]byte{0x48, 0x83}, s.next()%8, slot, byte(s.next()))
		case 9: // mov dword [rip+d], imm32
			in = ripInst([]byte{0xc7}, 0, slot, binary.LittleEndian.AppendUint32(nil, s.u32())...)
		case 10: // movzx/movsx r64, byte [rip+d]
			in = ripInst([]byte{rex(true, r1, 0, 0), 0x0f, []byte{0xb6, 0xbe}[s.next()%2]}, r1, slot)
		case 11: // push r64
			if r1 >= 8 {
				in = fixed(0x41, 0x50+byte(r1&7))
			} else {
				in = fixed(0x50 + byte(r1))
			}
			in.push = 1
			depth++
		case 12: // pop r64
			if depth == 0 {
				in = fixed(0x90)
				break
			}
			if r1 >= 8 {
				in = fixed(0x41, 0x58+byte(r1&7))
			} else {
				in = fixed(0x58 + byte(r1))
			}
			in.push = -1
			depth--
		case 13, 14, 22, 23: // jcc / jmp forward, target chosen below
			if depth != 0 {
				in = fixed(0x66, 0x90)
				break
			}
			in = genInst{jump: len(insts) + 1, jcc: -1, long: s.next()%4 == 0}
			if op != 14 {
				in.jcc = s.next() % 16
			}
		case 15: // imul r64, r64
			in = fixed(rex(true, r1, 0, r2), 0x0f, 0xaf, modrm(3, r1, r2))
		case 16: // not/neg/inc/dec r64
			ext := []struct{ op, ext byte }{{0xf7, 2}, {0xf7, 3}, {0xff, 0}, {0xff, 1}}[s.next()%4]
			in = fixed(rex(true, 0, 0, r1), ext.op, modrm(3, int(ext.ext), r1))
		case 17: // shifts by imm8
			in = fixed(rex(true, 0, 0, r1), 0xc1, modrm(3, []int{0, 1, 4, 5, 7}[s.next()%5], r1), byte(s.next()))
		case 18: // cmovcc r64, r64
			in = fixed(rex(true, r1, 0, r2), 0x0f, 0x40+byte(s.next()%16), modrm(3, r1, r2))
		case 19: // setcc r8 (REX: never ah..bh)
			in = fixed(rex(false, 0, 0, r1), 0x0f, 0x90+byte(s.next()%16), modrm(3, 0, r1))
		case 20: // nops
			in = fixed([][]byte{{0x90}, {0x66, 0x90}, {0x0f, 0x1f, 0x00}, {0x0f, 0x1f, 0x44, 0x00, 0x00}}[s.next()%4]...)
		case 24, 25: // call rel32 to the callee (add rax,5; ret)
			in = genInst{call: true, jump: -2, long: true, n: 5}
		case 21: // xchg r64, r64
			in = fixed(rex(true, r2, 0, r1), 0x87, modrm(3, r2, r1))
		}
		insts = append(insts, in)
	}
	for ; depth > 0; depth-- { // balance the stack
		depths = append(depths, depth)
		insts = append(insts, fixed(0x5b)) // pop rbx
	}
	depths = append(depths, 0)
	insts = append(insts, fixed(0xc3))
	calleeIdx := len(insts)
	insts = append(insts, fixed(0x48, 0x83, 0xc0, 0x05), fixed(0xc3))

	// Jump targets: a later instruction where nothing is pushed.
	for i := range insts {
		if insts[i].call {
			insts[i].jump = calleeIdx
		}
		if insts[i].jump < 0 || insts[i].call {
			continue
		}
		var cands []int
		for j := i + 1; j < calleeIdx; j++ {
			if depths[j] == 0 {
				cands = append(cands, j)
			}
		}
		insts[i].jump = cands[s.next()%len(cands)]
	}
	// Layout: rel8 jumps that do not reach become rel32, until stable.
	offs := make([]int, len(insts)+1)
	for {
		off := len(pre)
		for i := range insts {
			in := &insts[i]
			if in.enc == nil || in.jump >= 0 {
				switch {
				case in.call:
					in.n = 5
				case in.long && in.jcc >= 0:
					in.n = 6
				case in.long:
					in.n = 5
				default:
					in.n = 2
				}
			}
			offs[i] = off
			off += in.n
		}
		offs[len(insts)] = off
		grew := false
		for i := range insts {
			in := &insts[i]
			if in.jump >= 0 && !in.long && offs[in.jump]-(offs[i]+2) > 127 {
				in.long, grew = true, true
			}
		}
		if !grew {
			break
		}
	}
	code := append([]byte(nil), pre...)
	for i, in := range insts {
		if in.jump >= 0 {
			rel := int32(offs[in.jump] - (offs[i] + in.n))
			switch {
			case in.call:
				code = binary.LittleEndian.AppendUint32(append(code, 0xe8), uint32(rel))
			case in.long && in.jcc >= 0:
				code = binary.LittleEndian.AppendUint32(append(code, 0x0f, 0x80+byte(in.jcc)), uint32(rel))
			case in.long:
				code = binary.LittleEndian.AppendUint32(append(code, 0xe9), uint32(rel))
			case in.jcc >= 0:
				code = append(code, 0x70+byte(in.jcc), byte(rel))
			default:
				code = append(code, 0xeb, byte(rel))
			}
			continue
		}
		code = append(code, in.enc(offs[i], in.n)...)
	}
	return code
}

// FuzzRelocate generates small instruction sequences (genSeq), and for
// each one Analyze accepts, runs the original, the original patched with
// a jmp to its relocated stub, and a stub relocated 4 GiB away, in one
// harness process, and compares registers, flags and the data page.
func FuzzRelocate(f *testing.F) {
	rng := rand.New(rand.NewSource(2))
	for i := 0; i < 64; i++ {
		b := make([]byte, 24+rng.Intn(80))
		rng.Read(b)
		f.Add(b, rng.Uint64())
	}
	h := getHarness(f)
	f.Fuzz(func(t *testing.T, input []byte, seed uint64) {
		fn := genSeq(input)
		regs, data := randState(rand.New(rand.NewSource(int64(seed))))
		execCompare(t, h, fn, Options{EmulateCalls: true}, regs, &data)
	})
}

// TestRelocateRandom is the fuzz loop with a fixed seed and a count, so
// that a plain `go test` executes many generated sequences (more with
// LIVETRACE_SOAK=1), and reports how many Analyze accepted.
func TestRelocateRandom(t *testing.T) {
	h := getHarness(t)
	n := 3000
	if soak() {
		n = 100000
	}
	rng := rand.New(rand.NewSource(3))
	accepted := 0
	kinds := map[kind]int{}
	reasons := map[string]int{}
	for i := 0; i < n; i++ {
		b := make([]byte, 24+rng.Intn(80))
		rng.Read(b)
		fn := genSeq(b)
		regs, data := randState(rng)
		if execCompare(t, h, fn, Options{EmulateCalls: true}, regs, &data) {
			accepted++
			p, _ := Analyze(fn, codeAddr, Options{EmulateCalls: true})
			for _, in := range p.Insts {
				kinds[in.kind]++
			}
		} else {
			_, err := Analyze(fn, codeAddr, Options{EmulateCalls: true})
			reasons[err.(*Refusal).Reason.String()]++
		}
	}
	t.Logf("%d random sequences, %d accepted and executed three ways; displaced: %d plain, %d rip-relative, %d jcc, %d jmp, %d ret, %d call; refused: %v",
		n, accepted, kinds[kPlain], kinds[kRIPRel], kinds[kJcc], kinds[kJmp], kinds[kExit], kinds[kCall], reasons)
	if accepted < n/4 {
		t.Errorf("only %d of %d sequences accepted: the generator makes too many refusals to test relocation", accepted, n)
	}
}
