package elfsite

import (
	"bufio"
	"bytes"
	"debug/elf"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/livetrace/livetrace/internal/testtarget"
)

// needTool returns the path of a program the test needs; without it the
// test is skipped, or fails when LIVETRACE_REQUIRE_ALL=1.
func needTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		testtarget.SkipOrFatal(t, "%s is not installed", name)
	}
	return p
}

// objdumpSite is one function that objdump shows starting with site bytes.
type objdumpSite struct {
	name  string // symbol name objdump printed for the function
	site  uint64 // address of the site bytes
	endbr bool
}

var (
	headerRE = regexp.MustCompile(`^([0-9a-f]+) <(.+)>:$`)
	insnRE   = regexp.MustCompile(`^\s*([0-9a-f]+):\t((?:[0-9a-f]{2} )+)\s*\t?`)
)

// objdumpSites disassembles path with objdump, independently of the code
// under test, and returns every function whose first instructions, after an
// optional ENDBR64, are the site bytes want.
func objdumpSites(t *testing.T, path string, want []byte) map[uint64]objdumpSite {
	t.Helper()
	objdump := needTool(t, "objdump")
	out, err := exec.Command(objdump, "-d", "-w", path).Output()
	if err != nil {
		t.Fatalf("objdump -d %s: %v", path, err)
	}
	sites := map[uint64]objdumpSite{}
	var name string
	var start uint64
	var entry []byte
	done := true
	finish := func() {
		if done {
			return
		}
		done = true
		switch {
		case bytes.HasPrefix(entry, want):
			sites[start] = objdumpSite{name: name, site: start}
		case bytes.HasPrefix(entry, testtarget.Endbr64) && bytes.HasPrefix(entry[4:], want):
			sites[start+4] = objdumpSite{name: name, site: start + 4, endbr: true}
		}
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if m := headerRE.FindStringSubmatch(line); m != nil {
			finish()
			start, _ = strconv.ParseUint(m[1], 16, 64)
			name, entry, done = m[2], nil, false
			continue
		}
		if done {
			continue
		}
		m := insnRE.FindStringSubmatch(line)
		if m == nil {
			finish()
			continue
		}
		b, err := hex.DecodeString(strings.ReplaceAll(m[2], " ", ""))
		if err != nil {
			t.Fatalf("objdump line %q: %v", line, err)
		}
		entry = append(entry, b...)
		if len(entry) >= 9 {
			finish()
		}
	}
	finish()
	return sites
}

// fixtureFiles returns the ELF files of a fixture build that hold sites,
// with the form of their sites.
func fixtureFiles(t *testing.T, name string, form testtarget.Form, opts ...testtarget.Option) map[string]testtarget.Form {
	exe := testtarget.Build(t, name, form, opts...)
	if name == testtarget.UseLib {
		return map[string]testtarget.Form{exe: form, testtarget.LibPath(exe): testtarget.LibSiteForm(form)}
	}
	return map[string]testtarget.Form{exe: form}
}

// TestSitesMatchObjdump checks, for every fixture in every form with and
// without -fcf-protection, that Parse finds exactly the functions objdump
// shows starting with the form's site bytes, and names them right.
func TestSitesMatchObjdump(t *testing.T) {
	for _, form := range testtarget.Forms {
		for _, cf := range []bool{false, true} {
			for _, name := range []string{testtarget.Simple, testtarget.UseLib, testtarget.CXX, testtarget.Stress} {
				var opts []testtarget.Option
				label := fmt.Sprintf("%s/%s", form, name)
				if cf {
					opts = append(opts, testtarget.CFProtection())
					label += "/cf"
				}
				if name == testtarget.Stress {
					opts = append(opts, testtarget.Funcs(1000))
				}
				t.Run(label, func(t *testing.T) {
					t.Parallel()
					for path, fileForm := range fixtureFiles(t, name, form, opts...) {
						checkFile(t, path, fileForm, cf)
					}
				})
			}
		}
	}
}

func checkFile(t *testing.T, path string, form testtarget.Form, cf bool) {
	t.Helper()
	spec, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := spec.CheckSites(); err != nil {
		t.Fatal(err)
	}
	want := objdumpSites(t, path, testtarget.SiteBytes(form))
	got := map[uint64]bool{}
	wantForm := FormNop5
	if form == testtarget.GccSled {
		wantForm = FormSled
	}
	for _, st := range spec.Sites {
		got[st.Addr] = true
		w, ok := want[st.Addr]
		if !ok {
			t.Errorf("%s: site %#x (%s, % x) is not a function entry with %s site bytes per objdump", path, st.Addr, spec.SiteName(st), st.Bytes, form)
			continue
		}
		if st.Form != wantForm || !bytes.Equal(st.Bytes[:], testtarget.SiteBytes(form)) {
			t.Errorf("%s: site %#x: form %v bytes % x, want %v", path, st.Addr, st.Form, st.Bytes, wantForm)
		}
		if st.Endbr != w.endbr {
			t.Errorf("%s: site %#x (%s): Endbr = %v, objdump says %v", path, st.Addr, w.name, st.Endbr, w.endbr)
		}
		if string(st.Table) != testtarget.SiteSection(form) {
			t.Errorf("%s: site %#x: table %s, want %s", path, st.Addr, st.Table, testtarget.SiteSection(form))
		}
		var raws []string
		for _, f := range spec.Aliases(st.Func) {
			raws = append(raws, f.Raw)
		}
		if !contains(raws, w.name) {
			t.Errorf("%s: site %#x: symbols %q, objdump names it %q", path, st.Addr, raws, w.name)
		}
	}
	for addr, w := range want {
		if !got[addr] {
			t.Errorf("%s: objdump shows %s at %#x starting with site bytes, Parse found no site", path, w.name, addr)
		}
	}
	if cf {
		endbr := 0
		for _, st := range spec.Sites {
			if st.Endbr {
				endbr++
			}
		}
		if endbr == 0 {
			t.Errorf("%s: built with -fcf-protection but no site follows an ENDBR64", path)
		}
	}
	if len(spec.Sites) < 3 {
		t.Errorf("%s: only %d sites", path, len(spec.Sites))
	}
	if spec.Skipped != 0 || spec.Stripped {
		t.Errorf("%s: Skipped=%d Stripped=%v, want 0, false", path, spec.Skipped, spec.Stripped)
	}
	if want := readelfBuildID(t, path); spec.BuildID != want {
		t.Errorf("%s: BuildID = %q, readelf says %q", path, spec.BuildID, want)
	}
	if !sort.SliceIsSorted(spec.Sites, func(i, j int) bool { return spec.Sites[i].Addr < spec.Sites[j].Addr }) {
		t.Errorf("%s: sites not sorted", path)
	}
}

var buildIDRE = regexp.MustCompile(`Build ID: ([0-9a-f]+)`)

// readelfBuildID returns the build ID readelf -n shows for path, or "".
func readelfBuildID(t *testing.T, path string) string {
	out, err := exec.Command(needTool(t, "readelf"), "-n", path).Output()
	if err != nil {
		t.Fatalf("readelf -n %s: %v", path, err)
	}
	if m := buildIDRE.FindSubmatch(out); m != nil {
		return string(m[1])
	}
	return ""
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func TestStressCount(t *testing.T) {
	exe := testtarget.Build(t, testtarget.Stress, testtarget.ClangNop5, testtarget.Funcs(1000))
	spec, err := Open(exe)
	if err != nil {
		t.Fatal(err)
	}
	n := len(spec.Match("fn_[0-9][0-9][0-9][0-9][0-9]"))
	if n != 1000 {
		t.Errorf("%d sites named fn_NNNNN, want 1000", n)
	}
}

func TestCXXNames(t *testing.T) {
	for _, form := range testtarget.Forms {
		t.Run(string(form), func(t *testing.T) {
			spec, err := Open(testtarget.Build(t, testtarget.CXX, form))
			if err != nil {
				t.Fatal(err)
			}
			names := map[string]bool{}
			for _, st := range spec.Sites {
				names[spec.SiteName(st)] = true
				f := spec.Funcs[st.Func]
				if strings.HasPrefix(f.Raw, "_Z") && (f.Name == f.Raw || strings.Contains(f.Name, "(")) {
					t.Errorf("site %#x: %q demangled to %q", st.Addr, f.Raw, f.Name)
				}
			}
			for _, want := range []string{
				"shapes::operator+", "shapes::Counter::add", "shapes::Counter::value",
				"shapes::scale<int>", "shapes::scale<double>", "shapes::geo::area",
				"shapes::geo::perimeter", "shapes::fail_if", "shapes::guarded",
			} {
				if !names[want] {
					t.Errorf("no site named %q; have %v", want, names)
				}
			}
			// A glob matches the demangled name or the mangled one.
			if got := spec.Match("shapes::geo::*"); len(got) != 2 {
				t.Errorf("Match(shapes::geo::*) = %d sites, want 2", len(got))
			}
			if got := spec.Match("_ZN6shapes3geo4area*"); len(got) != 1 {
				t.Errorf("Match(mangled area) = %d sites, want 1", len(got))
			}
		})
	}
}

func TestDemangle(t *testing.T) {
	for raw, want := range map[string]string{
		"main":                               "main",
		"_ZN6shapes5scaleIiEET_S1_S1_":       "shapes::scale<int>",
		"_ZNK6shapes7Counter5valueEv":        "shapes::Counter::value",
		"_ZL5sleafi.constprop.0":             "sleaf.constprop.0",
		"_ZN3foo3barEv.cold":                 "foo::bar.cold",
		"_Zgarbage":                          "_Zgarbage",
		"_ZNSt6vectorIiSaIiEE9push_backERKi": "std::vector<int, std::allocator<int> >::push_back",
	} {
		if got := Demangle(raw); got != want {
			t.Errorf("Demangle(%q) = %q, want %q", raw, got, want)
		}
	}
}

func TestMatchAndFuncAt(t *testing.T) {
	spec, err := Open(testtarget.Build(t, testtarget.Simple, testtarget.ClangNop5))
	if err != nil {
		t.Fatal(err)
	}
	main := spec.Match("main")
	if len(main) != 1 {
		t.Fatalf("Match(main) = %v, want one site", main)
	}
	f, ok := spec.FuncAt(main[0].Addr)
	if !ok || f.Raw != "main" {
		t.Errorf("FuncAt(main site) = %+v, %v", f, ok)
	}
	if f2, ok := spec.FuncAt(f.Addr + f.Size - 1); !ok || f2 != f {
		t.Errorf("FuncAt(last byte of main) = %+v, %v", f2, ok)
	}
	if _, ok := spec.FuncAt(0); ok {
		t.Error("FuncAt(0) found a function")
	}
	if got, all := spec.Match("*"), spec.Match(); len(got) != len(spec.Sites) || len(all) != len(spec.Sites) {
		t.Errorf("Match(*) = %d, Match() = %d, want %d", len(got), len(all), len(spec.Sites))
	}
	if got := spec.Match("no_such_function_*"); len(got) != 0 {
		t.Errorf("Match(no_such_function_*) = %v", got)
	}
	if got := spec.Match(fmt.Sprintf("0x%x", main[0].Addr)); len(got) != 0 {
		t.Errorf("a named site matched its address: %v", got)
	}
	if err := ValidGlob("[a-"); err == nil {
		t.Error("ValidGlob([a-) = nil")
	}
	if err := ValidGlob("fn_*"); err != nil {
		t.Errorf("ValidGlob(fn_*) = %v", err)
	}
	// An unnamed site is named, and matched, by its address.
	st := Site{Addr: 0x1234, Func: -1}
	if spec.SiteName(st) != "0x1234" || !spec.MatchSite(st, "0x12*") {
		t.Errorf("unnamed site: name %q", spec.SiteName(st))
	}
}

func TestClassify(t *testing.T) {
	for b, want := range map[[5]byte]Form{
		{0x0f, 0x1f, 0x44, 0x00, 0x08}: FormNop5,
		{0x0f, 0x1f, 0x44, 0x00, 0x00}: FormNop5,
		{0x0f, 0x1f, 0x44, 0x00, 0x42}: FormNop5,
		{0x90, 0x90, 0x90, 0x90, 0x90}: FormSled,
		{0x90, 0x90, 0x90, 0x90, 0xc3}: FormUnknown,
		{0xe8, 0x00, 0x00, 0x00, 0x00}: FormUnknown,
		{0xcc, 0x1f, 0x44, 0x00, 0x08}: FormUnknown,
	} {
		if got := Classify(b); got != want {
			t.Errorf("Classify(% x) = %v, want %v", b, got, want)
		}
	}
	if FormNop5.String() != "nop5" || FormSled.String() != "sled" || FormUnknown.String() != "unknown" {
		t.Error("Form.String")
	}
}

// TestZeroedTable checks the relocation path: a copy of a PIE whose site
// table holds zeros in the file, as lld writes it, gives the same sites.
func TestZeroedTable(t *testing.T) {
	for _, form := range []testtarget.Form{testtarget.ClangNop5, testtarget.GccSled} {
		t.Run(string(form), func(t *testing.T) {
			exe := testtarget.Build(t, testtarget.Simple, form)
			want, err := Open(exe)
			if err != nil {
				t.Fatal(err)
			}
			data, err := os.ReadFile(exe)
			if err != nil {
				t.Fatal(err)
			}
			f, err := elf.NewFile(bytes.NewReader(data))
			if err != nil {
				t.Fatal(err)
			}
			sec := f.Section(string(TablePatchable))
			if sec == nil || f.Type != elf.ET_DYN {
				t.Fatalf("%s: no %s, or not a PIE", exe, TablePatchable)
			}
			clear(data[sec.Offset : sec.Offset+sec.Size])
			got, err := Parse(bytes.NewReader(data), exe)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(want.Sites, got.Sites); diff != "" {
				t.Errorf("sites differ after zeroing the table (-file +zeroed):\n%s", diff)
			}
			// The same with R_X86_64_64 against symbol 0 instead of
			// R_X86_64_RELATIVE: the value is the addend too.
			rela := f.Section(".rela.dyn")
			changed := 0
			for off := rela.Offset; off+24 <= rela.Offset+rela.Size; off += 24 {
				r := binary.LittleEndian.Uint64(data[off:])
				if r >= sec.Addr && r < sec.Addr+sec.Size && binary.LittleEndian.Uint64(data[off+8:]) == uint64(elf.R_X86_64_RELATIVE) {
					binary.LittleEndian.PutUint64(data[off+8:], uint64(elf.R_X86_64_64))
					changed++
				}
			}
			if changed != len(want.Sites) {
				t.Fatalf("%d RELATIVE relocations for the table, %d sites", changed, len(want.Sites))
			}
			got, err = Parse(bytes.NewReader(data), exe)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(want.Sites, got.Sites); diff != "" {
				t.Errorf("sites differ with R_X86_64_64 relocations (-file +zeroed):\n%s", diff)
			}
		})
	}
}

// TestLinkers builds a small PIE with lld (which leaves zeros in the table
// and relies on RELA addends) and with GNU ld's packed RELR relocations.
func TestLinkers(t *testing.T) {
	clang := needTool(t, "clang-16")
	src := filepath.Join(t.TempDir(), "t.c")
	code := `__attribute__((noinline)) int a(int x) { return x + 1; }
__attribute__((noinline)) int b(int x) { return a(x) * 2; }
int main(int argc, char **argv) { (void)argv; return b(argc); }
`
	if err := os.WriteFile(src, []byte(code), 0o644); err != nil {
		t.Fatal(err)
	}
	for name, flags := range map[string][]string{
		"lld":     {"-fPIE", "-pie", "--ld-path=" + needTool(t, "ld.lld-16")},
		"lld-so":  {"-fPIC", "-shared", "--ld-path=" + needTool(t, "ld.lld-16")},
		"relr":    {"-fPIE", "-pie", "-Wl,-z,pack-relative-relocs"},
		"exec":    {"-fno-pie", "-no-pie"},
		"nobuild": {"-fPIE", "-pie", "-Wl,--build-id=none"},
	} {
		t.Run(name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), name)
			args := append([]string{"-O2", "-fpatchable-function-entry=5", "-o", out, src}, flags...)
			if b, err := exec.Command(clang, args...).CombinedOutput(); err != nil {
				t.Fatalf("clang %v: %v\n%s", args, err, b)
			}
			checkFile(t, out, testtarget.ClangNop5, false)
		})
	}
}

func TestBadInputs(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	if _, err := Open(filepath.Join(dir, "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	if _, err := Open(write("text", []byte("#!/bin/sh\necho hi\n"))); !errors.Is(err, ErrNotELF) || !strings.Contains(err.Error(), "not an ELF file") {
		t.Errorf("text file: %v", err)
	}
	if _, err := Open(write("empty", nil)); !errors.Is(err, ErrNotELF) {
		t.Errorf("empty file: %v", err)
	}
	if _, err := Open(dir); !errors.Is(err, ErrNotELF) {
		t.Errorf("directory: %v", err)
	}
	if _, err := Open(write("elf32", elf32Header())); !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "only x86-64 ELF files are supported") {
		t.Errorf("32-bit ELF: %v", err)
	}
	if _, err := Open(write("trunc", []byte("\x7fELF\x02\x01\x01"))); !errors.Is(err, ErrNotELF) {
		t.Errorf("truncated header: %v", err)
	}
	// An object file.
	obj := filepath.Join(dir, "t.o")
	if b, err := exec.Command(needTool(t, "gcc"), "-c", "-x", "c", "-o", obj, "/dev/null").CombinedOutput(); err != nil {
		t.Fatalf("gcc -c: %v\n%s", err, b)
	}
	if _, err := Open(obj); !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "this is an object file (ET_REL): link it") {
		t.Errorf("object file: %v", err)
	}
	// A 64-bit header for another machine.
	exe := testtarget.Build(t, testtarget.Simple, testtarget.ClangNop5)
	data, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	arm := bytes.Clone(data)
	binary.LittleEndian.PutUint16(arm[18:], uint16(elf.EM_AARCH64))
	if _, err := Open(write("arm64", arm)); !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "EM_AARCH64") {
		t.Errorf("arm64 ELF: %v", err)
	}
	// Every truncation of a real file is an error or a spec, never a panic.
	for n := 0; n < len(data); n += 1 + n/8 {
		Parse(bytes.NewReader(data[:n]), "cut")
	}
}

// elf32Header returns a minimal ELF32 i386 executable header.
func elf32Header() []byte {
	h := make([]byte, 52)
	copy(h, "\x7fELF\x01\x01\x01")
	binary.LittleEndian.PutUint16(h[16:], uint16(elf.ET_EXEC))
	binary.LittleEndian.PutUint16(h[18:], uint16(elf.EM_386))
	binary.LittleEndian.PutUint32(h[20:], 1)
	binary.LittleEndian.PutUint16(h[40:], 52)
	return h
}

func TestNoSites(t *testing.T) {
	for _, form := range testtarget.Forms {
		t.Run(string(form), func(t *testing.T) {
			exe := testtarget.Build(t, testtarget.Simple, form, testtarget.NoSites())
			spec, err := Open(exe)
			if err != nil {
				t.Fatal(err)
			}
			if len(spec.Sites) != 0 {
				t.Errorf("%d sites in a build without site flags", len(spec.Sites))
			}
			err = spec.CheckSites()
			want := "no patchable sites in " + exe + ": build it with clang -fpatchable-function-entry=5 (see docs/BUILDING.md)"
			if !errors.Is(err, ErrNoSites) || err.Error() != want {
				t.Errorf("CheckSites() = %v, want %q", err, want)
			}
		})
	}
}

// TestCallSites checks that gcc -pg without -mnop-mcount, which leaves
// CALLs to __fentry__ at the sites, gives unknown sites and a clear error.
func TestCallSites(t *testing.T) {
	gcc := needTool(t, "gcc")
	dir := t.TempDir()
	src := filepath.Join(dir, "t.c")
	if err := os.WriteFile(src, []byte("void __fentry__(void) {}\n__attribute__((noinline)) int a(int x) { return x + 1; }\nint main(int c, char **v) { (void)v; return a(c); }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// __fentry__ itself must not call __fentry__.
	out := filepath.Join(dir, "t")
	if b, err := exec.Command(gcc, "-O2", "-pg", "-mfentry", "-mrecord-mcount", "-fno-pie", "-no-pie", "-nostartfiles", "-e", "main", "-o", out, src).CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, b)
	}
	spec, err := Open(out)
	if err != nil {
		t.Fatal(err)
	}
	if len(spec.Sites) == 0 || len(spec.Patchable()) != 0 {
		t.Fatalf("sites %v, want only unknown ones", spec.Sites)
	}
	for _, st := range spec.Sites {
		if st.Form != FormUnknown || st.Bytes[0] != 0xe8 {
			t.Errorf("site %#x: %v % x, want an unknown e8 CALL", st.Addr, st.Form, st.Bytes)
		}
	}
	if err := spec.CheckSites(); !errors.Is(err, ErrNoSites) || !strings.Contains(err.Error(), "-mnop-mcount") {
		t.Errorf("CheckSites() = %v", err)
	}
}

func TestStripped(t *testing.T) {
	strip := needTool(t, "strip")
	for _, form := range testtarget.Forms {
		t.Run(string(form), func(t *testing.T) {
			exe := testtarget.Build(t, testtarget.Simple, form)
			want, err := Open(exe)
			if err != nil {
				t.Fatal(err)
			}
			out := filepath.Join(t.TempDir(), "stripped")
			if b, err := exec.Command(strip, "-o", out, exe).CombinedOutput(); err != nil {
				t.Fatalf("strip: %v\n%s", err, b)
			}
			got, err := Open(out)
			if err != nil {
				t.Fatal(err)
			}
			if !got.Stripped || want.Stripped {
				t.Errorf("Stripped = %v for the stripped copy, %v for the original", got.Stripped, want.Stripped)
			}
			if len(got.Sites) != len(want.Sites) {
				t.Fatalf("%d sites after strip, %d before", len(got.Sites), len(want.Sites))
			}
			for i, st := range got.Sites {
				if st.Addr != want.Sites[i].Addr || st.Form != want.Sites[i].Form {
					t.Errorf("site %d: %#x %v after strip, %#x %v before", i, st.Addr, st.Form, want.Sites[i].Addr, want.Sites[i].Form)
				}
				name := got.SiteName(st)
				if st.Func < 0 && name != fmt.Sprintf("0x%x", st.Addr) {
					t.Errorf("unnamed site %#x is named %q", st.Addr, name)
				}
				if st.Func >= 0 && name != want.SiteName(want.Sites[i]) {
					t.Errorf("site %#x: named %q from .dynsym, %q from .symtab", st.Addr, name, want.SiteName(want.Sites[i]))
				}
			}
			if err := got.CheckSites(); err != nil {
				t.Error(err)
			}
		})
	}
}
