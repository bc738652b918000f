package proc

import (
	"errors"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const sampleMaps = `55d0c0a00000-55d0c0a01000 r--p 00000000 fd:01 1048602                    /tmp/x/simple
55d0c0a01000-55d0c0a02000 r-xp 00001000 fd:01 1048602                    /tmp/x/simple
55d0c0a04000-55d0c0a05000 rw-p 00003000 fd:01 1048602                    /tmp/x/simple
55d0c1e5e000-55d0c1e7f000 rw-p 00000000 00:00 0                          [heap]
7f1e2c000000-7f1e2c021000 rw-p 00000000 00:00 0 
7f1e2c400000-7f1e2c428000 r--p 00000000 fd:01 2240011                    /usr/lib/x86_64-linux-gnu/libc.so.6
7f1e2c428000-7f1e2c5bd000 r-xp 00028000 fd:01 2240011                    /usr/lib/x86_64-linux-gnu/libc.so.6
7f1e2c600000-7f1e2c601000 r-xp 00000000 00:1f 77                         /tmp/dir with spaces/lib (deleted)
7ffc3a1b7000-7ffc3a1d8000 rw-p 00000000 00:00 0                          [stack]
7ffc3a1f4000-7ffc3a1f6000 r-xp 00000000 00:00 0                          [vdso]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
`

func TestParseMaps(t *testing.T) {
	got, err := ParseMaps([]byte(sampleMaps))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 11 {
		t.Fatalf("got %d mappings, want 11", len(got))
	}
	want := []Mapping{
		{Start: 0x55d0c0a01000, End: 0x55d0c0a02000, Offset: 0x1000, Perms: "r-xp", Dev: "fd:01", Inode: 1048602, Path: "/tmp/x/simple"},
		{Start: 0x7f1e2c000000, End: 0x7f1e2c021000, Perms: "rw-p", Dev: "00:00"},
		{Start: 0x7f1e2c600000, End: 0x7f1e2c601000, Perms: "r-xp", Dev: "00:1f", Inode: 77, Path: "/tmp/dir with spaces/lib (deleted)"},
		{Start: 0xffffffffff600000, End: 0xffffffffff601000, Perms: "--xp", Dev: "00:00", Path: "[vsyscall]"},
	}
	if diff := cmp.Diff(want, []Mapping{got[1], got[4], got[7], got[10]}); diff != "" {
		t.Errorf("mappings differ (-want +got):\n%s", diff)
	}
	checks := []struct {
		m                   Mapping
		exec, file, deleted bool
	}{
		{got[0], false, true, false},
		{got[1], true, true, false},
		{got[3], false, false, false},
		{got[7], true, true, true},
		{got[9], true, false, false},
	}
	for _, c := range checks {
		if c.m.Exec() != c.exec || c.m.FileBacked() != c.file || c.m.Deleted() != c.deleted {
			t.Errorf("%+v: Exec, FileBacked, Deleted = %v %v %v, want %v %v %v", c.m,
				c.m.Exec(), c.m.FileBacked(), c.m.Deleted(), c.exec, c.file, c.deleted)
		}
	}
}

func TestParseMapsBad(t *testing.T) {
	for _, in := range []string{
		"garbage",
		"1000 r-xp 0 00:00 0",
		"zz-1000 r-xp 0 00:00 0",
		"1000-zz r-xp 0 00:00 0",
		"2000-1000 r-xp 0 00:00 0",
		"1000-2000 r-x 0 00:00 0",
		"1000-2000 r-xp q 00:00 0",
		"1000-2000 r-xp 0 0000 0",
		"1000-2000 r-xp 0 00:00 x",
		"1000-2000 r-xp 0 00:00",
		"10000000000000000-10000000000000001 r-xp 0 00:00 0",
		"1000-2000 r-xp 0 00:00 0 /" + strings.Repeat("a", maxMapsLineLen),
	} {
		if m, err := ParseMaps([]byte(in)); err == nil {
			t.Errorf("ParseMaps(%.60q) = %+v, want an error", in, m)
		}
	}
	if m, err := ParseMaps([]byte("\n\n")); err != nil || len(m) != 0 {
		t.Errorf("ParseMaps(blank lines) = %v, %v; want nothing", m, err)
	}
}

func FuzzParseMaps(f *testing.F) {
	f.Add([]byte(sampleMaps))
	f.Add([]byte("0-0 ---- 0 0:0 0"))
	f.Add([]byte("1-2 rwxp ffffffffffffffff a:b 18446744073709551615 /x\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		maps, err := ParseMaps(data)
		if err != nil {
			return
		}
		for _, m := range maps {
			if m.End < m.Start || len(m.Perms) != 4 {
				t.Errorf("bad mapping accepted: %+v", m)
			}
			_, _, _ = m.Exec(), m.FileBacked(), m.Deleted()
		}
	})
}

func TestReadMapsSelf(t *testing.T) {
	maps, err := ReadMaps(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, m := range maps {
		if m.Path == exe && m.Exec() {
			found = true
		}
	}
	if !found {
		t.Errorf("no executable mapping of %s in our own maps", exe)
	}
}

func TestReadMapsErrors(t *testing.T) {
	// PIDs above pid_max (at most 2^22) never exist.
	_, err := ReadMaps(1 << 30)
	if !errors.Is(err, ErrNoProcess) || err.Error() != "no process with pid 1073741824" {
		t.Errorf("ReadMaps(missing pid) = %v, want \"no process with pid 1073741824\"", err)
	}
	if _, err := ReadMaps(-1); !errors.Is(err, ErrNoProcess) {
		t.Errorf("ReadMaps(-1) = %v, want ErrNoProcess", err)
	}
	// Pid 2 is kthreadd, unless we run in a pid namespace.
	if comm, _ := os.ReadFile("/proc/2/comm"); string(comm) != "kthreadd\n" {
		t.Log("pid 2 is not kthreadd here (pid namespace?): kernel thread case not checked")
		return
	}
	_, err = ReadMaps(2)
	if !errors.Is(err, ErrKernelThread) || err.Error() != "pid 2 is a kernel thread: it has no user-space code to trace" {
		t.Errorf("ReadMaps(2) = %v, want the kernel thread error", err)
	}
}

func TestProcError(t *testing.T) {
	err := ProcError(42, &os.PathError{Op: "open", Path: "/proc/42/mem", Err: syscall.EACCES})
	if !errors.Is(err, ErrPermission) || !strings.Contains(err.Error(), "CAP_SYS_PTRACE") || !strings.Contains(err.Error(), "ptrace_scope") {
		t.Errorf("ProcError(EACCES) = %v", err)
	}
	if err := ProcError(42, syscall.ESRCH); !errors.Is(err, ErrNoProcess) {
		t.Errorf("ProcError(ESRCH) = %v", err)
	}
	if err := ProcError(42, syscall.EIO); !errors.Is(err, syscall.EIO) {
		t.Errorf("ProcError(EIO) = %v, want it wrapped", err)
	}
}

func TestParseStat(t *testing.T) {
	state, flags, ok := parseStat([]byte("2 (kthreadd) S 0 0 0 0 -1 2129984 0 0"))
	if !ok || state != 'S' || flags&pfKthread == 0 {
		t.Errorf("parseStat(kthreadd) = %c %#x %v", state, flags, ok)
	}
	state, flags, ok = parseStat([]byte("77 (a) b) Z) Z 1 77 77 0 -1 4194560 0"))
	if !ok || state != 'Z' || flags&pfKthread != 0 {
		t.Errorf("parseStat(odd comm) = %c %#x %v", state, flags, ok)
	}
	for _, bad := range []string{"", "1 (x", "1 (x) S 1", "1 (x) S 1 2 3 4 5 q"} {
		if _, _, ok := parseStat([]byte(bad)); ok {
			t.Errorf("parseStat(%q) ok, want failure", bad)
		}
	}
}

func TestShadowStackStatus(t *testing.T) {
	for _, tc := range []struct {
		status string
		want   bool
	}{
		{"Name:\tx\nSigBlk:\t0\n", false}, // a kernel without user shadow stacks
		{"Name:\tx\nx86_Thread_features:\t\nx86_Thread_features_locked:\tshstk \n", false},
		{"Name:\tx\nx86_Thread_features:\tshstk \nx86_Thread_features_locked:\tshstk \n", true},
		{"x86_Thread_features:\twrss shstk \n", true},
		{"x86_Thread_features:\twrss \n", false},
		{"x86_Thread_features:\tshstkx \n", false},
	} {
		if got := hasShadowStack([]byte(tc.status)); got != tc.want {
			t.Errorf("hasShadowStack(%q) = %v, want %v", tc.status, got, tc.want)
		}
	}
	if ts, err := ReadTrapStatus(os.Getpid()); err != nil || ts.ShadowStack {
		t.Errorf("ReadTrapStatus(self) = %+v, %v; want no shadow stack (Go runs none)", ts, err)
	}
}
