package reloc

import "testing"

func TestEligible(t *testing.T) {
	endbr := endbr64
	for _, tc := range []struct {
		name  string
		fn    []byte
		extra []uint64
		want  bool
	}{
		{"plain prologue", cat(pushRBP, movRBPRSP, subRSP16, ret), nil, true},
		{"4 bytes", cat(pushRBP, movRBPRSP), nil, false},
		{"ENDBR64 and 4 bytes", cat(endbr, pushRBP, movRBPRSP), nil, false},
		{"ENDBR64 and 5 bytes", cat(endbr, pushRBP, movRBPRSP, ret), nil, true},
		// jne back to entry+1: fewer than 5 bytes before the target.
		{"loop to entry+1", cat(pushRBP, movRBPRSP, nop, []byte{0xff, 0xcf, 0x75, 0xf8}, ret), nil, false},
		// je over one byte to entry+3.
		{"forward into the first 5 bytes", cat([]byte{0x74, 0x01}, nop, nop, nop, nop, ret), nil, false},
		// A loop to the entry itself runs the stub again: harmless.
		{"loop to entry", cat(pushRBP, movRBPRSP, nop, []byte{0xeb, 0xf9}), nil, true},
		// A target at entry+5 leaves 5 bytes before it, even if the
		// region Analyze takes is longer: still in the denominator.
		{"target at entry+5", cat([]byte{0x74, 0x03}, nop, nop, nop, ret), nil, true},
		{"extra target at entry+4", cat(pushRBP, movRBPRSP, subRSP16, ret), []uint64{fnAddr - 5, fnAddr + 4, fnAddr + 100}, false},
		{"extra target at ENDBR64 end", cat(endbr, pushRBP, movRBPRSP, subRSP16, ret), []uint64{fnAddr + 4, fnAddr + 9}, true},
	} {
		if got := eligible(tc.fn, fnAddr, tc.extra); got != tc.want {
			t.Errorf("%s: eligible(% x) = %v; want %v", tc.name, tc.fn, got, tc.want)
		}
	}
}
