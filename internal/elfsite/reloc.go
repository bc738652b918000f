package elfsite

import (
	"cmp"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/livetrace/livetrace/internal/radix"
	"github.com/livetrace/livetrace/internal/reloc"
)

// FormReloc is a function without a compiler NOP whose first instructions
// can be displaced into a stub and replaced by `jmp stub` (package reloc,
// docs/DESIGN-NOTES.md): a relocating site. Such sites come from
// [Spec.RelocFunc] and [Spec.RelocSites], never from [Spec.Sites].
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

// Limits of the relocation analysis.
const (
	maxRelocFunc = 4 << 20   // bytes of one function analyzed
	maxRelocText = 256 << 20 // bytes of executable segments analyzed
	// relocWindow is how many bytes at a function's start the analysis
	// asks about branch targets and read-only pointers: its region
	// begins after at most an ENDBR64 (4 bytes) or a kept instruction
	// (15), and whole instructions (at most 4 + 15 bytes) cover 5.
	relocWindow = 64
	// scanPiece is how much of the file one read of a scan takes.
	scanPiece = 1 << 20
	// tableTestMax: up to this many functions, a gathering reads each
	// one to see whether it may have an absolute jump table (and needs
	// the read-only data's pointers); more, and all of them get them.
	tableTestMax = 4096
)

// relocState is what Parse keeps for the relocation analysis, done on
// demand. The analysis of a function needs what the rest of the module
// says about its first bytes: the direct branches into them from outside
// it, and in a position-dependent executable the read-only words that
// point into them (absolute jump tables). Both take a pass over the whole
// module (28 MB of text and 55 MB of read-only data in node); a pass
// keeps only what lands in the windows of the functions asked about
// ([Spec.PrepareReloc]), and reads the file a piece at a time, so that an
// attach that names 400 functions of a large program neither holds its
// bytes nor sorts millions of targets. Functions' bytes are read from the
// file when analyzed.
type relocState struct {
	secs [][2]uint64 // executable sections, not PLT
	plts [][2]uint64 // .plt* sections
	nop  []uint64    // sorted; see hasNop
	// funcNop[i]: Funcs[i] holds a NOP site, which hasNop would find
	// for its address too; RelocFunc looks here first (two binary
	// searches for each of 10,000 functions took 1.4 ms of an attach).
	funcNop []bool
	entry   uint64 // e_entry of an executable, or 0
	tooBig  bool
	// The Go code of a module the Go toolchain linked: [goLo, goHi), or
	// every function when goAll (see goRefusal).
	goLo, goHi uint64
	goAll      bool

	// The file, and where its executable and (in a position-dependent
	// executable) read-only segments lie in it.
	src             io.ReaderAt
	xSpecs, roSpecs []segSpec
	roRanges        [][2]uint64 // the roSpecs' link-time ranges, sorted
	starts          []uint64    // the functions' addresses, sorted (Funcs)

	// segs: the executable segments' bytes, read at once for a
	// preparation of many functions (loadText), else nil: each
	// function's bytes are read when it is analyzed.
	segOnce sync.Once
	segs    []textSeg

	mu sync.RWMutex
	// covered: the windows whose branch targets extra holds (sorted,
	// disjoint); ptrCovered: those whose read-only pointers ptrs holds.
	covered, ptrCovered [][2]uint64
	extra, ptrs         []uint64 // sorted; replaced, never changed in place
	// broken: the text could not be read for a pass; every function is
	// refused, since branches into it could not be seen. roBroken: the
	// read-only data could not be read; jump tables stay refused.
	broken   error
	roBroken bool

	allOnce sync.Once
	all     []Site
	refused []RelocRefusal
}

// prepareReloc gathers what the relocation analysis needs while the file
// is open, and keeps the file for the passes and the functions' bytes.
func (p *parser) prepareReloc() {
	rs := &relocState{nop: make([]uint64, 0, 2*len(p.spec.Sites)), funcNop: make([]bool, len(p.spec.Funcs)), entry: p.f.Entry}
	p.spec.reloc = rs
	// Functions with a NOP site (of any form), by address: its entry, the
	// site, or the function that contains it.
	for _, st := range p.spec.Sites {
		rs.nop = append(rs.nop, st.Addr)
		if st.Endbr {
			rs.nop = append(rs.nop, st.Addr-4)
		}
		if st.Func >= 0 {
			rs.funcNop[st.Func] = true
			if p.spec.Funcs[st.Func].Addr != st.Addr {
				rs.nop = append(rs.nop, p.spec.Funcs[st.Func].Addr)
			}
		}
	}
	slices.Sort(rs.nop)
	rs.starts = make([]uint64, len(p.spec.Funcs))
	for i := range p.spec.Funcs {
		rs.starts[i] = p.spec.Funcs[i].Addr
	}
	// Every function's entry is a branch target from outside the others:
	// a function that falls into the next one (libgmp's
	// __gmpn_modexact_1_odd, a 5-byte mov before __gmpn_modexact_1c_odd)
	// must not have a region over that entry, or start one at it after
	// a kept instruction.
	rs.extra = slices.Compact(slices.Clone(rs.starts))
	rs.goLo, rs.goHi, rs.goAll = p.goText()
	for _, sec := range p.f.Sections {
		if sec.Flags&elf.SHF_EXECINSTR == 0 || sec.Type != elf.SHT_PROGBITS {
			continue
		}
		r := [2]uint64{sec.Addr, sec.Addr + sec.Size}
		if strings.HasPrefix(sec.Name, ".plt") {
			rs.plts = append(rs.plts, r)
		} else {
			rs.secs = append(rs.secs, r)
		}
	}
	inFile := func(l Load) bool {
		return p.size < 0 || l.Offset <= uint64(p.size) && l.Filesz <= uint64(p.size)-l.Offset
	}
	total := uint64(0)
	for _, l := range p.spec.Loads {
		if l.Flags&elf.PF_X == 0 {
			continue
		}
		total += l.Filesz
		if total > maxRelocText || p.size >= 0 && total > 2*uint64(p.size) {
			rs.tooBig, rs.xSpecs = true, nil
			return
		}
		if inFile(l) {
			rs.xSpecs = append(rs.xSpecs, segSpec{vaddr: l.Vaddr, off: l.Offset, size: l.Filesz})
		}
	}
	if p.f.Type == elf.ET_EXEC {
		for _, l := range p.spec.Loads {
			if l.Flags&(elf.PF_X|elf.PF_W) != 0 || l.Filesz == 0 {
				continue
			}
			if !inFile(l) {
				// A truncated file: no index, jump tables stay refused.
				rs.roSpecs = nil
				break
			}
			rs.roSpecs = append(rs.roSpecs, segSpec{vaddr: l.Vaddr, off: l.Offset, size: l.Filesz})
		}
		for _, l := range rs.roSpecs {
			rs.roRanges = append(rs.roRanges, [2]uint64{l.vaddr, l.vaddr + l.size})
		}
		sort.Slice(rs.roRanges, func(i, j int) bool { return rs.roRanges[i][0] < rs.roRanges[j][0] })
	}
	rs.src = p.r
	if f, ok := p.r.(*os.File); ok {
		// The caller closes f when the parse returns: keep a
		// duplicate, closed when the Spec is collected.
		fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			rs.broken = fmt.Errorf("keep the file open: %w", err)
			return
		}
		dup := os.NewFile(uintptr(fd), f.Name())
		rs.src = dup
		runtime.AddCleanup(rs, func(f *os.File) { f.Close() }, dup)
	}
}

// goRefusal is why a function of Go code is not traced. The agent runs on
// the stack of the thread that calls a traced function, below its stack
// pointer; a goroutine's stack is as small as 2 KiB and grows only when a
// Go function's prologue finds it short, and at a function's entry the
// Go toolchain guarantees only StackSmall (128 bytes) below the pointer.
// The agent would write past the end of the goroutine's stack into the
// next one: a Go program traced this way died with "unexpected return pc"
// and the agent's words in a neighbour's frames (docs/DESIGN-NOTES.md,
// "Go programs").
const goRefusal = "Go code: the agent would run on the goroutine's stack, which may have only 128 bytes free at a function's entry (the program's C code, cgo, is traced)"

// goText returns the Go code of a module linked by the Go toolchain (it
// has a .go.buildinfo or .gopclntab section): the range between the
// symbols runtime.text and runtime.etext, or all when the symbol table
// does not give it (a stripped file). Other modules have none.
func (p *parser) goText() (lo, hi uint64, all bool) {
	if p.f.Section(".go.buildinfo") == nil && p.f.Section(".gopclntab") == nil {
		return 0, 0, false
	}
	for _, f := range p.spec.Funcs {
		switch f.Raw {
		case "runtime.text":
			lo = f.Addr
		case "runtime.etext":
			hi = f.Addr
		}
	}
	if lo == 0 || hi <= lo {
		return 0, 0, true
	}
	return lo, hi, false
}

// segSpec is where a segment lies in the file.
type segSpec struct{ vaddr, off, size uint64 }

// fileOff returns where the n bytes at link-time address addr lie in
// the file, when one of specs holds them all.
func fileOff(specs []segSpec, addr, n uint64) (uint64, bool) {
	for _, l := range specs {
		if addr >= l.vaddr && addr-l.vaddr <= l.size && l.size-(addr-l.vaddr) >= n {
			return l.off + addr - l.vaddr, true
		}
	}
	return 0, false
}

// hasNop reports whether addr is the entry, the site or the function of
// a NOP site.
func (rs *relocState) hasNop(addr uint64) bool {
	_, found := slices.BinarySearch(rs.nop, addr)
	return found
}

// textSeg is an executable segment's bytes at link-time address vaddr.
type textSeg struct {
	vaddr uint64
	b     []byte
}

// loadText reads the executable segments into memory, once: for
// thousands of functions one read costs less than a read each (81,000
// reads of node's functions took 0.65 s of CPU; libc's 3,000 analyzed
// with a read each, 67 ms against 51).
func (rs *relocState) loadText() {
	rs.segOnce.Do(func() {
		var segs []textSeg
		for _, l := range rs.xSpecs {
			b := make([]byte, l.size)
			if m, _ := rs.src.ReadAt(b, int64(l.off)); m < len(b) {
				return // read each function then
			}
			segs = append(segs, textSeg{l.vaddr, b})
		}
		rs.mu.Lock()
		rs.segs = segs
		rs.mu.Unlock()
	})
}

// text returns the file bytes of an executable segment at link-time
// address addr, n of them.
func (rs *relocState) text(addr, n uint64) ([]byte, bool) {
	rs.mu.RLock()
	segs := rs.segs
	rs.mu.RUnlock()
	for _, s := range segs {
		if addr >= s.vaddr && addr-s.vaddr <= uint64(len(s.b)) && uint64(len(s.b))-(addr-s.vaddr) >= n {
			o := addr - s.vaddr
			return s.b[o : o+n : o+n], true
		}
	}
	off, ok := fileOff(rs.xSpecs, addr, n)
	if !ok {
		return nil, false
	}
	b := make([]byte, n)
	if m, _ := rs.src.ReadAt(b, int64(off)); m < len(b) {
		return nil, false
	}
	return b, true
}

// readOnly returns the read-only data index of a position-dependent
// executable, with the pointers gathered so far, or nil.
func (rs *relocState) readOnly() *reloc.ReadOnly {
	rs.mu.RLock()
	defer rs.mu.RUnlock()
	if len(rs.roSpecs) == 0 || rs.roBroken {
		return nil
	}
	return &reloc.ReadOnly{Ranges: rs.roRanges, Pointers: rs.ptrs}
}

// RelocOptions returns the options [Spec.RelocFunc] analyzes functions
// with; a caller that analyzes one again at its runtime address (the same
// as the link-time one in a position-dependent executable, the only kind
// for which ReadOnly is set) must use the same ReadOnly. It holds what
// was gathered for the functions analyzed so far.
func (s *Spec) RelocOptions() reloc.Options {
	if s.reloc == nil {
		return reloc.Options{}
	}
	return reloc.Options{ReadOnly: s.reloc.readOnly()}
}

// PrepareReloc gathers, in one pass over the module's bytes, what
// [Spec.RelocFunc] needs from the rest of the module to analyze the
// functions Funcs[i] for i in idx, and only that: a caller that analyzes
// a few functions names them first, since RelocFunc of a function not
// prepared gathers it for every function. Safe for concurrent use.
func (s *Spec) PrepareReloc(idx []int) {
	rs := s.reloc
	if rs == nil || s.Refused != "" || rs.tooBig {
		return
	}
	// Many functions, or a good part of the text: one read of the whole
	// text costs less than a read each.
	size, text := uint64(0), uint64(0)
	for _, i := range idx {
		if i >= 0 && i < len(s.Funcs) {
			size += min(s.Funcs[i].Size, maxRelocFunc)
		}
	}
	for _, l := range rs.xSpecs {
		text += l.size
	}
	if len(idx) > tableTestMax || size > text/16 {
		rs.loadText()
	}
	ws := make([]want, 0, len(idx))
	for _, i := range idx {
		if !s.RelocCandidate(i) {
			continue
		}
		f := &s.Funcs[i]
		table := len(rs.roSpecs) > 0
		if table && len(idx) <= tableTestMax {
			code, ok := rs.text(f.Addr, min(f.Size, maxRelocFunc))
			table = ok && reloc.MayHaveAbsoluteTable(code)
		}
		ws = append(ws, want{f.Addr, table})
	}
	rs.gather(ws)
}

// want is a function's window to gather: its address, and whether it may
// have an absolute jump table (it needs the read-only data's pointers).
type want struct {
	addr  uint64
	table bool
}

// options returns the relocator's options for the function at addr whose
// bytes are code: the direct branch targets from outside it and, in a
// position-dependent executable, its read-only data, so that absolute
// jump tables are checked rather than refused (reloc.ReadOnly). When no
// pass has gathered them ([Spec.PrepareReloc] was not told of it), a pass
// gathers them for every function at once: a caller that analyzes one
// function after another without naming them first pays one pass, not
// one each.
func (rs *relocState) options(addr uint64, code []byte) (reloc.Options, error) {
	rs.mu.RLock()
	done := rs.has(want{addr, len(rs.roSpecs) > 0 && reloc.MayHaveAbsoluteTable(code)})
	rs.mu.RUnlock()
	if !done {
		all := make([]want, len(rs.starts))
		for i, a := range rs.starts {
			all[i] = want{a, len(rs.roSpecs) > 0}
		}
		rs.gather(all)
	}
	rs.mu.RLock()
	defer rs.mu.RUnlock()
	if rs.broken != nil {
		return reloc.Options{}, rs.broken
	}
	opts := reloc.Options{ExtraTargets: rs.extra, KeepFirst: true}
	if len(rs.roSpecs) > 0 && !rs.roBroken {
		opts.ReadOnly = &reloc.ReadOnly{Ranges: rs.roRanges, Pointers: rs.ptrs}
	}
	// KeepFirst: a uprobe placed while the function is traced resumes on
	// the jmp (reloc.Options.KeepFirst).
	return opts, nil
}

// has reports whether w's window is gathered. Call it with rs.mu held.
func (rs *relocState) has(w want) bool {
	return rs.broken != nil || inside(rs.covered, w.addr) && (!w.table || rs.roBroken || inside(rs.ptrCovered, w.addr))
}

// inside reports whether the window at addr lies in one of the sorted,
// disjoint ranges rs.
func inside(rs [][2]uint64, addr uint64) bool {
	i := sort.Search(len(rs), func(i int) bool { return rs[i][1] > addr })
	return i < len(rs) && rs[i][0] <= addr && rs[i][1]-addr >= relocWindow
}

// gather takes a pass over the text for the windows of ws that lack
// their branch targets, and one over the read-only data for those that
// lack their pointers.
func (rs *relocState) gather(ws []want) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	var tw, pw [][2]uint64
	for _, w := range ws {
		if rs.broken != nil {
			return
		}
		if !inside(rs.covered, w.addr) {
			tw = append(tw, [2]uint64{w.addr, w.addr + relocWindow})
		}
		if w.table && !rs.roBroken && !inside(rs.ptrCovered, w.addr) {
			pw = append(pw, [2]uint64{w.addr, w.addr + relocWindow})
		}
	}
	if len(tw) > 0 {
		tw = mergeRanges(tw)
		ts, err := rs.sweep(tw)
		if err != nil {
			rs.broken = fmt.Errorf("the file's text could not be read to find the branches into its functions: %w", err)
			return
		}
		rs.extra = mergeSorted(rs.extra, ts)
		rs.covered = mergeRanges(append(slices.Clip(rs.covered), tw...))
	}
	if len(pw) > 0 {
		pw = mergeRanges(pw)
		ps, err := rs.words(pw)
		if err != nil {
			rs.roBroken = true // jump tables stay refused
			return
		}
		rs.ptrs = mergeSorted(rs.ptrs, ps)
		rs.ptrCovered = mergeRanges(append(slices.Clip(rs.ptrCovered), pw...))
	}
}

// sweep decodes every executable section, a piece at a time, and returns
// the sorted targets of its direct branches that land in one of the
// windows ws (sorted, disjoint): branches into a function from outside
// its bytes (cold parts, shared tails). A large section is cut at
// function starts, where an instruction begins, into a part per CPU.
func (rs *relocState) sweep(ws [][2]uint64) ([]uint64, error) {
	var parts [][2]uint64
	for _, r := range rs.secs {
		parts = append(parts, rs.cut(r)...)
	}
	found := make([]addrSet, len(parts))
	errs := make([]error, len(parts))
	next := make(chan int, len(parts))
	for i := range parts {
		next <- i
	}
	close(next)
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), len(parts)) {
		wg.Go(func() {
			buf := make([]byte, scanPiece+15)
			for i := range next {
				keep := keeper(ws, found[i].add)
				errs[i] = rs.sweepPart(parts[i], buf, keep)
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	var all addrSet
	for i := range found {
		all.a = append(all.a, found[i].a...)
	}
	return all.sorted(), nil
}

// addrSet gathers addresses, deduplicated whenever their number doubles:
// a hostile file whose every instruction branches into one window keeps
// one copy of its target, not one per branch.
type addrSet struct {
	a    []uint64
	next int // the length at which to deduplicate
}

func (s *addrSet) add(t uint64) {
	s.a = append(s.a, t)
	if len(s.a) >= s.next {
		s.a = s.sorted()
		s.next = max(2*len(s.a), 1<<16)
	}
}

// sorted returns the addresses sorted, without duplicates.
func (s *addrSet) sorted() []uint64 {
	radix.SortBy(s.a, 0)
	return slices.Compact(s.a)
}

// cut splits the section r into parts of at least 4 MiB, one per CPU at
// most, at the starts of functions.
func (rs *relocState) cut(r [2]uint64) [][2]uint64 {
	n := min(runtime.GOMAXPROCS(0), int((r[1]-r[0])/(4<<20)))
	if n < 2 || len(rs.starts) == 0 {
		return [][2]uint64{r}
	}
	var out [][2]uint64
	lo := r[0]
	for k := 1; k < n; k++ {
		at := r[0] + (r[1]-r[0])/uint64(n)*uint64(k)
		i, _ := slices.BinarySearch(rs.starts, at)
		if i == len(rs.starts) || rs.starts[i] <= lo || rs.starts[i] >= r[1] {
			continue
		}
		out = append(out, [2]uint64{lo, rs.starts[i]})
		lo = rs.starts[i]
	}
	return append(out, [2]uint64{lo, r[1]})
}

// sweepPart sweeps the part r of a section (see sweep) with buf.
func (rs *relocState) sweepPart(r [2]uint64, buf []byte, keep func(uint64)) error {
	n := r[1] - r[0]
	off, ok := fileOff(rs.xSpecs, r[0], n)
	if !ok {
		return nil
	}
	for pos := uint64(0); pos < n; {
		limit := min(scanPiece, n-pos)
		// 15 bytes past the part, for its last instruction, unless the
		// file's segment ends.
		b := buf[:limit]
		if _, ok := fileOff(rs.xSpecs, r[0]+pos, limit+15); ok {
			b = buf[:limit+15]
		}
		if m, err := rs.src.ReadAt(b, int64(off+pos)); m < len(b) {
			return err
		}
		pos += uint64(reloc.SweepBranches(b, r[0]+pos, int(limit), keep))
	}
	return nil
}

// words scans the read-only data, a piece at a time, and returns the
// sorted values of its 8-byte words (at every byte offset) that point
// into one of the windows ws (sorted, disjoint); see reloc.ReadOnly.
func (rs *relocState) words(ws [][2]uint64) ([]uint64, error) {
	var ps addrSet
	keep := keeper(ws, ps.add)
	lo, hi := ws[0][0], ws[len(ws)-1][1]
	buf := make([]byte, scanPiece+7)
	for _, l := range rs.roSpecs {
		for pos := uint64(0); pos < l.size; {
			limit := min(scanPiece, l.size-pos)
			b := buf[:min(limit+7, l.size-pos)]
			if m, err := rs.src.ReadAt(b, int64(l.off+pos)); m < len(b) {
				return nil, err
			}
			reloc.ScanWords(b, lo, hi, keep)
			pos += limit
		}
	}
	return ps.sorted(), nil
}

// keeper returns a function that passes on to fn the addresses that lie
// in one of the windows ws (sorted, disjoint).
func keeper(ws [][2]uint64, fn func(uint64)) func(uint64) {
	lo, span := ws[0][0], ws[len(ws)-1][1]-ws[0][0]
	return func(t uint64) {
		if t-lo >= span {
			return
		}
		if i := sort.Search(len(ws), func(i int) bool { return ws[i][1] > t }); i < len(ws) && ws[i][0] <= t {
			fn(t)
		}
	}
}

// mergeRanges sorts rs and merges those that overlap or touch.
func mergeRanges(rs [][2]uint64) [][2]uint64 {
	slices.SortFunc(rs, func(a, b [2]uint64) int { return cmp.Compare(a[0], b[0]) })
	out := rs[:0]
	for _, r := range rs {
		if n := len(out); n > 0 && r[0] <= out[n-1][1] {
			out[n-1][1] = max(out[n-1][1], r[1])
			continue
		}
		out = append(out, r)
	}
	return out
}

// mergeSorted returns the sorted union of a and b (sorted) in a new
// slice: a reader may hold a.
func mergeSorted(a, b []uint64) []uint64 {
	if len(b) == 0 {
		return a
	}
	out := make([]uint64, 0, len(a)+len(b))
	out = append(append(out, a...), b...)
	slices.Sort(out)
	return slices.Compact(out)
}

// FuncText returns the file's bytes of function Funcs[i], when they lie
// in an executable segment (as RelocFunc analyzed them).
func (s *Spec) FuncText(i int) ([]byte, bool) {
	if s.reloc == nil || i < 0 || i >= len(s.Funcs) || s.Funcs[i].Size > maxRelocFunc {
		return nil, false
	}
	return s.reloc.text(s.Funcs[i].Addr, s.Funcs[i].Size)
}

// RelocCandidate reports whether [Spec.RelocFunc] has something to say
// about function Funcs[i] (its ok), without analyzing it: a caller that
// also matches names asks this first, which for a function with a NOP
// site costs a look at one flag instead of a name's.
func (s *Spec) RelocCandidate(i int) bool {
	if i < 0 || i >= len(s.Funcs) || i > 0 && s.Funcs[i-1].Addr == s.Funcs[i].Addr {
		return false
	}
	if s.Refused != "" {
		return true
	}
	rs := s.reloc
	if rs == nil {
		return false
	}
	f := &s.Funcs[i]
	if rs.funcNop[i] || rs.hasNop(f.Addr) || rs.hasNop(f.Addr+4) {
		return false
	}
	for _, r := range rs.plts {
		if f.Addr >= r[0] && f.Addr < r[1] {
			return false
		}
	}
	return true
}

// RelocFunc analyzes function Funcs[i] for relocation. ok is false when
// the function is no candidate: it has a NOP site (see Sites), is a PLT
// stub, or i is not the first alias at its address. Otherwise it returns
// either the relocating site ([FormReloc], with its Plan at link-time
// addresses) or why the function cannot be traced. Safe for concurrent
// use.
func (s *Spec) RelocFunc(i int) (st Site, why string, ok bool) {
	if !s.RelocCandidate(i) {
		return Site{}, "", false
	}
	if s.Refused != "" {
		return Site{}, s.Refused, true
	}
	rs := s.reloc
	f := s.Funcs[i]
	switch {
	case rs.goAll || f.Addr >= rs.goLo && f.Addr < rs.goHi:
		return Site{}, goRefusal, true
	case rs.entry != 0 && f.Addr == rs.entry:
		// _start runs with argc at [rsp] and no return address, and the
		// stack aligned as no function entry is.
		return Site{}, "the program's entry point: nothing calls it", true
	case f.Size == 0:
		return Site{}, "symbol without a size", true
	case f.Size > maxRelocFunc:
		return Site{}, fmt.Sprintf("function of %d bytes, more than the %d analyzed", f.Size, maxRelocFunc), true
	case f.IFunc:
		return Site{}, "an IFUNC resolver (trace the implementation it picks)", true
	case strings.HasPrefix(f.Raw, "_dl_tlsdesc_"):
		// Named only by the dynamic linker's .symtab (its debug file).
		return Site{}, "a TLS descriptor function: its callers expect every register but rax kept, and the stub uses r11", true
	case rs.tooBig:
		return Site{}, fmt.Sprintf("executable segments of more than %d bytes", maxRelocText), true
	}
	code, found := rs.text(f.Addr, f.Size)
	if !found {
		return Site{}, "bytes outside the executable segments", true
	}
	opts, err := rs.options(f.Addr, code)
	if err != nil {
		return Site{}, err.Error(), true
	}
	plan, err := reloc.Analyze(code, f.Addr, opts)
	if err != nil {
		var r *reloc.Refusal
		if errors.As(err, &r) && r.Reason == reloc.BranchTarget && r.Inst == "" {
			if j, ok := s.FuncIndex(f.Addr + uint64(r.Off)); ok {
				return Site{}, fmt.Sprintf("branch target at +%d (the entry of %s)", r.Off, s.Funcs[j].Name), true
			}
		}
		return Site{}, err.Error(), true
	}
	st = Site{Addr: plan.Entry, Form: FormReloc, Endbr: plan.Endbr, Func: i, Table: TableSymbol, Plan: plan}
	copy(st.Bytes[:], plan.Orig())
	if why := graphUnsafeName(f); why != "" {
		st.GraphUnsafe = why
	} else if len(plan.EntryBranches) > 0 {
		// The function branches back to its entry, where [rsp] is
		// whatever it pushed: graph mode would hijack the wrong slot.
		st.GraphUnsafe = fmt.Sprintf("return address not at [rsp]: the function branches back to its entry from +%d", plan.EntryBranches[0]-f.Addr)
	}
	return st, "", true
}

// graphUnsafeName says why graph mode must leave f alone, known by its
// name, or "": where a thread enters it [rsp] holds no return address, or
// its return address is used again after it returned (or by code that
// must find it there).
func graphUnsafeName(f Func) string {
	switch {
	case strings.HasPrefix(f.Raw, "_dl_runtime_resolve"), strings.HasPrefix(f.Raw, "_dl_runtime_profile"):
		// The dynamic linker's lazy binding entry: PLT0 jumps there with
		// two words pushed over the return address.
		return "return address not at [rsp]: the dynamic linker's PLT resolver is entered by a jmp with two words pushed"
	}
	if why, ok := returnedInto[f.Name]; ok {
		return "return address not at [rsp]: " + why
	}
	if why, ok := resumedAt[f.Name]; ok {
		return why
	}
	return v8ReadsReturn(f)
}

// resumedAt names the functions of a C library that return a second
// time through the return address they were called with, or hand it to
// code that does. With it hijacked, the second return enters lt_return
// after the first has taken the shadow entry, or on another thread:
// postgres's backends (sigsetjmp under every PG_TRY, and a siglongjmp at
// every error) died of SIGILL within seconds of a --graph of libc.
var resumedAt = map[string]string{
	// glibc's vfork pops its return address into a register around the
	// system call and pushes it back: the child returns first, through
	// the hijacked address, and takes the parent's shadow entry with it.
	"vfork":   "returns twice on one stack (the vfork child, then the parent)",
	"__vfork": "returns twice on one stack (the vfork child, then the parent)",
	// setjmp saves its return address, where longjmp returns again.
	"setjmp":      setjmpTwice,
	"_setjmp":     setjmpTwice,
	"__setjmp":    setjmpTwice,
	"sigsetjmp":   setjmpTwice,
	"__sigsetjmp": setjmpTwice,
	// getcontext saves it in the context, where setcontext resumes;
	// swapcontext too, where the context is resumed, perhaps by another
	// thread.
	"getcontext":    contextTwice,
	"__getcontext":  contextTwice,
	"swapcontext":   contextTwice,
	"__swapcontext": contextTwice,
	// Boost.Context's stack switch (boost::fibers, boost::asio's
	// coroutines) keeps it on the stack it leaves, where the next jump
	// to that stack returns through it, perhaps on another thread.
	"jump_fcontext":  fcontextLater,
	"ontop_fcontext": fcontextLater,
}

const (
	setjmpTwice   = "returns twice: its return address is saved for a longjmp to return through again"
	contextTwice  = "returns twice: its return address is saved in a ucontext that setcontext or swapcontext resumes, perhaps on another thread"
	fcontextLater = "switches stacks: its return address stays on the stack it leaves, which the next jump to that stack returns through, perhaps on another thread"
)

// v8ReadsReturn says why graph mode must leave f alone when V8 reads its
// return address back, or "". V8 walks the stack of a thread running
// JavaScript by return addresses: those of the JavaScript frames its
// embedded builtins (node, chromium: "Builtins_*", code V8 generated
// ahead of time) run on, and, for the C++ function that JavaScript calls
// through an exit frame (a runtime function, a C++ builtin, an API
// callback taking a FunctionCallbackInfo or PropertyCallbackInfo: node's
// bindings), the return address that function was called with, which it
// looks up among its code objects. One it does not know is a fatal
// error: Debian's node traced with --graph died of SIGILL on the
// builtins within milliseconds, and of a V8_Fatal in
// Heap::GcSafeFindCodeForInnerPointer (ExitFrame::Iterate) at the first
// garbage collection inside a traced runtime function. The callbacks are
// found by their mangled parameter types: a helper that takes one too
// loses graph mode as well.
func v8ReadsReturn(f Func) string {
	switch {
	case strings.HasPrefix(f.Raw, "Builtins_"):
		return "V8's embedded builtin: V8 reads the return addresses of the JavaScript frames it runs on"
	case strings.HasPrefix(f.Name, "v8::internal::Runtime_"), strings.HasPrefix(f.Name, "v8::internal::Builtin_"),
		strings.Contains(f.Raw, "20FunctionCallbackInfoI"), strings.Contains(f.Raw, "20PropertyCallbackInfoI"):
		return "return address read by V8: JavaScript calls it through an exit frame, which V8's stack walk (garbage collection) looks up by this return address"
	}
	return ""
}

// returnedInto names the local functions of libc that a thread enters by
// a return or a jump, not by a call, so that [rsp] holds no return
// address there. They are seen only with libc's .symtab (its debug file,
// debug.go).
var returnedInto = map[string]string{
	"__restore_rt":    "the signal return trampoline, entered by the signal handler's ret with the signal frame at [rsp]",
	"__start_context": "makecontext's trampoline, entered by the context function's ret",
}

// RelocSites analyzes every function without a NOP site (once; the result
// is cached): the relocating sites, sorted by Addr, and the functions
// refused, with their reasons. Safe for concurrent use.
func (s *Spec) RelocSites() ([]Site, []RelocRefusal) {
	if s.Refused != "" {
		var refused []RelocRefusal
		for i := range s.Funcs {
			if _, why, ok := s.RelocFunc(i); ok {
				refused = append(refused, RelocRefusal{Func: i, Addr: s.Funcs[i].Addr, Reason: why})
			}
		}
		return nil, refused
	}
	rs := s.reloc
	if rs == nil {
		return nil, nil
	}
	rs.allOnce.Do(func() {
		idx := make([]int, len(s.Funcs))
		for i := range idx {
			idx[i] = i
		}
		s.PrepareReloc(idx)
		for i := range s.Funcs {
			st, why, ok := s.RelocFunc(i)
			switch {
			case !ok:
			case why != "":
				rs.refused = append(rs.refused, RelocRefusal{Func: i, Addr: s.Funcs[i].Addr, Reason: why})
			default:
				rs.all = append(rs.all, st)
			}
		}
	})
	return rs.all, rs.refused
}

// Traceable returns the sites livetrace can patch: the NOP sites
// ([Spec.Patchable]) and, unless onlyNop, the relocating ones, sorted by
// address.
func (s *Spec) Traceable(onlyNop bool) []Site {
	out := s.Patchable()
	if onlyNop {
		return out
	}
	all, _ := s.RelocSites()
	if len(all) == 0 {
		return out
	}
	out = append(out, all...)
	sort.Slice(out, func(i, j int) bool { return out[i].Addr < out[j].Addr })
	return out
}
