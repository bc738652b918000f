package session

import (
	"fmt"
	"strings"

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
// IFUNC resolver Funcs[i] picked in the process, or why there is none:
// read from m's own IRELATIVE slots, or else from the GOT slots other
// modules bound to the name (elfsite/ifunc.go).
func (s *Session) pickedBy(m *elfsite.Module, i int) (int, string) {
	const unknown = "an IFUNC resolver, and %s: trace the implementation it picks (livetrace list --all -p %d names the candidates)"
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
		for _, o := range s.mods {
			if o != m {
				for _, a := range o.Spec.ImportSlots(name) {
					slots = append(slots, o.Runtime(a))
				}
			}
		}
	}
	if len(slots) == 0 {
		return 0, fmt.Sprintf(unknown, "no module calls it through a GOT slot that would say which one the process uses", s.pid)
	}
	vals, err := elfsite.ReadWords(s.pid, slots)
	if err != nil {
		return 0, fmt.Sprintf(unknown, "its GOT could not be read ("+err.Error()+")", s.pid)
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
			return 0, fmt.Sprintf(unknown, fmt.Sprintf("its GOT slots disagree (%s, %s)", m.Spec.Funcs[pick].Name, m.Spec.Funcs[j].Name), s.pid)
		default:
			pick, found = j, true
		}
	}
	if !found {
		return 0, fmt.Sprintf(unknown, fmt.Sprintf("no function symbol of %s starts where its GOT slots point (%#x: not bound yet, another module such as the vDSO, or a function only a debug file names)", m.Name(), other), s.pid)
	}
	return pick, ""
}

// IFuncs says which implementation is traced for each IFUNC symbol the
// globs matched.
func (s *Session) IFuncs() []string { return s.ifuncs }
