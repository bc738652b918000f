package elfsite

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/livetrace/livetrace/internal/testtarget"
)

// debugFixtureSource is a program whose functions are static: a stripped
// copy has none of them in .dynsym, only its debug file names them.
const debugFixtureSource = `
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
static volatile long sink;
__attribute__((noinline, used)) static long static_fn(long x) { sink += x; return sink * 3 + x; }
__attribute__((noinline, used)) static long static_pair(long x) { return static_fn(x) + static_fn(x + 1); }
int main(void) {
	char line[64];
	printf("ready\n");
	fflush(stdout);
	while (fgets(line, sizeof line, stdin)) {
		if (strncmp(line, "run ", 4) == 0) {
			long n = atol(line + 4);
			for (long i = 0; i < n; i++)
				static_pair(i);
			printf("done %ld\n", n);
			fflush(stdout);
		}
	}
	return 0;
}
`

// buildDebugFixture compiles debugFixtureSource with gcc (no tracing
// flags, a build ID), and returns the unstripped program, a stripped copy
// and the debug file objcopy --only-keep-debug made of it.
func buildDebugFixture(t testing.TB) (full, stripped, debug string) {
	t.Helper()
	tools := map[string]string{}
	for _, tool := range []string{"gcc", "objcopy", "strip"} {
		p, err := exec.LookPath(tool)
		if err != nil {
			testtarget.SkipOrFatal(t, "%s is not installed: run `make deps-test` (gcc, binutils)", tool)
		}
		tools[tool] = p
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "debugfix.c")
	if err := os.WriteFile(src, []byte(debugFixtureSource), 0o644); err != nil {
		t.Fatal(err)
	}
	full = filepath.Join(dir, "debugfix")
	stripped = filepath.Join(dir, "debugfix.stripped")
	debug = filepath.Join(dir, "debugfix.debug")
	for _, args := range [][]string{
		{tools["gcc"], "-O0", "-g", "-Wl,--build-id=sha1", "-o", full, src},
		{tools["objcopy"], "--only-keep-debug", full, debug},
		{tools["strip"], "--strip-all", "-o", stripped, full},
	} {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	return full, stripped, debug
}

// installDebugFile copies the debug file into a new debug directory under
// the build ID of bin, and returns the directory and the file's path.
func installDebugFile(t *testing.T, bin string, debug []byte) (dir, path string) {
	t.Helper()
	spec := openNoDebug(t, bin)
	dir = t.TempDir()
	path = DebugFilePath(dir, spec.BuildID)
	if path == "" {
		t.Fatalf("%s: no usable build ID (%q)", bin, spec.BuildID)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if debug != nil {
		if err := os.WriteFile(path, debug, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir, path
}

// openNoDebug opens bin without looking for debug files.
func openNoDebug(t *testing.T, bin string) *Spec {
	t.Helper()
	t.Setenv(DebugDirEnv, "-")
	spec, err := Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	return spec
}

func funcByName(s *Spec, name string) (int, bool) {
	for i, f := range s.Funcs {
		if f.Name == name {
			return i, true
		}
	}
	return -1, false
}

// TestDebugFileSymbols: a stripped program's static functions are found in
// its debug file by build ID, at the addresses the unstripped program
// gives them, and are relocating sites.
func TestDebugFileSymbols(t *testing.T) {
	full, stripped, debug := buildDebugFixture(t)
	want := openNoDebug(t, full)
	bare := openNoDebug(t, stripped)
	if !bare.Stripped || bare.BuildID == "" || bare.BuildID != want.BuildID {
		t.Fatalf("stripped copy: Stripped %v, build ID %q (unstripped %q)", bare.Stripped, bare.BuildID, want.BuildID)
	}
	if _, ok := funcByName(bare, "static_fn"); ok {
		t.Fatal("static_fn is named without the debug file")
	}
	data, err := os.ReadFile(debug)
	if err != nil {
		t.Fatal(err)
	}
	dir, path := installDebugFile(t, stripped, data)
	// The first directory of the list does not have it, the second does.
	t.Setenv(DebugDirEnv, t.TempDir()+":"+dir)
	spec, err := Open(stripped)
	if err != nil {
		t.Fatal(err)
	}
	if spec.SymbolFile != path || spec.SymbolFileErr != nil || spec.Stripped {
		t.Fatalf("SymbolFile %q (want %q), SymbolFileErr %v, Stripped %v", spec.SymbolFile, path, spec.SymbolFileErr, spec.Stripped)
	}
	for _, name := range []string{"static_fn", "static_pair", "main"} {
		i, ok := funcByName(spec, name)
		j, ok2 := funcByName(want, name)
		if !ok || !ok2 {
			t.Fatalf("%s: found %v with the debug file, %v in the unstripped program", name, ok, ok2)
		}
		if spec.Funcs[i].Addr != want.Funcs[j].Addr || spec.Funcs[i].Size != want.Funcs[j].Size || spec.Funcs[i].Global != want.Funcs[j].Global {
			t.Errorf("%s: %+v from the debug file, %+v in the unstripped program", name, spec.Funcs[i], want.Funcs[j])
		}
		st, why, ok := spec.RelocFunc(i)
		if !ok || why != "" || st.Form != FormReloc || st.Addr < spec.Funcs[i].Addr {
			t.Errorf("%s: RelocFunc = %+v, %q, %v: want a relocating site", name, st, why, ok)
		}
	}
	// The default directory is used without the variable.
	t.Setenv(DebugDirEnv, "")
	if got := DebugDirs(); len(got) != 1 || got[0] != DefaultDebugDir {
		t.Errorf("DebugDirs() = %q, want [%s]", got, DefaultDebugDir)
	}
}

// TestDebugFileHostile: a debug file that cannot be used is skipped with a
// reason, and the file's functions come from .dynsym as without one.
func TestDebugFileHostile(t *testing.T) {
	_, stripped, debug := buildDebugFixture(t)
	good, err := os.ReadFile(debug)
	if err != nil {
		t.Fatal(err)
	}
	bare := openNoDebug(t, stripped)
	strippedData, err := os.ReadFile(stripped)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := hex.DecodeString(bare.BuildID)
	otherID := bytes.Clone(good)
	if i := bytes.Index(otherID, id); i < 0 {
		t.Fatal("the build ID is not in the debug file")
	} else {
		otherID[i] ^= 0xff
	}
	note := buildIDNote(id)
	cases := []struct {
		name string
		data []byte
		make func(path string) // instead of data
		want string
	}{
		{name: "garbage", data: bytes.Repeat([]byte{0xa5}, 4096), want: "not an ELF file"},
		{name: "truncated", data: good[:len(good)/3], want: "malformed"},
		{name: "header only", data: good[:64], want: "malformed"},
		{name: "other build", data: otherID, want: "another build"},
		{name: "no symtab", data: strippedData, want: "no .symtab"},
		{name: "32-bit", data: elf32Header(), want: "32-bit"},
		{name: "symtab links nowhere", data: craftELF([]craftSection{
			{name: ".note.gnu.build-id", typ: elf.SHT_NOTE, data: note},
			{name: ".symtab", typ: elf.SHT_SYMTAB, link: 77, data: make([]byte, 48)},
		}, nil), want: "no string table"},
		{name: "symtab odd size", data: craftELF([]craftSection{
			{name: ".note.gnu.build-id", typ: elf.SHT_NOTE, data: note},
			{name: ".symtab", typ: elf.SHT_SYMTAB, link: 3, data: make([]byte, 50)},
			{name: ".strtab", typ: elf.SHT_STRTAB, data: []byte("\x00f\x00")},
		}, nil), want: "not a multiple"},
		{name: "fifo", make: func(p string) {
			if err := syscall.Mkfifo(p, 0o644); err != nil {
				t.Fatal(err)
			}
		}, want: "FIFO"},
		{name: "directory", make: func(p string) {
			if err := os.Mkdir(p, 0o755); err != nil {
				t.Fatal(err)
			}
		}, want: "directory"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir, path := installDebugFile(t, stripped, c.data)
			if c.make != nil {
				c.make(path)
			}
			t.Setenv(DebugDirEnv, dir)
			spec, err := Open(stripped)
			if err != nil {
				t.Fatalf("Open with a bad debug file: %v", err)
			}
			if spec.SymbolFile != "" || !spec.Stripped || spec.SymbolFileErr == nil {
				t.Fatalf("SymbolFile %q, Stripped %v, SymbolFileErr %v: want the debug file skipped with a reason", spec.SymbolFile, spec.Stripped, spec.SymbolFileErr)
			}
			if msg := spec.SymbolFileErr.Error(); !strings.Contains(msg, c.want) || !strings.Contains(msg, path) {
				t.Errorf("SymbolFileErr = %q, want it to name %s and say %q", msg, path, c.want)
			}
			if len(spec.Funcs) != len(bare.Funcs) {
				t.Errorf("%d functions, %d without a debug file", len(spec.Funcs), len(bare.Funcs))
			}
		})
	}
	// No debug file at all is no error.
	t.Setenv(DebugDirEnv, t.TempDir())
	spec, err := Open(stripped)
	if err != nil || spec.SymbolFileErr != nil || spec.SymbolFile != "" {
		t.Errorf("without a debug file: %v, SymbolFileErr %v, SymbolFile %q", err, spec.SymbolFileErr, spec.SymbolFile)
	}
}

// buildIDNote returns an SHT_NOTE section holding the GNU build ID id.
func buildIDNote(id []byte) []byte {
	var b bytes.Buffer
	le := binary.LittleEndian
	binary.Write(&b, le, uint32(4))
	binary.Write(&b, le, uint32(len(id)))
	binary.Write(&b, le, uint32(3)) // NT_GNU_BUILD_ID
	b.WriteString("GNU\x00")
	b.Write(id)
	for b.Len()%4 != 0 {
		b.WriteByte(0)
	}
	return b.Bytes()
}

// TestDebugFileLibc: Debian's libc6-dbg installs the debug file of the
// stock libc.so.6 under /usr/lib/debug/.build-id, and libc's internal
// functions are then named: _int_malloc, a static function, is a
// relocating site.
func TestDebugFileLibc(t *testing.T) {
	libc := "/lib/x86_64-linux-gnu/libc.so.6"
	t.Setenv(DebugDirEnv, "")
	spec, err := Open(libc)
	if err != nil {
		testtarget.SkipOrFatal(t, "open %s: %v", libc, err)
	}
	if spec.SymbolFile == "" {
		testtarget.SkipOrFatal(t, "no debug file for %s (build ID %s) under %s: run `make deps-test`, which installs libc6-dbg (%v)", libc, spec.BuildID, DefaultDebugDir, spec.SymbolFileErr)
	}
	if want := DebugFilePath(DefaultDebugDir, spec.BuildID); spec.SymbolFile != want {
		t.Errorf("SymbolFile %q, want %q", spec.SymbolFile, want)
	}
	for _, name := range []string{"_int_malloc", "malloc", "pthread_kill"} {
		i, ok := funcByName(spec, name)
		if !ok {
			t.Errorf("%s is not among the %d functions of %s", name, len(spec.Funcs), spec.SymbolFile)
			continue
		}
		if st, why, ok := spec.RelocFunc(i); !ok || why != "" || st.Form != FormReloc {
			t.Errorf("%s: RelocFunc = %v, %q: want a relocating site", name, ok, why)
		}
	}
	bare := openNoDebug(t, libc)
	if _, ok := funcByName(bare, "_int_malloc"); ok {
		t.Error("_int_malloc is named without the debug file")
	}
	if len(spec.Funcs) <= len(bare.Funcs) {
		t.Errorf("%d functions with the debug file, %d without", len(spec.Funcs), len(bare.Funcs))
	}
}

// TestDebugFileLdso: with libc6-dbg, the dynamic linker's local functions
// are named; its TLS descriptor functions, which callers enter expecting
// every register but rax kept, are refused with the reason.
func TestDebugFileLdso(t *testing.T) {
	ldso := "/lib64/ld-linux-x86-64.so.2"
	t.Setenv(DebugDirEnv, "")
	spec, err := Open(ldso)
	if err != nil {
		testtarget.SkipOrFatal(t, "open %s: %v", ldso, err)
	}
	if spec.SymbolFile == "" {
		testtarget.SkipOrFatal(t, "no debug file for %s: run `make deps-test`, which installs libc6-dbg (%v)", ldso, spec.SymbolFileErr)
	}
	i, ok := funcByName(spec, "_dl_tlsdesc_return")
	if !ok {
		t.Fatalf("_dl_tlsdesc_return is not among the functions of %s", spec.SymbolFile)
	}
	if _, why, ok := spec.RelocFunc(i); !ok || !strings.Contains(why, "TLS descriptor") {
		t.Errorf("_dl_tlsdesc_return: RelocFunc = %v, %q: want it refused as a TLS descriptor function", ok, why)
	}
}

// TestGraphUnsafeVfork: glibc's vfork returns twice on one stack (child,
// then parent), so graph mode must not hijack its return address; entry
// mode still traces it. It is an exported function: no debug file needed.
func TestGraphUnsafeVfork(t *testing.T) {
	libc := "/lib/x86_64-linux-gnu/libc.so.6"
	spec, err := Open(libc)
	if err != nil {
		testtarget.SkipOrFatal(t, "open %s: %v", libc, err)
	}
	i, ok := funcByName(spec, "vfork")
	if !ok {
		t.Fatalf("vfork is not among the functions of %s", libc)
	}
	st, why, ok := spec.RelocFunc(i)
	if !ok || why != "" {
		t.Fatalf("vfork: RelocFunc = %v, %q: want it traceable in entry mode", ok, why)
	}
	if !strings.Contains(st.GraphUnsafe, "returns twice") {
		t.Errorf("vfork: GraphUnsafe = %q, want it refused in graph mode", st.GraphUnsafe)
	}
}
