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

// pickedByGlobs returns, for ctl, the implementations that the IFUNC
// symbols globs name picked in the process, by module and function
// index, with the indexes of the globs that name them: `ctl disable
// strlen` turns off the __strlen_evex that `-F strlen` traced, and `ctl
// enable strlen` finds it already on.
func (s *Session) pickedByGlobs(globs []string) map[[2]int][]int {
	out := map[[2]int][]int{}
	for mi, m := range s.mods {
		if !matchModule(m.Path, s.opts.Modules) || s.loader.gone[mi] {
			continue
		}
		for i := range m.Spec.Funcs {
			if !m.Spec.Funcs[i].IFunc {
				continue
			}
			fs := elfsite.Site{Addr: m.Spec.Funcs[i].Addr, Func: i}
			var gis []int
			for gi, g := range globs {
				if m.Spec.MatchSite(fs, g) {
					gis = append(gis, gi)
				}
			}
			if len(gis) == 0 {
				continue
			}
			if j, why := elfsite.IFuncPick(s.pid, s.mods, m, i); why == "" {
				out[[2]int{mi, j}] = append(out[[2]int{mi, j}], gis...)
			}
		}
	}
	return out
}

// IFuncs says which implementation is traced for each IFUNC symbol the
// globs matched.
func (s *Session) IFuncs() []string { return s.ifuncs }
