package elfsite

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"os"
	"runtime"
	"strings"
	"testing"
)

// craftSection is one section of a crafted ELF file.
type craftSection struct {
	name  string
	typ   elf.SectionType
	flags elf.SectionFlag
	addr  uint64
	link  uint32
	data  []byte
	// nameOff, when not zero, is used as sh_name instead of the offset of
	// name in .shstrtab.
	nameOff uint32
}

// craftELF builds a small x86-64 ET_DYN file: one executable PT_LOAD of
// 64 KiB at address 0 and the given sections (a null section first and
// .shstrtab last are added). shstrtab, when not nil, replaces the generated
// section-name table.
func craftELF(sections []craftSection, shstrtab []byte) []byte {
	le := binary.LittleEndian
	var names bytes.Buffer
	names.WriteByte(0)
	nameOff := make([]uint32, len(sections)+1)
	for i, s := range sections {
		nameOff[i] = uint32(names.Len())
		names.WriteString(s.name + "\x00")
	}
	nameOff[len(sections)] = uint32(names.Len())
	names.WriteString(".shstrtab\x00")
	if shstrtab == nil {
		shstrtab = names.Bytes()
	}
	all := append(append([]craftSection(nil), sections...), craftSection{name: ".shstrtab", typ: elf.SHT_STRTAB, data: shstrtab})

	const ehsize, phsize = 64, 56
	var body bytes.Buffer
	body.Write(make([]byte, ehsize+phsize))
	offs := make([]uint64, len(all))
	for i, s := range all {
		for body.Len()%8 != 0 {
			body.WriteByte(0)
		}
		offs[i] = uint64(body.Len())
		body.Write(s.data)
	}
	for body.Len()%8 != 0 {
		body.WriteByte(0)
	}
	shoff := uint64(body.Len())
	sh := make([]byte, 64*(len(all)+1))
	for i, s := range all {
		b := sh[64*(i+1):]
		n := nameOff[min(i, len(nameOff)-1)]
		if i == len(all)-1 {
			n = nameOff[len(sections)]
		}
		if s.nameOff != 0 {
			n = s.nameOff
		}
		le.PutUint32(b[0:], n)
		le.PutUint32(b[4:], uint32(s.typ))
		le.PutUint64(b[8:], uint64(s.flags))
		le.PutUint64(b[16:], s.addr)
		le.PutUint64(b[24:], offs[i])
		le.PutUint64(b[32:], uint64(len(s.data)))
		le.PutUint32(b[40:], s.link)
		if s.typ == elf.SHT_SYMTAB || s.typ == elf.SHT_DYNSYM {
			le.PutUint32(b[44:], 1)
			le.PutUint64(b[56:], 24)
		}
		le.PutUint64(b[48:], 1)
	}
	body.Write(sh)
	out := body.Bytes()
	copy(out, elf.ELFMAG)
	out[elf.EI_CLASS] = byte(elf.ELFCLASS64)
	out[elf.EI_DATA] = byte(elf.ELFDATA2LSB)
	out[elf.EI_VERSION] = byte(elf.EV_CURRENT)
	le.PutUint16(out[16:], uint16(elf.ET_DYN))
	le.PutUint16(out[18:], uint16(elf.EM_X86_64))
	le.PutUint32(out[20:], uint32(elf.EV_CURRENT))
	le.PutUint64(out[32:], ehsize) // e_phoff
	le.PutUint64(out[40:], shoff)  // e_shoff
	le.PutUint16(out[52:], ehsize)
	le.PutUint16(out[54:], phsize)
	le.PutUint16(out[56:], 1) // e_phnum
	le.PutUint16(out[58:], 64)
	le.PutUint16(out[60:], uint16(len(all)+1))
	le.PutUint16(out[62:], uint16(len(all))) // e_shstrndx
	ph := out[ehsize:]
	le.PutUint32(ph[0:], uint32(elf.PT_LOAD))
	le.PutUint32(ph[4:], uint32(elf.PF_R|elf.PF_X))
	le.PutUint64(ph[32:], uint64(len(out))) // p_filesz
	le.PutUint64(ph[40:], uint64(len(out))) // p_memsz
	return out
}

// craftSymbols returns a crafted file whose .symtab holds n function symbols
// that all name one string of nameLen bytes in .strtab (each at offset
// 1+i%spread, so that they are not all the same substring).
func craftSymbols(n, nameLen, spread int, prefix string) []byte {
	le := binary.LittleEndian
	strtab := append([]byte{0}, prefix...)
	strtab = append(strtab, bytes.Repeat([]byte("A"), nameLen-len(prefix))...)
	strtab = append(strtab, 0)
	symtab := make([]byte, 24*(n+1))
	for i := 1; i <= n; i++ {
		b := symtab[24*i:]
		le.PutUint32(b[0:], uint32(1+(i%spread)))
		b[4] = byte(elf.STB_GLOBAL)<<4 | byte(elf.STT_FUNC)
		le.PutUint16(b[6:], 1) // .text
		le.PutUint64(b[8:], uint64(0x100+i))
		le.PutUint64(b[16:], 1)
	}
	return craftELF([]craftSection{
		{name: ".text", typ: elf.SHT_PROGBITS, flags: elf.SHF_ALLOC | elf.SHF_EXECINSTR, addr: 0x100, data: make([]byte, 16)},
		{name: ".symtab", typ: elf.SHT_SYMTAB, link: 3, data: symtab},
		{name: ".strtab", typ: elf.SHT_STRTAB, data: strtab},
	}, nil)
}

// allocDuring returns the bytes allocated while f runs.
func allocDuring(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// TestCraftedSymbolsBounded parses files built so that a reader copying
// every symbol name in full (as debug/elf does) allocates hundreds of MiB
// from a few hundred KiB: thousands of symbols naming one long string.
// Parse must stay within a small multiple of the file's size.
func TestCraftedSymbolsBounded(t *testing.T) {
	const budget = 64 << 20
	for _, tc := range []struct {
		name    string
		data    []byte
		wantErr bool
	}{
		// 6000 symbols × 150 KB: 900 MB of names if each were copied.
		{name: "one long name", data: craftSymbols(6000, 150_000, 1, "")},
		// Names starting at 6000 different offsets of the same string.
		{name: "overlapping names", data: craftSymbols(6000, 150_000, 6000, "")},
		// Mangled names: the demangler must be bounded too.
		{name: "mangled", data: craftSymbols(6000, 150_000, 1, "_ZN")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if out := os.Getenv("LIVETRACE_CRAFTED_ELF"); out != "" && tc.name == "one long name" {
				if err := os.WriteFile(out, tc.data, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			var spec *Spec
			var err error
			alloc := allocDuring(func() { spec, err = Parse(bytes.NewReader(tc.data), "crafted") })
			t.Logf("%d-byte file: %d bytes allocated, err %v", len(tc.data), alloc, err)
			if alloc > budget {
				t.Errorf("Parse allocated %d MiB for a %d KiB file, want at most %d MiB", alloc>>20, len(tc.data)>>10, budget>>20)
			}
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if len(spec.Funcs) != 6000 {
				t.Errorf("got %d functions, want 6000", len(spec.Funcs))
			}
			for _, f := range spec.Funcs {
				if len(f.Raw) > maxNameLen {
					t.Fatalf("name of %d bytes kept, want at most %d", len(f.Raw), maxNameLen)
				}
			}
		})
	}
}

// TestCraftedSectionNames: debug/elf copies every section name in full
// while it opens a file; thousands of section headers naming one long
// string must be refused before that.
func TestCraftedSectionNames(t *testing.T) {
	long := strings.Repeat("S", 150_000)
	var secs []craftSection
	for range 2000 {
		secs = append(secs, craftSection{name: "x", typ: elf.SHT_PROGBITS, nameOff: 1})
	}
	shstrtab := []byte("\x00" + long + "\x00.shstrtab\x00")
	data := craftELF(secs, shstrtab)
	var err error
	alloc := allocDuring(func() { _, err = Parse(bytes.NewReader(data), "crafted") })
	t.Logf("%d-byte file: %d bytes allocated, err %v", len(data), alloc, err)
	if alloc > 64<<20 {
		t.Errorf("Parse allocated %d MiB for a %d KiB file", alloc>>20, len(data)>>10)
	}
	if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "section names") {
		t.Errorf("Parse: %v, want an error wrapping ErrMalformed about section names", err)
	}
}

// TestCraftedCompressed: a compressed section is a decompression bomb
// waiting to happen; Parse reads no compressed table.
func TestCraftedCompressed(t *testing.T) {
	// An Elf64_Chdr claiming 1 GiB of zlib data, followed by garbage.
	chdr := make([]byte, 24+64)
	binary.LittleEndian.PutUint32(chdr[0:], uint32(elf.COMPRESS_ZLIB))
	binary.LittleEndian.PutUint64(chdr[8:], 1<<30)
	binary.LittleEndian.PutUint64(chdr[16:], 1)
	data := craftELF([]craftSection{
		{name: ".text", typ: elf.SHT_PROGBITS, flags: elf.SHF_ALLOC | elf.SHF_EXECINSTR, addr: 0x100, data: make([]byte, 16)},
		{name: ".symtab", typ: elf.SHT_SYMTAB, flags: elf.SHF_COMPRESSED, link: 3, data: chdr},
		{name: ".strtab", typ: elf.SHT_STRTAB, data: []byte{0}},
	}, nil)
	_, err := Parse(bytes.NewReader(data), "crafted")
	if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "compressed") {
		t.Errorf("Parse: %v, want an error wrapping ErrMalformed about a compressed section", err)
	}
}

// TestTooManySymbols: a symbol table above maxSymbols is refused with a
// clear error rather than read.
func TestTooManySymbols(t *testing.T) {
	old := maxSymbols
	maxSymbols = 100
	t.Cleanup(func() { maxSymbols = old })
	_, err := Parse(bytes.NewReader(craftSymbols(101, 10, 1, "")), "crafted")
	if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "101 symbols") {
		t.Errorf("Parse: %v, want an error wrapping ErrMalformed that says 101 symbols", err)
	}
	if _, err := Parse(bytes.NewReader(craftSymbols(100, 10, 1, "")), "crafted"); err != nil {
		t.Errorf("Parse with 100 symbols: %v", err)
	}
}
