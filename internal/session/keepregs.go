package session

import (
	"bytes"
	"debug/dwarf"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/livetrace/livetrace/internal/agent"
	"github.com/livetrace/livetrace/internal/elfsite"
	"github.com/livetrace/livetrace/internal/reloc"
)

// Keeping every register at relocated sites (docs/DESIGN-NOTES.md,
// "Callers that keep registers across a call").
//
// gcc's -fipa-ra (on at -O2) lets a caller keep values in call-clobbered
// registers (rcx, rdx, rsi, rdi, r8-r11, even rax) across a call to a
// function of the same unit that it knows does not touch them. A NOP site
// is safe from that: gcc turns -fipa-ra off for functions with
// -fpatchable-function-entry or -pg, and clang has no such optimization by
// default. A function without a NOP, traced by relocation, has no such
// guarantee: its stub and the agent would clobber what its callers keep,
// and the program computes wrong results or crashes (a stock redis-server
// did). So a relocation stub of a module that gcc may have compiled saves
// the flags and rax..r11 before it calls into the agent and restores them
// after (agent.Keep), and the frame's hijacked return goes through
// lt_return_keep, which keeps them too.

// keepState caches, per module, whether its relocated sites keep every
// register.
type keepState struct {
	mu   sync.Mutex
	mods map[int]bool
}

// keepSite reports whether the stub of x must keep every register: a
// relocated site of a module not known to be built by clang alone.
func (s *Session) keepSite(x *selected) bool {
	// A first instruction left in place whose flags or registers the
	// displaced ones read needs them kept too, whoever built the module.
	return x.plan != nil && (x.plan.KeptLive || !keepOff && s.moduleKeeps(x.mod))
}

// keepOff turns keep stubs off, for the test that shows what they prevent.
var keepOff bool

// moduleKeeps reports whether module mi may hold code built with gcc's
// -fipa-ra: true unless its DWARF says every unit was compiled by clang,
// or, without DWARF, its .comment names clang and not GCC. When in doubt
// (no DWARF and no .comment, as in Debian's stripped packages, or a file
// that cannot be read), it keeps.
func (s *Session) moduleKeeps(mi int) bool {
	s.keep.mu.Lock()
	defer s.keep.mu.Unlock()
	if v, ok := s.keep.mods[mi]; ok {
		return v
	}
	if s.keep.mods == nil {
		s.keep.mods = map[int]bool{}
	}
	v := true
	if clang, err := s.clangOnly(mi); err == nil {
		v = !clang
	}
	s.keep.mods[mi] = v
	return v
}

// clangOnly reports whether module mi was built by clang alone.
func (s *Session) clangOnly(mi int) (clang bool, err error) {
	m := s.mods[mi]
	if len(m.Mappings) == 0 {
		return false, fmt.Errorf("no mapping")
	}
	f, err := elfsite.OpenMappedFile(s.pid, m.Mappings[0])
	if err != nil {
		return false, err
	}
	defer f.Close()
	ef, err := elf.NewFile(f)
	if err != nil {
		return false, err
	}
	defer func() {
		// The target's file: a malformed one is an answer of "keep",
		// not a crash of the tracer.
		if r := recover(); r != nil {
			clang, err = false, fmt.Errorf("malformed file: %v", r)
		}
	}()
	if ef.Section(".debug_info") != nil {
		if d, derr := ef.DWARF(); derr == nil {
			if c, ok := producersClang(d); ok {
				return c, nil
			}
		}
	}
	sec := ef.Section(".comment")
	if sec == nil {
		return false, fmt.Errorf("no DWARF and no .comment say which compiler built it")
	}
	b, err := io.ReadAll(io.LimitReader(sec.Open(), 64<<10))
	if err != nil {
		return false, err
	}
	return commentClangOnly(string(b)), nil
}

// producersClang reports whether every compilation unit of d names clang
// as its producer; ok is false when d has no unit with a producer.
func producersClang(d *dwarf.Data) (clang, ok bool) {
	r := d.Reader()
	clang = true
	for n := 0; n < 1<<20; n++ {
		e, err := r.Next()
		if err != nil || e == nil {
			break
		}
		if e.Tag == dwarf.TagCompileUnit || e.Tag == dwarf.TagPartialUnit {
			if p, _ := e.Val(dwarf.AttrProducer).(string); p != "" {
				ok = true
				if !strings.Contains(p, "clang") {
					clang = false
				}
			}
		}
		r.SkipChildren()
	}
	return clang && ok, ok
}

// commentClangOnly reports whether a .comment section names clang and not
// GCC. (A clang program linked with gcc's crt files names both: it keeps,
// unless its DWARF says better.)
func commentClangOnly(c string) bool {
	return strings.Contains(c, "clang") && !strings.Contains(c, "GCC:")
}

// keepIndex adds agent.Keep to idx for a keep site.
func keepIndex(idx uint32, keep bool) uint32 {
	if keep {
		return idx | agent.Keep
	}
	return idx
}

// The relocation stub of a keep site saves what its callers may keep (the
// flags, then rax..r11) and pushes a copy of the function's return address
// (`push 0x50(%rsp)`: agent.KeepSave bytes in all) before `call slot`, so
// that the agent's entry-mode fast paths see the stack of a NOP site's
// CALL; after it, `pop 0x50(%rsp)` puts the copy back into the return slot
// (graph mode hijacks the slot and updates the copy, agent.S .Lkeep) and
// the rest is restored.
var (
	keepPrologue = []byte{0x9c, 0x50, 0x51, 0x52, 0x56, 0x57, 0x41, 0x50, 0x41, 0x51, 0x41, 0x52, 0x41, 0x53, 0xff, 0x74, 0x24, 0x50}
	keepEpilogue = []byte{0x8f, 0x44, 0x24, 0x50, 0x41, 0x5b, 0x41, 0x5a, 0x41, 0x59, 0x41, 0x58, 0x5f, 0x5e, 0x5a, 0x59, 0x58, 0x9d}
)

// undo returns the `lea n(%rsp),%rsp` that starts the stub of a plan
// whose first instruction stays in place and moves the stack pointer
// (reloc.Plan.Kept, KeptDelta n): it undoes that push or sub before the
// call, leaving the flags alone, and the stub runs the instruction again
// after it. 5 bytes with a disp8, 8 with a disp32.
func undo(n int) []byte {
	if n < 0x80 {
		return []byte{0x48, 0x8d, 0x64, 0x24, byte(n)}
	}
	return binary.LittleEndian.AppendUint32([]byte{0x48, 0x8d, 0xa4, 0x24}, uint32(n))
}

// relocCallOff is the offset in a relocation stub of its `call slot`.
func relocCallOff(plan *reloc.Plan, keep bool) uint64 {
	var off uint64
	if plan.KeptDelta > 0 {
		off = uint64(len(undo(plan.KeptDelta)))
	}
	if keep {
		off += uint64(len(keepPrologue))
	}
	return off
}

// relocBodyOff is the offset in a relocation stub of the relocated
// instructions (Patch.Detour): a thread sent there from the region's
// first byte has run the kept instruction already, in place.
func relocBodyOff(plan *reloc.Plan, keep bool) uint64 {
	off := relocCallOff(plan, keep) + relocCallLen
	if plan.KeptDelta > 0 {
		off += uint64(len(plan.Kept))
	}
	if keep {
		off += uint64(len(keepEpilogue))
	}
	return off
}

// stubBodyOff is relocBodyOff for a stub read back from a target
// (restore), from its first bytes (at least maxStubHead, or all of a
// shorter stub): the kept instruction's undo, the keep prologue's pushfq,
// and the redo of a push or sub that follows the call.
func stubBodyOff(b []byte) (uint64, error) {
	off, delta := 0, 0
	short, long := undo(1), undo(0x80) // the two encodings of undo
	switch {
	case len(b) >= len(short) && bytes.Equal(b[:4], short[:4]):
		off, delta = len(short), int(b[4])
	case len(b) >= len(long) && bytes.Equal(b[:4], long[:4]):
		off, delta = len(long), int(int32(binary.LittleEndian.Uint32(b[4:])))
	}
	kept := off > 0
	keep := off < len(b) && b[off] == keepPrologue[0]
	if keep {
		off += len(keepPrologue) + relocCallLen + len(keepEpilogue)
	} else {
		off += relocCallLen
	}
	if !kept {
		return uint64(off), nil
	}
	if off >= len(b) {
		return 0, fmt.Errorf("stub of %d bytes: too short", len(b))
	}
	n, d := reloc.Keepable(b[off:])
	if n == 0 || d != delta {
		return 0, fmt.Errorf("stub undoes %d bytes of stack, then runs % x: not an instruction livetrace keeps", delta, b[off:min(off+7, len(b))])
	}
	return uint64(off + n), nil
}

// maxStubHead is how many bytes of a stub stubBodyOff needs at most: the
// longest undo, the keep prologue, the call, the keep epilogue and the
// longest redo (sub $imm32,%rsp).
var maxStubHead = len(undo(0x80)) + len(keepPrologue) + relocCallLen + len(keepEpilogue) + 7
