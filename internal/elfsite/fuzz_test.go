package elfsite

import (
	"bytes"
	"debug/elf"
	"os"
	"sort"
	"testing"

	"github.com/livetrace/livetrace/internal/testtarget"
)

// The memory budget of one Parse in FuzzParse: a base plus a multiple of
// the input's size (a Func costs about 60 bytes per 24-byte symbol, a Site
// about 50 per 8-byte table entry, plus the demangled names).
const (
	fuzzAllocBase    = 48 << 20
	fuzzAllocPerByte = 16
)

// FuzzParse feeds Parse arbitrary bytes. Panics are not recovered here, so
// that a crash in debug/elf or in our code fails the fuzz run. The corpus in
// testdata/fuzz/FuzzParse holds small fixture binaries; more seeds are the
// fixtures built at run time.
func FuzzParse(f *testing.F) {
	recoverPanics = false
	f.Cleanup(func() { recoverPanics = true })
	// A fuzzed file's build ID must not pick a debug file of this machine.
	f.Setenv(DebugDirEnv, "-")
	for _, form := range testtarget.Forms {
		for _, path := range []string{
			testtarget.Build(f, testtarget.Simple, form),
			testtarget.LibPath(testtarget.Build(f, testtarget.UseLib, form)),
		} {
			data, err := os.ReadFile(path)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(data)
		}
	}
	f.Add(elf32Header())
	f.Fuzz(func(t *testing.T, data []byte) {
		// Memory budget: a hostile file must not make Parse allocate much
		// more than its own size (see the limits in elfsite.go).
		var spec *Spec
		var err error
		alloc := allocDuring(func() { spec, err = Parse(bytes.NewReader(data), "fuzz") })
		if budget := uint64(fuzzAllocBase + fuzzAllocPerByte*len(data)); alloc > budget {
			t.Fatalf("Parse allocated %d bytes for a %d-byte input, budget %d", alloc, len(data), budget)
		}
		if err != nil {
			return
		}
		if !sort.SliceIsSorted(spec.Sites, func(i, j int) bool { return spec.Sites[i].Addr < spec.Sites[j].Addr }) {
			t.Error("sites not sorted")
		}
		for i, st := range spec.Sites {
			if i > 0 && spec.Sites[i-1].Addr == st.Addr {
				t.Errorf("duplicate site %#x", st.Addr)
			}
			if st.Func < -1 || st.Func >= len(spec.Funcs) {
				t.Fatalf("site %#x: Func %d out of range", st.Addr, st.Func)
			}
			if st.Form != Classify(st.Bytes) {
				t.Errorf("site %#x: form %v for % x", st.Addr, st.Form, st.Bytes)
			}
			spec.SiteName(st)
			spec.FuncAt(st.Addr)
		}
		spec.Match("*", "[")
		spec.CheckSites()
		sites, refused := spec.RelocSites()
		for _, st := range sites {
			if st.Form != FormReloc || st.Plan == nil || st.Plan.Entry != st.Addr || st.Func < 0 || st.Func >= len(spec.Funcs) {
				t.Fatalf("bad relocating site %+v", st)
			}
		}
		for _, r := range refused {
			if r.Reason == "" || r.Func < 0 || r.Func >= len(spec.Funcs) {
				t.Fatalf("bad refusal %+v", r)
			}
		}
	})
}

// FuzzDebugFile feeds the reader of separate debug files arbitrary bytes
// (the seeds: a debug file objcopy made, and crafted files):
// no panic, bounded memory, and symbols sorted by address.
func FuzzDebugFile(f *testing.F) {
	recoverPanics = false
	f.Cleanup(func() { recoverPanics = true })
	_, _, debug := buildDebugFixture(f)
	data, err := os.ReadFile(debug)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(data)
	f.Add(elf32Header())
	f.Add(craftELF([]craftSection{
		{name: ".note.gnu.build-id", typ: elf.SHT_NOTE, data: buildIDNote([]byte{1, 2, 3, 4})},
		{name: ".symtab", typ: elf.SHT_SYMTAB, link: 3, data: make([]byte, 48)},
		{name: ".strtab", typ: elf.SHT_STRTAB, data: []byte("\x00f\x00")},
	}, nil))
	f.Fuzz(func(t *testing.T, data []byte) {
		var funcs []Func
		alloc := allocDuring(func() { funcs, _ = parseDebugFile(bytes.NewReader(data), "fuzz", "", elf.ET_DYN) })
		if budget := uint64(fuzzAllocBase + fuzzAllocPerByte*len(data)); alloc > budget {
			t.Fatalf("parseDebugFile allocated %d bytes for a %d-byte input, budget %d", alloc, len(data), budget)
		}
		if !sort.SliceIsSorted(funcs, func(i, j int) bool { return funcs[i].Addr < funcs[j].Addr }) {
			t.Error("functions not sorted")
		}
	})
}
