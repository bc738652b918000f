package reloc

import "sort"

// Eligible is eligible, for the figures of traceable_test.go (package
// reloc_test, which imports elfsite and so cannot be package reloc).
var Eligible = eligible

// eligible reports whether the function whose bytes are fn, at address
// fnAddr, has at least JmpLen bytes after its ENDBR64 before the first
// direct branch target: no target of its own direct branches, nor any of
// extra (sorted, as BranchTargets returns them), lies strictly between
// the entry and entry+5. These are the functions a 5-byte jmp can hope to
// enter, the denominator of the traceable fraction (README.md, Benchmarks):
// the ones whose first bytes are not a branch target are the relocator's
// to accept, whatever else they hold.
func eligible(fn []byte, fnAddr uint64, extra []uint64) bool {
	entry := fnAddr
	start := 0
	if len(fn) >= 4 && string(fn[:4]) == string(endbr64) {
		entry += 4
		start = 4
	}
	if len(fn)-start < JmpLen {
		return false
	}
	inside := func(t uint64) bool { return t > entry && t < entry+JmpLen }
	for _, t := range BranchTargets(fn, fnAddr) {
		if inside(t) {
			return false
		}
	}
	i := sort.Search(len(extra), func(i int) bool { return extra[i] > entry })
	return i == len(extra) || !inside(extra[i])
}
