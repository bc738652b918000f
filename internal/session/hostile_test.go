package session

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/livetrace/livetrace/internal/agent"
	"github.com/livetrace/livetrace/internal/proc"
	"github.com/livetrace/livetrace/internal/testtarget"
	"github.com/livetrace/livetrace/internal/tracefile"
)

// The tests in this file run internal/testtarget/c/hostile.c as user
// nobody against a root tracer: the attacks of docs/SECURITY.md.

// nobody is the unprivileged user the hostile target runs as.
const nobody = "65534"

// buildHostile compiles the hostile fixture into a directory that nobody
// can read, and returns the executable.
func buildHostile(t *testing.T) string {
	t.Helper()
	testtarget.RequireRoot(t)
	cc, err := exec.LookPath("gcc")
	if err != nil {
		testtarget.SkipOrFatal(t, "gcc is not installed: run `make test`, which installs it")
	}
	dir := publicDir(t)
	exe := filepath.Join(dir, "hostile")
	out, err := exec.Command(cc, "-O2", "-g", "-Wall", "-pthread", "-fcf-protection=none",
		"-fpatchable-function-entry=5", "-fPIE", "-pie",
		"-o", exe, filepath.Join("..", "testtarget", "c", "hostile.c")).CombinedOutput()
	if err != nil {
		t.Fatalf("build the hostile fixture: %v\n%s", err, out)
	}
	return exe
}

// publicDir returns a new directory that every user can search.
func publicDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "livetrace-hostile-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// startHostile runs the hostile fixture as nobody and waits for "ready".
func startHostile(t *testing.T, exe string, args ...string) *testtarget.Process {
	t.Helper()
	argv := append([]string{"--reuid=" + nobody, "--regid=" + nobody, "--clear-groups", "--", exe}, args...)
	tp := testtarget.Start(t, "/usr/bin/setpriv", argv...)
	if _, err := tp.Expect("ready", 10*time.Second); err != nil {
		t.Fatalf("start the hostile fixture: %v; stderr: %s", err, tp.Stderr())
	}
	// A thread pthread_create just made starts with every signal blocked
	// until it runs: under load it may not have yet, and a session would
	// rightly choose stop mode. Wait until the threads run.
	for deadline := time.Now().Add(10 * time.Second); ; {
		blocked, _, err := proc.SignalMasks(tp.Pid(), unix.SIGTRAP)
		if err == nil && !blocked {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a thread of the hostile fixture still blocks SIGTRAP after 10 s (%v)", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return tp
}

// ask sends cmd and returns the reply line that starts with prefix.
// startHostileCtl starts the hostile fixture with a control FIFO in dir
// (its ctl= argument, after args) and returns the FIFO opened for
// writing, closed when the test ends.
func startHostileCtl(t *testing.T, exe, dir string, args ...string) (*testtarget.Process, *os.File) {
	t.Helper()
	fifo := filepath.Join(dir, "ctl")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(fifo, 0o666); err != nil {
		t.Fatal(err)
	}
	tp := startHostile(t, exe, append(args, "ctl="+fifo)...)
	ctl, err := os.OpenFile(fifo, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ctl.Close() })
	return tp, ctl
}

func ask(t *testing.T, tp *testtarget.Process, cmd, prefix string) string {
	t.Helper()
	if err := tp.Send(cmd); err != nil {
		t.Fatal(err)
	}
	l, err := tp.Expect(prefix, 10*time.Second)
	if err != nil {
		t.Fatalf("%s: %v (the target died? %v; stderr: %s)", cmd, err, tp.Wait(), tp.Stderr())
	}
	return l
}

// hostileAlive fails the test unless the fixture still answers.
func hostileAlive(t *testing.T, tp *testtarget.Process) {
	t.Helper()
	ask(t, tp, "run 10", "done")
}

// TestMemfdSwapped: the target puts another file at the fd number of
// livetrace's memfd at each step of the shared memory's setup. A tracer
// that reopened the memfd by path (/proc/PID/fd/N) once the target had
// mapped it opened an O_PATH fd of a root-only file read-write as root,
// wrote the buffer's header into it and died of SIGBUS past its end. The
// root file must stay as it was, each recording must work on the real
// memfd or fail with a clear error, and the target is left as it was.
func TestMemfdSwapped(t *testing.T) {
	exe := buildHostile(t)
	dir := publicDir(t)
	secret := filepath.Join(dir, "secret")
	want := bytes.Repeat([]byte("root-only secret\n"), 64<<10)
	if err := os.WriteFile(secret, want, 0o600); err != nil {
		t.Fatal(err)
	}
	tp, ctl := startHostileCtl(t, exe, dir, "swap="+secret)
	t.Cleanup(func() { testHookShared = func(string, int) {} })
	for _, tc := range []struct {
		stage, cmd string
		want       string // "" (works), "tampered" (ErrSharedTampered) or an error text
	}{
		// The moment a tracer that reopened the memfd by path did so.
		{"mapped", "swap", ""},
		// Where the tracer takes its copy: it gets the O_PATH fd.
		{"sized", "swap", "tampered"},
		// After the tracer took its copy: the target maps a memfd of its
		// own, or fails to map the O_PATH fd.
		{"taken", "fake", "tampered"},
		{"taken", "swap", "bad file descriptor"},
	} {
		t.Run(tc.stage+"-"+tc.cmd, func(t *testing.T) {
			before := testtarget.TakeSnapshot(t, tp.Pid())
			acted := false
			testHookShared = func(stage string, fd int) {
				if stage != tc.stage || acted {
					return
				}
				acted = true
				fmt.Fprintf(ctl, "%s %d\n", tc.cmd, fd)
				if l, err := tp.Expect("ctl ", 30*time.Second); err != nil || l != fmt.Sprintf("ctl %d 0", fd) {
					t.Errorf("%s %d in the target: %q, %v", tc.cmd, fd, l, err)
				}
			}
			out := filepath.Join(t.TempDir(), "rec.data")
			s, err := Start(tp.Pid(), Options{Funcs: []string{"hot_*"}, Output: out, Chunks: 4})
			testHookShared = func(string, int) {}
			if !acted {
				t.Fatalf("the tracer never reached step %s", tc.stage)
			}
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("start: %v", err)
			case tc.want == "":
				hostileAlive(t, tp)
				if err := s.Close(); err != nil {
					t.Fatalf("close: %v", err)
				}
				rec, err := tracefile.Read(out)
				if err != nil {
					t.Fatal(err)
				}
				if len(rec.Events) == 0 {
					t.Errorf("recording worked but holds no event: it was not our memfd")
				}
			case err == nil:
				s.Close()
				t.Fatalf("recording started, want an error (%s)", tc.want)
			case tc.want == "tampered" && !errors.Is(err, ErrSharedTampered),
				tc.want != "tampered" && !strings.Contains(err.Error(), tc.want):
				t.Errorf("error %v, want %s", err, tc.want)
			default:
				t.Logf("refused: %v", err)
			}
			got, err := os.ReadFile(secret)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("the root-only file was written through the swapped fd (first bytes % x)", got[:16])
			}
			hostileAlive(t, tp)
			testtarget.CheckText(t, tp.Pid())
			before.CheckSame(t, tp.Pid())
		})
	}
}

// TestMemfdSwapRace is the attack of TestMemfdSwapped as the target
// really runs it: watcher threads dup2 an O_PATH fd of a root-only file
// over livetrace's memfd as soon as it shows in /proc/self/fd, or once
// the target has mapped it. Against a tracer that reopened the memfd by
// path, it wrote into the root file in most runs. The root file must stay
// as it was, and each recording either works (on the real memfd) or fails
// with a clear error. How often the watchers win depends on the load of
// the machine; TestMemfdSwapped does the same at chosen moments.
func TestMemfdSwapRace(t *testing.T) {
	exe := buildHostile(t)
	dir := publicDir(t)
	secret := filepath.Join(dir, "secret")
	// Larger than the buffer: a tracer fooled into mapping it does not
	// fault, it just writes into it.
	want := bytes.Repeat([]byte("root-only secret\n"), 64<<10)
	if err := os.WriteFile(secret, want, 0o600); err != nil {
		t.Fatal(err)
	}
	tp := startHostile(t, exe, "swap="+secret)
	hostileAlive(t, tp)
	// At least 6 attempts, and more (up to 20) until the target has
	// swapped the fd 3 times: on a loaded machine its watcher threads
	// can miss the moment.
	attempts, worked, swaps := 0, 0, 0
	for i := 0; i < 20 && (i < 6 || swaps < 3); i++ {
		attempts++
		// Late: once the target has mapped the memfd, the moment the
		// tracer used to open it by path. Early: before its ftruncate.
		when := "late"
		if i%3 == 2 {
			when = "early"
		}
		ask(t, tp, when, "ok")
		out := filepath.Join(t.TempDir(), "rec.data")
		s, err := Start(tp.Pid(), Options{Funcs: []string{"hot_*"}, Output: out, Chunks: 4})
		if err == nil {
			hostileAlive(t, tp)
			if _, err := s.Poll(); err != nil {
				t.Errorf("poll: %v", err)
			}
			if err := s.Close(); err != nil {
				t.Errorf("close: %v", err)
			}
			rec, err := tracefile.Read(out)
			if err != nil {
				t.Fatal(err)
			}
			if len(rec.Events) == 0 {
				t.Errorf("attempt %d: recording worked but holds no event: it was not our memfd", i)
			}
			worked++
		} else if !errors.Is(err, ErrSharedTampered) {
			// The swap can also land between memfd_create and the
			// target's ftruncate or mmap, which then fail (EBADF on an
			// O_PATH fd): a clear error too.
			if !strings.Contains(err.Error(), "bad file descriptor") {
				t.Errorf("attempt %d (%s): unexpected error: %v", i, when, err)
			} else {
				t.Logf("attempt %d (%s): failed: %v", i, when, err)
			}
		} else {
			t.Logf("attempt %d (%s): refused: %v", i, when, err)
		}
		got, err := os.ReadFile(secret)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("attempt %d: the root-only file was written through the swapped fd (first bytes % x)", i, got[:16])
		}
		hostileAlive(t, tp)
		testtarget.CheckText(t, tp.Pid())
		swaps, _ = strconv.Atoi(strings.TrimPrefix(ask(t, tp, "swapped", "swapped"), "swapped "))
	}
	t.Logf("%d of %d recordings worked; the target swapped the fd %d times", worked, attempts, swaps)
}

// TestMemfdTruncated: the target takes a copy of livetrace's memfd (dup'd
// in the moment it sits in its fd table) and truncates it while recorded.
// The memfd is sealed, so the truncation fails; the tracer keeps reading
// its mapping, and detaches cleanly with the text restored. (Unsealed, the
// tracer died of SIGBUS with the sites patched.)
func TestMemfdTruncated(t *testing.T) {
	exe := buildHostile(t)
	dir := publicDir(t)
	tp, ctl := startHostileCtl(t, exe, dir)
	before := testtarget.TakeSnapshot(t, tp.Pid())
	t.Cleanup(func() { testHookShared = func(string, int) {} })
	testHookShared = func(stage string, fd int) {
		if stage != "mapped" {
			return
		}
		fmt.Fprintf(ctl, "grab %d\n", fd)
		if l, err := tp.Expect("ctl ", 30*time.Second); err != nil || l != fmt.Sprintf("ctl %d 0", fd) {
			t.Errorf("grab %d in the target: %q, %v", fd, l, err)
		}
	}
	s, err := Start(tp.Pid(), Options{Funcs: []string{"hot_*"}, Output: filepath.Join(t.TempDir(), "rec.data")})
	testHookShared = func(string, int) {}
	if err != nil {
		t.Fatal(err)
	}
	if l := ask(t, tp, "grabbed", "grabbed"); l == "grabbed -1" {
		t.Fatal("the target did not get hold of the memfd")
	}
	hostileAlive(t, tp)
	reply := ask(t, tp, "truncate", "truncate")
	eperm := fmt.Sprint(int(unix.EPERM))
	if f := strings.Fields(reply); len(f) != 5 || f[1] != "-1" || f[2] != eperm || f[3] != "-1" || f[4] != eperm {
		t.Errorf("the target resized the memfd: %q, want both ftruncates to fail with EPERM", reply)
	}
	hostileAlive(t, tp)
	// Poll on this goroutine: a fault on a shrunk mapping here becomes a
	// panic that the test reports. (A fault on the ptrace thread, which
	// hands the chunks of exiting threads over, still crashes the test.)
	func() {
		defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
		defer func() {
			if r := recover(); r != nil {
				t.Fatalf("the tracer faulted on the shared memory: %v", r)
			}
		}()
		for i := 0; i < 20; i++ {
			if _, err := s.Poll(); err != nil {
				t.Errorf("poll: %v", err)
			}
			time.Sleep(time.Millisecond)
		}
		if err := s.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	}()
	hostileAlive(t, tp)
	testtarget.CheckText(t, tp.Pid())
	// The grabbed copy is the target's own fd; the mappings are as before.
	now := testtarget.TakeSnapshot(t, tp.Pid())
	if strings.Join(before.Maps, "\n") != strings.Join(now.Maps, "\n") {
		t.Errorf("mappings changed:\nbefore:\n%s\nafter:\n%s", strings.Join(before.Maps, "\n"), strings.Join(now.Maps, "\n"))
	}
}

// TestSigtrapHandlerKept: the target installs its own SIGTRAP handler
// while recorded. Detach must not put back the action from before the
// attach over it: after detach, raise(SIGTRAP) runs the target's handler
// (the default action would kill it).
func TestSigtrapHandlerKept(t *testing.T) {
	exe := buildHostile(t)
	tp := startHostile(t, exe)
	s, err := Start(tp.Pid(), Options{Funcs: []string{"hot_*"}, Output: filepath.Join(t.TempDir(), "rec.data")})
	if err != nil {
		t.Fatal(err)
	}
	if m, why := s.Mode(); m.String() != "live" {
		t.Fatalf("mode %v (%s): the SIGTRAP backstop is only installed in live mode", m, why)
	}
	ask(t, tp, "trap", "trap installed")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if l := ask(t, tp, "raise", "raised"); l != "raised 1" {
		t.Errorf("after detach: %q, want the target's handler to have run once", l)
	}
	testtarget.CheckText(t, tp.Pid())

	// Without a handler of its own, the target gets its previous action
	// (its handler, from the first round) back.
	s, err = Start(tp.Pid(), Options{Funcs: []string{"hot_*"}, Output: filepath.Join(t.TempDir(), "rec.data")})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if l := ask(t, tp, "raise", "raised"); l != "raised 2" {
		t.Errorf("second detach: %q, want the target's handler to have run again", l)
	}
}

// TestForgedTIDs: the target writes 155,000 made-up thread ids into its
// chunk headers. Each used to cost the tracer a map entry (and a /proc
// read): RSS grew by tens of MB. Only the target's real threads count;
// the records of the others are dropped and reported as malformed.
func TestForgedTIDs(t *testing.T) {
	const forged = 155000
	run := func(t *testing.T, filter bool) (threads int, corrupt uint64, rss int64, rescans int) {
		cfg := agent.Config{Chunks: 64, ChunkRecords: 4, Sites: []agent.Site{{Addr: 0x1000, Target: 0x2000}}}
		mem, err := unix.Mmap(-1, 0, agent.SharedSize(cfg), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Munmap(mem)
		if err := agent.InitShared(mem, cfg); err != nil {
			t.Fatal(err)
		}
		cons, err := agent.NewConsumer(mem)
		if err != nil {
			t.Fatal(err)
		}
		w, err := tracefile.Create(filepath.Join(t.TempDir(), "rec.data"))
		if err != nil {
			t.Fatal(err)
		}
		pid, me := os.Getpid(), unix.Gettid()
		s := &Session{pid: pid, lost: map[uint32]uint64{}, threads: map[uint32]string{}, w: w, cons: cons,
			sel: []selected{{addr: 0x1000}}, inj: &injection{}}
		if filter {
			s.inj.tids = newTIDSet(pid, []int{me})
			cons.SetTIDFilter(s.inj.tids.accept)
		}
		le := binary.LittleEndian
		chunkOff := le.Uint64(mem[agent.SharedHdrChunkOffOff:])
		chunkSize := le.Uint64(mem[agent.SharedHdrChunkSizeOff:])
		rec := agent.EncodeRecord(agent.Record{TSC: 1, Kind: agent.KindEntry})
		runtime.GC()
		rss0 := vmRSS(t)
		seq, tid := uint64(0), uint32(1<<22)
		for n := 0; n < forged; {
			for i := uint64(0); i < uint64(cfg.Chunks) && n < forged; i++ {
				h := chunkOff + i*chunkSize
				copy(mem[h+agent.SizeofChunkHdr:], rec[:])
				owner := tid
				if i == 0 {
					owner = uint32(me) // a real thread: its records go through
				} else {
					tid++
					n++
				}
				seq++
				le.PutUint32(mem[h+agent.ChunkHdrTidOff:], owner)
				le.PutUint32(mem[h+agent.ChunkHdrLostOff:], 1)
				le.PutUint32(mem[h+agent.ChunkHdrCountOff:], 1)
				le.PutUint64(mem[agent.SharedHdrSeqOff:], seq) // as lt_publish
				le.PutUint64(mem[h+agent.ChunkHdrSeqOff:], seq)
				le.PutUint32(mem[h+agent.ChunkHdrStateOff:], agent.ChunkFull)
			}
			if _, err := s.Poll(); err != nil {
				t.Fatal(err)
			}
		}
		runtime.GC()
		rss = vmRSS(t) - rss0
		if s.inj.tids != nil {
			rescans = s.inj.tids.rescans
		}
		s.w.Close(tracefile.Meta{})
		return len(s.threads), s.corrupt, rss, rescans
	}
	threads, corrupt, rss, rescans := run(t, true)
	t.Logf("with the filter: %d threads kept, %d records dropped, %d rereads of /proc/PID/task, RSS grew by %d KiB", threads, corrupt, rescans, rss>>10)
	if threads != 1 {
		t.Errorf("%d threads kept for %d forged tids, want 1 (the real one)", threads, forged)
	}
	if corrupt != forged {
		t.Errorf("%d records counted as malformed, want %d", corrupt, forged)
	}
	if rss > 8<<20 {
		t.Errorf("RSS grew by %d KiB", rss>>10)
	}
	// What the forged tids cost without the filter (seconds of /proc
	// reads), for comparison: `make soak` only.
	if os.Getenv("LIVETRACE_SOAK") != "1" {
		return
	}
	threads, _, rss, _ = run(t, false)
	t.Logf("without the filter: %d threads kept, RSS grew by %d KiB", threads, rss>>10)
}

// vmRSS returns the resident set size of the test process, in bytes.
func vmRSS(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	t.Fatal("no VmRSS in /proc/self/status")
	return 0
}

// TestSeccomp: targets whose seccomp filter refuses a system call that
// livetrace makes inside them (remote syscalls and the agent's own) or
// one it does not (process_vm_*: the tracer calls them in its own
// process). Each is traced correctly (stop mode when membarrier is
// refused) or refused up front with ErrSeccomp, and left intact and
// alive: a filter that kills on memfd_create used to kill the target.
func TestSeccomp(t *testing.T) {
	exe := buildHostile(t)
	for _, tc := range []struct {
		filter string
		mode   string // "" = refused with ErrSeccomp
	}{
		// Registration allowed, SYNC_CORE refused: the engine would go
		// live and fail in its first sync.
		{"membarrier@32", ""},
		// The query allowed, the registration refused: stop mode.
		{"membarrier@64", "stop"},
		{"membarrier", "stop"},
		{"process_vm_readv,process_vm_writev", "live"},
		{"process_vm_readv:kill,process_vm_writev:kill", "live"},
		{"memfd_create", ""},
		{"memfd_create:kill", ""},
		{"membarrier:kill", ""},
		{"gettid:kill", ""}, // the agent's first call in each thread
		{"ftruncate:kill", ""},
		{"rt_sigaction", ""},
		{"madvise:kill", ""},
		// A thread in strict mode, blocked in read: the thread a remote
		// syscall would most like to borrow.
		{"strict", ""},
	} {
		t.Run(strings.ReplaceAll(tc.filter, ",", "+"), func(t *testing.T) {
			args := []string{"seccomp=" + tc.filter}
			if tc.filter == "strict" {
				args = []string{"strict"}
			}
			tp := startHostile(t, exe, args...)
			hostileAlive(t, tp)
			before := testtarget.TakeSnapshot(t, tp.Pid())
			out := filepath.Join(t.TempDir(), "rec.data")
			s, err := Start(tp.Pid(), Options{Funcs: []string{"hot_*"}, Output: out})
			if tc.mode == "" {
				if err == nil {
					s.Close()
					t.Fatal("recording started; want a refusal")
				}
				if !errors.Is(err, ErrSeccomp) {
					t.Errorf("error %v, want ErrSeccomp", err)
				}
				t.Logf("refused: %v", err)
			} else {
				if err != nil {
					t.Fatalf("start: %v", err)
				}
				if m, why := s.Mode(); m.String() != tc.mode {
					t.Errorf("mode %v (%s), want %s", m, why, tc.mode)
				}
				hostileAlive(t, tp)
				if err := s.Close(); err != nil {
					t.Fatalf("close: %v", err)
				}
				rec, err := tracefile.Read(out)
				if err != nil {
					t.Fatal(err)
				}
				if len(rec.Events) == 0 {
					t.Error("no events recorded")
				}
			}
			hostileAlive(t, tp)
			testtarget.CheckText(t, tp.Pid())
			before.CheckSame(t, tp.Pid())
		})
	}
}

// TestDenyWriteExecute: a process that may not make memory executable
// once it was not (prctl(PR_SET_MDWE), or the seccomp filter of systemd's
// MemoryDenyWriteExecute, which Debian's redis-server.service and
// systemd's own daemons set) is traced all the same: the agent's code and
// the stubs are mapped executable from the start, never mprotect'ed. The
// attach used to fail on the agent's mprotect (EACCES under PR_SET_MDWE,
// and checkSeccomp refused the filter).
func TestDenyWriteExecute(t *testing.T) {
	exe := buildHostile(t)
	for _, how := range []string{"mdwe", "wx"} {
		t.Run(how, func(t *testing.T) {
			tp := startHostile(t, exe, how)
			hostileAlive(t, tp)
			before := testtarget.TakeSnapshot(t, tp.Pid())
			out := filepath.Join(t.TempDir(), "rec.data")
			s, err := Start(tp.Pid(), Options{Funcs: []string{"hot_*"}, Output: out, Graph: true})
			if err != nil {
				t.Fatalf("start: %v", err)
			}
			hostileAlive(t, tp)
			if err := s.Close(); err != nil {
				t.Fatalf("close: %v", err)
			}
			rec, err := tracefile.Read(out)
			if err != nil {
				t.Fatal(err)
			}
			entries := countEntries(rec)
			exits := countExits(rec)
			// The worker thread runs on through Close: each function may
			// have one call whose exit came after the detach.
			ok := entries["hot_top"] > 0 && entries["hot_leaf"] > 0
			for f, n := range entries {
				ok = ok && n >= exits[f] && n-exits[f] <= 1
			}
			if !ok {
				t.Errorf("entries %v, exits %v; want hot_top and hot_leaf, each entry with its exit", entries, exits)
			}
			hostileAlive(t, tp)
			testtarget.CheckText(t, tp.Pid())
			before.CheckSame(t, tp.Pid())
		})
	}
}

// TestStrictAfterCheck: a thread that enters seccomp strict mode after
// livetrace checked the process (here: before any check at all) must
// never be borrowed for a remote system call: strict mode kills it on any
// call but read, write, exit and sigreturn, and with it the process. The
// strict thread, blocked in read, is the thread proc likes best to borrow.
func TestStrictAfterCheck(t *testing.T) {
	exe := buildHostile(t)
	tp := startHostile(t, exe, "strict")
	deadline := time.Now().Add(5 * time.Second)
	for {
		if ts, err := proc.ReadTrapStatus(tp.Pid()); err == nil && ts.SeccompStrict {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the strict thread never entered strict mode")
		}
		time.Sleep(time.Millisecond)
	}
	p, err := proc.Attach(tp.Pid())
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		r, err := p.HoldRemote()
		if err != nil {
			t.Fatal(err)
		}
		pid, err := r.Syscall(proc.SysGetpid)
		if rerr := r.Release(); err == nil {
			err = rerr
		}
		if err != nil || int(pid) != tp.Pid() {
			t.Fatalf("getpid in the target: %d, %v", pid, err)
		}
	}
	if err := p.Detach(); err != nil {
		t.Fatal(err)
	}
	hostileAlive(t, tp)
}

// TestTargetTakesRange: the target maps a page inside each range livetrace
// chose for a mapping of its own, after livetrace read the target's maps
// and before its mmap, as SQLite's threads map pieces of their WAL index
// while livetrace attaches (the attach failed with "mmap stubs: file
// exists"). It also tries to take a page of the shared memory's range
// before the memfd is mapped there. livetrace must map its agent and its
// stubs elsewhere, never over the target's pages, keep the shared
// memory's range reserved, record, and leave the target as it was.
func TestTargetTakesRange(t *testing.T) {
	exe := buildHostile(t)
	dir := publicDir(t)
	tp, ctl := startHostileCtl(t, exe, dir)
	before := testtarget.TakeSnapshot(t, tp.Pid())
	do := func(cmd string, addr uint64) string {
		fmt.Fprintf(ctl, "%s %x\n", cmd, addr)
		l, err := tp.Expect("ctl ", 30*time.Second)
		if err != nil {
			t.Errorf("%s %#x in the target: %v", cmd, addr, err)
		}
		return l
	}
	t.Cleanup(func() {
		testHookMapNear = func(uint64, uint64) {}
		testHookShared = func(string, int) {}
	})
	var taken []uint64
	var agentBase uint64
	agentTries, stubTries := 0, 0
	testHookMapNear = func(addr, size uint64) {
		// The agent's region holds its private region of 144 MiB;
		// the stubs of a few functions take a page or two.
		if size >= 64<<20 {
			agentBase = addr
			agentTries++
			if agentTries > 1 {
				return
			}
			addr += size / 2 &^ (pageSize - 1)
		} else if stubTries++; stubTries > 1 {
			return
		}
		if l := do("map", addr); l != "ctl 0 0" {
			t.Errorf("map %#x in the target: %q", addr, l)
			return
		}
		taken = append(taken, addr)
	}
	sharedTaken := ""
	testHookShared = func(stage string, fd int) {
		if stage == "taken" {
			sharedTaken = do("map", agent.AddrsAt(agentBase).Shared)
		}
	}
	s, err := Start(tp.Pid(), Options{Funcs: []string{"hot_*"}, Output: filepath.Join(t.TempDir(), "rec.data"), Chunks: 4})
	testHookMapNear = func(uint64, uint64) {}
	testHookShared = func(string, int) {}
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	if agentTries != 2 || stubTries != 2 || len(taken) != 2 {
		t.Errorf("the agent's region was placed in %d tries, the stubs in %d, with %d ranges taken; want 2, 2 and 2", agentTries, stubTries, len(taken))
	}
	if want := fmt.Sprintf("ctl 0 %d", int(unix.EEXIST)); sharedTaken != want {
		t.Errorf("the target mapping a page of the shared memory's range before the memfd: %q, want %q (reserved)", sharedTaken, want)
	}
	hostileAlive(t, tp)
	if err := s.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if s.Summary().Events == 0 {
		t.Errorf("no event recorded")
	}
	hostileAlive(t, tp)
	testtarget.CheckText(t, tp.Pid())
	// The target's pages are its own (never mapped over): it unmaps
	// them, and the mappings are as before.
	for _, addr := range taken {
		if l := do("unmap", addr); l != "ctl 0 0" {
			t.Errorf("unmap %#x in the target: %q", addr, l)
		}
	}
	now := testtarget.TakeSnapshot(t, tp.Pid())
	if strings.Join(before.Maps, "\n") != strings.Join(now.Maps, "\n") {
		t.Errorf("mappings changed:\nbefore:\n%s\nafter:\n%s", strings.Join(before.Maps, "\n"), strings.Join(now.Maps, "\n"))
	}
}
