package reloc

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"golang.org/x/arch/x86/x86asm"
)

// cat concatenates instruction encodings.
func cat(bs ...[]byte) []byte { return bytes.Join(bs, nil) }

func le(v int32) []byte { return binary.LittleEndian.AppendUint32(nil, uint32(v)) }

const (
	fnAddr   = 0x401000
	nearStub = 0x402000     // within rel32 reach
	farStub  = 0x7f00000000 // beyond ±2 GiB
)

var (
	pushRBP    = []byte{0x55}
	movRBPRSP  = []byte{0x48, 0x89, 0xe5}
	subRSP16   = []byte{0x48, 0x83, 0xec, 0x10}
	ret        = []byte{0xc3}
	nop        = []byte{0x90}
	xorEAX     = []byte{0x31, 0xc0}
	testEDI    = []byte{0x85, 0xff}
	endbr      = []byte{0xf3, 0x0f, 0x1e, 0xfa}
	movRAXRIP  = cat([]byte{0x48, 0x8b, 0x05}, le(0x100)) // mov rax, [rip+0x100]
	leaRDIRIP  = cat([]byte{0x48, 0x8d, 0x3d}, le(-0x20)) // lea rdi, [rip-0x20]
	cmpRIPImm8 = cat([]byte{0x48, 0x83, 0x3d}, le(0x40), []byte{0x07})
	movRIPImm  = cat([]byte{0xc7, 0x05}, le(-0x80), le(0x11223344)) // mov dword [rip-0x80], 0x11223344
)

// absTable dispatches through an absolute jump table at 0x600000, as gcc
// -O2 -no-pie emits a switch: push rbp; mov rbp,rsp; nop; jmp [rax*8+table].
var absTable = cat(pushRBP, movRBPRSP, nop, []byte{0xff, 0x24, 0xc5}, le(0x600000))

func TestNewReadOnly(t *testing.T) {
	le64 := func(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }
	// A pointer at offset 1 (unaligned), one outside the code, one at
	// the end; a second segment with one pointer.
	seg1 := cat([]byte{0xaa}, le64(0x401234), le64(0x900000), []byte{1, 2, 3}, le64(0x401000))
	seg2 := le64(0x400ff0)
	ro := NewReadOnly([]uint64{0x600000, 0x500000}, [][]byte{seg1, seg2}, [][2]uint64{{0x401000, 0x402000}, {0x400f00, 0x401000}})
	if want := [][2]uint64{{0x500000, 0x500008}, {0x600000, 0x600000 + uint64(len(seg1))}}; len(ro.Ranges) != 2 || ro.Ranges[0] != want[0] || ro.Ranges[1] != want[1] {
		t.Errorf("Ranges = %#x; want %#x", ro.Ranges, want)
	}
	if want := []uint64{0x400ff0, 0x401000, 0x401234}; !equalU64(ro.Pointers, want) {
		t.Errorf("Pointers = %#x; want %#x", ro.Pointers, want)
	}
	if v, ok := ro.pointsInside(0x401000, 0x401005); ok {
		t.Errorf("pointsInside(0x401000, 0x401005) = %#x; want none (the ends do not count)", v)
	}
	if v, ok := ro.pointsInside(0x401230, 0x401238); !ok || v != 0x401234 {
		t.Errorf("pointsInside(0x401230, 0x401238) = %#x, %v; want 0x401234", v, ok)
	}
}

// jmpOverPadding is a loop rotated the way gcc and clang emit it: a jmp
// to the test, NOP padding that aligns the loop body, the body, the test.
// It adds rdi to rax.
var jmpOverPadding = cat([]byte{0xeb, 0x0d}, []byte{0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00},
	[]byte{0x48, 0x83, 0xc0, 0x01}, []byte{0x48, 0xff, 0xcf}, []byte{0x48, 0x85, 0xff}, []byte{0x75, 0xf4}, ret)

func TestAnalyze(t *testing.T) {
	tests := []struct {
		name    string
		fn      []byte
		opts    Options
		reason  Reason // 0: accepted
		off     int    // of the refusal
		entry   uint64
		len     int
		exits   bool
		entryBr []uint64
	}{
		{name: "push/mov prologue", fn: cat(pushRBP, movRBPRSP, subRSP16, xorEAX, ret), entry: fnAddr, len: 8},
		{name: "endbr64 kept in place", fn: cat(endbr, pushRBP, movRBPRSP, []byte{0x41, 0x54}, ret), entry: fnAddr + 4, len: 6},
		{name: "rip-relative load", fn: cat(movRAXRIP, ret), entry: fnAddr, len: 7},
		{name: "rip-relative lea", fn: cat(leaRDIRIP, ret), entry: fnAddr, len: 7},
		{name: "rip-relative with imm8 after disp", fn: cat(cmpRIPImm8, ret), entry: fnAddr, len: 8},
		{name: "rip-relative with imm32 after disp", fn: cat(movRIPImm, ret), entry: fnAddr, len: 10},
		// test edi,edi; je +2; nop; ... : the jcc rel8 is displaced.
		{name: "jcc rel8 displaced", fn: cat(testEDI, []byte{0x74, 0x03}, pushRBP, nop, nop, ret, xorEAX, ret), entry: fnAddr, len: 5},
		{name: "jcc rel32 displaced", fn: cat(testEDI, []byte{0x0f, 0x85}, le(2), nop, nop, ret), entry: fnAddr, len: 8},
		{name: "jmp rel8 ends the region", fn: cat(xorEAX, testEDI, []byte{0xeb, 0x01}, ret, ret), entry: fnAddr, len: 6, exits: true},
		{name: "plt-style tail call", fn: cat([]byte{0xff, 0x25}, le(0x2000)), entry: fnAddr, len: 6, exits: true},
		{name: "ret ends the region", fn: cat(pushRBP, xorEAX, []byte{0x5d}, ret), entry: fnAddr, len: 5, exits: true},
		{name: "vex without rip is fine", fn: cat([]byte{0xc5, 0xfe, 0x6f, 0x07}, nop, ret), entry: fnAddr, len: 5},
		// push rbp; mov rbp,rsp; dec edi; jne entry: a loop to Entry is allowed.
		{name: "loop to entry", fn: cat(pushRBP, movRBPRSP, nop, []byte{0xff, 0xcf, 0x75, 0xf7}, ret), entry: fnAddr, len: 5, entryBr: []uint64{fnAddr + 7}},
		{name: "loop to endbr", fn: cat(endbr, pushRBP, movRBPRSP, nop, []byte{0xff, 0xcf, 0x75, 0xf3}, ret), entry: fnAddr + 4, len: 5, entryBr: []uint64{fnAddr + 11}},
		{name: "emulated direct call", fn: cat(pushRBP, []byte{0xe8}, le(0x100), []byte{0x5d}, ret), opts: Options{EmulateCalls: true}, entry: fnAddr, len: 6, exits: true},
		{name: "emulated call r11", fn: cat(movRBPRSP, []byte{0x41, 0xff, 0xd3}, ret), opts: Options{EmulateCalls: true}, entry: fnAddr, len: 6, exits: true},
		{name: "emulated call [rip]", fn: cat([]byte{0xff, 0x15}, le(0x100), ret), opts: Options{EmulateCalls: true}, entry: fnAddr, len: 6, exits: true},
		{name: "emulated call [rax+8]", fn: cat(pushRBP, []byte{0xff, 0x50, 0x08}, nop, ret), opts: Options{EmulateCalls: true}, entry: fnAddr, len: 4 + 1, reason: DisplacedCall, off: 1},
		{name: "emulated call [rax+8] last", fn: cat(movRBPRSP, []byte{0xff, 0x50, 0x08}, ret), opts: Options{EmulateCalls: true}, entry: fnAddr, len: 6, exits: true},
		{name: "emulated call [rsp+8]", fn: cat(movRBPRSP, []byte{0xff, 0x54, 0x24, 0x08}, ret), opts: Options{EmulateCalls: true}, reason: DisplacedCall, off: 3},
		{name: "emulated call rsp", fn: cat(movRBPRSP, []byte{0xff, 0xd4}, ret), opts: Options{EmulateCalls: true}, reason: DisplacedCall, off: 3},
		{name: "jcc with operand-size prefix", fn: cat(testEDI, []byte{0x66, 0x0f, 0x84, 0x01, 0x00}, nop, ret), reason: Unrelocatable, off: 2},
		// The general-dynamic TLS call, data16 data16 rex.W call
		// __tls_get_addr: REX.W overrides 66, so it is a rel32 call on
		// every CPU. After the region, and displaced (emulated).
		{name: "tls gd call after the region", fn: cat(pushRBP, movRBPRSP, subRSP16, []byte{0x66, 0x66, 0x48, 0xe8}, le(0x100), ret), entry: fnAddr, len: 8},
		{name: "tls gd call emulated", fn: cat(pushRBP, []byte{0x66, 0x66, 0x48, 0xe8}, le(0x100), []byte{0x5d}, ret), opts: Options{EmulateCalls: true}, entry: fnAddr, len: 9, exits: true},
		// Without REX.W, 66 makes the call rel16 on AMD: unknown target.
		{name: "call with operand-size prefix after the region", fn: cat(pushRBP, movRBPRSP, subRSP16, []byte{0x66, 0xe8}, le(0x100), ret), reason: Undecodable, off: 8},

		{name: "min len 9", fn: cat(pushRBP, movRBPRSP, subRSP16, xorEAX, ret), opts: Options{MinLen: 9}, entry: fnAddr, len: 10},
		{name: "pop r/m is not xop", fn: cat([]byte{0x8f, 0x05}, le(0x100), ret), entry: fnAddr, len: 6},
		{name: "xop", fn: cat([]byte{0x8f, 0xe9, 0x78, 0xe1, 0xc8}, ret), reason: Undecodable, off: 0},
		{name: "tiny", fn: cat(xorEAX, ret), reason: TooShort, off: 3},
		{name: "tiny after endbr", fn: cat(endbr, xorEAX, ret), reason: TooShort, off: 3},
		{name: "ret before 5 bytes", fn: cat(xorEAX, ret, pushRBP, nop, nop, ret), reason: EarlyExit, off: 2},
		{name: "ret then padding", fn: cat(xorEAX, ret, nop, nop, nop), entry: fnAddr, len: 5, exits: true},
		// jmp test; nopw (padding); loop: add rax,1; dec rdi; test: test rdi,rdi; jne loop; ret
		{name: "jmp over padding", fn: jmpOverPadding, entry: fnAddr, len: 8, exits: true},
		{name: "jmp then code", fn: cat([]byte{0xeb, 0x03}, xorEAX, nop, ret, ret), reason: EarlyExit, off: 0},
		{name: "jmp then padding then code", fn: cat([]byte{0xeb, 0x04}, nop, nop, xorEAX, ret, ret), reason: EarlyExit, off: 0},
		// jmp +3; nop; nop; (+4) nop; ...; jne +4: the padding is a branch target.
		{name: "padding is a branch target", fn: cat([]byte{0xeb, 0x03}, nop, nop, nop, nop, testEDI, []byte{0x75, 0xfa}, ret), reason: BranchTarget, off: 4},
		{name: "instruction past the end", fn: cat(xorEAX, movRAXRIP[:5]), reason: TooShort, off: 7},
		// push rbp; mov rbp,rsp; ...; jne +1: the loop head is inside.
		{name: "loop back to entry+1", fn: cat(pushRBP, movRBPRSP, nop, []byte{0xff, 0xcf, 0x75, 0xf8}, ret), reason: BranchTarget, off: 1},
		{name: "forward branch into region", fn: cat([]byte{0x74, 0x01}, nop, nop, nop, nop, ret), reason: BranchTarget, off: 3},
		{name: "extra target inside", fn: cat(pushRBP, movRBPRSP, subRSP16, ret), opts: Options{ExtraTargets: []uint64{fnAddr - 5, fnAddr + 4, fnAddr + 100}}, reason: BranchTarget, off: 4},
		{name: "extra target at entry and end", fn: cat(pushRBP, movRBPRSP, subRSP16, ret), opts: Options{ExtraTargets: []uint64{fnAddr, fnAddr + 8}}, entry: fnAddr, len: 8},
		{name: "vex rip-relative", fn: cat([]byte{0xc5, 0xfe, 0x6f, 0x05}, le(0x100), ret), reason: VEXRIPRelative, off: 0},
		{name: "vex3 rip-relative", fn: cat(nop, []byte{0xc4, 0xe2, 0x7d, 0x58, 0x05}, le(0x100), ret), reason: VEXRIPRelative, off: 1},
		{name: "evex rip-relative", fn: cat([]byte{0x62, 0xf1, 0xfe, 0x48, 0x6f, 0x05}, le(0x100), ret), reason: VEXRIPRelative, off: 0},
		{name: "direct call", fn: cat(pushRBP, []byte{0xe8}, le(0x100), []byte{0x5d}, ret), reason: DisplacedCall, off: 1},
		{name: "indirect call", fn: cat(pushRBP, []byte{0xff, 0xd0}, nop, nop, ret), reason: DisplacedCall, off: 1},
		{name: "syscall", fn: cat(xorEAX, []byte{0x0f, 0x05}, nop, ret), reason: Unrelocatable, off: 2},
		{name: "int3", fn: cat(xorEAX, []byte{0xcc}, nop, nop, ret), reason: Unrelocatable, off: 2},
		{name: "jrcxz", fn: cat([]byte{0xe3, 0x03}, nop, nop, nop, ret), reason: Unrelocatable, off: 0},
		{name: "loop", fn: cat(nop, []byte{0xe2, 0x03}, nop, nop, nop, ret), reason: Unrelocatable, off: 1},
		{name: "xbegin", fn: cat([]byte{0xc7, 0xf8}, le(0), ret), reason: Unrelocatable, off: 0},
		{name: "undecodable later", fn: cat(pushRBP, movRBPRSP, subRSP16, []byte{0x06}, ret), reason: Undecodable, off: 8},
		{name: "undecodable in region", fn: cat(nop, []byte{0x06}, nop, nop, nop, ret), reason: Undecodable, off: 1},
		// lea rdx,[rip+x]; movsxd rax,[rdx+rax*4]; add rax,rdx; jmp rax
		{name: "pic jump table", fn: cat(leaRDIRIP[:0], []byte{0x48, 0x8d, 0x15}, le(0x100), []byte{0x48, 0x63, 0x04, 0x82, 0x48, 0x01, 0xd0, 0xff, 0xe0}), reason: JumpTable, off: 14},
		{name: "absolute jump table", fn: cat(pushRBP, movRBPRSP, nop, []byte{0xff, 0x24, 0xc5}, le(0x600000)), reason: JumpTable, off: 5},
		// push rbp; mov rbp,rsp; nop; jmp [rax*8+0x600000]: checked against the read-only data.
		{name: "absolute jump table checked", fn: absTable, opts: Options{ReadOnly: &ReadOnly{Ranges: [][2]uint64{{0x600000, 0x601000}}, Pointers: []uint64{fnAddr, fnAddr + 5, fnAddr + 9}}}, entry: fnAddr, len: 5},
		{name: "absolute jump table into the region", fn: absTable, opts: Options{ReadOnly: &ReadOnly{Ranges: [][2]uint64{{0x600000, 0x601000}}, Pointers: []uint64{fnAddr, fnAddr + 1, fnAddr + 9}}}, reason: JumpTable, off: 5},
		{name: "absolute jump table in writable data", fn: absTable, opts: Options{ReadOnly: &ReadOnly{Ranges: [][2]uint64{{0x601000, 0x602000}}}}, reason: JumpTable, off: 5},
		// jmp [rdx+rax*8+0x600000]: a base register, not an absolute table.
		{name: "jump table with a base", fn: cat(pushRBP, movRBPRSP, nop, []byte{0xff, 0xa4, 0xc2}, le(0x600000)), opts: Options{ReadOnly: &ReadOnly{Ranges: [][2]uint64{{0x600000, 0x601000}}}}, reason: JumpTable, off: 5},
		// jmp [rax*4+0x600000]: entries of 4 bytes are no absolute addresses.
		{name: "jump table of scale 4", fn: cat(pushRBP, movRBPRSP, nop, []byte{0xff, 0x24, 0x85}, le(0x600000)), opts: Options{ReadOnly: &ReadOnly{Ranges: [][2]uint64{{0x600000, 0x601000}}}}, reason: JumpTable, off: 5},
		// xor ecx,ecx; rdpkru; ret: x86asm does not know RDPKRU.
		{name: "rdpkru displaced", fn: cat([]byte{0x31, 0xc9, 0x0f, 0x01, 0xee}, ret), entry: fnAddr, len: 5},
		{name: "wrpkru later", fn: cat(pushRBP, movRBPRSP, subRSP16, []byte{0x0f, 0x01, 0xef}, ret), entry: fnAddr, len: 8},
		{name: "rdpkru with a prefix", fn: cat(pushRBP, movRBPRSP, subRSP16, []byte{0x66, 0x0f, 0x01, 0xee}, ret), reason: Undecodable, off: 8},
		{name: "tail call through pointer", fn: cat(pushRBP, movRBPRSP, []byte{0x48, 0x8b, 0x47, 0x08, 0x5d, 0xff, 0xe0}), entry: fnAddr, len: 8},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Analyze(tt.fn, fnAddr, tt.opts)
			if tt.reason != 0 {
				var r *Refusal
				if !errors.As(err, &r) {
					t.Fatalf("Analyze = %v, %v; want refusal %v", p, err, tt.reason)
				}
				if r.Reason != tt.reason || r.Off != tt.off {
					t.Fatalf("refusal %v (%v at +%d); want %v at +%d", err, r.Reason, r.Off, tt.reason, tt.off)
				}
				t.Log(err)
				return
			}
			if err != nil {
				t.Fatalf("Analyze: %v", err)
			}
			if p.Entry != tt.entry || p.Len != tt.len || p.Exits != tt.exits {
				t.Fatalf("plan entry %#x len %d exits %v; want %#x %d %v", p.Entry, p.Len, p.Exits, tt.entry, tt.len, tt.exits)
			}
			if !equalU64(p.EntryBranches, tt.entryBr) {
				t.Errorf("entry branches %#x; want %#x", p.EntryBranches, tt.entryBr)
			}
			off := int(p.Entry - fnAddr)
			if !bytes.Equal(p.Orig(), tt.fn[off:off+p.Len]) {
				t.Errorf("Orig() = % x; want % x", p.Orig(), tt.fn[off:off+p.Len])
			}
			for _, stub := range []uint64{nearStub, farStub, fnAddr - 0x1000} {
				checkRelocated(t, p, stub)
			}
			patch, err := p.Patch(nearStub)
			if err != nil || len(patch) != p.Len || patch[0] != 0xe9 || int32(binary.LittleEndian.Uint32(patch[1:])) != int32(nearStub-(p.Entry+5)) {
				t.Errorf("Patch = % x, %v", patch, err)
			}
			if _, err := p.Patch(farStub); !errors.Is(err, ErrOutOfReach) {
				t.Errorf("Patch(far) = %v; want ErrOutOfReach", err)
			}
		})
	}
}

func equalU64(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// absRef returns what an instruction at pc refers to by address: the
// target of a relative branch or of a [rip+disp] operand.
func absRef(in x86asm.Inst, pc uint64) (uint64, bool) {
	if r, ok := in.Args[0].(x86asm.Rel); ok {
		return pc + uint64(in.Len) + uint64(int64(r)), true
	}
	for _, a := range in.Args {
		if m, ok := a.(x86asm.Mem); ok && m.Base == x86asm.RIP {
			return pc + uint64(in.Len) + uint64(m.Disp), true
		}
	}
	return 0, false
}

// checkRelocated relocates p to stub and decodes the result: each
// instruction must refer to the same absolute address as the original,
// jcc and jmp keep their condition, and the stub must end with a jump to
// Resume unless the region exits.
func checkRelocated(t *testing.T, p *Plan, stub uint64) {
	t.Helper()
	code, err := p.Relocate(stub)
	hasRIP := false
	for _, in := range p.Insts {
		if in.kind == kRIPRel || in.kind == kJmpRIP || in.kind == kCallInd && in.inst.PCRel != 0 {
			hasRIP = true
		}
	}
	far := stub-p.Entry+(1<<31) >= 1<<32
	// A RIP-relative operand can reach its target from the stub only if
	// the target is within ±2 GiB of the stub (with some slack).
	reach := true
	for _, in := range p.Insts {
		if ref, ok := absRef(in.inst, p.Entry+uint64(in.Off)); ok && hasRIP && in.kind != kJcc && in.kind != kJmp && in.kind != kCall {
			if ref-stub+(1<<31)-64 >= 1<<32-128 {
				reach = false
			}
		}
	}
	if (far && hasRIP) || !reach {
		if !errors.Is(err, ErrOutOfReach) && (far || err != nil) {
			t.Errorf("Relocate(%#x) = %v; want ErrOutOfReach", stub, err)
		}
		if err != nil {
			return
		}
	}
	if err != nil {
		t.Fatalf("Relocate(%#x): %v", stub, err)
	}
	if len(code) > p.MaxStubLen() {
		t.Errorf("Relocate(%#x): %d bytes > MaxStubLen %d", stub, len(code), p.MaxStubLen())
	}
	// absJmp decodes `jmp [rip+0]; .quad target` at off.
	absJmp := func(off int) (uint64, bool) {
		if off+JmpAbsLen <= len(code) && bytes.Equal(code[off:off+6], []byte{0xff, 0x25, 0, 0, 0, 0}) {
			return binary.LittleEndian.Uint64(code[off+6:]), true
		}
		return 0, false
	}
	off := 0
	// absOK reports whether an absolute jump to target at off is
	// expected: the stub is far, or target is beyond rel32 reach.
	absOK := func(target uint64) bool {
		_, near := rel32(target, stub+uint64(off)+JccRel32Len)
		_, near2 := rel32(target, stub+uint64(off)+JmpRel32Len)
		return far || !near || !near2
	}
	for _, oi := range p.Insts {
		if oi.kind == kDead {
			continue // padding after the exit: left out
		}
		if name, n := handDecoded(oi.Bytes); n > 0 {
			if !bytes.Equal(code[off:off+n], oi.Bytes) {
				t.Fatalf("stub at %#x +%d: % x; want %s copied", stub, off, code[off:], name)
			}
			off += n
			continue
		}
		orig := p.Entry + uint64(oi.Off)
		in, err := x86asm.Decode(code[off:], 64)
		if err != nil {
			t.Fatalf("stub at %#x: decode +%d: %v (% x)", stub, off, err, code)
		}
		pc := stub + uint64(off)
		want, ref := absRef(oi.inst, orig)
		if oi.kind == kCall || oi.kind == kCallInd {
			push := appendPush(nil, p.Resume())
			if !bytes.Equal(code[off:off+len(push)], push) {
				t.Fatalf("stub at %#x: % x; want a push of %#x", stub, code[off:], p.Resume())
			}
			off += len(push)
			if got, ok := absJmp(off); ok && absOK(want) && oi.kind == kCall {
				if got != want {
					t.Fatalf("stub at %#x: jmp abs %#x; want %#x", stub, got, want)
				}
				off += JmpAbsLen
				continue
			}
			pc = stub + uint64(off)
			if in, err = x86asm.Decode(code[off:], 64); err != nil || in.Op != x86asm.JMP || in.Args[0] != oi.inst.Args[0] && !ref {
				t.Fatalf("stub at %#x: %v (%v); want a jmp for %s", stub, in, err, oi.Text)
			}
			if got, ok := absRef(in, pc); ok != ref || got != want {
				t.Fatalf("stub at %#x +%d: %v refers to %#x; want %#x (%v)", stub, off, in, got, want, oi.Text)
			}
			off += in.Len
			continue
		}
		switch oi.kind {
		case kJcc:
			if in.Op != oi.inst.Op {
				// Out of reach: j!cc over an absolute jmp.
				got, ok := absJmp(off + 2)
				if !absOK(want) || !ok || code[off+1] != JmpAbsLen || got != want {
					t.Fatalf("stub at %#x: %v for %v", stub, in, oi.Text)
				}
				off += JccAbsLen
				continue
			}
		case kJmp:
			if got, ok := absJmp(off); ok && absOK(want) {
				if got != want {
					t.Fatalf("stub at %#x: jmp abs %#x; want %#x", stub, got, want)
				}
				off += JmpAbsLen
				continue
			}
		}
		if in.Op != oi.inst.Op {
			t.Fatalf("stub at %#x +%d: %v; want %v", stub, off, in, oi.Text)
		}
		if got, ok := absRef(in, pc); ok != ref || got != want {
			t.Fatalf("stub at %#x +%d: %v refers to %#x; want %#x (%v)", stub, off, in, got, want, oi.Text)
		}
		if oi.kind == kPlain || oi.kind == kExit {
			if !bytes.Equal(code[off:off+in.Len], oi.Bytes) {
				t.Fatalf("stub at %#x: % x; want a copy % x", stub, code[off:off+in.Len], oi.Bytes)
			}
		}
		off += in.Len
	}
	if !p.Exits {
		if got, ok := absJmp(off); ok {
			if !absOK(p.Resume()) || got != p.Resume() {
				t.Fatalf("stub at %#x: jump back to %#x; want %#x", stub, got, p.Resume())
			}
			off += JmpAbsLen
		} else {
			in, err := x86asm.Decode(code[off:], 64)
			got, _ := absRef(in, stub+uint64(off))
			if err != nil || in.Op != x86asm.JMP || got != p.Resume() {
				t.Fatalf("stub at %#x: ends with %v; want jmp %#x", stub, in, p.Resume())
			}
			off += in.Len
		}
	}
	if off != len(code) {
		t.Fatalf("stub at %#x: %d trailing bytes % x", stub, len(code)-off, code[off:])
	}
}

// TestRelocateBytes pins the exact encodings of a few relocations.
func TestRelocateBytes(t *testing.T) {
	p, err := Analyze(cat(testEDI, []byte{0x74, 0x03}, pushRBP, nop, nop, ret, xorEAX, ret), fnAddr, Options{})
	if err != nil {
		t.Fatal(err)
	}
	got, err := p.Relocate(nearStub)
	if err != nil {
		t.Fatal(err)
	}
	// test edi,edi; je fnAddr+7 (rel32); push rbp; jmp fnAddr+5.
	want := cat(testEDI, []byte{0x0f, 0x84}, le(int32(fnAddr+7-(nearStub+8))), pushRBP, []byte{0xe9}, le(int32(fnAddr+5-(nearStub+14))))
	if !bytes.Equal(got, want) {
		t.Errorf("near: % x\nwant  % x", got, want)
	}
	got, err = p.Relocate(farStub)
	if err != nil {
		t.Fatal(err)
	}
	abs := func(a uint64) []byte { return binary.LittleEndian.AppendUint64([]byte{0xff, 0x25, 0, 0, 0, 0}, a) }
	want = cat(testEDI, []byte{0x75, 0x0e}, abs(fnAddr+7), pushRBP, abs(fnAddr+5))
	if !bytes.Equal(got, want) {
		t.Errorf("far: % x\nwant % x", got, want)
	}
	if len(got) != p.MaxStubLen() {
		t.Errorf("far stub %d bytes; MaxStubLen %d", len(got), p.MaxStubLen())
	}
}

func TestRefusalMessages(t *testing.T) {
	for _, tc := range []struct {
		fn   []byte
		want string
	}{
		{cat(pushRBP, []byte{0xe8}, le(0x10), ret), "displaced call at +1 (CALL .+16)"},
		{cat([]byte{0x74, 0x01}, nop, nop, nop, nop, ret), "branch target at +3 (from JE .+1 at +0)"},
		{cat(xorEAX, []byte{0x0f, 0x05}, nop, ret), "unrelocatable instruction SYSCALL at +2"},
		{cat(xorEAX, ret), "function shorter than 5 bytes"},
		{cat(nop, []byte{0x06}, nop, nop, nop, ret), "undecodable at +1"},
	} {
		_, err := Analyze(tc.fn, fnAddr, Options{})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Analyze(% x) = %v; want %q", tc.fn, err, tc.want)
		}
	}
}

func TestBranchTargets(t *testing.T) {
	// je +2; 06 (undecodable, skipped); call +0; jmp to 0, twice
	code := cat([]byte{0x74, 0x02, 0x06, 0xe8}, le(0), []byte{0xeb, 0xf6, 0xeb, 0xf4})
	got := BranchTargets(code, 0x1000)
	want := []uint64{0x1000, 0x1004, 0x1008}
	if !equalU64(got, want) {
		t.Errorf("BranchTargets = %#x; want %#x", got, want)
	}
}

func TestAnalyzeBadArguments(t *testing.T) {
	_, err := Analyze(cat(pushRBP, movRBPRSP, subRSP16), ^uint64(0)-3, Options{})
	var r *Refusal
	if err == nil || errors.As(err, &r) {
		t.Errorf("Analyze at the top of the address space = %v; want a plain error", err)
	}
	if _, err := Analyze(nil, fnAddr, Options{}); !errors.As(err, &r) || r.Reason != TooShort {
		t.Errorf("Analyze(nil) = %v; want too short", err)
	}
}

// FuzzAnalyze feeds arbitrary bytes to Analyze, as an untrusted binary
// would: it must never panic, and a plan it accepts must relocate to a
// near stub that decodes back to the same references (checkRelocated).
func FuzzAnalyze(f *testing.F) {
	f.Add(cat(endbr, pushRBP, movRBPRSP, subRSP16, ret), false)
	f.Add(cat(testEDI, []byte{0x74, 0x03}, pushRBP, nop, nop, ret, xorEAX, ret), true)
	f.Add(cat(movRIPImm, []byte{0xff, 0x25}, le(0x2000)), false)
	f.Add(cat(pushRBP, []byte{0xe8}, le(0x100), []byte{0x5d}, ret), true)
	f.Fuzz(func(t *testing.T, fn []byte, calls bool) {
		p, err := Analyze(fn, fnAddr, Options{EmulateCalls: calls})
		if err != nil {
			var r *Refusal
			if !errors.As(err, &r) || r.Error() == "" {
				t.Fatalf("Analyze(% x) = %v; want a Refusal", fn, err)
			}
			return
		}
		if p.Len < JmpLen || int(p.Entry-fnAddr)+p.Len > len(fn) {
			t.Fatalf("plan %+v out of % x", p, fn)
		}
		for _, stub := range []uint64{nearStub, farStub} {
			checkRelocated(t, p, stub)
		}
	})
}
