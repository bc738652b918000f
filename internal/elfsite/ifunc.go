package elfsite

import (
	"cmp"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"os"
	"slices"

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
	i, _ := slices.BinarySearchFunc(s.irels, resolver, func(r irel, v uint64) int { return cmp.Compare(r.resolver, v) })
	var out []uint64
	for ; i < len(s.irels) && s.irels[i].resolver == resolver; i++ {
		out = append(out, s.irels[i].slot)
	}
	return out
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
