package session

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/livetrace/livetrace/internal/elfsite"
	"github.com/livetrace/livetrace/internal/testtarget"
	"github.com/livetrace/livetrace/internal/tracefile"
)

// containerExe is where the workload sits inside the container's root.
const containerExe = "/ltcontainer/uselib"

// TestContainer traces, from the host and by its host pid, a workload that
// runs in its own mount and pid namespaces, chrooted into a root copied
// onto a tmpfs mounted in its mount namespace only: the program, its shared
// libraries and the loader. The host sees an empty directory where that
// root is, so a module opened by the path string of /proc/PID/maps in the
// tracer's own namespace would not be found. The modules must be read
// through /proc/PID (map_files or root), and be the very files mapped
// (device and inode); counts must be exact, and the recording's pid and
// thread ids must be host ids.
func TestContainer(t *testing.T) {
	testtarget.RequireRoot(t)
	var tools []string
	for _, name := range []string{"unshare", "chroot", "ldd", "sh"} {
		p, err := exec.LookPath(name)
		if err != nil {
			testtarget.SkipOrFatal(t, "%s is not installed", name)
		}
		tools = append(tools, p)
	}
	if _, err := os.Stat(containerExe); err == nil {
		t.Fatalf("%s exists on the host: the test needs a path only the container has", containerExe)
	}
	exe := testtarget.Build(t, testtarget.UseLib, testtarget.ClangNop5)
	stage, root := t.TempDir(), t.TempDir()
	copyInto(t, stage, exe, containerExe)
	// The library is found through the executable's rpath, an absolute
	// path: it keeps it inside the root; so do the loader and libc.
	out, err := exec.Command(tools[2], exe).Output()
	if err != nil {
		t.Fatalf("ldd %s: %v", exe, err)
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		for i, w := range f {
			if strings.HasPrefix(w, "/") && (i == 0 || f[i-1] == "=>") {
				copyInto(t, stage, w, w)
			}
		}
	}

	tp := testtarget.Start(t, tools[0], "--mount", "--pid", "--fork", "--kill-child", tools[3], "-c",
		`mount -t tmpfs -o mode=0755 livetrace-test "$1" && cp -a "$2"/. "$1"/ && exec "$3" "$1" "$4" -t 4`,
		"sh", root, stage, tools[1], containerExe)
	if _, err := tp.Expect("ready", 10*time.Second); err != nil {
		t.Fatalf("start the container: %v; stderr: %s", err, tp.Stderr())
	}
	pid := containerChild(t, tp.Pid())
	nspid := nsPids(t, pid, pid)
	if len(nspid) != 2 || nspid[1] != 1 {
		t.Fatalf("pid %d: NSpid %v, want it to be pid 1 of a pid namespace", pid, nspid)
	}
	t.Logf("workload: host pid %d, pid %d in its namespace", pid, nspid[1])

	// Every module is the file mapped: compare what OpenMappedFile opens
	// with the file in the container's root, which is what it mapped.
	if ents, _ := os.ReadDir(root); len(ents) != 0 {
		t.Fatalf("the host sees the container's files in %s", root)
	}
	mods, skipped, err := elfsite.LiveModulesSkipped(pid)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range skipped {
		t.Errorf("module skipped: %v", e)
	}
	var sawExe, sawLib bool
	for _, m := range mods {
		sawExe = sawExe || strings.HasSuffix(m.Path, containerExe)
		sawLib = sawLib || filepath.Base(m.Path) == testtarget.LibName && len(m.Spec.Sites) > 0
		f, err := elfsite.OpenMappedFile(pid, m.Mappings[0])
		if err != nil {
			t.Errorf("open module %s: %v", m.Path, err)
			continue
		}
		got, err := f.Stat()
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(m.Path); err == nil {
			t.Errorf("module %s: the host has a file at that path", m.Path)
		}
		inRoot := strings.TrimPrefix(m.Path, root)
		want, err := os.Stat(filepath.Join("/proc", strconv.Itoa(pid), "root", inRoot))
		if err != nil {
			t.Fatalf("module %s is not in the container's root: %v", m.Path, err)
		}
		if !os.SameFile(got, want) {
			t.Errorf("module %s: opened inode %d, the container mapped %d", m.Path, got.Sys().(*syscall.Stat_t).Ino, want.Sys().(*syscall.Stat_t).Ino)
		}
	}
	if !sawExe || !sawLib {
		t.Fatalf("modules %v: want %s and %s with sites", moduleNames(mods), containerExe, testtarget.LibName)
	}

	workloadRun(t, tp, 1)
	spawn(t, tp, 3)
	rec := filepath.Join(t.TempDir(), "rec.data")
	s, err := Start(pid, Options{Funcs: []string{"work_*", "lib_*"}, Output: rec})
	if err != nil {
		t.Fatal(err)
	}
	tids := map[uint32]int{} // host tid -> tid in the namespace
	entries, err := os.ReadDir(filepath.Join("/proc", strconv.Itoa(pid), "task"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		tid, _ := strconv.Atoi(e.Name())
		if ns := nsPids(t, pid, tid); len(ns) == 2 {
			tids[uint32(tid)] = ns[1]
		}
	}
	// Threads that start and exit while traced: their agent slot is
	// retired at their exit, found by their namespace tid.
	want := spawn(t, tp, 3)
	for fn, n := range workloadRun(t, tp, 50) {
		want[fn] += n
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	alive(t, tp)
	r, err := tracefile.Read(rec)
	check(t, err)
	got := countEntries(r)
	for fn, n := range want {
		if got[fn] != n {
			t.Errorf("%s: recorded %d calls, the program counted %d", fn, got[fn], n)
		}
	}
	if r.Lost != 0 {
		t.Errorf("%d events lost", r.Lost)
	}
	if r.PID != pid {
		t.Errorf("recording pid %d, want the host pid %d", r.PID, pid)
	}
	if len(r.Threads) != 7 {
		t.Errorf("%d threads recorded, want the 4 workers and the 3 spawned: %+v", len(r.Threads), r.Threads)
	}
	for _, th := range r.Threads {
		// The spawned threads are gone: their host tids are not known
		// here, but a namespace tid (a small number) would be wrong.
		if th.TID <= 64 {
			t.Errorf("thread %d (%q) of the recording has a tid of the container's namespace", th.TID, th.Name)
		}
		if ns, ok := tids[th.TID]; ok {
			t.Logf("thread %d (%q): tid %d in the namespace", th.TID, th.Name, ns)
		} else {
			t.Logf("thread %d (%q): exited", th.TID, th.Name)
		}
	}
	workers := 0
	for _, th := range r.Threads {
		if _, ok := tids[th.TID]; ok {
			workers++
		}
	}
	if workers != 4 {
		t.Errorf("%d of the recorded threads are live host threads of pid %d, want the 4 workers (host tid -> namespace tid: %v)", workers, pid, tids)
	}
}

// copyInto copies the host file src (following symlinks) to path dst
// inside root.
func copyInto(t *testing.T, root, src, dst string) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(root, dst)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o755); err != nil {
		t.Fatal(err)
	}
}

// containerChild returns the only child of process pid (the process that
// unshare --fork started), waiting for it to exec.
func containerChild(t *testing.T, pid int) int {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "task", strconv.Itoa(pid), "children"))
		if f := strings.Fields(string(b)); len(f) == 1 {
			child, _ := strconv.Atoi(f[0])
			if exe, _ := os.Readlink(filepath.Join("/proc", f[0], "exe")); strings.HasSuffix(exe, containerExe) {
				return child
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no workload child of unshare (pid %d)", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// nsPids returns the NSpid line of thread tid of process pid: its id in
// each pid namespace, the host's first.
func nsPids(t *testing.T, pid, tid int) []int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "task", strconv.Itoa(tid), "status"))
	if err != nil {
		return nil
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "NSpid:"); ok {
			var out []int
			for _, f := range strings.Fields(rest) {
				n, _ := strconv.Atoi(f)
				out = append(out, n)
			}
			return out
		}
	}
	return nil
}

func moduleNames(mods []*elfsite.Module) []string {
	var out []string
	for _, m := range mods {
		out = append(out, m.Path)
	}
	return out
}
