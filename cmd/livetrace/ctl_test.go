package main

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/livetrace/livetrace/internal/testtarget"
	"github.com/livetrace/livetrace/internal/tracefile"
)

// ctlRun runs `livetrace ctl ARGS` in this process.
func ctlRun(args ...string) (string, error) {
	var out, errb strings.Builder
	err := run(append([]string{"ctl"}, args...), &out, &errb)
	if err != nil {
		return out.String(), fmt.Errorf("%w (stderr %q)", err, errb.String())
	}
	return out.String(), nil
}

func mustCtl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := ctlRun(args...)
	if err != nil {
		t.Fatalf("livetrace ctl %s: %v", strings.Join(args, " "), err)
	}
	return out
}

func startCtlWorkload(t *testing.T) (*testtarget.Process, string) {
	t.Helper()
	tp := testtarget.Start(t, testtarget.Build(t, testtarget.Workload, testtarget.ClangNop5), "-t", "2")
	if _, err := tp.Expect("ready", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	return tp, strconv.Itoa(tp.Pid())
}

// TestCtlCommands drives a running record through livetrace ctl: status,
// enable (of a function not selected at the start), a glob that matches
// nothing, disable, a client of another user refused, stop; then ctl finds
// no session, and info lists the changes.
func TestCtlCommands(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := livetraceBinary(t)
	tp, pid := startCtlWorkload(t)
	out := filepath.Join(t.TempDir(), "rec.data")
	rec, stderr, _ := startTracing(t, bin, "record", "-p", pid, "-F", "work_leaf", "-o", out)
	defer rec.Process.Kill()
	var rest strings.Builder
	readDone := make(chan struct{})
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := stderr.Read(buf)
			rest.Write(buf[:n])
			if err != nil {
				close(readDone)
				return
			}
		}
	}()

	st := mustCtl(t, "-p", pid, "status")
	if !strings.Contains(st, "1 function traced:\n  work_leaf\n") || !strings.Contains(st, "entry mode") {
		t.Errorf("status:\n%s", st)
	}
	if got := mustCtl(t, "-p", pid, "enable", "lib_add", "work_leaf"); !strings.Contains(got, "enabled 1 function: lib_add") || !strings.Contains(got, "1 function already enabled") {
		t.Errorf("enable:\n%s", got)
	}
	if _, err := ctlRun("-p", pid, "enable", "no_such_fn*"); err == nil || !strings.Contains(err.Error(), `no function matches "no_such_fn*"`) {
		t.Errorf("enable of a glob that matches nothing: %v", err)
	}
	if got := mustCtl(t, "-p", pid, "disable", "work_nested"); !strings.Contains(got, "disabled 0 functions") {
		t.Errorf("disable of a function never traced: %s", got)
	}
	if _, err := ctlRun("-p", pid, "disable", "no_such_fn"); err == nil || !strings.Contains(err.Error(), `no function matches "no_such_fn"`) {
		t.Errorf("disable of a glob that matches nothing: %v", err)
	}
	if _, err := ctlRun("-p", pid, "enable"); err == nil || !strings.Contains(err.Error(), "name the functions") {
		t.Errorf("enable without globs: %v", err)
	}
	if _, err := ctlRun("-p", pid, "frobnicate"); err == nil || !strings.Contains(err.Error(), "unknown command") {
		t.Errorf("unknown command: %v", err)
	}
	want := workloadRunCLI(t, tp, 10)
	if got := mustCtl(t, "-p", pid, "disable", "work_leaf"); !strings.Contains(got, "disabled 1 function: work_leaf") {
		t.Errorf("disable:\n%s", got)
	}
	workloadRunCLI(t, tp, 10) // lib_add only
	want["lib_add"] += 10 * 2
	st = mustCtl(t, "-p", pid, "status")
	if !strings.Contains(st, "1 function traced:\n  lib_add\n") || !strings.Contains(st, "1 function disabled:\n  work_leaf\n") || !strings.Contains(st, "2 changes") {
		t.Errorf("status after the changes:\n%s", st)
	}

	// Another user: refused, and told why.
	nobody := exec.Command(worldBinary(t, bin), "ctl", "-p", pid, "status")
	nobody.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	nobody.Env = append(os.Environ(), "XDG_RUNTIME_DIR="+t.TempDir())
	msg, err := nobody.CombinedOutput()
	if err == nil || !strings.Contains(string(msg), "permission denied") {
		t.Errorf("ctl as nobody: %v, %s; want permission denied", err, msg)
	}

	if got := mustCtl(t, "-p", pid, "stop"); !strings.Contains(got, "stopped") {
		t.Errorf("stop: %s", got)
	}
	if err := waitTimeout(rec, readDone, 20*time.Second); err != nil {
		t.Fatalf("record after stop: %v\n%s", err, rest.String())
	}
	if !strings.Contains(rest.String(), "stopped by livetrace ctl") {
		t.Errorf("record's stderr:\n%s", rest.String())
	}
	if _, err := ctlRun("-p", pid, "status"); err == nil || !strings.Contains(err.Error(), "no livetrace session for pid "+pid) {
		t.Errorf("status after stop: %v", err)
	}
	r, err := tracefile.Read(out)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]uint64{}
	for _, ev := range r.Events {
		got[r.Funcs[ev.Func].Name]++
	}
	if got["work_leaf"] != want["work_leaf"] || got["lib_add"] != want["lib_add"] {
		t.Errorf("recorded %v, want work_leaf %d (while enabled) and lib_add %d", got, want["work_leaf"], want["lib_add"])
	}
	info, _, err := runCLIBin(bin, "info", out)
	if err != nil || !strings.Contains(info, "changes:") || !strings.Contains(info, "enable lib_add work_leaf (1 function: lib_add)") || !strings.Contains(info, "disable work_leaf (1 function: work_leaf)") {
		t.Errorf("info: %v\n%s", err, info)
	}
}

// worldBinary returns a copy of bin that every user may run.
func worldBinary(t *testing.T, bin string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "livetrace-world")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "livetrace")
	if err := os.WriteFile(p, b, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// workloadRunCLI makes the workload run n iterations and returns its counts.
func workloadRunCLI(t *testing.T, tp *testtarget.Process, n int) map[string]uint64 {
	t.Helper()
	c, err := testtarget.RunWorkload(tp, n, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestCtlPeerRefused: a peer of another uid that reaches the socket (here
// a directory others may enter, which livetrace never makes) is refused
// on its credentials (SO_PEERCRED).
func TestCtlPeerRefused(t *testing.T) {
	testtarget.RequireRoot(t)
	dir := filepath.Join(t.TempDir(), "open")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	srv, err := serveCtlIn(dir, 4242, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	sock := filepath.Join(dir, "4242.sock")
	for d := dir; d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(sock, 0o777); err != nil {
		t.Fatal(err)
	}
	// Connect with this thread's effective uid set to nobody: the
	// kernel takes the peer's credentials at connect (setresuid on one
	// thread, with the raw system call; the saved uid lets it go back).
	var rep ctlReply
	func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, ^uintptr(0), 65534, ^uintptr(0)); e != 0 {
			t.Fatal(e)
		}
		conn, err := net.Dial("unix", sock)
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, ^uintptr(0), 0, ^uintptr(0)); e != 0 {
			panic(e) // this thread must not go back to the scheduler as nobody
		}
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = json.NewEncoder(conn).Encode(ctlRequest{Cmd: "stop"})
		if err := json.NewDecoder(conn).Decode(&rep); err != nil {
			t.Fatal(err)
		}
	}()
	if !strings.Contains(rep.Error, "permission denied") {
		t.Errorf("reply to nobody: %+v, want permission denied", rep)
	}
	select {
	case <-srv.Stopped():
		t.Error("nobody stopped the session")
	default:
	}
	// The directory must be ours and 0700: a second server refuses one
	// that others may enter.
	if _, err := serveCtlIn(dir, 4243, nil, nil); err == nil || !strings.Contains(err.Error(), "mode 0700") {
		t.Errorf("serving in a directory of mode 0755: %v", err)
	}
}

// TestCtlStaleAndRestore: record is killed with SIGKILL after ctl enabled
// functions it had not selected at the start; ctl then names the stale
// socket and points at restore, which puts the text back byte for byte.
func TestCtlStaleAndRestore(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := livetraceBinary(t)
	tp, pid := startCtlWorkload(t)
	before := testtarget.TakeSnapshot(t, tp.Pid())
	rec, _, _ := startTracing(t, bin, "record", "-p", pid, "-F", "work_leaf", "-o", filepath.Join(t.TempDir(), "rec.data"))
	mustCtl(t, "-p", pid, "enable", "lib_add", "work_nested", "work_recurse")
	mustCtl(t, "-p", pid, "disable", "work_leaf")
	want := testtarget.WorkloadCounts(5, 2)
	if got := workloadRunCLI(t, tp, 5); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("workload counts %v, want %v", got, want)
	}
	if err := rec.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = rec.Wait()
	_, err := ctlRun("-p", pid, "status")
	if err == nil || !strings.Contains(err.Error(), "died") || !strings.Contains(err.Error(), "livetrace restore -p "+pid) {
		t.Errorf("status of a killed tracer: %v", err)
	}
	if o, e, err := runCLIBin(bin, "restore", "-p", pid); err != nil {
		t.Fatalf("restore: %v\n%s%s", err, o, e)
	}
	before.CheckSame(t, tp.Pid())
	if got := workloadRunCLI(t, tp, 5); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("workload counts after restore %v, want %v", got, want)
	}
	// A new record replaces the stale socket.
	rec2, stderr2, _ := startTracing(t, bin, "record", "-p", pid, "-F", "work_leaf", "-o", filepath.Join(t.TempDir(), "rec2.data"))
	defer rec2.Process.Kill()
	if st := mustCtl(t, "-p", pid, "status"); !strings.Contains(st, "work_leaf") {
		t.Errorf("status of the new record:\n%s", st)
	}
	mustCtl(t, "-p", pid, "stop")
	done := make(chan struct{})
	go func() {
		buf := make([]byte, 4096)
		for {
			if _, err := stderr2.Read(buf); err != nil {
				close(done)
				return
			}
		}
	}()
	if err := waitTimeout(rec2, done, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	before.CheckSame(t, tp.Pid())
}

// TestCtlRoundsCLI enables and disables functions 100 times through ctl
// while record runs and the machine is loaded, and checks the recording:
// in each window between two changes, exactly the program's calls of the
// functions enabled, none of the others.
func TestCtlRoundsCLI(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := livetraceBinary(t)
	tp, pid := startCtlWorkload(t)
	out := filepath.Join(t.TempDir(), "rec.data")
	fns := []string{"work_leaf", "work_nested", "work_recurse", "lib_add"}
	rec, stderr, _ := startTracing(t, bin, "record", "-p", pid, "-F", "work_leaf", "-o", out)
	defer rec.Process.Kill()
	mustCtl(t, "-p", pid, "disable", "work_leaf") // every round starts from its own set
	done := make(chan struct{})
	go func() {
		buf := make([]byte, 4096)
		for {
			if _, err := stderr.Read(buf); err != nil {
				close(done)
				return
			}
		}
	}()
	var stop atomic.Bool
	var wg sync.WaitGroup
	for range runtime.NumCPU() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			x := 0
			for !stop.Load() {
				for i := 0; i < 1e5; i++ {
					x += i
				}
			}
			_ = x
		}()
	}
	defer func() { stop.Store(true); wg.Wait() }()

	const rounds = 100
	type window struct {
		on   map[string]bool
		want map[string]uint64
	}
	var windows []window
	var starts []int
	nchanges := 1 // the disable above
	for r := 0; r < rounds; r++ {
		on := map[string]bool{}
		var enable, disable []string
		for i, fn := range fns {
			if (r+1)>>i&1 == 1 {
				on[fn] = true
				enable = append(enable, fn)
			} else {
				disable = append(disable, fn)
			}
		}
		// A change is recorded when a function changes state; the
		// window of round r starts at the last change of the round.
		changed := func(out string) {
			var n int
			var verb string
			if _, err := fmt.Sscanf(out, "%s %d function", &verb, &n); err != nil {
				t.Fatalf("ctl said %q", out)
			}
			if n > 0 {
				nchanges++
			}
		}
		if len(enable) > 0 {
			changed(mustCtl(t, append([]string{"-p", pid, "enable"}, enable...)...))
		}
		if len(disable) > 0 {
			changed(mustCtl(t, append([]string{"-p", pid, "disable"}, disable...)...))
		}
		starts = append(starts, nchanges-1)
		windows = append(windows, window{on, workloadRunCLI(t, tp, 2)})
	}
	mustCtl(t, "-p", pid, "stop")
	if err := waitTimeout(rec, done, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	r, err := tracefile.Read(out)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Changes) != nchanges {
		t.Fatalf("%d changes recorded, ctl made %d", len(r.Changes), nchanges)
	}
	counts := make([]map[string]uint64, rounds)
	for w := range counts {
		counts[w] = map[string]uint64{}
	}
	// The workload is idle while ctl changes things: an event belongs to
	// the window of the last round whose last change precedes it.
	for _, ev := range r.Events {
		w := -1
		for k := len(starts) - 1; k >= 0; k-- {
			if ev.TSC >= r.Changes[starts[k]].TSC {
				w = k
				break
			}
		}
		if w < 0 {
			continue // before the first round: none expected
		}
		counts[w][r.Funcs[ev.Func].Name]++
	}
	bad := 0
	for w, win := range windows {
		for _, fn := range fns {
			exp := uint64(0)
			if win.on[fn] {
				exp = win.want[fn]
			}
			if counts[w][fn] != exp && bad < 10 {
				bad++
				t.Errorf("window %d: %s recorded %d calls, want %d (traced: %v)", w, fn, counts[w][fn], exp, win.on[fn])
			}
		}
	}
}

// TestCtlLiveNames: live prints the name of a function ctl enabled, from
// its first call on (the names come before the function is patched).
func TestCtlLiveNames(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := livetraceBinary(t)
	tp, pid := startCtlWorkload(t)
	cmd := exec.Command(bin, "live", "-p", pid, "-F", "work_leaf")
	var out strings.Builder
	cmd.Stdout = &out
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	buf := make([]byte, 4096)
	var got strings.Builder
	for !strings.Contains(got.String(), "tracing ") {
		n, err := stderr.Read(buf)
		if err != nil {
			t.Fatalf("live: %v\n%s", err, got.String())
		}
		got.Write(buf[:n])
	}
	go func() {
		for {
			if _, err := stderr.Read(buf); err != nil {
				return
			}
		}
	}()
	mustCtl(t, "-p", pid, "enable", "lib_add")
	want := workloadRunCLI(t, tp, 10)
	time.Sleep(300 * time.Millisecond) // live prints within 50 ms
	mustCtl(t, "-p", pid, "stop")
	if err := cmd.Wait(); err != nil {
		t.Fatalf("live: %v", err)
	}
	text := out.String()
	if n := strings.Count(text, "lib_add"); n < int(want["lib_add"]) {
		t.Errorf("live printed lib_add %d times, want %d calls", n, want["lib_add"])
	}
	if strings.Contains(text, "func#") {
		t.Errorf("live printed a function without its name:\n%s", text)
	}
}
