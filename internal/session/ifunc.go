package session

import (
	"fmt"

	"github.com/livetrace/livetrace/internal/elfsite"
)

// implementations adds to keep, for each IFUNC symbol Funcs[i] of m for
// i in ifuncs (a name the globs matched, whose address is the resolver),
// the site of the implementation the process calls for it: the function
// that starts where the resolver's choice points, read from the GOT slots
// of m's IRELATIVE relocations (elfsite/ifunc.go). A user who names
// memcpy means the calls of memcpy, not the one call of its resolver at
// load time. take says whether a site is kept (the exclusions, graph
// mode); refused gets an IFUNC whose implementation cannot be traced, and
// why. It returns, for each name that include names without wildcards,
// which implementation it got.
func (s *Session) implementations(m *elfsite.Module, include []string, ifuncs []int, keep *[]elfsite.Site, take func(elfsite.Site) bool, refused func(fs elfsite.Site, why string)) (notes []string) {
	if len(ifuncs) == 0 {
		return nil
	}
	have := map[uint64]bool{}
	for _, st := range *keep {
		have[st.Addr] = true
	}
	type pick struct{ ifunc, impl int }
	var picks []pick
	var impls []int
	for _, i := range ifuncs {
		fs := elfsite.Site{Addr: m.Spec.Funcs[i].Addr, Func: i}
		j, why := s.pickedBy(m, i)
		if why != "" {
			refused(fs, why)
			continue
		}
		picks = append(picks, pick{i, j})
		impls = append(impls, j)
	}
	m.Spec.PrepareReloc(impls)
	for _, p := range picks {
		fs := elfsite.Site{Addr: m.Spec.Funcs[p.ifunc].Addr, Func: p.ifunc}
		st, why, ok := m.Spec.RelocFunc(p.impl)
		if !ok {
			// The implementation has a NOP site of its own.
			found := false
			for _, t := range m.Spec.Patchable() {
				if t.Func == p.impl {
					st, found = t, true
					break
				}
			}
			if !found {
				why = "no site"
			}
		}
		name, impl := m.Spec.Funcs[p.ifunc].Name, m.Spec.SiteName(elfsite.Site{Func: p.impl})
		if why != "" {
			refused(fs, fmt.Sprintf("an IFUNC resolver; the implementation process %d calls, %s, cannot be traced: %s", s.pid, impl, why))
			continue
		}
		if literalMatch(m.Spec, fs, include) {
			notes = append(notes, fmt.Sprintf("%s is an IFUNC: tracing %s, the implementation process %d calls", name, impl, s.pid))
		}
		if have[st.Addr] || !take(st) {
			continue // named itself too, or by another IFUNC (memmove, memcpy)
		}
		have[st.Addr] = true
		*keep = append(*keep, st)
	}
	return notes
}

// pickedBy returns the index in m's functions of the implementation the
// IFUNC resolver Funcs[i] picked in the process, or why there is none.
func (s *Session) pickedBy(m *elfsite.Module, i int) (int, string) {
	j, why := elfsite.IFuncPick(s.pid, s.mods, m, i)
	if why != "" {
		return 0, fmt.Sprintf("an IFUNC resolver, and %s: trace the implementation it picks (livetrace list --all -p %d names the candidates)", why, s.pid)
	}
	return j, ""
}

// IFuncs says which implementation is traced for each IFUNC symbol the
// globs matched.
func (s *Session) IFuncs() []string { return s.ifuncs }
