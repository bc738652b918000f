package elfsite

import (
	"cmp"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/livetrace/livetrace/internal/proc"
)

// An IFUNC symbol (STT_GNU_IFUNC) names a resolver, which the dynamic
// linker calls once to pick the implementation the process will call
// (memcpy's picks __memmove_avx_unaligned_erms on a CPU with AVX): its
// address is not the function a caller reaches. The resolver's choice is
// written in the GOT slots of the module's R_X86_64_IRELATIVE
// relocations, whose addend is the resolver: the slots through which the
// module calls the function itself. [Spec.IFuncSlots] finds them, and a
// tracer reads the choice there ([ReadWords]).

// A module that calls a function of another one through its PLT, or
// takes its address, has an R_X86_64_JUMP_SLOT or R_X86_64_GLOB_DAT
// relocation for the name: once the dynamic linker has bound it (at load
// time, or at the first call with lazy binding), its GOT slot holds what
// an IFUNC's resolver picked for the name. [Spec.ImportSlots] finds them:
// the choice for an IFUNC the module defining it never calls itself
// (strstr, __memcpy_chk in Debian's libc).

// imp is a JUMP_SLOT or GLOB_DAT relocation of an undefined symbol: the
// GOT slot at link-time address slot receives the address of name.
type imp struct {
	name string
	slot uint64
}

// imports reads the JUMP_SLOT and GLOB_DAT relocations of undefined
// symbols into p.spec.imports, sorted by name.
func (p *parser) imports() {
	for _, rs := range p.f.Sections {
		if rs.Type != elf.SHT_RELA || int(rs.Link) >= len(p.f.Sections) || p.f.Sections[rs.Link].Type != elf.SHT_DYNSYM {
			continue
		}
		syms := p.relocSymbols(rs.Link)
		ds := p.f.Sections[rs.Link]
		if len(syms) == 0 || int(ds.Link) >= len(p.f.Sections) || p.f.Sections[ds.Link].Type != elf.SHT_STRTAB {
			continue
		}
		data, err := p.sectionData(rs, maxRelaSize)
		if err != nil {
			continue
		}
		var strs string
		for i := 0; i+24 <= len(data) && len(p.spec.imports) < maxIrel; i += 24 {
			info := binary.LittleEndian.Uint64(data[i+8:])
			if t := elf.R_X86_64(info & 0xffffffff); t != elf.R_X86_64_JMP_SLOT && t != elf.R_X86_64_GLOB_DAT {
				continue
			}
			si := info >> 32
			if si == 0 || si >= uint64(len(syms)/symSize) || symSection(syms, si) != elf.SHN_UNDEF {
				continue
			}
			if strs == "" {
				b, err := p.sectionData(p.f.Sections[ds.Link], maxStrtabSize)
				if err != nil {
					break
				}
				strs = string(b)
			}
			if name := symName(strs, binary.LittleEndian.Uint32(syms[si*symSize:])); name != "" {
				p.spec.imports = append(p.spec.imports, imp{name: name, slot: binary.LittleEndian.Uint64(data[i:])})
			}
		}
	}
	slices.SortFunc(p.spec.imports, func(a, b imp) int { return cmp.Compare(a.name, b.name) })
}

// ImportSlots returns the link-time addresses of the GOT slots that
// receive the address of the function name of another module.
func (s *Spec) ImportSlots(name string) []uint64 {
	return slotsOf(s.imports, name, func(m imp) (string, uint64) { return m.name, m.slot })
}

// slotsOf returns the slots of the entries of sorted whose key is k.
func slotsOf[E any, K cmp.Ordered](sorted []E, k K, kv func(E) (K, uint64)) []uint64 {
	i, _ := slices.BinarySearchFunc(sorted, k, func(e E, k K) int {
		ek, _ := kv(e)
		return cmp.Compare(ek, k)
	})
	var out []uint64
	for ; i < len(sorted); i++ {
		ek, slot := kv(sorted[i])
		if ek != k {
			break
		}
		out = append(out, slot)
	}
	return out
}

// irel is an R_X86_64_IRELATIVE relocation: the GOT slot at link-time
// address slot receives what the resolver at resolver returns.
type irel struct{ resolver, slot uint64 }

// maxIrel bounds the IRELATIVE relocations kept (libc has 40).
const maxIrel = 1 << 16

// irelatives reads the IRELATIVE relocations of a file that has IFUNC
// symbols, into p.spec.irels, sorted by resolver.
func (p *parser) irelatives() {
	has := false
	for i := range p.spec.Funcs {
		if p.spec.Funcs[i].IFunc {
			has = true
			break
		}
	}
	if !has {
		return
	}
	for _, rs := range p.f.Sections {
		if rs.Type != elf.SHT_RELA {
			continue
		}
		data, err := p.sectionData(rs, maxRelaSize)
		if err != nil {
			return // the functions stay unresolved
		}
		for i := 0; i+24 <= len(data) && len(p.spec.irels) < maxIrel; i += 24 {
			if elf.R_X86_64(binary.LittleEndian.Uint64(data[i+8:])&0xffffffff) == elf.R_X86_64_IRELATIVE {
				p.spec.irels = append(p.spec.irels, irel{resolver: binary.LittleEndian.Uint64(data[i+16:]), slot: binary.LittleEndian.Uint64(data[i:])})
			}
		}
	}
	slices.SortFunc(p.spec.irels, func(a, b irel) int {
		if a.resolver != b.resolver {
			return cmp.Compare(a.resolver, b.resolver)
		}
		return cmp.Compare(a.slot, b.slot)
	})
}

// IFuncSlots returns the link-time addresses of the GOT slots that
// receive the choice of the IFUNC resolver at link-time address resolver
// (none when the module never calls the function itself).
func (s *Spec) IFuncSlots(resolver uint64) []uint64 {
	return slotsOf(s.irels, resolver, func(r irel) (uint64, uint64) { return r.resolver, r.slot })
}

// FuncIndex returns the index in Funcs of the first function symbol that
// starts at link-time address addr.
func (s *Spec) FuncIndex(addr uint64) (int, bool) {
	i, found := slices.BinarySearchFunc(s.Funcs, addr, func(f Func, v uint64) int { return cmp.Compare(f.Addr, v) })
	return i, found
}

// ReadWords reads the 8-byte words at addrs in process pid's memory.
func ReadWords(pid int, addrs []uint64) ([]uint64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		return nil, proc.ProcError(pid, err)
	}
	defer f.Close()
	out := make([]uint64, len(addrs))
	var b [8]byte
	for i, a := range addrs {
		if err := readMem(f, pid, b[:], a); err != nil {
			return nil, err
		}
		out[i] = binary.LittleEndian.Uint64(b[:])
	}
	return out, nil
}

// IFuncPick returns the index in m's functions of the implementation the
// IFUNC resolver m.Spec.Funcs[i] picked in process pid, whose modules are
// mods, or why there is none: read from m's own IRELATIVE slots, or else
// from the GOT slots the other modules bound to the name.
func IFuncPick(pid int, mods []*Module, m *Module, i int) (int, string) {
	f := m.Spec.Funcs[i]
	var slots []uint64
	for _, a := range m.Spec.IFuncSlots(f.Addr) {
		slots = append(slots, m.Runtime(a))
	}
	if len(slots) == 0 {
		name := f.Raw
		if at := strings.IndexByte(name, '@'); at > 0 {
			name = name[:at]
		}
		for _, o := range mods {
			if o != m {
				for _, a := range o.Spec.ImportSlots(name) {
					slots = append(slots, o.Runtime(a))
				}
			}
		}
	}
	if len(slots) == 0 {
		return 0, "no module calls it through a GOT slot that would say which one the process uses"
	}
	vals, err := ReadWords(pid, slots)
	if err != nil {
		return 0, "its GOT could not be read (" + err.Error() + ")"
	}
	// A slot not bound yet (lazy binding) points into its module's PLT:
	// only addresses where a function of m starts count.
	pick, found := 0, false
	var other uint64
	for _, v := range vals {
		j, ok := m.Spec.FuncIndex(v - m.Bias)
		switch {
		case v < m.Bias || !ok || j == i:
			other = v
		case found && j != pick:
			return 0, fmt.Sprintf("its GOT slots disagree (%s, %s)", m.Spec.Funcs[pick].Name, m.Spec.Funcs[j].Name)
		default:
			pick, found = j, true
		}
	}
	if !found {
		return 0, fmt.Sprintf("no function symbol of %s starts where its GOT slots point (%#x: not bound yet, another module such as the vDSO, or a function only a debug file names)", m.Name(), other)
	}
	return pick, ""
}
