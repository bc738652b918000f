package elfsite

import (
	"debug/elf"
	"errors"
	"fmt"

	"github.com/livetrace/livetrace/internal/proc"
)

// ErrNoRendezvous means no module of the process exports the dynamic
// loader's rendezvous structure `_r_debug`: a statically linked program,
// or a loader other than glibc's.
var ErrNoRendezvous = errors.New("no dynamic loader rendezvous (_r_debug)")

// Rendezvous returns the runtime address of `struct r_debug` (`_r_debug`,
// exported by glibc's dynamic loader) in process pid, and the index in
// mods of the module that holds it. Only modules that define the
// loader's `_dl_debug_state` are opened again (to read their dynamic
// symbols), so this costs one file for a dynamically linked process.
func Rendezvous(pid int, mods []*Module) (addr uint64, mod int, err error) {
	for i, m := range mods {
		has := false
		for _, f := range m.Spec.Funcs {
			if f.Name == "_dl_debug_state" {
				has = true
				break
			}
		}
		if !has || len(m.Mappings) == 0 {
			continue
		}
		v, err := dynamicObject(pid, m, "_r_debug")
		if err != nil {
			return 0, -1, err
		}
		if v != 0 {
			return m.Runtime(v), i, nil
		}
	}
	return 0, -1, ErrNoRendezvous
}

// dynamicObject returns the link-time value of the dynamic symbol name of
// module m (0: none).
func dynamicObject(pid int, m *Module, name string) (v uint64, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("read %s: %w: %v", m.Path, ErrMalformed, r)
		}
	}()
	f, err := OpenMappedFile(pid, m.Mappings[0])
	if err != nil {
		return 0, err
	}
	defer f.Close()
	ef, _, err := openELF(f, m.Path, "")
	if err != nil {
		return 0, err
	}
	syms, err := ef.DynamicSymbols()
	if err != nil {
		return 0, nil
	}
	for _, s := range syms {
		if s.Name == name && elf.ST_TYPE(s.Info) == elf.STT_OBJECT && s.Section != elf.SHN_UNDEF {
			return s.Value, nil
		}
	}
	return 0, nil
}

// ModuleChanges compares the modules mapped in process pid now with have
// (as [LiveModules] returned them, with later additions): it returns the
// modules mapped since (parsed as LiveModules parses them), and the indexes
// in have of the modules whose mapping is gone. A module is the same if
// its first mapping starts at the same address and maps the same file
// (device and inode). Indexes for which skip returns true are ignored (a
// module known to be gone already). Files that LiveModules would skip
// are skipped here too.
func ModuleChanges(pid int, have []*Module, skip func(i int) bool) (added []*Module, removed []int, err error) {
	maps, err := proc.ReadMaps(pid)
	if err != nil {
		return nil, nil, err
	}
	type key struct {
		start uint64
		dev   string
		inode uint64
	}
	now := map[key]bool{}
	groups := groupMappings(maps)
	for _, g := range groups {
		now[key{g[0].Start, g[0].Dev, g[0].Inode}] = true
	}
	known := map[key]bool{}
	for i, m := range have {
		if skip(i) || len(m.Mappings) == 0 {
			continue
		}
		k := key{m.Mappings[0].Start, m.Mappings[0].Dev, m.Mappings[0].Inode}
		if !now[k] {
			removed = append(removed, i)
			continue
		}
		known[k] = true
	}
	for _, g := range groups {
		if known[key{g[0].Start, g[0].Dev, g[0].Inode}] || !hasExec(g) {
			continue
		}
		spec, err := openMapped(pid, g, false)
		if errors.Is(err, ErrNotELF) || errors.Is(err, ErrMalformed) || errors.Is(err, ErrUnsupported) || errors.Is(err, ErrModuleChanged) {
			continue
		}
		if err != nil {
			return nil, nil, err
		}
		bias, err := computeBias(spec, g)
		if err != nil {
			continue
		}
		added = append(added, &Module{Path: g[0].Path, Bias: bias, Spec: spec, Mappings: g})
	}
	return added, removed, nil
}
