package reloc

// quickDecode is a length decoder for the instructions that make up most of
// compiled code, for BranchTargets' sweep over whole executable sections:
// x86asm decodes every operand of every instruction, and a sweep over the
// 1.5 MB of a stripped redis-server took 140 ms of the attach. It answers
// only for encodings it knows for certain (ok), with the length and, for a
// direct branch, the displacement; for anything else (VEX, EVEX, x87,
// three-byte opcodes, segment, lock and address-size prefixes, encodings
// whose validity depends on ModRM or on a mandatory prefix, SSE, a branch
// with a prefix) it says nothing
// and the caller asks x86asm. TestQuickDecode checks it against x86asm at
// every byte offset of real programs and libraries and on random bytes: it
// must agree with decode and directTarget wherever it answers.

// Operand shapes of the opcodes quickDecode knows.
const (
	qNone     = iota // unknown: ask x86asm
	qLen1            // the opcode alone
	qModRM           // ModRM (SIB, displacement)
	qModRM8          // ModRM and an 8-bit immediate
	qModRMz          // ModRM and a 16/32-bit immediate (operand size)
	qImm8            // an 8-bit immediate
	qImm16           // a 16-bit immediate
	qImmz            // a 16/32-bit immediate
	qMovImm          // B8+r: a 16/32/64-bit immediate (REX.W: 64)
	qRel8            // a direct branch, rel8
	qRel32           // a direct branch, rel32
	qModRM0          // ModRM whose reg field must be 0 (C6, C7, 8F: other values are other instructions)
	qModRM0z         // C7 /0: as qModRM0, and a 16/32-bit immediate
	qModRM0_8        // C6 /0: as qModRM0, and an 8-bit immediate
	qGroup3          // F6/F7: /0 and /1 take an immediate (8 or 16/32 bits)
	qGroup5          // FF: /0 /1 /2 /4 /6 only
	qEnter           // C8: imm16, imm8
	qShift           // D0-D3: ModRM, /6 (an alias of /4) left to x86asm
	qShift8          // C0, C1: as qShift, and an 8-bit immediate
	qModRMreg        // ModRM with mod 3 only (pmovmskb: no memory form)
)

// oneByte and twoByte are the shapes of the one-byte and the 0F opcodes;
// sse66 and sseF3 those of the 0F opcodes with the mandatory prefix 66
// or F3 that mean SSE instructions (the commonest in libc's string
// functions, which the x86asm fallback took half of a sweep's time for).
var oneByte, twoByte, sse66, sseF3 [256]uint8

func init() {
	set := func(t *[256]uint8, shape uint8, ops ...int) {
		for _, o := range ops {
			t[o] = shape
		}
	}
	span := func(lo, hi int) []int {
		var s []int
		for o := lo; o <= hi; o++ {
			s = append(s, o)
		}
		return s
	}
	o := &oneByte
	for base := 0x00; base <= 0x38; base += 8 {
		set(o, qModRM, base, base+1, base+2, base+3)
		set(o, qImm8, base+4)
		set(o, qImmz, base+5)
	}
	set(o, qLen1, span(0x50, 0x5f)...)
	set(o, qModRM, 0x63)
	set(o, qImmz, 0x68)
	set(o, qModRMz, 0x69)
	set(o, qImm8, 0x6a)
	set(o, qModRM8, 0x6b)
	set(o, qRel8, span(0x70, 0x7f)...)
	set(o, qModRM8, 0x80, 0x83)
	set(o, qModRMz, 0x81)
	set(o, qModRM, span(0x84, 0x8b)...)
	set(o, qModRM, 0x8d) // lea: mod 3 is refused below
	set(o, qModRM0, 0x8f)
	set(o, qLen1, span(0x90, 0x99)...)
	set(o, qLen1, 0x9c, 0x9d, 0x9e, 0x9f)
	set(o, qLen1, 0xa4, 0xa5, 0xa6, 0xa7, 0xaa, 0xab, 0xac, 0xad, 0xae, 0xaf)
	set(o, qImm8, 0xa8)
	set(o, qImmz, 0xa9)
	set(o, qImm8, span(0xb0, 0xb7)...)
	set(o, qMovImm, span(0xb8, 0xbf)...)
	set(o, qShift8, 0xc0, 0xc1)
	set(o, qImm16, 0xc2)
	set(o, qLen1, 0xc3, 0xc9, 0xcc)
	set(o, qModRM0_8, 0xc6)
	set(o, qModRM0z, 0xc7)
	set(o, qEnter, 0xc8)
	set(o, qImm8, 0xcd)
	set(o, qShift, 0xd0, 0xd1, 0xd2, 0xd3)
	set(o, qRel8, 0xe0, 0xe1, 0xe2, 0xe3, 0xeb)
	set(o, qRel32, 0xe8, 0xe9)
	set(o, qLen1, 0xf4, 0xf5, 0xf8, 0xf9, 0xfa, 0xfb, 0xfc, 0xfd)
	set(o, qGroup3, 0xf6, 0xf7)
	set(o, qGroup5, 0xff)

	// Two-byte opcodes: the general-purpose ones only. The SSE ones are
	// valid or not, and mean different instructions, by their mandatory
	// prefix and their ModRM: x86asm's call.
	t := &twoByte
	set(t, qLen1, 0x05, 0x0b, 0xa2)
	set(t, qModRM0, 0x1f) // nop r/m: /0 only
	set(t, qModRM, span(0x40, 0x4f)...)
	set(t, qRel32, span(0x80, 0x8f)...)
	set(t, qModRM, span(0x90, 0x9f)...)
	set(t, qModRM, 0xa3, 0xa5, 0xab, 0xad, 0xaf, 0xb0, 0xb1, 0xb3, 0xb6, 0xb7, 0xbb, 0xbc, 0xbd, 0xbe, 0xbf, 0xc0, 0xc1)
	set(t, qModRM8, 0xa4, 0xac)
	set(t, qLen1, span(0xc8, 0xcf)...)
	// movups, movaps: the commonest SSE moves, without a prefix.
	set(t, qModRM, 0x10, 0x11, 0x28, 0x29)

	// 66 0F: integer SSE on xmm registers (punpck*, pack*, pcmpeq*,
	// pcmpgt*, movd/movq, movdqa, pshufd, pand/por/pxor, padd*/psub*,
	// pminub/pmaxub...), whatever ModRM.
	x := &sse66
	set(x, qModRM, span(0x60, 0x6f)...)
	set(x, qModRM8, 0x70)
	set(x, qModRM, 0x74, 0x75, 0x76, 0x7e, 0x7f, 0xd6)
	set(x, qModRM, 0xd4, 0xd5, 0xd8, 0xd9, 0xda, 0xdb, 0xdc, 0xdd, 0xde, 0xdf)
	set(x, qModRM, 0xe0, 0xe3, 0xe4, 0xe5, 0xe8, 0xe9, 0xea, 0xeb, 0xec, 0xed, 0xee, 0xef)
	set(x, qModRM, 0xf4, 0xf5, 0xf6, 0xf8, 0xf9, 0xfa, 0xfb, 0xfc, 0xfd, 0xfe)
	set(x, qModRMreg, 0xd7) // pmovmskb
	// F3 0F: movdqu, movq, and the bit counts.
	set(&sseF3, qModRM, 0x6f, 0x7e, 0x7f, 0xb8, 0xbc, 0xbd)
}

// quickDecode returns the length n of the instruction b starts with and,
// for a direct branch (branch), its displacement rel; ok is false when it
// does not know the encoding for certain, or b ends before the
// instruction does.
func quickDecode(b []byte) (n int, rel int64, branch, ok bool) {
	// The padding between functions: nopw, with more 66s and a CS
	// prefix (66 2e 0f 1f 84 00 00 00 00 00, 66 66 2e 0f 1f ...).
	if n := nopPadding(b); n > 0 {
		return n, 0, false, true
	}
	i := 0
	opsize16, rexW, prefixed := false, false, false
	var mand byte // the 66, F2 or F3 prefix, if any
	// At most one segment prefix FS or GS (a thread's TLS, the stack
	// protector's canary), then at most one of 66, F2 and F3, then at
	// most one REX.
	if i < len(b) && (b[i] == 0x64 || b[i] == 0x65) {
		prefixed = true
		i++
	}
	if i < len(b) {
		switch b[i] {
		case 0x66:
			opsize16 = true
			prefixed = true
			mand = b[i]
			i++
		case 0xf2, 0xf3:
			prefixed = true
			mand = b[i]
			i++
		}
	}
	if i < len(b) && b[i]&0xf0 == 0x40 {
		rexW = b[i]&0x08 != 0
		prefixed = true
		i++
	}
	if i >= len(b) {
		return 0, 0, false, false
	}
	op := b[i]
	i++
	shape := oneByte[op]
	if op == 0x0f {
		if i >= len(b) || mand == 0xf2 {
			return 0, 0, false, false
		}
		switch mand {
		case 0xf3:
			// F3 makes other instructions of some 0F opcodes
			// (tzcnt, popcnt...): only those sseF3 knows.
			shape = sseF3[b[i]]
		case 0x66:
			shape = twoByte[b[i]]
			if shape == qNone {
				shape = sse66[b[i]]
			} else if b[i] == 0x10 || b[i] == 0x11 || b[i] == 0x28 || b[i] == 0x29 {
				shape = qNone // movupd, movapd: x86asm's call
			}
		default:
			shape = twoByte[b[i]]
		}
		if b[i] == 0x1f && prefixed {
			shape = qNone // x86asm refuses nopl with a REX
		}
		i++
	}
	immz := 4
	if opsize16 && !rexW {
		immz = 2 // REX.W wins over 66
	}
	// regOf is the reg field of the ModRM byte, -1 past the end.
	regOf := func() int {
		if i >= len(b) {
			return -1
		}
		return int(b[i]>>3) & 7
	}
	modrm := func(reg0 bool) bool {
		if i >= len(b) {
			return false
		}
		m := b[i]
		if reg0 && (m>>3)&7 != 0 {
			return false
		}
		if m>>6 == 3 && op == 0x8d {
			// lea and a few others take memory only: not ours to judge.
			return false
		}
		var ok bool
		i, ok = modrmEnd(b, i)
		return ok
	}
	switch shape {
	case qLen1:
	case qModRM:
		if !modrm(false) {
			return 0, 0, false, false
		}
	case qModRM0:
		if !modrm(true) {
			return 0, 0, false, false
		}
	case qModRMreg:
		if i >= len(b) || b[i]>>6 != 3 || !modrm(false) {
			return 0, 0, false, false
		}
	case qModRM8:
		if !modrm(false) {
			return 0, 0, false, false
		}
		i++
	case qModRM0_8:
		if !modrm(true) {
			return 0, 0, false, false
		}
		i++
	case qModRMz:
		if !modrm(false) {
			return 0, 0, false, false
		}
		i += immz
	case qModRM0z:
		if !modrm(true) {
			return 0, 0, false, false
		}
		i += immz
	case qImm8:
		i++
	case qImm16:
		i += 2
	case qImmz:
		i += immz
	case qMovImm:
		switch {
		case rexW:
			i += 8
		default:
			i += immz
		}
	case qEnter:
		i += 3
	case qShift, qShift8:
		if regOf() == 6 || !modrm(false) {
			return 0, 0, false, false
		}
		if shape == qShift8 {
			i++
		}
	case qGroup3:
		// /0 test with an immediate; /1, an alias of it, is left to
		// x86asm; /2-/7 (not, neg, mul, imul, div, idiv) take none.
		reg := regOf()
		if reg == 1 || !modrm(false) {
			return 0, 0, false, false
		}
		if reg == 0 {
			if op == 0xf6 {
				i++
			} else {
				i += immz
			}
		}
	case qGroup5:
		switch regOf() {
		case 0, 1, 2, 4, 6:
		default:
			return 0, 0, false, false
		}
		if !modrm(false) {
			return 0, 0, false, false
		}
	case qRel8, qRel32:
		if prefixed {
			return 0, 0, false, false // 66 (rel16), branch hints, bnd: x86asm's call
		}
		size := 1
		if shape == qRel32 {
			size = 4
		}
		if i+size > len(b) {
			return 0, 0, false, false
		}
		if size == 1 {
			rel = int64(int8(b[i]))
		} else {
			rel = int64(int32(uint32(b[i]) | uint32(b[i+1])<<8 | uint32(b[i+2])<<16 | uint32(b[i+3])<<24))
		}
		i += size
		return i, rel, true, true
	default:
		return 0, 0, false, false
	}
	if i > len(b) || i > maxInstLen {
		return 0, 0, false, false
	}
	return i, 0, false, true
}

// nopPadding returns the length of the NOP padding b starts with (one or
// more 66 prefixes, an optional CS prefix, then 0F 1F /0), or 0.
func nopPadding(b []byte) int {
	i := 0
	for i < len(b) && b[i] == 0x66 {
		i++
	}
	if i == 0 || i > 6 {
		return 0
	}
	if i < len(b) && b[i] == 0x2e {
		i++
	}
	if i+2 >= len(b) || b[i] != 0x0f || b[i+1] != 0x1f {
		return 0
	}
	i += 2
	if b[i]>>3&7 != 0 {
		return 0
	}
	i, ok := modrmEnd(b, i)
	if !ok || i > len(b) || i > maxInstLen {
		return 0
	}
	return i
}

// modrmEnd returns where the operand bytes of the ModRM byte at b[i]
// (SIB, displacement) end; ok is false when b ends before the SIB byte.
func modrmEnd(b []byte, i int) (end int, ok bool) {
	m := b[i]
	i++
	mod, rm := m>>6, m&7
	if mod == 3 {
		return i, true
	}
	if rm == 4 {
		if i >= len(b) {
			return i, false
		}
		sib := b[i]
		i++
		if mod == 0 && sib&7 == 5 {
			i += 4
		}
	}
	switch {
	case mod == 0 && rm == 5:
		i += 4 // RIP-relative
	case mod == 1:
		i++
	case mod == 2:
		i += 4
	}
	return i, true
}

// quickOff turns quickDecode off in BranchTargets and Analyze (tests
// compare them with and without it).
var quickOff bool

// quickBranch is quickDecode for BranchTargets, unless quickOff.
func quickBranch(b []byte) (n int, rel int64, branch, ok bool) {
	if quickOff {
		return 0, 0, false, false
	}
	return quickDecode(b)
}

// quickProof is quickDecode for Analyze's sweep of a function at pc: it
// answers (ok) only for instructions whose length and direct branch
// target t (branch) are all the proof needs, which excludes those it looks
// at more closely: an indirect jmp (FF), a load into a register from
// memory that may index a jump table (mov 8A/8B, mov to a segment
// register 8E, movsxd 63), and mov from a segment register (8C), which
// x86asm also calls MOV.
func quickProof(b []byte, pc uint64) (n int, t uint64, branch, ok bool) {
	if quickOff {
		return 0, 0, false, false
	}
	n, rel, branch, ok := quickDecode(b)
	if !ok {
		return 0, 0, false, false
	}
	switch b[legacyPrefixes(b)] {
	case 0xff, 0x8a, 0x8b, 0x8c, 0x8e, 0x63:
		return 0, 0, false, false
	}
	if branch {
		t = pc + uint64(n) + uint64(rel)
	}
	return n, t, branch, true
}
