package elfsite

import (
	"debug/elf"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/livetrace/livetrace/internal/proc"
	"github.com/livetrace/livetrace/internal/testtarget"
)

// startReady starts a fixture executable and waits until it is running.
func startReady(t *testing.T, exe string, args ...string) *testtarget.Process {
	t.Helper()
	p := testtarget.Start(t, exe, args...)
	if _, err := p.Expect("ready", 10*time.Second); err != nil {
		t.Fatalf("start %s: %v", exe, err)
	}
	return p
}

func TestLiveModules(t *testing.T) {
	testtarget.RequireRoot(t)
	for _, form := range testtarget.Forms {
		for _, name := range []string{testtarget.Simple, testtarget.UseLib} {
			t.Run(string(form)+"/"+name, func(t *testing.T) {
				exe := testtarget.Build(t, name, form)
				var args []string
				if name == testtarget.Simple {
					args = []string{"loop"}
				}
				p := startReady(t, exe, args...)
				defer p.Kill()
				files := []string{exe}
				if name == testtarget.UseLib {
					files = append(files, testtarget.LibPath(exe))
				}
				mods, err := LiveModules(p.Pid())
				if err != nil {
					t.Fatal(err)
				}
				for _, f := range files {
					checkModule(t, p.Pid(), findModule(mods, f), f)
				}
				for _, m := range mods {
					if strings.Contains(m.Path, "[vdso]") {
						t.Errorf("the vDSO is listed: %+v", m)
					}
				}
			})
		}
	}
}

func findModule(mods []*Module, path string) *Module {
	want, err := filepath.EvalSymlinks(path)
	if err != nil {
		return nil
	}
	for _, m := range mods {
		if m.Path == want || m.Path == path {
			return m
		}
	}
	return nil
}

// checkModule checks that the module of file path in process pid has the
// file's sites, and that each live site holds the file's bytes at its
// link-time address plus the module's bias.
func checkModule(t *testing.T, pid int, m *Module, path string) {
	t.Helper()
	if m == nil {
		t.Fatalf("no module for %s in pid %d", path, pid)
	}
	file, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Spec.Sites) == 0 || len(m.Spec.Sites) != len(file.Sites) {
		t.Fatalf("%s: %d live sites, %d in the file", path, len(m.Spec.Sites), len(file.Sites))
	}
	if m.Spec.Type != file.Type || (file.Type == elf.ET_EXEC && m.Bias != 0) || m.Bias%4096 != 0 {
		t.Errorf("%s: type %v bias %#x", path, m.Spec.Type, m.Bias)
	}
	addrs := make([]uint64, len(m.Spec.Sites))
	for i, st := range m.Spec.Sites {
		if st.Addr != file.Sites[i].Addr {
			t.Errorf("%s: site %d at %#x, %#x in the file", path, i, st.Addr, file.Sites[i].Addr)
		}
		addrs[i] = m.Runtime(st.Addr)
		if !inExecMapping(m, addrs[i]) {
			t.Errorf("%s: site %#x at runtime %#x is outside the module's executable mappings", path, st.Addr, addrs[i])
		}
	}
	live, err := ReadSiteBytes(pid, addrs)
	if err != nil {
		t.Fatal(err)
	}
	for i, b := range live {
		if b != file.Sites[i].Bytes || ClassifyLive(b) != StateNop {
			t.Errorf("%s: site %#x (runtime %#x): live % x (%v), file % x", path, file.Sites[i].Addr, addrs[i], b, ClassifyLive(b), file.Sites[i].Bytes)
		}
	}
}

func inExecMapping(m *Module, addr uint64) bool {
	for _, mp := range m.Mappings {
		if mp.Exec() && addr >= mp.Start && addr+5 <= mp.End {
			return true
		}
	}
	return false
}

// TestLiveDeleted checks that a module whose file was deleted after it was
// mapped is still read, through /proc/PID/map_files.
func TestLiveDeleted(t *testing.T) {
	testtarget.RequireRoot(t)
	exe := testtarget.Build(t, testtarget.Simple, testtarget.ClangNop5)
	data, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	cp := filepath.Join(t.TempDir(), "deleted-simple")
	if err := os.WriteFile(cp, data, 0o755); err != nil {
		t.Fatal(err)
	}
	p := startReady(t, cp, "loop")
	defer p.Kill()
	if err := os.Remove(cp); err != nil {
		t.Fatal(err)
	}
	mods, err := LiveModules(p.Pid())
	if err != nil {
		t.Fatal(err)
	}
	m := findModule(mods, cp)
	if m == nil {
		for _, mm := range mods {
			if strings.HasPrefix(mm.Path, cp) {
				m = mm
			}
		}
	}
	if m == nil || !strings.HasSuffix(m.Path, " (deleted)") || m.Name() != "deleted-simple" {
		t.Fatalf("deleted module not found: %v", mods)
	}
	addrs := []uint64{m.Runtime(m.Spec.Sites[0].Addr)}
	live, err := ReadSiteBytes(p.Pid(), addrs)
	if err != nil || live[0] != m.Spec.Sites[0].Bytes {
		t.Errorf("ReadSiteBytes = % x, %v; want % x", live, err, m.Spec.Sites[0].Bytes)
	}
}

func TestLiveErrors(t *testing.T) {
	if _, err := LiveModules(1 << 30); !errors.Is(err, proc.ErrNoProcess) || err.Error() != "no process with pid 1073741824" {
		t.Errorf("LiveModules(missing) = %v", err)
	}
	if _, err := ReadSiteBytes(1<<30, []uint64{0x1000}); !errors.Is(err, proc.ErrNoProcess) {
		t.Errorf("ReadSiteBytes(missing) = %v", err)
	}
	// Pid 2 is kthreadd, unless we run in a pid namespace.
	if comm, _ := os.ReadFile("/proc/2/comm"); string(comm) == "kthreadd\n" {
		if _, err := LiveModules(2); !errors.Is(err, proc.ErrKernelThread) {
			t.Errorf("LiveModules(2) = %v, want a kernel thread error", err)
		}
	} else {
		t.Log("pid 2 is not kthreadd here (pid namespace?): kernel thread case not checked")
	}
	testtarget.RequireRoot(t)
	// An unmapped address is an error, not zeros.
	if _, err := ReadSiteBytes(os.Getpid(), []uint64{0x1000}); err == nil {
		t.Error("ReadSiteBytes(unmapped) = nil error")
	}
}

// TestReadSiteBytesSelf checks coalescing and ordering against our own
// memory, which we know.
func TestReadSiteBytesSelf(t *testing.T) {
	testtarget.RequireRoot(t)
	buf := make([]byte, 3*4096)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	base := uint64(uintptr(unsafe.Pointer(&buf[0])))
	offs := []uint64{9000, 0, 4, 4093, 12000, 100, 8192}
	addrs := make([]uint64, len(offs))
	for i, o := range offs {
		addrs[i] = base + o
	}
	got, err := ReadSiteBytes(os.Getpid(), addrs)
	if err != nil {
		t.Fatal(err)
	}
	for i, o := range offs {
		if want := [5]byte(buf[o : o+5]); got[i] != want {
			t.Errorf("offset %d: % x, want % x", o, got[i], want)
		}
	}
	runtime.KeepAlive(buf)
}

func TestClassifyLive(t *testing.T) {
	for b, want := range map[[5]byte]State{
		{0x0f, 0x1f, 0x44, 0x00, 0x08}: StateNop,
		{0x90, 0x90, 0x90, 0x90, 0x90}: StateNop,
		{0xe8, 0x12, 0x34, 0x56, 0x78}: StateCall,
		{0xcc, 0x1f, 0x44, 0x00, 0x08}: StateInt3,
		{0xcc, 0x12, 0x34, 0x56, 0x78}: StateInt3,
		{0x55, 0x48, 0x89, 0xe5, 0x90}: StateUnknown,
	} {
		if got := ClassifyLive(b); got != want {
			t.Errorf("ClassifyLive(% x) = %v, want %v", b, got, want)
		}
	}
}

func TestGroupMappings(t *testing.T) {
	maps, err := proc.ParseMaps([]byte(`1000-2000 r--p 00000000 fd:01 7 /a
2000-3000 r-xp 00001000 fd:01 7 /a
3000-4000 rw-p 00000000 00:00 0
4000-5000 r-xp 00000000 00:00 0 [vdso]
5000-6000 r--p 00000000 fd:01 7 /a
6000-7000 r-xp 00001000 fd:01 7 /a
7000-8000 r--p 00000000 fd:01 9 /data
`))
	if err != nil {
		t.Fatal(err)
	}
	g := groupMappings(maps)
	if len(g) != 3 || len(g[0]) != 2 || len(g[1]) != 2 || g[1][0].Start != 0x5000 || g[2][0].Path != "/data" {
		t.Errorf("groups %+v", g)
	}
	if !hasExec(g[0]) || hasExec(g[2]) {
		t.Error("hasExec")
	}
}

func TestComputeBias(t *testing.T) {
	dyn := &Spec{Type: elf.ET_DYN, Loads: []Load{
		{Vaddr: 0, Offset: 0, Filesz: 0x800},
		{Vaddr: 0x1000, Offset: 0x1000, Filesz: 0x2000, Flags: elf.PF_X},
	}}
	for _, c := range []struct {
		spec *Spec
		maps []proc.Mapping
		want uint64
		ok   bool
	}{
		{dyn, []proc.Mapping{{Start: 0x7f0000001000, Offset: 0x1000}, {Start: 0x7f0000000000, Offset: 0}}, 0x7f0000000000, true},
		// Only the text segment mapped.
		{dyn, []proc.Mapping{{Start: 0x7f0000005000, Offset: 0x1000}}, 0x7f0000004000, true},
		// Link-time base 0x200000, like a prelinked library.
		{&Spec{Type: elf.ET_DYN, Loads: []Load{{Vaddr: 0x200000, Offset: 0, Filesz: 0x1000}}}, []proc.Mapping{{Start: 0x7f0000000000}}, 0x7f0000000000 - 0x200000, true},
		{dyn, []proc.Mapping{{Start: 0x7f0000000000, Offset: 0x9000}}, 0, false},
		{&Spec{Type: elf.ET_EXEC}, []proc.Mapping{{Start: 0x400000}}, 0, true},
	} {
		got, err := computeBias(c.spec, c.maps)
		if (err == nil) != c.ok || got != c.want {
			t.Errorf("computeBias(%+v, %+v) = %#x, %v; want %#x, ok=%v", c.spec.Loads, c.maps, got, err, c.want, c.ok)
		}
	}
}

// TestLiveSharedCode: a library whose code this process maps shared
// (MAP_SHARED, PROT_EXEC) is read for its symbols only, and each of its
// functions says why it cannot be traced: a write through /proc/PID/mem
// would go to the file, and the kernel refuses it (the tracer used to fail
// with "input/output error" halfway through its injection).
func TestLiveSharedCode(t *testing.T) {
	testtarget.RequireRoot(t)
	lib := testtarget.LibPath(testtarget.Build(t, testtarget.UseLib, testtarget.ClangNop5))
	f, err := os.Open(lib)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	b, err := unix.Mmap(int(f.Fd()), 0, int(fi.Size()), unix.PROT_READ|unix.PROT_EXEC, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(b)
	mods, err := LiveModules(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	m := findModule(mods, lib)
	if m == nil {
		t.Fatalf("%s is not listed", lib)
	}
	if m.Spec.Refused == "" || len(m.Spec.Patchable()) != 0 {
		t.Fatalf("refused %q, %d patchable sites; want a reason and none", m.Spec.Refused, len(m.Spec.Patchable()))
	}
	all, refused := m.Spec.RelocSites()
	named := 0
	for _, r := range refused {
		if r.Reason != m.Spec.Refused {
			t.Errorf("%s refused for %q", m.Spec.Funcs[r.Func].Name, r.Reason)
		}
		if strings.HasPrefix(m.Spec.Funcs[r.Func].Name, "lib_") {
			named++
		}
	}
	if len(all) != 0 || named == 0 {
		t.Errorf("%d relocating sites, %d lib_ functions refused; want none and some", len(all), named)
	}
	// The same file, parsed for another process (or mapped privately),
	// is not refused: the reason is the mapping's, not the file's.
	spec, err := Open(lib)
	if err != nil {
		t.Fatal(err)
	}
	if spec.Refused != "" || len(spec.Patchable()) == 0 {
		t.Errorf("the file itself: refused %q, %d patchable sites", spec.Refused, len(spec.Patchable()))
	}
}
