package elfsite

import (
	"debug/elf"
	"fmt"
	"sort"
	"strings"

	"github.com/livetrace/livetrace/internal/reloc"
)

// FormReloc is a function without a compiler NOP whose first instructions
// can be displaced into a stub and replaced by `jmp stub` (package reloc,
// docs/DESIGN-NOTES.md): a relocating site. Such sites are listed in
// [Spec.Reloc], never in [Spec.Sites].
const FormReloc Form = 100

// RelocRefusal is a function without a compiler NOP that cannot be traced
// by relocation, and why.
type RelocRefusal struct {
	// Func is the index in [Spec.Funcs] of the function.
	Func int
	// Addr is its link-time address.
	Addr uint64
	// Reason says why, for example "branch target at +3" (see
	// reloc.Refusal).
	Reason string
}

// maxRelocFunc bounds the bytes of one function read for the proof.
const maxRelocFunc = 4 << 20

// relocSites fills spec.Reloc and spec.RelocRefused: one verdict per
// function symbol address that holds no NOP site. It reads each function's
// bytes from its symbol range, and takes the direct branch targets of every
// executable section as targets from outside the function (cold parts,
// shared tails).
func (p *parser) relocSites() {
	var funcs []int
	for i := range p.spec.Funcs {
		if i > 0 && p.spec.Funcs[i-1].Addr == p.spec.Funcs[i].Addr {
			continue // an alias
		}
		funcs = append(funcs, i)
	}
	if len(funcs) == 0 {
		return
	}
	// Functions with a NOP site (of any form), by address: its entry, the
	// site, or the function that contains it.
	nop := make(map[uint64]bool, len(p.spec.Sites))
	for _, st := range p.spec.Sites {
		nop[st.Addr] = true
		if st.Endbr {
			nop[st.Addr-4] = true
		}
		if st.Func >= 0 {
			nop[p.spec.Funcs[st.Func].Addr] = true
		}
	}
	var plts [][2]uint64
	var extra []uint64
	for _, sec := range p.f.Sections {
		if sec.Flags&elf.SHF_EXECINSTR == 0 || sec.Type != elf.SHT_PROGBITS {
			continue
		}
		if strings.HasPrefix(sec.Name, ".plt") {
			plts = append(plts, [2]uint64{sec.Addr, sec.Addr + sec.Size})
			continue
		}
		b, err := p.sectionData(sec, maxTableSize)
		if err != nil {
			continue
		}
		extra = append(extra, reloc.BranchTargets(b, sec.Addr)...)
	}
	sort.Slice(extra, func(i, j int) bool { return extra[i] < extra[j] })
	refuse := func(i int, why string) {
		p.spec.RelocRefused = append(p.spec.RelocRefused, RelocRefusal{Func: i, Addr: p.spec.Funcs[i].Addr, Reason: why})
	}
	for _, i := range funcs {
		f := p.spec.Funcs[i]
		if nop[f.Addr] || nop[f.Addr+4] {
			continue
		}
		inPLT := false
		for _, r := range plts {
			if f.Addr >= r[0] && f.Addr < r[1] {
				inPLT = true
			}
		}
		if inPLT {
			continue
		}
		switch {
		case f.Size == 0:
			refuse(i, "symbol without a size")
			continue
		case f.Size > maxRelocFunc:
			refuse(i, fmt.Sprintf("function of %d bytes, more than the %d analyzed", f.Size, maxRelocFunc))
			continue
		case f.IFunc:
			refuse(i, "an IFUNC resolver (trace the implementation it picks)")
			continue
		}
		if _, ok := p.spec.exec(f.Addr, f.Size); !ok {
			refuse(i, "bytes outside the executable segments")
			continue
		}
		code := make([]byte, f.Size)
		if !p.readFull(f.Addr, code) {
			refuse(i, "bytes outside the executable segments")
			continue
		}
		plan, err := reloc.Analyze(code, f.Addr, reloc.Options{ExtraTargets: extra})
		if err != nil {
			refuse(i, err.Error())
			continue
		}
		st := Site{Addr: plan.Entry, Form: FormReloc, Endbr: plan.Endbr, Func: i, Table: TableSymbol, Plan: plan}
		if len(plan.EntryBranches) > 0 {
			// The function branches back to its entry, where [rsp] is
			// whatever it pushed: graph mode would hijack the wrong slot.
			st.GraphUnsafe = fmt.Sprintf("return address not at [rsp]: the function branches back to its entry from +%d", plan.EntryBranches[0]-f.Addr)
		}
		copy(st.Bytes[:], plan.Orig())
		p.spec.Reloc = append(p.spec.Reloc, st)
	}
}

// readFull reads the file bytes at link-time address addr, which must lie
// in an executable PT_LOAD, bypassing the chunk cache.
func (p *parser) readFull(addr uint64, b []byte) bool {
	l, ok := p.spec.exec(addr, uint64(len(b)))
	if !ok {
		return false
	}
	n, err := p.r.ReadAt(b, int64(addr-l.Vaddr+l.Offset))
	return n == len(b) || err == nil
}

// Traceable returns the sites livetrace can patch: the NOP sites
// ([Spec.Patchable]) and, unless onlyNop, the relocating ones, sorted by
// address.
func (s *Spec) Traceable(onlyNop bool) []Site {
	out := s.Patchable()
	if onlyNop || len(s.Reloc) == 0 {
		return out
	}
	out = append(out, s.Reloc...)
	sort.Slice(out, func(i, j int) bool { return out[i].Addr < out[j].Addr })
	return out
}
