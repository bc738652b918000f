package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/livetrace/livetrace/internal/testtarget"
	"github.com/livetrace/livetrace/internal/tracefile"
)

// exeText returns the bytes of every executable mapping of pid's
// executable file, by start address.
func exeText(t *testing.T, pid int) map[uint64][]byte {
	t.Helper()
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		t.Fatal(err)
	}
	maps, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		t.Fatal(err)
	}
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	out := map[uint64][]byte{}
	for _, l := range strings.Split(string(maps), "\n") {
		f := strings.Fields(l)
		if len(f) < 6 || f[5] != exe || !strings.Contains(f[1], "x") {
			continue
		}
		var lo, hi uint64
		if _, err := fmt.Sscanf(f[0], "%x-%x", &lo, &hi); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, hi-lo)
		if _, err := mem.ReadAt(b, int64(lo)); err != nil {
			t.Fatalf("read text of pid %d at %#x: %v", pid, lo, err)
		}
		out[lo] = b
	}
	if len(out) == 0 {
		t.Fatalf("no text of %s in pid %d", exe, pid)
	}
	return out
}

// checkText fails unless pid's text is want, byte for byte.
func checkText(t *testing.T, pid int, want map[uint64][]byte) {
	t.Helper()
	got := exeText(t, pid)
	for at, w := range want {
		g, ok := got[at]
		if !ok || string(g) != string(w) {
			t.Errorf("pid %d: the text at %#x is not what it was before tracing", pid, at)
		}
	}
}

// expectFields waits for the fixture's reply that starts with prefix and
// returns its numbers.
func expectFields(t *testing.T, tp *testtarget.Process, prefix string) []int {
	t.Helper()
	line, err := tp.Expect(prefix+" ", 20*time.Second)
	if err != nil {
		t.Fatalf("%s: %v", prefix, err)
	}
	var out []int
	for _, f := range strings.Fields(line)[1:] {
		n, err := strconv.Atoi(f)
		if err != nil {
			t.Fatalf("reply %q: %v", line, err)
		}
		out = append(out, n)
	}
	return out
}

// countsByPid reads a recording and counts its entries per pid and
// function name.
func countsByPid(t *testing.T, path string) (map[int]map[string]int, *tracefile.Recording) {
	t.Helper()
	rec, err := tracefile.Read(path)
	if err != nil {
		t.Fatal(err)
	}
	pids := rec.ThreadPIDs()
	out := map[int]map[string]int{}
	for _, ev := range rec.Events {
		if ev.Kind != tracefile.KindEntry {
			continue
		}
		pid, ok := pids[ev.TID]
		if !ok {
			t.Errorf("thread %d of an event is not in the recording's threads", ev.TID)
		}
		if out[pid] == nil {
			out[pid] = map[string]int{}
		}
		out[pid][rec.Funcs[ev.Func].Name]++
	}
	return out, rec
}

// TestRecordFollowFork records a process with --follow while it forks:
// a child that works and exits, a daemon (double fork: the middle child
// exits at once, the grandchild works), a child that stays, and another
// short one. Each process's calls are counted exactly under its own pid,
// replay and the Chrome export show the pids, and after detach the text
// and mappings of the target and of the child that stayed are as before.
func TestRecordFollowFork(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := livetraceBinary(t)
	tp := startFollow(t)
	text := exeText(t, tp.Pid())
	snap := testtarget.TakeSnapshot(t, tp.Pid())
	out := filepath.Join(t.TempDir(), "rec.data")
	cmd, stderr, _ := startTracing(t, bin, "record", "-p", strconv.Itoa(tp.Pid()), "-F", "fl_*", "--follow", "-d", "3s", "-o", out)
	var errText strings.Builder
	copied := make(chan struct{})
	go func() { io.Copy(&errText, stderr); close(copied) }()

	send := func(line string) {
		if err := tp.Send(line); err != nil {
			t.Fatal(err)
		}
	}
	send("fork 1000")
	forked := expectFields(t, tp, "forked")
	send("daemon 500")
	daemon := expectFields(t, tp, "daemon")
	send("hold 300")
	held := expectFields(t, tp, "held")
	send("fork 7")
	forked7 := expectFields(t, tp, "forked")
	if forked[1] != 0 || forked7[1] != 0 || daemon[1] <= 0 {
		t.Fatalf("children failed: forked %v, daemon %v, forked %v", forked, daemon, forked7)
	}
	heldPid := held[0]
	defer func() {
		p, _ := os.FindProcess(heldPid)
		p.Kill()
	}()
	err := cmd.Wait()
	<-copied
	if err != nil {
		t.Fatalf("record: %v\n%s", err, errText.String())
	}
	if strings.Contains(errText.String(), "follow child") {
		t.Errorf("record complained about a child:\n%s", errText.String())
	}

	counts, rec := countsByPid(t, out)
	want := map[int]map[string]int{
		tp.Pid():   {"fl_parent": 4},
		forked[0]:  {"fl_work": 1, "fl_leaf": 1000},
		daemon[1]:  {"fl_work": 1, "fl_leaf": 500},
		heldPid:    {"fl_work": 1, "fl_leaf": 300},
		forked7[0]: {"fl_work": 1, "fl_leaf": 7},
	}
	for pid, w := range want {
		for fn, n := range w {
			if counts[pid][fn] != n {
				t.Errorf("pid %d: %d calls of %s, want %d", pid, counts[pid][fn], fn, n)
			}
		}
	}
	for pid, c := range counts {
		if want[pid] == nil {
			t.Errorf("events of unexpected pid %d: %v (want %v, processes %+v)", pid, c, want, rec.Processes)
		}
	}
	ppid := map[int]int{}
	for _, p := range rec.Processes {
		ppid[p.PID] = p.PPID
	}
	wantPP := map[int]int{tp.Pid(): 0, forked[0]: tp.Pid(), daemon[0]: tp.Pid(), daemon[1]: daemon[0], heldPid: tp.Pid(), forked7[0]: tp.Pid()}
	for pid, pp := range wantPP {
		if got, ok := ppid[pid]; !ok || got != pp {
			t.Errorf("process %d: in the list %v with ppid %d, want ppid %d", pid, ok, got, pp)
		}
	}

	// Every process was put back: the target, and the child that stayed.
	checkText(t, tp.Pid(), text)
	checkText(t, heldPid, text)
	snap.CheckSame(t, tp.Pid())
	checkMapsSame(t, snap, heldPid)

	// replay shows each event's pid.
	rp, _, err := runCLI(t, "replay", "-i", out)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(rp, fmt.Sprintf("-%-7d (%7d) [---]", daemon[1], daemon[1])) ||
		!strings.Contains(rp, fmt.Sprintf("# process %d (", heldPid)) {
		t.Errorf("replay lacks the pids:\n%.2000s", rp)
	}
	// The Chrome trace puts each event under its process.
	js, _, err := runCLI(t, "export", "--format", "chrome", "-i", out, "-o", "-")
	if err != nil {
		t.Fatal(err)
	}
	var tr struct {
		TraceEvents []struct {
			Name string `json:"name"`
			Ph   string `json:"ph"`
			PID  int    `json:"pid"`
			TID  int    `json:"tid"`
		} `json:"traceEvents"`
	}
	if err := json.Unmarshal([]byte(js), &tr); err != nil {
		t.Fatal(err)
	}
	leafs := map[int]int{}
	for _, ev := range tr.TraceEvents {
		if ev.Name == "fl_leaf" {
			leafs[ev.PID]++
			if ev.TID != ev.PID {
				t.Errorf("chrome: fl_leaf in pid %d tid %d", ev.PID, ev.TID)
			}
		}
	}
	if leafs[daemon[1]] != 500 || leafs[forked[0]] != 1000 {
		t.Errorf("chrome: fl_leaf per pid %v", leafs)
	}
}

// checkMapsSame fails unless pid (a child forked from the snapshot's
// process) has the snapshot's mappings: the tracer left nothing behind.
func checkMapsSame(t *testing.T, snap testtarget.Snapshot, pid int) {
	t.Helper()
	now := testtarget.TakeSnapshot(t, pid)
	if strings.Join(now.Maps, "\n") != strings.Join(snap.Maps, "\n") {
		t.Errorf("mappings of pid %d:\n%s\nwant:\n%s", pid, strings.Join(now.Maps, "\n"), strings.Join(snap.Maps, "\n"))
	}
}

// TestRecordFollowRestoreChild kills a record --follow with SIGKILL while a
// followed child lives: `livetrace restore -p TARGET` puts the target back
// and names the child, which holds an agent of the same livetrace, and
// `livetrace restore --all` finds the child's agent by its own owner
// record and puts the child back.
func TestRecordFollowRestoreChild(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := livetraceBinary(t)
	tp := startFollow(t)
	text := exeText(t, tp.Pid())
	snap := testtarget.TakeSnapshot(t, tp.Pid())
	cmd, stderr, _ := startTracing(t, bin, "record", "-p", strconv.Itoa(tp.Pid()), "-F", "fl_*", "--follow", "-o", filepath.Join(t.TempDir(), "rec.data"))
	go io.Copy(io.Discard, stderr)
	if err := tp.Send("hold 10"); err != nil {
		t.Fatal(err)
	}
	held := expectFields(t, tp, "held")
	child := held[0]
	defer func() {
		p, _ := os.FindProcess(child)
		p.Kill()
	}()
	time.Sleep(300 * time.Millisecond) // the child's engine and lease
	_ = cmd.Process.Kill()
	_ = cmd.Wait()

	// The child carries an agent now.
	maps, _ := os.ReadFile(fmt.Sprintf("/proc/%d/maps", child))
	if strings.Join(testtarget.TakeSnapshot(t, child).Maps, "\n") == strings.Join(snap.Maps, "\n") {
		t.Fatalf("the child has no agent mapped after the tracer died:\n%s", maps)
	}
	o, e, err := runCLIBin(bin, "restore", "-p", strconv.Itoa(tp.Pid()))
	want := fmt.Sprintf("1 more process holds an agent left by livetrace pid %d (children of a process it traced): %d; livetrace restore --all", cmd.Process.Pid, child)
	if err != nil || !strings.Contains(e, want) {
		t.Fatalf("restore -p %d: %v\n%s%s\nwant it to say %q", tp.Pid(), err, o, e, want)
	}
	o, e, err = runCLIBin(bin, "restore", "--all")
	if err != nil || !regexp.MustCompile(fmt.Sprintf(`in pid %d\b`, child)).MatchString(o) || regexp.MustCompile(fmt.Sprintf(`in pid %d\b`, tp.Pid())).MatchString(o) {
		t.Fatalf("restore --all: %v\n%s%s\nwant it to restore pid %d alone", err, o, e, child)
	}
	if o, e, err = runCLIBin(bin, "restore", "--all"); err != nil || !strings.Contains(o, "nothing to restore") {
		t.Errorf("restore --all again: %v\n%s%s\nwant nothing to restore", err, o, e)
	}
	checkText(t, child, text)
	checkMapsSame(t, snap, child)
	checkText(t, tp.Pid(), text)
	snap.CheckSame(t, tp.Pid())
	// Both still run the traced functions correctly.
	if err := tp.Send("fork 50"); err != nil {
		t.Fatal(err)
	}
	if f := expectFields(t, tp, "forked"); f[1] != 0 {
		t.Errorf("fork after restore: %v", f)
	}
}

// TestRecordFollowDaemon records `record --follow -- CMD` where CMD
// daemonizes (double fork) and exits at once: the recording goes on until
// the grandchild, which works after its parents are gone, ends, and holds
// its calls.
func TestRecordFollowDaemon(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := livetraceBinary(t)
	exe := testtarget.Build(t, testtarget.Follow, testtarget.ClangNop5)
	out := filepath.Join(t.TempDir(), "rec.data")
	cmd := exec.Command(bin, "record", "--follow", "-F", "fl_*", "-o", out, "--", exe)
	cmd.Stdin = strings.NewReader("detach 400\n")
	var o, e strings.Builder
	cmd.Stdout, cmd.Stderr = &o, &e
	done := make(chan error, 1)
	go func() { done <- cmd.Run() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("record: %v\n%s%s", err, o.String(), e.String())
		}
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("record did not end when the daemon did:\n%s%s", o.String(), e.String())
	}
	counts, rec := countsByPid(t, out)
	var gc int
	for _, p := range rec.Processes {
		if p.PPID != 0 && p.PPID != rec.PID {
			gc = p.PID
		}
	}
	if gc == 0 || counts[gc]["fl_work"] != 1 || counts[gc]["fl_leaf"] != 400 {
		t.Fatalf("grandchild %d: %v; processes %+v\n%s", gc, counts, rec.Processes, e.String())
	}
	if counts[rec.PID]["fl_parent"] != 1 {
		t.Errorf("target: %v", counts[rec.PID])
	}
}

// TestRecordFollowExec records with --follow a process whose children call
// exec: after fork, after vfork, through posix_spawn, and from a thread
// other than the main one. Each new image is attached afresh with the
// same filters and its calls are counted exactly under its pid; a new
// image where nothing matches is listed as such.
func TestRecordFollowExec(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := livetraceBinary(t)
	tp := startFollow(t)
	text := exeText(t, tp.Pid())
	snap := testtarget.TakeSnapshot(t, tp.Pid())
	out := filepath.Join(t.TempDir(), "rec.data")
	cmd, stderr, _ := startTracing(t, bin, "record", "-p", strconv.Itoa(tp.Pid()), "-F", "fl_*", "--follow", "-d", "4s", "-o", out)
	var errText strings.Builder
	copied := make(chan struct{})
	go func() { io.Copy(&errText, stderr); close(copied) }()
	type child struct {
		cmd, reply string
		n          int
		pid        int
	}
	kids := []*child{{"forkexec", "forkexeced", 100, 0}, {"vforkexec", "vforked", 200, 0}, {"spawn", "spawned", 300, 0}, {"threadexec", "threadexeced", 400, 0}}
	for _, k := range kids {
		if err := tp.Send(fmt.Sprintf("%s %d", k.cmd, k.n)); err != nil {
			t.Fatal(err)
		}
		f := expectFields(t, tp, k.reply)
		if f[1] != 0 {
			t.Fatalf("%s: status %d", k.cmd, f[1])
		}
		k.pid = f[0]
	}
	if err := tp.Send("exectrue"); err != nil {
		t.Fatal(err)
	}
	truePid := expectFields(t, tp, "exectrued")[0]
	err := cmd.Wait()
	<-copied
	if err != nil {
		t.Fatalf("record: %v\n%s", err, errText.String())
	}
	counts, rec := countsByPid(t, out)
	if counts[tp.Pid()]["fl_parent"] != 5 {
		t.Errorf("target: %v", counts[tp.Pid()])
	}
	for _, k := range kids {
		if c := counts[k.pid]; c["fl_work"] != 1 || c["fl_leaf"] != k.n || len(c) != 2 {
			t.Errorf("%s: pid %d: %v, want fl_work 1, fl_leaf %d", k.cmd, k.pid, c, k.n)
		}
	}
	images := map[int]tracefile.Process{}
	for _, p := range rec.Processes {
		if p.ExecFrom != 0 {
			images[p.PID] = p
		}
	}
	for _, k := range kids {
		im, ok := images[k.pid]
		if !ok || im.Untraced != "" {
			t.Errorf("%s: no traced image of pid %d in %+v", k.cmd, k.pid, rec.Processes)
			continue
		}
		if (k.cmd == "threadexec") != (im.ExecFrom != k.pid) {
			t.Errorf("%s: exec from thread %d, pid %d", k.cmd, im.ExecFrom, k.pid)
		}
	}
	if im, ok := images[truePid]; !ok || im.Untraced == "" || im.Exe != "/usr/bin/true" && im.Exe != "/bin/true" {
		t.Errorf("/bin/true (pid %d) is not listed as untraced: %+v", truePid, rec.Processes)
	}
	checkText(t, tp.Pid(), text)
	snap.CheckSame(t, tp.Pid())
	rp, _, err := runCLI(t, "replay", "-i", out)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(rp, fmt.Sprintf("# process %d (true): exec of /", truePid)) {
		t.Errorf("replay does not list /bin/true:\n%.1500s", rp)
	}
}

// TestRecordFollowPython records a real program with --follow: python3
// forks three children (os.fork, which calls PyOS_BeforeFork in the parent
// and PyOS_AfterFork_Child in each child) and runs the follow fixture
// through subprocess (fork or vfork, then exec). Python is built without
// NOPs, so its functions are relocated; each process's calls are counted
// under its pid, and report --by pid splits them.
func TestRecordFollowPython(t *testing.T) {
	testtarget.RequireRoot(t)
	py, err := exec.LookPath("python3")
	if err != nil {
		testtarget.SkipOrFatal(t, "python3 is not installed: %v", err)
	}
	bin := livetraceBinary(t)
	fixture := testtarget.Build(t, testtarget.Follow, testtarget.ClangNop5)
	script := filepath.Join(t.TempDir(), "mp.py")
	if err := os.WriteFile(script, []byte(`import os, sys, subprocess
print("ready", flush=True)
sys.stdin.readline()
pids = []
for i in range(3):
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    pids.append(pid)
for p in pids:
    os.waitpid(p, 0)
r = subprocess.run([sys.argv[1], "work", "25"])
print("done", r.returncode, " ".join(map(str, pids)), flush=True)
sys.stdin.readline()
`), 0o644); err != nil {
		t.Fatal(err)
	}
	tp := testtarget.Start(t, py, script, fixture)
	if _, err := tp.Expect("ready", 20*time.Second); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "rec.data")
	cmd, stderr, _ := startTracing(t, bin, "record", "-p", strconv.Itoa(tp.Pid()), "-F", "PyOS_*Fork*", "-F", "fl_*", "--follow", "-o", out)
	var errText strings.Builder
	copied := make(chan struct{})
	go func() { io.Copy(&errText, stderr); close(copied) }()
	if err := tp.Send("go"); err != nil {
		t.Fatal(err)
	}
	f := expectFields(t, tp, "done")
	if f[0] != 0 {
		t.Fatalf("the fixture under python exited with %d", f[0])
	}
	if err := tp.Send("end"); err != nil {
		t.Fatal(err)
	}
	err = cmd.Wait()
	<-copied
	if err != nil {
		t.Fatalf("record: %v\n%s", err, errText.String())
	}
	counts, rec := countsByPid(t, out)
	if counts[tp.Pid()]["PyOS_BeforeFork"] < 3 {
		t.Errorf("python: %v", counts[tp.Pid()])
	}
	for _, pid := range f[1:] {
		if counts[pid]["PyOS_AfterFork_Child"] != 1 {
			t.Errorf("child %d: %v", pid, counts[pid])
		}
	}
	var img int
	for _, p := range rec.Processes {
		if p.ExecFrom != 0 && strings.HasSuffix(p.Exe, "/follow") {
			img = p.PID
		}
	}
	if c := counts[img]; img == 0 || c["fl_work"] != 1 || c["fl_leaf"] != 25 {
		t.Errorf("the fixture run by subprocess (pid %d): %v; processes %+v", img, c, rec.Processes)
	}
	rp, _, err := runCLI(t, "report", "--by", "pid", "-i", out)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(rp, fmt.Sprintf("# pid %d (follow)", img)) || !strings.Contains(rp, fmt.Sprintf("# pid %d (python3)", f[1])) {
		t.Errorf("report --by pid:\n%s", rp)
	}
}

// TestRecordFollowGraphFork records --graph --follow while the target
// forks inside a traced function: the child returns through its copy of
// the hijacked frame, and its entries and exits (that of fl_forker too)
// are recorded under its pid, matched.
func TestRecordFollowGraphFork(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := livetraceBinary(t)
	tp := startFollow(t)
	text := exeText(t, tp.Pid())
	out := filepath.Join(t.TempDir(), "rec.data")
	cmd, stderr, _ := startTracing(t, bin, "record", "-p", strconv.Itoa(tp.Pid()), "-F", "fl_*", "--graph", "--follow", "-d", "2s", "-o", out)
	var errText strings.Builder
	copied := make(chan struct{})
	go func() { io.Copy(&errText, stderr); close(copied) }()
	if err := tp.Send("forkin 20"); err != nil {
		t.Fatal(err)
	}
	f := expectFields(t, tp, "forkedin")
	if f[1] != 0 {
		t.Fatalf("the child returning through a hijacked frame exited with %d", f[1])
	}
	err := cmd.Wait()
	<-copied
	if err != nil {
		t.Fatalf("record: %v\n%s", err, errText.String())
	}
	rec, err := tracefile.Read(out)
	if err != nil {
		t.Fatal(err)
	}
	pids := rec.ThreadPIDs()
	exits := map[int]map[string]int{}
	for _, ev := range rec.Events {
		if ev.Kind != tracefile.KindExit {
			continue
		}
		pid := pids[ev.TID]
		if exits[pid] == nil {
			exits[pid] = map[string]int{}
		}
		exits[pid][rec.Funcs[ev.Func].Name]++
	}
	if c := exits[f[0]]; c["fl_forker"] != 1 || c["fl_work"] != 1 || c["fl_leaf"] != 20 {
		t.Errorf("child %d exits: %v", f[0], c)
	}
	if c := exits[tp.Pid()]; c["fl_forker"] != 1 || c["fl_parent"] != 1 {
		t.Errorf("target exits: %v", c)
	}
	checkText(t, tp.Pid(), text)
}

// sameCode fails unless pid's executable text holds, mapping by mapping in
// address order, the bytes of want (another process of the same program,
// mapped elsewhere).
func sameCode(t *testing.T, pid int, want map[uint64][]byte) {
	t.Helper()
	order := func(m map[uint64][]byte) [][]byte {
		var at []uint64
		for a := range m {
			at = append(at, a)
		}
		slices.Sort(at)
		var out [][]byte
		for _, a := range at {
			out = append(out, m[a])
		}
		return out
	}
	got, w := order(exeText(t, pid)), order(want)
	if len(got) != len(w) {
		t.Fatalf("pid %d: %d text mappings, want %d", pid, len(got), len(w))
	}
	for i := range got {
		if string(got[i]) != string(w[i]) {
			t.Errorf("pid %d: text mapping %d differs from the program's", pid, i)
		}
	}
}

// TestRecordFollowExecStays records a child that execs and is still
// running when the recording ends: the new image's session restores its
// text and removes its agent at detach, like the target's.
func TestRecordFollowExecStays(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := livetraceBinary(t)
	tp := startFollow(t)
	text := exeText(t, tp.Pid())
	out := filepath.Join(t.TempDir(), "rec.data")
	cmd, stderr, _ := startTracing(t, bin, "record", "-p", strconv.Itoa(tp.Pid()), "-F", "fl_*", "--follow", "-d", "2s", "-o", out)
	var errText strings.Builder
	copied := make(chan struct{})
	go func() { io.Copy(&errText, stderr); close(copied) }()
	if err := tp.Send("execstay 30"); err != nil {
		t.Fatal(err)
	}
	pid := expectFields(t, tp, "stayed")[0]
	defer func() {
		p, _ := os.FindProcess(pid)
		p.Kill()
	}()
	err := cmd.Wait()
	<-copied
	if err != nil {
		t.Fatalf("record: %v\n%s", err, errText.String())
	}
	counts, _ := countsByPid(t, out)
	if c := counts[pid]; c["fl_work"] != 1 || c["fl_leaf"] != 30 {
		t.Errorf("image %d: %v", pid, c)
	}
	sameCode(t, pid, text)
	maps, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(maps), "memfd:livetrace") {
		t.Errorf("the image kept the agent's shared memory:\n%s", maps)
	}
}

// TestRecordFollowShell records `record --follow -- sh -c LOOP`: the shell
// (dash, where nothing matches) is only followed, and each program it
// forks and execs is traced with the same -F and counted under its pid.
func TestRecordFollowShell(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := livetraceBinary(t)
	sh, err := exec.LookPath("sh")
	if err != nil {
		testtarget.SkipOrFatal(t, "no sh: %v", err)
	}
	exe := testtarget.Build(t, testtarget.Follow, testtarget.ClangNop5)
	out := filepath.Join(t.TempDir(), "rec.data")
	loop := fmt.Sprintf("for i in 1 2 3; do %s work 10; done; %s work 5 & wait", exe, exe)
	o, e, err := runCLIBin(bin, "record", "--follow", "-F", "fl_*", "-o", out, "--", sh, "-c", loop)
	if err != nil {
		t.Fatalf("record: %v\n%s%s", err, o, e)
	}
	if !strings.Contains(e, "tracing nothing in PID") {
		t.Errorf("record does not say the shell is only followed:\n%s", e)
	}
	counts, rec := countsByPid(t, out)
	var tens, fives int
	for _, c := range counts {
		switch {
		case c["fl_work"] == 1 && c["fl_leaf"] == 10:
			tens++
		case c["fl_work"] == 1 && c["fl_leaf"] == 5:
			fives++
		default:
			t.Errorf("unexpected counts %v", c)
		}
	}
	if tens != 3 || fives != 1 {
		t.Errorf("%d runs of work 10, %d of work 5; want 3 and 1; processes %+v", tens, fives, rec.Processes)
	}
	if len(rec.Processes) == 0 || rec.Processes[0].Untraced == "" {
		t.Errorf("the shell is not listed as untraced: %+v", rec.Processes)
	}
}

// TestLiveFollow runs live --follow: the calls of a forked child are
// printed as they come, under the child's pid in the PID column.
func TestLiveFollow(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := livetraceBinary(t)
	tp := startFollow(t)
	cmd := exec.Command(bin, "live", "-p", strconv.Itoa(tp.Pid()), "-F", "fl_*", "--follow", "-d", "2s")
	var stdout strings.Builder
	cmd.Stdout = &stdout
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stderr)
	for sc.Scan() && !strings.Contains(sc.Text(), "tracing ") {
	}
	go io.Copy(io.Discard, stderr)
	if err := tp.Send("fork 3"); err != nil {
		t.Fatal(err)
	}
	child := expectFields(t, tp, "forked")[0]
	if err := cmd.Wait(); err != nil {
		t.Fatalf("live: %v", err)
	}
	out := stdout.String()
	want := fmt.Sprintf("-%-7d (%7d) [---]", child, child)
	if strings.Count(out, want) != 4 || !strings.Contains(out, "TASK-TID       PID") {
		t.Errorf("live output lacks the child's 4 calls under its pid (%q):\n%s", want, out)
	}
}

// TestRecordFollowChildrenExitAtDetach ends a record --follow while the
// followed children it is undoing exit, as postgres's backends do when
// their clients leave: each round kills twenty held children one after
// another from the moment record is told to stop. A child that exits
// while its agent is taken out has nothing left to undo: record exits 0,
// and the target is restored.
func TestRecordFollowChildrenExitAtDetach(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := livetraceBinary(t)
	tp := startFollow(t)
	text := exeText(t, tp.Pid())
	snap := testtarget.TakeSnapshot(t, tp.Pid())
	for round := range 4 {
		cmd, stderr, _ := startTracing(t, bin, "record", "-p", strconv.Itoa(tp.Pid()), "-F", "fl_*", "--follow", "-f", "-o", filepath.Join(t.TempDir(), "rec.data"))
		var said strings.Builder
		copied := make(chan struct{})
		go func() { io.Copy(&said, stderr); close(copied) }()
		var kids []int
		for range 20 {
			if err := tp.Send("hold 100"); err != nil {
				t.Fatal(err)
			}
			kids = append(kids, expectFields(t, tp, "held")[0])
		}
		_ = cmd.Process.Signal(syscall.SIGINT)
		time.Sleep(time.Duration(round) * 5 * time.Millisecond)
		for i, k := range kids {
			_ = syscall.Kill(k, syscall.SIGKILL)
			time.Sleep(time.Duration(i%5) * 400 * time.Microsecond)
		}
		sent := time.Now()
		err := cmd.Wait()
		<-copied
		if err != nil {
			t.Fatalf("round %d: record: %v\n%s", round, err, said.String())
		}
		t.Logf("round %d: record ended %v after SIGINT", round, time.Since(sent))
		if err := tp.Send("wait 1"); err != nil { // reaps nothing; the target still answers
			t.Fatal(err)
		}
		if _, err := tp.Expect("waited", 10*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	checkText(t, tp.Pid(), text)
	snap.CheckSame(t, tp.Pid())
}

// TestRestoreForkedAfterDeath kills a record (no --follow) with SIGKILL
// and lets the target fork: the child inherits the patched text and the
// agent, as a forking server's new workers do until restore runs.
// restore -p TARGET names it, restore --all puts it back. A child forked
// while record ran got its text back then, and holds no agent to undo.
func TestRestoreForkedAfterDeath(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := livetraceBinary(t)
	tp := startFollow(t)
	text := exeText(t, tp.Pid())
	cmd, stderr, _ := startTracing(t, bin, "record", "-p", strconv.Itoa(tp.Pid()), "-F", "fl_*", "-o", filepath.Join(t.TempDir(), "rec.data"))
	go io.Copy(io.Discard, stderr)
	hold := func() int {
		if err := tp.Send("hold 10"); err != nil {
			t.Fatal(err)
		}
		pid := expectFields(t, tp, "held")[0]
		t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
		return pid
	}
	during := hold()
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	after := hold()
	// The child forked after the tracer's death runs the patched text.
	if equalText(exeText(t, after), text) {
		t.Fatalf("the child forked after the tracer died holds the original text: nothing to test")
	}
	o, e, err := runCLIBin(bin, "restore", "-p", strconv.Itoa(tp.Pid()))
	want := fmt.Sprintf("1 more process holds an agent left by livetrace pid %d (children of a process it traced): %d;", cmd.Process.Pid, after)
	if err != nil || !strings.Contains(e, want) {
		t.Fatalf("restore -p %d: %v\n%s%s\nwant it to say %q", tp.Pid(), err, o, e, want)
	}
	o, e, err = runCLIBin(bin, "restore", "--all")
	if err != nil || !regexp.MustCompile(fmt.Sprintf(`in pid %d\b`, after)).MatchString(o) || regexp.MustCompile(fmt.Sprintf(`in pid %d\b`, during)).MatchString(o) {
		t.Fatalf("restore --all: %v\n%s%s\nwant it to restore pid %d and not %d", err, o, e, after, during)
	}
	for _, pid := range []int{tp.Pid(), during, after} {
		checkText(t, pid, text)
	}
	if _, e, err := runCLIBin(bin, "restore", "-p", strconv.Itoa(during)); err == nil || !strings.Contains(e, "nothing to restore") {
		t.Errorf("restore -p %d (forked while traced): %v %s, want nothing to restore", during, err, e)
	}
}

// equalText reports whether two text snapshots are the same.
func equalText(a, b map[uint64][]byte) bool {
	return maps.EqualFunc(a, b, func(x, y []byte) bool { return string(x) == string(y) })
}

// startFollow starts the follow fixture and waits until it is ready.
func startFollow(t *testing.T) *testtarget.Process {
	t.Helper()
	tp := testtarget.Start(t, testtarget.Build(t, testtarget.Follow, testtarget.ClangNop5))
	if _, err := tp.Expect("ready", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	return tp
}
