package elfsite

import (
	"bufio"
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/livetrace/livetrace/internal/testtarget"
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

// hostileModuleSrc maps FILE executable, deletes it, and puts in its place
// a FIFO, a symlink to TARGET, or a copy of TARGET; then it says "ready"
// and waits for stdin to close.
const hostileModuleSrc = `
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

int main(int argc, char **argv) {
	if (argc < 3) return 2;
	int fd = open(argv[1], O_RDONLY);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0) { perror("open"); return 1; }
	if (mmap(0, st.st_size, PROT_READ | PROT_EXEC, MAP_PRIVATE, fd, 0) == MAP_FAILED) { perror("mmap"); return 1; }
	close(fd);
	if (unlink(argv[1]) < 0) { perror("unlink"); return 1; }
	if (!strcmp(argv[2], "fifo")) {
		if (mkfifo(argv[1], 0666) < 0) { perror("mkfifo"); return 1; }
	} else if (!strcmp(argv[2], "symlink")) {
		if (symlink(argv[3], argv[1]) < 0) { perror("symlink"); return 1; }
	} else if (!strcmp(argv[2], "file")) {
		int in = open(argv[3], O_RDONLY), out = open(argv[1], O_WRONLY | O_CREAT | O_EXCL, 0644);
		char buf[65536];
		ssize_t n;
		if (in < 0 || out < 0) { perror("copy"); return 1; }
		while ((n = read(in, buf, sizeof buf)) > 0)
			if (write(out, buf, n) != n) { perror("write"); return 1; }
		close(in);
		close(out);
	}
	printf("ready\n");
	fflush(stdout);
	char b[64];
	while (read(0, b, sizeof b) > 0) {}
	return 0;
}
`

// TestHostileModulePath: a target running as nobody maps a library,
// deletes it and puts something else at its path. Without CAP_SYS_ADMIN
// (map_files off) the tracer reads the path inside the target's root, and
// must neither block on a FIFO, nor follow a symlink to a root-only file,
// nor parse another file as the one mapped: the module is skipped with an
// error wrapping ErrModuleChanged, and the rest of the process is read.
// With map_files (root), the mapped file itself is read.
func TestHostileModulePath(t *testing.T) {
	testtarget.RequireRoot(t)
	cc := needTool(t, "cc")
	dir, err := os.MkdirTemp("", "livetrace-hostile")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(dir, "hostile.c")
	exe := filepath.Join(dir, "hostile")
	if err := os.WriteFile(src, []byte(hostileModuleSrc), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(cc, "-O1", "-o", exe, src).CombinedOutput(); err != nil {
		t.Fatalf("cc: %v\n%s", err, out)
	}
	lib := testtarget.LibPath(testtarget.Build(t, testtarget.UseLib, testtarget.ClangNop5))
	// Another ELF file with sites, readable by nobody.
	other := filepath.Join(dir, "other")
	if err := copyTo(testtarget.Build(t, testtarget.Simple, testtarget.ClangNop5), other, 0o644); err != nil {
		t.Fatal(err)
	}
	// A root-only copy of the library, and a directory nobody may write.
	secret := filepath.Join(dir, "secret.so")
	if err := copyTo(lib, secret, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		mode, arg string
	}{
		{"fifo", ""},
		{"symlink", secret},
		{"file", other},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			sub := filepath.Join(dir, tc.mode)
			if err := os.Mkdir(sub, 0o755); err != nil {
				t.Fatal(err)
			}
			victim := filepath.Join(sub, "libvictim.so")
			if err := copyTo(lib, victim, 0o644); err != nil {
				t.Fatal(err)
			}
			for _, p := range []string{sub, victim} {
				if err := os.Chown(p, 65534, 65534); err != nil {
					t.Fatal(err)
				}
			}
			pid := startNobody(t, exe, victim, tc.mode, tc.arg)

			type result struct {
				mods    []*Module
				skipped []error
				err     error
			}
			read := func() result {
				done := make(chan result, 1)
				go func() {
					mods, skipped, err := LiveModulesSkipped(pid)
					done <- result{mods, skipped, err}
				}()
				select {
				case r := <-done:
					return r
				case <-time.After(10 * time.Second):
					t.Fatalf("LiveModules of pid %d blocked for 10 s on the %s at %s", pid, tc.mode, victim)
				}
				return result{}
			}

			useMapFiles = false
			r := read()
			useMapFiles = true
			if r.err != nil {
				t.Fatalf("LiveModules without map_files: %v", r.err)
			}
			if findModule(r.mods, exe) == nil {
				t.Errorf("the target's own executable is missing: %v", moduleNames(r.mods))
			}
			for _, m := range r.mods {
				if strings.Contains(m.Path, "libvictim") {
					t.Errorf("module %s was read from the %s at its path", m.Path, tc.mode)
				}
			}
			var why error
			for _, e := range r.skipped {
				if strings.Contains(e.Error(), "libvictim") {
					why = e
				}
			}
			if !errors.Is(why, ErrModuleChanged) {
				t.Errorf("skipped = %v, want an error about libvictim.so wrapping ErrModuleChanged", r.skipped)
			} else {
				t.Logf("skipped: %v", why)
			}

			// As root, map_files reaches the mapped (deleted) file itself.
			r = read()
			if r.err != nil {
				t.Fatalf("LiveModules: %v", r.err)
			}
			var m *Module
			for _, mm := range r.mods {
				if strings.Contains(mm.Path, "libvictim") {
					m = mm
				}
			}
			if m == nil || len(m.Spec.Sites) == 0 {
				t.Fatalf("with map_files the deleted library was not read: %v (skipped %v)", moduleNames(r.mods), r.skipped)
			}
		})
	}
}

func moduleNames(mods []*Module) []string {
	var out []string
	for _, m := range mods {
		out = append(out, m.Path)
	}
	return out
}

func copyTo(src, dst string, mode os.FileMode) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, data, mode)
}

// startNobody runs exe with args as user nobody and waits for its
// "ready" line; the process is killed at the end of the test.
func startNobody(t *testing.T, exe string, args ...string) int {
	t.Helper()
	cmd := exec.Command(exe, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: &syscall.Credential{Uid: 65534, Gid: 65534},
		Pdeathsig:  syscall.SIGKILL,
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		cmd.Process.Kill()
		cmd.Wait()
	})
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(stdout).ReadString('\n')
		line <- s
		io.Copy(io.Discard, stdout)
	}()
	select {
	case s := <-line:
		if s != "ready\n" {
			t.Fatalf("%s %v: %q, stderr %q", exe, args, s, stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("%s %v: not ready after 10 s", exe, args)
	}
	return cmd.Process.Pid
}

// TestChrootWithoutMapFiles: a program chrooted, in its own mount and pid
// namespaces, onto a tmpfs that only its mount namespace has. Without
// map_files (a tracer with CAP_SYS_PTRACE only), its modules are found
// inside its root (/proc/PID/root), although /proc/PID/maps shows their
// paths with the chroot directory in front, and are the files mapped.
func TestChrootWithoutMapFiles(t *testing.T) {
	testtarget.RequireRoot(t)
	var tools []string
	for _, name := range []string{"unshare", "chroot", "ldd", "sh"} {
		tools = append(tools, needTool(t, name))
	}
	const inside = "/ltchroot/simple"
	exe := testtarget.Build(t, testtarget.Simple, testtarget.ClangNop5)
	stage, root := t.TempDir(), t.TempDir()
	files := []string{exe}
	out, err := exec.Command(tools[2], exe).Output()
	if err != nil {
		t.Fatalf("ldd %s: %v", exe, err)
	}
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		for i, w := range f {
			if strings.HasPrefix(w, "/") && (i == 0 || f[i-1] == "=>") {
				files = append(files, w)
			}
		}
	}
	for i, src := range files {
		dst := src
		if i == 0 {
			dst = inside
		}
		p := filepath.Join(stage, dst)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := copyTo(src, p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	p := testtarget.Start(t, tools[0], "--mount", "--pid", "--fork", "--kill-child", tools[3], "-c",
		`mount -t tmpfs -o mode=0755 livetrace-test "$1" && cp -a "$2"/. "$1"/ && exec "$3" "$1" "$4" loop`,
		"sh", root, stage, tools[1], inside)
	if _, err := p.Expect("ready", 10*time.Second); err != nil {
		t.Fatalf("start the chroot: %v; stderr: %s", err, p.Stderr())
	}
	var pid int
	for deadline := time.Now().Add(10 * time.Second); pid == 0; time.Sleep(10 * time.Millisecond) {
		b, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(p.Pid()), "task", strconv.Itoa(p.Pid()), "children"))
		if f := strings.Fields(string(b)); len(f) == 1 {
			if l, _ := os.Readlink("/proc/" + f[0] + "/exe"); strings.HasSuffix(l, inside) {
				pid, _ = strconv.Atoi(f[0])
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the chrooted program did not start")
		}
	}
	useMapFiles = false
	defer func() { useMapFiles = true }()
	mods, skipped, err := LiveModulesSkipped(pid)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range skipped {
		t.Errorf("skipped: %v", e)
	}
	var m *Module
	for _, mm := range mods {
		t.Logf("module %s: %d sites", mm.Path, len(mm.Spec.Sites))
		if strings.HasSuffix(mm.Path, inside) {
			m = mm
		}
	}
	if m == nil || len(m.Spec.Sites) == 0 {
		t.Fatalf("the chrooted program's sites were not read: %v", moduleNames(mods))
	}
	if _, err := os.Stat(m.Path); err == nil {
		t.Errorf("the host has a file at %s: the test cannot tell how it was read", m.Path)
	}
	live, err := ReadSiteBytes(pid, []uint64{m.Runtime(m.Spec.Sites[0].Addr)})
	if err != nil || live[0] != m.Spec.Sites[0].Bytes {
		t.Errorf("live bytes % x (%v), the file has % x", live, err, m.Spec.Sites[0].Bytes)
	}
}
