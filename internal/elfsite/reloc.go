package elfsite

import (
	"debug/elf"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

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
	maxRelocText = 256 << 20 // bytes of executable segments kept for it
)

// relocState is what Parse keeps for the relocation analysis, done on
// demand: the bytes of the executable segments, and the ranges of the
// executable sections. Its lazy parts are guarded by sync.Once.
type relocState struct {
	segs []textSeg
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

	// The file and where its segments lie, until load reads them into
	// segs and roSegs.
	src             io.ReaderAt
	dup             *os.File // src, when it is ours to close
	xSpecs, roSpecs []segSpec
	segOnce         sync.Once

	extraOnce sync.Once
	extra     []uint64

	// A position-dependent executable's read-only data, for its absolute
	// jump tables (reloc.ReadOnly): the file bytes, then the index built
	// from them on first use.
	roSegs []textSeg
	roOnce sync.Once
	ro     *reloc.ReadOnly

	allOnce sync.Once
	all     []Site
	refused []RelocRefusal
}

type textSeg struct {
	vaddr uint64
	b     []byte
}

// prepareReloc gathers what the relocation analysis needs while the file
// is open, and keeps the file for the segments' bytes (load).
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
	// The segments are read on the first analysis (load): an attach
	// that names no function of this module without a NOP site reads
	// none of its text (1.5 MB for libc).
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
		rs.xSpecs = append(rs.xSpecs, segSpec{vaddr: l.Vaddr, off: l.Offset, size: l.Filesz})
	}
	if p.f.Type == elf.ET_EXEC {
		for _, l := range p.spec.Loads {
			if l.Flags&(elf.PF_X|elf.PF_W) != 0 || l.Filesz == 0 {
				continue
			}
			total += l.Filesz
			if total > maxRelocText || p.size >= 0 && total > 2*uint64(p.size) {
				// No index: jump tables stay refused.
				rs.roSpecs = nil
				break
			}
			rs.roSpecs = append(rs.roSpecs, segSpec{vaddr: l.Vaddr, off: l.Offset, size: l.Filesz})
		}
	}
	rs.src = p.r
	if f, ok := p.r.(*os.File); ok {
		// The caller closes f when the parse returns: keep a
		// duplicate, closed once the segments are read (or when the
		// Spec is collected without them ever being needed).
		fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			rs.load() // no descriptor to keep: read them now
			return
		}
		dup := os.NewFile(uintptr(fd), f.Name())
		rs.src, rs.dup = dup, dup
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

// segSpec is where an executable segment (or a read-only one) lies in the
// file, to be read by load.
type segSpec struct{ vaddr, off, size uint64 }

// load reads the segments prepareReloc found, once.
func (rs *relocState) load() {
	rs.segOnce.Do(func() {
		for _, l := range rs.xSpecs {
			b := make([]byte, l.size)
			if n, err := rs.src.ReadAt(b, int64(l.off)); n < len(b) && err != nil {
				b = b[:n]
			}
			rs.segs = append(rs.segs, textSeg{vaddr: l.vaddr, b: b})
		}
		for _, l := range rs.roSpecs {
			b := make([]byte, l.size)
			if n, _ := rs.src.ReadAt(b, int64(l.off)); n < len(b) {
				rs.roSegs = nil // a truncated file: jump tables stay refused
				break
			}
			rs.roSegs = append(rs.roSegs, textSeg{vaddr: l.vaddr, b: b})
		}
		if rs.dup != nil {
			rs.dup.Close()
		}
		rs.src, rs.dup = nil, nil
	})
}

// hasNop reports whether addr is the entry, the site or the function of
// a NOP site.
func (rs *relocState) hasNop(addr uint64) bool {
	_, found := slices.BinarySearch(rs.nop, addr)
	return found
}

// options returns the relocator's options for this file: the direct
// branch targets from outside each function and, for a position-dependent
// executable, its read-only data, so that absolute jump tables are checked
// rather than refused (reloc.ReadOnly).
func (rs *relocState) options() reloc.Options {
	// KeepFirst: a uprobe placed while the function is traced resumes on
	// the jmp (reloc.Options.KeepFirst).
	return reloc.Options{ExtraTargets: rs.extraTargets(), ReadOnly: rs.readOnly(), KeepFirst: true}
}

// readOnly returns the read-only data index of a position-dependent
// executable, or nil.
func (rs *relocState) readOnly() *reloc.ReadOnly {
	rs.load()
	rs.roOnce.Do(func() {
		if len(rs.roSegs) == 0 {
			return
		}
		var addrs []uint64
		var segs [][]byte
		for _, s := range rs.roSegs {
			addrs = append(addrs, s.vaddr)
			segs = append(segs, s.b)
		}
		var code [][2]uint64
		for _, s := range rs.segs {
			code = append(code, [2]uint64{s.vaddr, s.vaddr + uint64(len(s.b))})
		}
		rs.ro = reloc.NewReadOnly(addrs, segs, code)
	})
	return rs.ro
}

// RelocOptions returns the options [Spec.RelocFunc] analyzes functions
// with; a caller that analyzes one again at its runtime address (the same
// as the link-time one in a position-dependent executable, the only kind
// for which ReadOnly is set) must use the same ReadOnly.
func (s *Spec) RelocOptions() reloc.Options {
	if s.reloc == nil {
		return reloc.Options{}
	}
	return reloc.Options{ReadOnly: s.reloc.readOnly()}
}

// text returns the n file bytes at link-time address addr in an executable
// segment.
func (rs *relocState) text(addr, n uint64) ([]byte, bool) {
	rs.load()
	for _, s := range rs.segs {
		if addr >= s.vaddr && addr-s.vaddr <= uint64(len(s.b)) && uint64(len(s.b))-(addr-s.vaddr) >= n {
			o := addr - s.vaddr
			return s.b[o : o+n : o+n], true
		}
	}
	return nil, false
}

// extraTargets returns the direct branch targets of every executable
// section: branches into a function from outside its bytes (cold parts,
// shared tails), computed once.
func (rs *relocState) extraTargets() []uint64 {
	rs.extraOnce.Do(func() {
		var ts []uint64
		for _, r := range rs.secs {
			if b, ok := rs.text(r[0], r[1]-r[0]); ok {
				ts = append(ts, reloc.BranchTargets(b, r[0])...)
			}
		}
		sort.Slice(ts, func(i, j int) bool { return ts[i] < ts[j] })
		rs.extra = ts
	})
	return rs.extra
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
	plan, err := reloc.Analyze(code, f.Addr, rs.options())
	if err != nil {
		return Site{}, err.Error(), true
	}
	st = Site{Addr: plan.Entry, Form: FormReloc, Endbr: plan.Endbr, Func: i, Table: TableSymbol, Plan: plan}
	copy(st.Bytes[:], plan.Orig())
	if strings.HasPrefix(f.Raw, "_dl_runtime_resolve") || strings.HasPrefix(f.Raw, "_dl_runtime_profile") {
		// The dynamic linker's lazy binding entry: PLT0 jumps there with
		// two words pushed over the return address.
		st.GraphUnsafe = "return address not at [rsp]: the dynamic linker's PLT resolver is entered by a jmp with two words pushed"
	} else if why, ok := returnedInto[f.Raw]; ok {
		st.GraphUnsafe = "return address not at [rsp]: " + why
	} else if f.Raw == "vfork" || f.Raw == "__vfork" {
		// glibc's vfork pops its return address into a register around
		// the system call and pushes it back: the child returns first,
		// through the hijacked address, and takes the parent's shadow
		// entry with it.
		st.GraphUnsafe = "returns twice on one stack (the vfork child, then the parent)"
	} else if len(plan.EntryBranches) > 0 {
		// The function branches back to its entry, where [rsp] is
		// whatever it pushed: graph mode would hijack the wrong slot.
		st.GraphUnsafe = fmt.Sprintf("return address not at [rsp]: the function branches back to its entry from +%d", plan.EntryBranches[0]-f.Addr)
	}
	return st, "", true
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
