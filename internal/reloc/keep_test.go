package reloc

import (
	"bytes"
	"errors"
	"testing"
)

// TestKeepFirst checks which first instructions Options.KeepFirst leaves in
// place (the region then starts after them, where a kernel uprobe on the
// function resumes), what the stub must undo, and the fallbacks to a region
// at the function's start.
func TestKeepFirst(t *testing.T) {
	pushR12 := []byte{0x41, 0x54}
	subImm32 := []byte{0x48, 0x81, 0xec, 0xd8, 0x00, 0x00, 0x00}
	store := []byte{0xc7, 0x07, 0x01, 0x00, 0x00, 0x00} // movl $1,(%rdi)
	pushR11 := []byte{0x41, 0x53}
	tableJmp := []byte{0xff, 0x24, 0xc5, 0x00, 0x00, 0x60, 0x00} // jmp [8*rax+0x600000]
	tests := []struct {
		name    string
		fn      []byte
		opts    Options
		kept    []byte
		delta   int
		live    bool
		entry   uint64
		len     int
		entryBr []uint64
		reason  Reason
		off     int
	}{
		{name: "push rbp", fn: cat(pushRBP, movRBPRSP, subRSP16, xorEAX, ret), kept: pushRBP, delta: 8, entry: fnAddr + 1, len: 7},
		{name: "push r12", fn: cat(pushR12, pushRBP, []byte{0x53}, []byte{0x48, 0x89, 0xfb}, subRSP16, ret), kept: pushR12, delta: 8, entry: fnAddr + 2, len: 5},
		{name: "sub imm8", fn: cat(subRSP16, movRBPRSP, xorEAX, ret), kept: subRSP16, delta: 16, entry: fnAddr + 4, len: 5},
		{name: "sub imm32", fn: cat(subImm32, movRBPRSP, xorEAX, ret), kept: subImm32, delta: 0xd8, entry: fnAddr + 7, len: 5},
		{name: "test before the region", fn: cat(testEDI, xorEAX, movRBPRSP, ret), kept: testEDI, live: true, entry: fnAddr + 2, len: 5},
		// mov $n,%eax before the region: the flags are dead, and the
		// tracer's call keeps eax.
		{name: "move before the region", fn: cat([]byte{0xb8, 0xb1, 0x79, 0x37, 0x9e}, []byte{0x48, 0x0f, 0xaf, 0xc7}, []byte{0x48, 0xff, 0xc0}, ret), kept: []byte{0xb8, 0xb1, 0x79, 0x37, 0x9e}, entry: fnAddr + 5, len: 7},
		{name: "move to r11 before the region", fn: cat([]byte{0x49, 0x89, 0xfb}, xorEAX, movRBPRSP, ret), kept: []byte{0x49, 0x89, 0xfb}, live: true, entry: fnAddr + 3, len: 5},
		{name: "store stays displaced", fn: cat(store, xorEAX, ret), entry: fnAddr, len: 6},
		{name: "push r11 stays displaced", fn: cat(pushR11, movRBPRSP, xorEAX, ret), entry: fnAddr, len: 5},
		{name: "without the option", fn: cat(pushRBP, movRBPRSP, subRSP16, xorEAX, ret), opts: Options{}, entry: fnAddr, len: 8},
		// push rbp; mov rbp,rsp; nop; dec edi; jne fn: a loop to the
		// function runs the kept push again, then the stub.
		{name: "loop to the function", fn: cat(pushRBP, movRBPRSP, nop, []byte{0xff, 0xcf, 0x75, 0xf7}, ret), kept: pushRBP, delta: 8, entry: fnAddr + 1, len: 6, entryBr: []uint64{fnAddr + 7}},
		// ...; jne fn+1: lands after the kept push without running it:
		// back to the region at the function, where fn+1 is inside.
		{name: "loop to after the kept push", fn: cat(pushRBP, movRBPRSP, nop, []byte{0xff, 0xcf, 0x75, 0xf8}, ret), reason: BranchTarget, off: 1},
		{name: "extra target after the kept push", fn: cat(pushRBP, movRBPRSP, subRSP16, ret), opts: Options{KeepFirst: true, ExtraTargets: []uint64{fnAddr + 1}}, reason: BranchTarget, off: 1},
		// push rbp; mov rbp,rsp; mov eax,edi; jmp [8*rax+table]; ret:
		// an absolute jump table whose read-only data holds fn+1, the
		// region's first byte after the kept push (a loop head in
		// node's SPrintFImpl), enters the stub without the push:
		// back to the region at the function, where fn+1 is inside.
		{name: "table entry after the kept push", fn: cat(pushRBP, movRBPRSP, []byte{0x89, 0xf8}, tableJmp, ret), opts: Options{ReadOnly: &ReadOnly{Ranges: [][2]uint64{{0x600000, 0x600100}}, Pointers: []uint64{fnAddr + 1}}}, reason: JumpTable, off: 6},
		{name: "table entry elsewhere", fn: cat(pushRBP, movRBPRSP, []byte{0x89, 0xf8}, tableJmp, ret), opts: Options{ReadOnly: &ReadOnly{Ranges: [][2]uint64{{0x600000, 0x600100}}, Pointers: []uint64{fnAddr + 13}}}, kept: pushRBP, delta: 8, entry: fnAddr + 1, len: 5},
		// push rbp; ret: nothing to displace after the push; the
		// region at the function refuses it the same way.
		{name: "too short after the kept push", fn: cat(pushRBP, xorEAX, ret), reason: TooShort, off: 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := tt.opts
			if tt.opts.ExtraTargets == nil && tt.name != "without the option" {
				opts.KeepFirst = true
			}
			p, err := Analyze(tt.fn, fnAddr, opts)
			if tt.reason != 0 {
				var r *Refusal
				if !errors.As(err, &r) || r.Reason != tt.reason || r.Off != tt.off {
					t.Fatalf("Analyze = %+v, %v; want refusal %v at +%d", p, err, tt.reason, tt.off)
				}
				return
			}
			if err != nil {
				t.Fatalf("Analyze: %v", err)
			}
			if !bytes.Equal(p.Kept, tt.kept) || p.KeptDelta != tt.delta || p.KeptLive != tt.live {
				t.Errorf("kept % x delta %d live %v; want % x %d %v", p.Kept, p.KeptDelta, p.KeptLive, tt.kept, tt.delta, tt.live)
			}
			if p.Entry != tt.entry || p.Len != tt.len || !equalU64(p.EntryBranches, tt.entryBr) {
				t.Errorf("entry %#x len %d entry branches %#x; want %#x %d %#x", p.Entry, p.Len, p.EntryBranches, tt.entry, tt.len, tt.entryBr)
			}
			if want := tt.fn[p.Entry-fnAddr : p.Entry-fnAddr+uint64(p.Len)]; !bytes.Equal(p.Orig(), want) {
				t.Errorf("region % x, want % x", p.Orig(), want)
			}
		})
	}
}
