package elfsite

import (
	"cmp"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"path"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/ianlancetaylor/demangle"

	"github.com/livetrace/livetrace/internal/radix"
)

// maxNameLen caps the length of a symbol name kept from the file.
const maxNameLen = 4096

// symName returns the name at offset off of the string table strs, a
// substring of it (no copy), cut to maxNameLen bytes. A name that runs to
// the end of the table without a NUL is malformed and read as "".
func symName(strs string, off uint32) string {
	if uint64(off) >= uint64(len(strs)) {
		return ""
	}
	s := strs[off:]
	if len(s) > maxNameLen {
		if i := strings.IndexByte(s[:maxNameLen], 0); i >= 0 {
			return s[:i]
		}
		return s[:maxNameLen]
	}
	if i := strings.IndexByte(s, 0); i >= 0 {
		return s[:i]
	}
	return ""
}

// symSize is the size of one Elf64_Sym.
const symSize = 24

// symValue and symSection return st_value and st_shndx of entry i of the
// raw symbol table syms.
func symValue(syms []byte, i uint64) uint64 {
	return binary.LittleEndian.Uint64(syms[i*symSize+8:])
}

func symSection(syms []byte, i uint64) elf.SectionIndex {
	return elf.SectionIndex(binary.LittleEndian.Uint16(syms[i*symSize+6:]))
}

// symbols fills spec.Funcs from .symtab, or from .dynsym without one.
//
// The entries are read here rather than with debug/elf, which copies every
// symbol's name in full: a file of a few hundred KiB whose symbols all name
// one long string would cost gigabytes. Here the string table is read once
// and each name is a substring of it, cut at maxNameLen; no NUL is searched
// for beyond that.
func (p *parser) symbols() error {
	symtab := p.f.Section(".symtab")
	if symtab == nil || symtab.Type != elf.SHT_SYMTAB {
		symtab = nil
		for _, s := range p.f.Sections {
			if s.Type == elf.SHT_SYMTAB {
				symtab = s
				break
			}
		}
	}
	p.spec.Stripped = symtab == nil
	src := symtab
	if src == nil {
		src = p.f.Section(".dynsym")
	}
	if src == nil || src.Type == elf.SHT_NOBITS {
		return nil
	}
	data, err := p.sectionData(src, maxSymtabSize)
	if err != nil {
		return err
	}
	if len(data)%symSize != 0 {
		return fmt.Errorf("%w: symbol table %s holds %d bytes, not a multiple of %d", ErrMalformed, src.Name, len(data), symSize)
	}
	if n := len(data)/symSize - 1; n > maxSymbols {
		return fmt.Errorf("%w: symbol table %s holds %d symbols, more than the %d livetrace reads", ErrMalformed, src.Name, n, maxSymbols)
	}
	if len(data) <= symSize {
		return nil
	}
	if int(src.Link) >= len(p.f.Sections) || p.f.Sections[src.Link].Type != elf.SHT_STRTAB {
		return fmt.Errorf("%w: symbol table %s links to section %d, which is no string table", ErrMalformed, src.Name, src.Link)
	}
	strData, err := p.sectionData(p.f.Sections[src.Link], maxStrtabSize)
	if err != nil {
		return err
	}
	strs := string(strData)
	strData = nil
	le := binary.LittleEndian
	// Count the functions first, to allocate them once.
	n := 0
	for i := symSize; i+symSize <= len(data); i += symSize {
		if t := elf.ST_TYPE(data[i+4]); t == elf.STT_FUNC || t == elf.STT_GNU_IFUNC {
			n++
		}
	}
	funcs := make([]Func, 0, n)
	for i := symSize; i+symSize <= len(data); i += symSize {
		e := data[i : i+symSize]
		info := e[4]
		t := elf.ST_TYPE(info)
		section := elf.SectionIndex(le.Uint16(e[6:]))
		value := le.Uint64(e[8:])
		if t != elf.STT_FUNC && t != elf.STT_GNU_IFUNC || section == elf.SHN_UNDEF || value == 0 {
			continue
		}
		raw := symName(strs, le.Uint32(e[0:]))
		if raw == "" {
			continue
		}
		// The linker writes a versioned symbol into .symtab with its
		// version ("memcpy@GLIBC_2.2.5", "memcpy@@GLIBC_2.14"); .dynsym
		// keeps versions apart. The name is the one without it, as
		// .dynsym gives it; Raw keeps it.
		name := raw
		if at := strings.IndexByte(raw, '@'); at > 0 {
			name = raw[:at]
		}
		funcs = append(funcs, Func{
			Name:   name,
			Raw:    raw,
			Addr:   value,
			Size:   le.Uint64(e[16:]),
			Global: elf.ST_BIND(info) != elf.STB_LOCAL,
			IFunc:  t == elf.STT_GNU_IFUNC,
		})
	}
	if !p.mangled {
		// Demangled names are new strings: bound their total, past
		// which names stay mangled. Real programs stay far below it.
		demangleAll(funcs, 32<<20+4*len(strs))
	}
	funcs = sortFuncs(funcs)
	p.spec.Funcs = funcs
	return nil
}

// demangleAll demangles the names of funcs in place, on every CPU (a
// C++ program's 78,000 names took 0.3 s of CPU), each part of them
// within its share of budget, the bound of the new strings' total.
func demangleAll(funcs []Func, budget int) {
	parts := min(runtime.GOMAXPROCS(0), len(funcs)/1024+1)
	var wg sync.WaitGroup
	for k := range parts {
		part := funcs[k*len(funcs)/parts : (k+1)*len(funcs)/parts]
		wg.Go(func() {
			left := budget / parts
			for i := range part {
				if left <= 0 {
					return
				}
				if d := Demangle(part[i].Name); d != part[i].Name {
					left -= len(part[i].Name) + len(d)
					part[i].Name = d
				}
			}
		})
	}
	wg.Wait()
}

// sortFuncs returns funcs sorted by address, aliases at one address in
// compareRank order, and otherwise in their order in the file. It sorts
// small keys (address, index) rather than the structs or indices into
// them, which is 3-4 times faster for tens of thousands of symbols, and
// ranks only the runs of aliases.
func sortFuncs(funcs []Func) []Func {
	type key struct {
		addr uint64
		i    int32
	}
	keys := make([]key, len(funcs))
	// Packed into one uint64 (address above the index), the keys sort
	// without a comparison function, about twice as fast: every address
	// of a real file fits in the 41 bits left by the 23 of the index.
	const idxBits = 23
	packed := make([]uint64, 0, len(funcs))
	for i := range funcs {
		if funcs[i].Addr >= 1<<(64-idxBits) || i >= 1<<idxBits {
			packed = nil
			break
		}
		packed = append(packed, funcs[i].Addr<<idxBits|uint64(i))
	}
	if packed != nil {
		// By address, the indices of one address in the order they
		// come in: the symbol tables are in no address order, and
		// pdqsort over the whole keys took 1.5 ms of every attach.
		radix.SortBy(packed, idxBits)
		for i, k := range packed {
			keys[i] = key{k >> idxBits, int32(k & (1<<idxBits - 1))}
		}
	} else {
		for i := range funcs {
			keys[i] = key{funcs[i].Addr, int32(i)}
		}
		slices.SortFunc(keys, func(a, b key) int {
			if c := cmp.Compare(a.addr, b.addr); c != 0 {
				return c
			}
			return cmp.Compare(a.i, b.i)
		})
	}
	for lo := 0; lo < len(keys); {
		hi := lo + 1
		for hi < len(keys) && keys[hi].addr == keys[lo].addr {
			hi++
		}
		if hi-lo > 1 {
			slices.SortStableFunc(keys[lo:hi], func(a, b key) int { return compareRank(&funcs[a.i], &funcs[b.i]) })
		}
		lo = hi
	}
	sorted := make([]Func, len(funcs))
	for i, k := range keys {
		sorted[i] = funcs[k.i]
	}
	return sorted
}

// compareRank orders aliases at one address: the first names the function.
// Global names win over local ones, then names without leading underscores
// ("malloc" over "__libc_malloc"), then shorter, then lexical order.
func compareRank(a, b *Func) int {
	if a.Global != b.Global {
		if a.Global {
			return -1
		}
		return 1
	}
	ua := len(a.Raw) - len(strings.TrimLeft(a.Raw, "_"))
	ub := len(b.Raw) - len(strings.TrimLeft(b.Raw, "_"))
	if c := cmp.Compare(ua, ub); c != 0 {
		return c
	}
	if c := cmp.Compare(len(a.Raw), len(b.Raw)); c != 0 {
		return c
	}
	return strings.Compare(a.Raw, b.Raw)
}

// maxDemangledLog is log2 of the longest demangled name (16 KiB); longer
// ones are cut.
const maxDemangledLog = 14

// Name returns the name of Funcs[i], demangled. A Spec of [ParseSymbols]
// keeps its functions' mangled names (demangling libstdc++'s 5,900 names
// took 29 ms of an attach that reads it only for the recording's
// metadata) and demangles them all on the first call, once; Funcs of any
// other Spec are named already.
func (s *Spec) Name(i int) string {
	if !s.SymbolsOnly || s.names == nil {
		return s.Funcs[i].Name
	}
	ln := s.names
	ln.once.Do(func() {
		ln.names = make([]string, len(s.Funcs))
		// The bound of symbols: past it, names stay mangled.
		budget := 32 << 20
		for k := range s.Funcs {
			budget += 4 * len(s.Funcs[k].Raw)
		}
		for k := range s.Funcs {
			name := s.Funcs[k].Name
			if budget > 0 {
				if d := Demangle(name); d != name {
					budget -= len(name) + len(d)
					name = d
				}
			}
			ln.names[k] = name
		}
	})
	return ln.names[i]
}

// Demangle returns the uftrace-style name of a mangled C++ or Rust symbol:
// the qualified name with template arguments but without the parameter list
// ("ns::Class::method"), keeping a clone suffix ("ns::f.constprop.0").
// Other names, and names that do not demangle, are returned unchanged.
func Demangle(raw string) (name string) {
	if !strings.HasPrefix(raw, "_Z") && !strings.HasPrefix(raw, "_R") {
		return raw
	}
	defer func() {
		if recover() != nil {
			name = raw
		}
	}()
	// MaxLength bounds the output (and the work): substitutions can make
	// a short mangled name demangle to an exponentially long one.
	out, err := demangle.ToString(raw, demangle.NoParams, demangle.NoEnclosingParams, demangle.MaxLength(maxDemangledLog))
	if err != nil || out == "" {
		return raw
	}
	// Keep the suffix of a compiler clone (".constprop.0", ".isra.0",
	// ".cold"), which NoParams drops: a clone is a function of its own.
	if i := strings.IndexByte(raw, '.'); i > 0 && !strings.HasSuffix(out, raw[i:]) {
		out += raw[i:]
	}
	return out
}

// funcIndex returns the index of the preferred function symbol containing
// addr. A symbol of size 0 is taken to contain its first few bytes only
// (enough for an ENDBR64 and a site).
func (s *Spec) funcIndex(addr uint64) (int, bool) {
	i := sort.Search(len(s.Funcs), func(i int) bool { return s.Funcs[i].Addr > addr })
	// Walk back over the candidates that start at or before addr; a later
	// symbol can be nested in an earlier, larger one.
	for j := i - 1; j >= 0 && i-j <= 64; j-- {
		f := &s.Funcs[j]
		if addr-f.Addr < f.Size || (f.Size == 0 && addr-f.Addr <= 4) {
			// Return the first (preferred) alias at that address.
			for j > 0 && s.Funcs[j-1].Addr == f.Addr {
				j--
			}
			return j, true
		}
	}
	return -1, false
}

// FuncAt returns the function symbol containing the link-time address addr.
func (s *Spec) FuncAt(addr uint64) (Func, bool) {
	i, ok := s.funcIndex(addr)
	if !ok {
		return Func{}, false
	}
	return s.Funcs[i], true
}

// SiteName returns the name of the function holding st: its demangled name,
// or "0x<addr>" (the link-time site address) when no symbol covers it.
func (s *Spec) SiteName(st Site) string {
	if st.Func >= 0 && st.Func < len(s.Funcs) {
		return s.Funcs[st.Func].Name
	}
	return "0x" + strconv.FormatUint(st.Addr, 16)
}

// Aliases returns every function symbol at the address of Funcs[i],
// the preferred one first.
func (s *Spec) Aliases(i int) []Func {
	if i < 0 || i >= len(s.Funcs) {
		return nil
	}
	j := i + 1
	for j < len(s.Funcs) && s.Funcs[j].Addr == s.Funcs[i].Addr {
		j++
	}
	return s.Funcs[i:j]
}

// MatchSite reports whether any of the shell globs (path.Match syntax)
// matches the site's name: the demangled or raw name of any alias of its
// function, or "0x<addr>". Malformed globs match nothing; check them with
// [ValidGlob]. To match many sites, compile the globs once ([NewGlobs]).
func (s *Spec) MatchSite(st Site, globs ...string) bool {
	for _, g := range globs {
		if s.matchSite(st, compileGlob(g)) {
			return true
		}
	}
	return false
}

// Globs are shell globs compiled for [Spec.MatchSite]'s test over many
// sites: each glob's literal prefix and shape are found once, not at
// every site (selecting 10,000 functions among the 17,000 of a program
// and its libc took 2 ms of matching, half of it finding them again).
// The zero Globs matches nothing.
type Globs []glob

type glob struct {
	g, pre string
	// literal: g is a name; prefixStar: g is pre and one trailing *
	// (which, as in path.Match, matches no '/'). Neither needs
	// path.Match.
	literal, prefixStar bool
}

// NewGlobs compiles globs (path.Match syntax).
func NewGlobs(globs ...string) Globs {
	gs := make(Globs, len(globs))
	for i, g := range globs {
		gs[i] = compileGlob(g)
	}
	return gs
}

func compileGlob(g string) glob {
	pre := globPrefix(g)
	return glob{g: g, pre: pre, literal: len(pre) == len(g), prefixStar: len(g) == len(pre)+1 && g[len(pre)] == '*'}
}

// Match is [Spec.MatchSite] with the compiled globs gs.
func (gs Globs) Match(s *Spec, st Site) bool {
	for i := range gs {
		if s.matchSite(st, gs[i]) {
			return true
		}
	}
	return false
}

// matchName reports whether g matches the name n. It rejects a name that
// lacks the glob's literal prefix before calling path.Match: selecting 100
// functions among the 17,000 of a program and its libc costs one prefix
// comparison for most of them, not a match of four names each.
func (g *glob) matchName(n string) bool {
	if !strings.HasPrefix(n, g.pre) {
		return false
	}
	switch {
	case g.literal:
		return len(n) == len(g.pre)
	case g.prefixStar:
		return strings.IndexByte(n[len(g.pre):], '/') < 0
	}
	ok, _ := path.Match(g.g, n)
	return ok
}

// matchSite is [Spec.MatchSite] for one glob. It allocates nothing for a
// site with a function.
func (s *Spec) matchSite(st Site, g glob) bool {
	if st.Func < 0 || st.Func >= len(s.Funcs) {
		return g.matchName(s.SiteName(st))
	}
	// SiteName is the Name of Funcs[st.Func], the first of its aliases.
	for j := st.Func; j < len(s.Funcs) && (j == st.Func || s.Funcs[j].Addr == s.Funcs[st.Func].Addr); j++ {
		f := &s.Funcs[j]
		if g.matchName(f.Name) || f.Raw != f.Name && g.matchName(f.Raw) {
			return true
		}
	}
	return false
}

// globPrefix returns the literal part of the path.Match pattern g before
// its first special character: every name g matches starts with it.
func globPrefix(g string) string {
	if i := strings.IndexAny(g, `*?[\`); i >= 0 {
		return g[:i]
	}
	return g
}

// Match returns the sites (FormUnknown ones included) that any of globs
// matches; see [Spec.MatchSite]. With no globs it returns every site.
func (s *Spec) Match(globs ...string) []Site {
	if len(globs) == 0 {
		return append([]Site(nil), s.Sites...)
	}
	var out []Site
	for _, st := range s.Sites {
		if s.MatchSite(st, globs...) {
			out = append(out, st)
		}
	}
	return out
}

// ValidGlob returns an error when g is not a well-formed path.Match pattern.
func ValidGlob(g string) error {
	if _, err := path.Match(g, ""); err != nil {
		return fmt.Errorf("parse pattern %q: %w: use shell glob syntax (*, ?, [a-z], \\ to quote)", g, err)
	}
	return nil
}
