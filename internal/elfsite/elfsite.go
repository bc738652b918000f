// Package elfsite finds the patchable function-entry sites of x86-64 ELF
// files, and names them with the file's function symbols.
//
// A [Spec] is what one ELF file says, read from the file alone: it is pure
// data, never touches a process, and is safe for concurrent read-only use.
// [Module] (live.go) ties a Spec to one process's mappings of that file.
//
// The three site forms livetrace understands (docs/DESIGN.md §1):
//
//	clang -fpatchable-function-entry=5              0f 1f 44 00 08   __patchable_function_entries
//	gcc -pg -mfentry -mnop-mcount -mrecord-mcount   0f 1f 44 00 00   __mcount_loc
//	gcc -fpatchable-function-entry=5                90 90 90 90 90   __patchable_function_entries
//
// Site addresses are link-time virtual addresses. With -fcf-protection a
// function starts with ENDBR64 (f3 0f 1e fa) and its site follows it;
// compilers record the address after the ENDBR64, and when a table records the
// ENDBR64 itself, Parse moves the site past it.
//
// Stripped files (no .symtab) are not refused: their functions are read
// from their separate debug file when the debug directory has one for
// their build ID (debug.go, [Spec.SymbolFile]), otherwise from .dynsym;
// sites that no symbol covers are named by address ("0x1234", see
// [SiteName]), and [Spec.Stripped] lets callers warn.
package elfsite

import (
	"bytes"
	"cmp"
	"debug/elf"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/livetrace/livetrace/internal/reloc"
	"golang.org/x/arch/x86/x86asm"
)

// Limits on lengths read from untrusted files. Real binaries stay far below
// them; a hostile file cannot make Parse allocate more than a few of these.
//
// No section is read beyond the file's size, and compressed sections are
// never read (a few KiB of zlib can claim a GiB). Symbol names are not
// copied: every name is a substring of the string table, read once
// (symbols.go), so that thousands of symbols naming one long string cost
// nothing more than the table itself.
const (
	maxTableSize     = 64 << 20  // bytes of one site table (8M sites)
	maxRelaSize      = 256 << 20 // bytes of one SHT_RELA section
	maxSymtabSize    = 512 << 20 // bytes of .symtab or .dynsym
	maxStrtabSize    = 512 << 20 // bytes of .strtab or .dynstr
	maxNoteSize      = 1 << 20   // bytes of a build-id note section
	maxLoads         = 4096      // PT_LOAD segments
	maxSections      = 1 << 16   // section headers
	maxShstrtabSize  = 1 << 20   // bytes of the section-name table
	maxSectionNames  = 16 << 20  // bytes of all section names together
	maxSectionHeader = 1 << 10   // e_shentsize
)

// maxSymbols caps the entries of the symbol table read (a variable for
// tests). A big C++ program has a few million.
var maxSymbols = 1 << 23

// recoverPanics is turned off by the fuzz test, so that a panic in our own
// code or in debug/elf shows up as a crash rather than as an error.
var recoverPanics = true

// Sentinel errors. Parse and Open wrap them with the file's path and a hint
// of what to do; test with errors.Is.
var (
	// ErrNotELF means the file is not an ELF file at all.
	ErrNotELF = errors.New("not an ELF file")
	// ErrUnsupported means an ELF file for another class, machine or type
	// than 64-bit x86-64 executables and shared libraries.
	ErrUnsupported = errors.New("only x86-64 ELF files are supported")
	// ErrMalformed means a truncated or inconsistent ELF file.
	ErrMalformed = errors.New("malformed ELF file")
	// ErrNoSites means a file without any patchable site; see [Spec.CheckSites].
	ErrNoSites = errors.New("no patchable sites")
)

// Form is the shape of the five bytes at a site, as found in the file.
type Form uint8

// The site forms.
const (
	// FormUnknown is anything else (for example an e8 CALL left by gcc -pg
	// without -mnop-mcount). Such a site is reported, never patched.
	FormUnknown Form = iota
	// FormNop5 is one 5-byte NOP, 0f 1f 44 00 xx.
	FormNop5
	// FormSled is five 1-byte NOPs, 90 90 90 90 90.
	FormSled
)

// String returns "nop5", "sled" or "unknown".
func (f Form) String() string {
	switch f {
	case FormNop5:
		return "nop5"
	case FormSled:
		return "sled"
	case FormReloc:
		return "reloc"
	}
	return "unknown"
}

// Patchable reports whether sites of this form can be patched.
func (f Form) Patchable() bool { return f == FormNop5 || f == FormSled }

// Classify returns the form of the five bytes b.
func Classify(b [5]byte) Form {
	switch {
	case b[0] == 0x0f && b[1] == 0x1f && b[2] == 0x44 && b[3] == 0x00:
		return FormNop5
	case b == [5]byte{0x90, 0x90, 0x90, 0x90, 0x90}:
		return FormSled
	}
	return FormUnknown
}

// Table names the ELF section a site was recorded in.
type Table string

// The site tables.
const (
	TablePatchable Table = "__patchable_function_entries"
	TableMcount    Table = "__mcount_loc"
	// TableSymbol marks a relocating site ([FormReloc]): found from a
	// function symbol, not from a table.
	TableSymbol Table = "symbol"
)

// endbr64 is the encoding of ENDBR64.
var endbr64 = [4]byte{0xf3, 0x0f, 0x1e, 0xfa}

// Site is one patchable function entry.
type Site struct {
	// Addr is the link-time virtual address of the five patchable bytes
	// (after the ENDBR64 when the function has one).
	Addr uint64
	// Form is the form of Bytes.
	Form Form
	// Bytes are the five bytes at Addr in the file.
	Bytes [5]byte
	// Endbr reports that the function starts with ENDBR64 right before Addr.
	Endbr bool
	// Func is the index in [Spec.Funcs] of the function containing Addr, or
	// -1 when no symbol covers it.
	Func int
	// Table is the section that recorded the site.
	Table Table
	// GraphUnsafe, when not "", says why the return address is not at
	// [rsp] when a thread reaches the site, so that graph mode, which
	// replaces [rsp] with its return trampoline, must not patch it. gcc
	// emits "push %r10; nop5; pop %r10" at the entry of a nested function
	// (-pg -mfentry): [rsp] at the site is then the saved static chain.
	// Entry-only tracing of such a site is safe.
	GraphUnsafe string
	// Plan, for a [FormReloc] site, is the relocator's verdict on the
	// function at link-time addresses: Addr is Plan.Entry and Bytes the
	// first five of the Plan.Len displaced bytes.
	Plan *reloc.Plan
}

// Func is one function symbol.
type Func struct {
	// Name is the demangled name without parameters, in the style of
	// uftrace: "ns::Class::method", "std::vector<int>::push_back". For C
	// and other unmangled symbols it equals Raw.
	Name string
	// Raw is the symbol name as written in the file (mangled).
	Raw string
	// Addr is the link-time address, Size the symbol size (may be 0).
	Addr, Size uint64
	// Global reports a global or weak (not local) symbol.
	Global bool
	// IFunc reports an STT_GNU_IFUNC symbol: Addr is its resolver.
	IFunc bool
}

// Load is one PT_LOAD program header.
type Load struct {
	Vaddr, Offset, Filesz, Memsz uint64
	Flags                        elf.ProgFlag
}

// Spec is what one ELF file says about its sites and functions. It is
// immutable after Parse and safe for concurrent read-only use.
type Spec struct {
	// Path is the path the file was opened with.
	Path string
	// Type is elf.ET_EXEC or elf.ET_DYN (PIE executable or shared library).
	Type elf.Type
	// BuildID is the GNU build ID in hex, or "".
	BuildID string
	// Sites are sorted by Addr, without duplicates. They include sites of
	// FormUnknown; see [Spec.Patchable].
	Sites []Site
	// Funcs are all function symbols, from .symtab, or from .dynsym when
	// the file has no .symtab. They are sorted by Addr; among aliases at one
	// address the preferred name (global before weak before local) comes
	// first.
	Funcs []Func
	// Loads are the PT_LOAD segments in file order.
	Loads []Load
	// Stripped reports that the file has no .symtab, and no separate
	// debug file gave one (see [Spec.SymbolFile]).
	Stripped bool
	// SymbolFile is the path of the separate debug file that Funcs were
	// read from (found by build ID under [DebugDirs], debug.go), or ""
	// when they come from the file itself.
	SymbolFile string
	// SymbolFileErr, when not nil, says why a debug file found for the
	// file was not used; Funcs then come from .dynsym.
	SymbolFileErr error
	// SymbolsOnly reports a Spec from [ParseSymbols]: Sites is empty and
	// no function can be relocated, whatever the file holds.
	SymbolsOnly bool
	// Refused, when set, is why no function of the module can be traced
	// in the process it was found in: its Spec is symbols only, and
	// RelocFunc gives this reason for every function. LiveModulesWith sets
	// it on its own copy of the parse (the cached one is the file's, and
	// the reason is the process's): the code is mapped shared.
	Refused string
	// Skipped counts table entries that were dropped because they point
	// outside any executable PT_LOAD, or hold an unresolvable relocation.
	// Entries of 0 (functions removed by the linker) are not counted.
	Skipped int

	// reloc holds the bytes for the relocation analysis, done on demand
	// (reloc.go).
	reloc *relocState
	// irels are the IRELATIVE relocations of a file with IFUNC symbols
	// (ifunc.go), sorted by resolver; imports its JUMP_SLOT and GLOB_DAT
	// relocations of undefined symbols, sorted by name.
	irels   []irel
	imports []imp

	// names holds the demangled names of Funcs of a SymbolsOnly Spec,
	// made on the first call of Name (its Funcs keep their mangled
	// names); shared by the copies the cache hands out.
	names *lazyNames
}

type lazyNames struct {
	once  sync.Once
	names []string
}

// Open reads the ELF file at path. See [Parse].
func Open(path string) (*Spec, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("read %s: %w: it is not a regular file", path, ErrNotELF)
	}
	return Parse(f, path)
}

// openELF checks that r is a 64-bit x86-64 ELF file within the caps of
// preflight, and opens it with debug/elf; it returns the file's size
// (readerSize). notELF is added to the error for a file that is not ELF.
func openELF(r io.ReaderAt, path, notELF string) (*elf.File, int64, error) {
	var ident [elf.EI_NIDENT]byte
	if n, _ := r.ReadAt(ident[:], 0); n < len(ident) || !bytes.Equal(ident[:4], []byte(elf.ELFMAG)) {
		return nil, 0, fmt.Errorf("read %s: %w%s", path, ErrNotELF, notELF)
	}
	if c := elf.Class(ident[elf.EI_CLASS]); c != elf.ELFCLASS64 {
		return nil, 0, fmt.Errorf("read %s: %w, this one is 32-bit (%s)", path, ErrUnsupported, c)
	}
	size := readerSize(r)
	if err := preflight(r, size); err != nil {
		return nil, 0, fmt.Errorf("read %s: %w", path, err)
	}
	f, err := elf.NewFile(r)
	if err != nil {
		return nil, 0, fmt.Errorf("read %s: %w: %v", path, ErrMalformed, err)
	}
	if f.Machine != elf.EM_X86_64 || f.ByteOrder != binary.LittleEndian {
		return nil, 0, fmt.Errorf("read %s: %w, this one is for %s", path, ErrUnsupported, f.Machine)
	}
	return f, size, nil
}

// Parse reads an ELF file from r; path is only used for Spec.Path and error
// messages. A file without sites is not an error here: check with
// [Spec.CheckSites]. Panics in debug/elf on malformed input become errors
// wrapping [ErrMalformed].
func Parse(r io.ReaderAt, path string) (spec *Spec, err error) {
	return parse(r, path, false)
}

// ParseSymbols is [Parse] without the sites and the relocation analysis:
// the Spec has Funcs, Loads and BuildID, and [Spec.SymbolsOnly] set. It
// is for a module that no function is selected in, whose symbols the
// recording keeps to name addresses.
func ParseSymbols(r io.ReaderAt, path string) (*Spec, error) {
	return parse(r, path, true)
}

func parse(r io.ReaderAt, path string, symbolsOnly bool) (spec *Spec, err error) {
	defer func() {
		if !recoverPanics {
			return
		}
		if p := recover(); p != nil {
			spec, err = nil, fmt.Errorf("read %s: %w: %v", path, ErrMalformed, p)
		}
	}()
	f, size, err := openELF(r, path, ": livetrace needs an x86-64 executable or shared library")
	if err != nil {
		return nil, err
	}
	if f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		what := f.Type.String()
		switch f.Type {
		case elf.ET_REL:
			what = "an object file (ET_REL): link it into a program or shared library first"
		case elf.ET_CORE:
			what = "a core dump (ET_CORE)"
		}
		return nil, &typeError{msg: fmt.Sprintf("read %s: livetrace needs an executable or a shared library, this is %s", path, what)}
	}
	if len(f.Progs) > maxLoads || len(f.Sections) > maxSections {
		return nil, fmt.Errorf("read %s: %w: too many program or section headers", path, ErrMalformed)
	}
	p := &parser{f: f, r: r, size: size, spec: &Spec{Path: path, Type: f.Type}, mangled: symbolsOnly}
	for _, ph := range f.Progs {
		if ph.Type == elf.PT_LOAD {
			p.spec.Loads = append(p.spec.Loads, Load{Vaddr: ph.Vaddr, Offset: ph.Off, Filesz: ph.Filesz, Memsz: ph.Memsz, Flags: ph.Flags})
		}
	}
	p.spec.BuildID = p.buildID()
	if err := p.symbols(); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if p.spec.Stripped && p.spec.BuildID != "" {
		p.debugSymbols()
	}
	// Other modules' IFUNCs are resolved through these, whichever
	// modules -m selects.
	p.imports()
	if symbolsOnly {
		p.spec.SymbolsOnly = true
		p.spec.names = &lazyNames{}
		return p.spec, nil
	}
	if err := p.sites(); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	p.prepareReloc()
	p.irelatives()
	return p.spec, nil
}

// typeError is an ELF file of an unsupported type; it wraps ErrUnsupported
// with a message of its own.
type typeError struct{ msg string }

func (e *typeError) Error() string { return e.msg }
func (e *typeError) Unwrap() error { return ErrUnsupported }

// CheckSites returns nil when the file has at least one patchable site, and
// otherwise an error wrapping [ErrNoSites] that says how to build the file.
func (s *Spec) CheckSites() error {
	unknown := 0
	for i := range s.Sites {
		if s.Sites[i].Form.Patchable() {
			return nil
		}
		unknown++
	}
	if unknown > 0 {
		return fmt.Errorf("%w in %s: its %d recorded sites hold neither NOPs nor a NOP sled (gcc -pg without -mnop-mcount leaves CALLs there): "+
			"build it with clang -fpatchable-function-entry=5 or gcc -pg -mfentry -mnop-mcount -mrecord-mcount (see docs/BUILDING.md)", ErrNoSites, s.Path, unknown)
	}
	return fmt.Errorf("%w in %s: build it with clang -fpatchable-function-entry=5 (see docs/BUILDING.md)", ErrNoSites, s.Path)
}

// Patchable returns the sites whose form can be patched (not FormUnknown).
func (s *Spec) Patchable() []Site {
	out := make([]Site, 0, len(s.Sites))
	for _, st := range s.Sites {
		if st.Form.Patchable() {
			out = append(out, st)
		}
	}
	return out
}

// exec returns the executable PT_LOAD holding the n file bytes at addr.
func (s *Spec) exec(addr, n uint64) (Load, bool) {
	for _, l := range s.Loads {
		if l.Flags&elf.PF_X != 0 && addr >= l.Vaddr && addr-l.Vaddr <= l.Filesz && l.Filesz-(addr-l.Vaddr) >= n {
			return l, true
		}
	}
	return Load{}, false
}

type parser struct {
	f    *elf.File
	r    io.ReaderAt
	size int64 // of the file, or -1 when unknown
	spec *Spec

	relocSyms map[uint32][]byte // raw Elf64_Sym entries, by symbol table section index

	// mangled keeps C++ and Rust names as they are (a module read for
	// its symbols only): Spec.Name demangles them when asked.
	mangled bool

	// chunk caches file bytes for reading site bytes in address order.
	chunk    []byte
	chunkOff uint64
}

// sectionData returns a section's contents, refusing sizes above limit or
// above the file's size, and compressed sections.
func (p *parser) sectionData(s *elf.Section, limit uint64) ([]byte, error) {
	if s.Type == elf.SHT_NOBITS {
		return nil, nil
	}
	if s.Flags&elf.SHF_COMPRESSED != 0 {
		return nil, fmt.Errorf("%w: section %s is compressed: livetrace reads only uncompressed symbol and site tables (only debug sections are compressed by the usual tools)", ErrMalformed, s.Name)
	}
	if err := p.checkSize(s, limit); err != nil {
		return nil, err
	}
	b, err := s.Data()
	if err != nil {
		return nil, fmt.Errorf("%w: section %s: %v", ErrMalformed, s.Name, err)
	}
	return b, nil
}

// checkSize returns an error when section s claims more than limit bytes, or
// more than the whole file holds.
func (p *parser) checkSize(s *elf.Section, limit uint64) error {
	if p.size >= 0 {
		limit = min(limit, uint64(p.size))
	}
	if s.Size > limit {
		return fmt.Errorf("%w: section %s claims %d bytes, more than the %d it can hold", ErrMalformed, s.Name, s.Size, limit)
	}
	return nil
}

// readerSize returns the size of r when r can tell it, or -1.
func readerSize(r io.ReaderAt) int64 {
	switch r := r.(type) {
	case interface{ Size() int64 }:
		return r.Size()
	case interface{ Stat() (os.FileInfo, error) }:
		if fi, err := r.Stat(); err == nil && fi.Mode().IsRegular() {
			return fi.Size()
		}
	}
	return -1
}

// table is one site table section and its 8-byte entries.
type table struct {
	kind Table
	lo   uint64 // link-time address of the section
	vals []uint64
}

// sites reads every site table and fills spec.Sites.
func (p *parser) sites() error {
	var tables []*table
	for _, sec := range p.f.Sections {
		t := Table(sec.Name)
		if t != TablePatchable && t != TableMcount {
			continue
		}
		data, err := p.sectionData(sec, maxTableSize)
		if err != nil {
			return err
		}
		vals := make([]uint64, len(data)/8)
		for i := range vals {
			vals[i] = binary.LittleEndian.Uint64(data[8*i:])
		}
		if len(vals) > 0 {
			tables = append(tables, &table{kind: t, lo: sec.Addr, vals: vals})
		}
	}
	if len(tables) == 0 {
		return nil
	}
	if err := p.relocate(tables); err != nil {
		return err
	}
	n := 0
	for _, t := range tables {
		n += len(t.vals)
	}
	sites := make([]Site, 0, n)
	for _, t := range tables {
		for _, v := range t.vals {
			if v == 0 {
				continue // a function the linker removed
			}
			st, ok := p.site(v, t.kind)
			if !ok {
				p.spec.Skipped++
				continue
			}
			sites = append(sites, st)
		}
	}
	if !slices.IsSortedFunc(sites, func(a, b Site) int { return cmp.Compare(a.Addr, b.Addr) }) {
		slices.SortStableFunc(sites, func(a, b Site) int { return cmp.Compare(a.Addr, b.Addr) })
	}
	out := sites[:0]
	for _, st := range sites {
		if len(out) > 0 && out[len(out)-1].Addr == st.Addr {
			continue
		}
		out = append(out, st)
	}
	p.spec.Sites = out
	return nil
}

// site reads the bytes of the site recorded at addr.
func (p *parser) site(addr uint64, t Table) (Site, bool) {
	st := Site{Addr: addr, Table: t, Func: -1}
	if !p.read(addr, st.Bytes[:]) {
		return st, false
	}
	if [4]byte(st.Bytes[:4]) == endbr64 {
		st.Addr += 4
		st.Endbr = true
		if !p.read(st.Addr, st.Bytes[:]) {
			return st, false
		}
	}
	st.Form = Classify(st.Bytes)
	if i, ok := p.spec.funcIndex(st.Addr); ok {
		st.Func = i
		fn := p.spec.Funcs[i]
		if !st.Endbr && fn.Addr+4 == st.Addr {
			var b [4]byte
			st.Endbr = p.read(fn.Addr, b[:]) && b == endbr64
		}
	}
	st.GraphUnsafe = p.prologue(&st)
	if st.GraphUnsafe == "" && st.Func >= 0 {
		st.GraphUnsafe = graphUnsafeName(p.spec.Funcs[st.Func])
	}
	return st, true
}

// maxPrologue is the largest distance between a function's symbol and its
// site that is decoded.
const maxPrologue = 32

// prologue returns why the return address is not at [rsp] at site st, or
// "": it decodes what runs between the function's symbol and the site,
// where only ENDBR64 (or nothing) may be. Without a symbol it recognizes
// gcc's nested-function entry by its bytes: push %r10 before the site
// (and an optional ENDBR64), pop %r10 right after it.
func (p *parser) prologue(st *Site) string {
	const why = "return address not at [rsp]: "
	if st.Func < 0 {
		var after [2]byte
		var before [6]byte
		if st.Addr < 6 || !p.read(st.Addr+5, after[:]) || after != [2]byte{0x41, 0x5a} || !p.read(st.Addr-6, before[:]) {
			return ""
		}
		if [2]byte(before[4:]) == [2]byte{0x41, 0x52} || before == [6]byte{0x41, 0x52, 0xf3, 0x0f, 0x1e, 0xfa} {
			return why + "push %r10 runs before the site (a gcc nested function)"
		}
		return ""
	}
	fn := p.spec.Funcs[st.Func]
	n := st.Addr - fn.Addr
	if n == 0 {
		return ""
	}
	if n > maxPrologue {
		return fmt.Sprintf(why+"the site is %d bytes into %s", n, fn.Name)
	}
	code := make([]byte, n)
	if !p.read(fn.Addr, code) {
		return fmt.Sprintf(why+"the %d bytes before the site cannot be read", n)
	}
	var insns []string
	nested := false
	for i := 0; i < len(code); {
		// x86asm decodes ENDBR64 as an unknown instruction (Op 0).
		if len(code)-i >= 4 && [4]byte(code[i:i+4]) == endbr64 {
			i += 4
			continue
		}
		in, err := x86asm.Decode(code[i:], 64)
		if err != nil || in.Len == 0 {
			insns = append(insns, fmt.Sprintf("undecodable bytes % x", code[i:]))
			break
		}
		text := x86asm.GNUSyntax(in, fn.Addr+uint64(i), nil)
		if in.Op == x86asm.PUSH && in.Args[0] == x86asm.R10 {
			nested = true
		}
		insns = append(insns, text)
		i += in.Len
	}
	if len(insns) == 0 {
		return ""
	}
	r := why + strings.Join(insns, "; ") + " runs before the site"
	if nested {
		r += " (a gcc nested function)"
	}
	return r
}

// read fills b with the file bytes at link-time address addr, which must lie
// in an executable PT_LOAD.
func (p *parser) read(addr uint64, b []byte) bool {
	l, ok := p.spec.exec(addr, uint64(len(b)))
	if !ok {
		return false
	}
	off := addr - l.Vaddr + l.Offset
	if off < p.chunkOff || off-p.chunkOff+uint64(len(b)) > uint64(len(p.chunk)) {
		// Read ahead to serve the next sites, which are usually close by.
		const chunkSize = 64 << 10
		n := min(uint64(chunkSize), l.Offset+l.Filesz-off)
		if cap(p.chunk) < int(n) {
			p.chunk = make([]byte, chunkSize)
		}
		got, err := p.r.ReadAt(p.chunk[:n], int64(off))
		if got < len(b) && err != nil {
			return false
		}
		p.chunk, p.chunkOff = p.chunk[:got], off
	}
	copy(b, p.chunk[off-p.chunkOff:])
	return true
}

// relocate applies the RELA relocations that target the site tables to
// their entries. A PIE or shared library may hold zeros in the file and get
// its addresses only from R_X86_64_RELATIVE (value = addend) or
// R_X86_64_64 (symbol + addend). REL and RELR relocations use the value in
// the file as the addend, which is already the link-time address we want.
// Each RELA section is read once, whatever the number of tables.
func (p *parser) relocate(tables []*table) error {
	sorted := append([]*table(nil), tables...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].lo < sorted[j].lo })
	// find returns the table and entry index that the relocation at off
	// (a virtual address in ET_EXEC/ET_DYN files) patches.
	find := func(off uint64) (*table, uint64, bool) {
		i := sort.Search(len(sorted), func(i int) bool { return sorted[i].lo > off }) - 1
		if i < 0 {
			return nil, 0, false
		}
		t := sorted[i]
		k := (off - t.lo) / 8
		if (off-t.lo)%8 != 0 || k >= uint64(len(t.vals)) {
			return nil, 0, false
		}
		return t, k, true
	}
	for _, rs := range p.f.Sections {
		if rs.Type != elf.SHT_RELA {
			continue
		}
		data, err := p.sectionData(rs, maxRelaSize)
		if err != nil {
			return err
		}
		for i := 0; i+24 <= len(data); i += 24 {
			t, k, ok := find(binary.LittleEndian.Uint64(data[i:]))
			if !ok {
				continue
			}
			info := binary.LittleEndian.Uint64(data[i+8:])
			addend := binary.LittleEndian.Uint64(data[i+16:])
			switch elf.R_X86_64(info & 0xffffffff) {
			case elf.R_X86_64_RELATIVE:
				t.vals[k] = addend
			case elf.R_X86_64_64:
				syms := p.relocSymbols(rs.Link)
				switch si := info >> 32; {
				case si == 0:
					t.vals[k] = addend
				case si < uint64(len(syms)/symSize) && symSection(syms, si) != elf.SHN_UNDEF:
					t.vals[k] = symValue(syms, si) + addend
				default:
					t.vals[k] = 0
					p.spec.Skipped++
				}
			}
		}
	}
	return nil
}

// relocSymbols returns the raw Elf64_Sym entries (the null symbol 0
// included) of the symbol table at section index link, or nil. Names are
// not read. Results are cached.
func (p *parser) relocSymbols(link uint32) []byte {
	if syms, ok := p.relocSyms[link]; ok {
		return syms
	}
	var syms []byte
	if int(link) < len(p.f.Sections) {
		ls := p.f.Sections[link]
		if ls.Type == elf.SHT_DYNSYM || ls.Type == elf.SHT_SYMTAB {
			syms, _ = p.sectionData(ls, maxSymtabSize)
		}
	}
	if p.relocSyms == nil {
		p.relocSyms = map[uint32][]byte{}
	}
	p.relocSyms[link] = syms
	return syms
}

// buildID returns the GNU build ID of the file in hex, or "".
func (p *parser) buildID() string {
	for _, s := range p.f.Sections {
		if s.Type != elf.SHT_NOTE {
			continue
		}
		data, err := p.sectionData(s, maxNoteSize)
		if err != nil {
			continue
		}
		for len(data) >= 12 {
			namesz := uint64(binary.LittleEndian.Uint32(data))
			descsz := uint64(binary.LittleEndian.Uint32(data[4:]))
			typ := binary.LittleEndian.Uint32(data[8:])
			data = data[12:]
			nameEnd := (namesz + 3) &^ 3
			descEnd := nameEnd + (descsz+3)&^3
			if nameEnd > uint64(len(data)) || nameEnd+descsz > uint64(len(data)) {
				break
			}
			if typ == 3 /* NT_GNU_BUILD_ID */ && namesz == 4 && string(data[:4]) == "GNU\x00" {
				return hex.EncodeToString(data[nameEnd : nameEnd+descsz])
			}
			if descEnd > uint64(len(data)) {
				break
			}
			data = data[descEnd:]
		}
	}
	return ""
}

// preflight reads the ELF and section headers of r itself and refuses what
// would make debug/elf allocate far more than the file holds while it opens
// the file: debug/elf copies every section name in full, so a few thousand
// section headers that name one long string cost gigabytes, and it
// decompresses a compressed section-name table whatever size it claims.
// size is the file's size, or -1. Anything else odd is left to
// elf.NewFile, which reports it.
func preflight(r io.ReaderAt, size int64) error {
	var eh [64]byte
	if n, _ := r.ReadAt(eh[:], 0); n < len(eh) {
		return fmt.Errorf("%w: the ELF header is truncated", ErrMalformed)
	}
	le := binary.LittleEndian
	shoff := le.Uint64(eh[0x28:])
	shentsize := uint64(le.Uint16(eh[0x3a:]))
	shnum := uint64(le.Uint16(eh[0x3c:]))
	shstrndx := uint64(le.Uint16(eh[0x3e:]))
	if shoff == 0 || shentsize < 64 {
		return nil
	}
	if shentsize > maxSectionHeader {
		return fmt.Errorf("%w: section headers of %d bytes", ErrMalformed, shentsize)
	}
	limit := uint64(1<<63 - 1)
	if size >= 0 {
		limit = uint64(size)
	}
	header := func(i uint64) ([]byte, error) {
		b := make([]byte, 64)
		off := shoff + i*shentsize
		if off < shoff || off > limit || limit-off < 64 {
			return nil, fmt.Errorf("%w: section header %d lies beyond the end of the file", ErrMalformed, i)
		}
		if n, _ := r.ReadAt(b, int64(off)); n < len(b) {
			return nil, fmt.Errorf("%w: section header %d is truncated", ErrMalformed, i)
		}
		return b, nil
	}
	if shnum == 0 || shstrndx == uint64(elf.SHN_XINDEX) {
		// Extended numbering: the real counts are in section header 0.
		h0, err := header(0)
		if err != nil {
			return err
		}
		if shnum == 0 {
			shnum = le.Uint64(h0[0x20:])
		}
		if shstrndx == uint64(elf.SHN_XINDEX) {
			shstrndx = uint64(le.Uint32(h0[0x28:]))
		}
	}
	if shnum > maxSections {
		return fmt.Errorf("%w: %d section headers, more than the %d livetrace reads", ErrMalformed, shnum, maxSections)
	}
	if shnum == 0 || shstrndx == 0 || shstrndx >= shnum {
		return nil
	}
	if shnum*shentsize > limit || shoff > limit-shnum*shentsize {
		return fmt.Errorf("%w: the section headers lie beyond the end of the file", ErrMalformed)
	}
	sh := make([]byte, shnum*shentsize)
	if n, _ := r.ReadAt(sh, int64(shoff)); n < len(sh) {
		return fmt.Errorf("%w: the section headers are truncated", ErrMalformed)
	}
	str := sh[shstrndx*shentsize:]
	if elf.SectionType(le.Uint32(str[4:])) == elf.SHT_NOBITS {
		return nil
	}
	if elf.SectionFlag(le.Uint64(str[8:]))&elf.SHF_COMPRESSED != 0 {
		return fmt.Errorf("%w: the section-name table is compressed", ErrMalformed)
	}
	off, n := le.Uint64(str[0x18:]), le.Uint64(str[0x20:])
	if n > maxShstrtabSize || n > limit || off > limit-n {
		return fmt.Errorf("%w: the section-name table claims %d bytes at offset %d, beyond the file or above %d", ErrMalformed, n, off, maxShstrtabSize)
	}
	tab := make([]byte, n)
	if got, _ := r.ReadAt(tab, int64(off)); uint64(got) < n {
		return fmt.Errorf("%w: the section-name table is truncated", ErrMalformed)
	}
	// nul[i] is the index of the first NUL at or after i (n: none); a name
	// without one is read as "" by debug/elf, which costs nothing.
	nul := make([]uint32, n+1)
	nul[n] = uint32(n)
	for i := int(n) - 1; i >= 0; i-- {
		if tab[i] == 0 {
			nul[i] = uint32(i)
		} else {
			nul[i] = nul[i+1]
		}
	}
	var total uint64
	for i := range shnum {
		name := uint64(le.Uint32(sh[i*shentsize:]))
		if name < n && nul[name] < uint32(n) {
			total += uint64(nul[name]) - name
		}
	}
	if total > maxSectionNames {
		return fmt.Errorf("%w: the section names add up to %d bytes (%d sections), more than the %d livetrace reads", ErrMalformed, total, shnum, maxSectionNames)
	}
	return nil
}
