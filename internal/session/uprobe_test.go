package session

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/livetrace/livetrace/internal/proc"
	"github.com/livetrace/livetrace/internal/testtarget"
	"github.com/livetrace/livetrace/internal/textpoke"
	"github.com/livetrace/livetrace/internal/tracefile"
)

// The probed function of the simple fixture; in "loop" mode every function
// is called every 10 ms.
const uprobeVictim = "simple_beta"

// TestUprobeAfterUs: livetrace traces every function, then bpftrace puts a
// uprobe on one of them. Closing the session must not switch the uprobe
// off: the text is then the original one with the uprobe in place, the
// uprobe keeps counting, and once bpftrace exits the text is the original.
func TestUprobeAfterUs(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := simpleCopy(t, testtarget.ClangNop5)
	tp := startLoop(t, bin)
	out := filepath.Join(t.TempDir(), "rec.data")
	s, err := Start(tp.Pid(), Options{Funcs: []string{"simple_*"}, Output: out})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var addr uint64
	var orig []byte
	for _, x := range s.sel {
		if x.name == uprobeVictim {
			addr, orig = x.addr, x.orig
		}
	}
	if addr == 0 {
		t.Fatalf("%s is not traced", uprobeVictim)
	}
	call := siteBytes(t, tp.Pid(), addr)
	bt := startBpftrace(t, bin, uprobeVictim, tp.Pid(), addr, call)
	pollFor(t, s, 300*time.Millisecond)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	held := s.Held()
	if len(held) != 1 || held[0].Name != uprobeVictim || !held[0].Uprobe {
		t.Fatalf("Held() = %+v, want %s held by a uprobe", held, uprobeVictim)
	}
	checkTextUprobe(t, tp.Pid(), addr, orig)
	n0 := bt.count(t)
	if n := bt.waitCount(t, n0+10); n < n0+10 {
		t.Fatalf("the uprobe counted %d calls in 5 s after livetrace detached, want 10 or more (one every 10 ms)", n-n0)
	}
	bt.stop(t)
	testtarget.CheckText(t, tp.Pid())
	rec, err := tracefile.Read(out)
	check(t, err)
	if countEntries(rec)["simple_alpha"] == 0 {
		t.Error("no call of simple_alpha recorded")
	}
}

// TestUprobeBeforeUs: bpftrace's uprobe is on a function before livetrace
// attaches. The recording must go ahead without that function, say so,
// record the others, and leave the uprobe counting. With NOP5 sites (the
// kernel turns its INT3 into a CALL at the first hit) and with sleds (it
// keeps the INT3; the other sleds are converted in stop mode).
func TestUprobeBeforeUs(t *testing.T) {
	testtarget.RequireRoot(t)
	for _, form := range []testtarget.Form{testtarget.ClangNop5, testtarget.GccSled} {
		t.Run(string(form), func(t *testing.T) { uprobeBeforeUs(t, form) })
	}
}

func uprobeBeforeUs(t *testing.T, form testtarget.Form) {
	bin := simpleCopy(t, form)
	tp := startLoop(t, bin)
	addr, orig := fileSite(t, tp.Pid(), uprobeVictim)
	bt := startBpftrace(t, bin, uprobeVictim, tp.Pid(), addr, orig)
	bt.waitCount(t, 1) // one hit: on a NOP5 the kernel turns its INT3 into a CALL
	out := filepath.Join(t.TempDir(), "rec.data")
	s, err := Start(tp.Pid(), Options{Funcs: []string{"simple_*"}, Output: out})
	if err != nil {
		t.Fatalf("record with a uprobe on %s: %v", uprobeVictim, err)
	}
	defer s.Close()
	held := s.Held()
	if len(held) != 1 || held[0].Name != uprobeVictim || !held[0].Uprobe || held[0].Addr != addr {
		t.Fatalf("Held() = %+v, want %s at %#x held by a uprobe", held, uprobeVictim, addr)
	}
	if got := DescribeHeld("skipped", held); len(got) != 1 || got[0] != "skipped 1 site held by uprobes: "+uprobeVictim {
		t.Errorf("DescribeHeld = %q", got)
	}
	n0 := bt.count(t)
	pollFor(t, s, 300*time.Millisecond)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if n := bt.count(t); n <= n0 {
		t.Errorf("the uprobe counted no call while livetrace traced")
	}
	rec, err := tracefile.Read(out)
	check(t, err)
	got := countEntries(rec)
	if got["simple_alpha"] == 0 || got[uprobeVictim] != 0 {
		t.Errorf("recorded %d calls of simple_alpha and %d of %s; want some and none", got["simple_alpha"], got[uprobeVictim], uprobeVictim)
	}
	checkTextUprobe(t, tp.Pid(), addr, orig)
	n1 := bt.count(t)
	if n := bt.waitCount(t, n1+10); n < n1+10 {
		t.Fatalf("the uprobe counted %d calls in 5 s after livetrace detached, want 10 or more", n-n1)
	}
	bt.stop(t)
	testtarget.CheckText(t, tp.Pid())
}

func pollFor(t *testing.T, s *Session, d time.Duration) {
	t.Helper()
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		if _, err := s.Poll(); err != nil {
			t.Fatal(err)
		}
	}
}

// simpleCopy builds the simple fixture and copies it into a directory of
// the test: a uprobe is set on a file, and other tests run the cached
// build at the same time.
func simpleCopy(t *testing.T, form testtarget.Form) string {
	t.Helper()
	src := testtarget.Build(t, testtarget.Simple, form)
	b, err := os.ReadFile(src)
	check(t, err)
	dst := filepath.Join(t.TempDir(), "simple")
	check(t, os.WriteFile(dst, b, 0o755))
	return dst
}

func startLoop(t *testing.T, bin string) *testtarget.Process {
	t.Helper()
	tp := testtarget.Start(t, bin, "loop")
	if _, err := tp.Expect("ready", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	return tp
}

// fileSite returns the runtime address and the file bytes of the site of
// function name in process pid.
func fileSite(t *testing.T, pid int, name string) (uint64, []byte) {
	t.Helper()
	s := &Session{pid: pid, opts: Options{Funcs: []string{name}}}
	check(t, s.discover())
	if len(s.sel) != 1 {
		t.Fatalf("%d sites for %s", len(s.sel), name)
	}
	return s.sel[0].addr, s.sel[0].orig
}

func siteBytes(t *testing.T, pid int, addr uint64) []byte {
	t.Helper()
	m, err := proc.OpenMem(pid)
	check(t, err)
	defer m.Close()
	b := make([]byte, 5)
	check(t, m.Read(addr, b))
	return b
}

// checkTextUprobe checks that the executable text of pid is its files'
// except at the site addr, which holds the uprobe's INT3 over orig or its
// CALL into the kernel's trampoline.
func checkTextUprobe(t *testing.T, pid int, addr uint64, orig []byte) {
	t.Helper()
	maps, err := proc.ReadMaps(pid)
	check(t, err)
	mem, err := proc.OpenMem(pid)
	check(t, err)
	defer mem.Close()
	areas, err := textpoke.UprobeAreas(pid)
	check(t, err)
	for _, m := range maps {
		if !m.Exec() || !m.FileBacked() {
			continue
		}
		live := make([]byte, m.End-m.Start)
		check(t, mem.Read(m.Start, live))
		disk := make([]byte, len(live))
		f, err := os.Open(m.Path)
		check(t, err)
		n, _ := f.ReadAt(disk, int64(m.Offset))
		f.Close()
		live, disk = live[:n], disk[:n]
		if addr >= m.Start && addr+5 <= m.Start+uint64(n) {
			off := addr - m.Start
			if site := live[off : off+5]; !textpoke.HeldByUprobe(addr, site, orig, areas) {
				t.Fatalf("site %#x holds % x: not the uprobe (areas %v)", addr, site, areas)
			}
			copy(live[off:off+5], disk[off:off+5])
		}
		if !bytes.Equal(live, disk) {
			for i := range live {
				if live[i] != disk[i] {
					t.Fatalf("%s: text at %#x is %#x in memory, %#x in the file", m.Path, m.Start+uint64(i), live[i], disk[i])
				}
			}
		}
	}
}

// bpftrace is a running `bpftrace` that counts the calls of one function
// with a uprobe and prints the count every 100 ms.
type bpftrace struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  bytes.Buffer
	done chan struct{}
}

func (b *bpftrace) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.out.Write(p)
}

func (b *bpftrace) output() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.out.String()
}

// startBpftrace puts a uprobe on function fn of the executable bin and
// waits until it is in the text of process pid (site addr no longer holds
// before). bpftrace is stopped at cleanup.
func startBpftrace(t *testing.T, bin, fn string, pid int, addr uint64, before []byte) *bpftrace {
	t.Helper()
	path, err := exec.LookPath("bpftrace")
	if err != nil {
		testtarget.SkipOrFatal(t, "bpftrace is not installed: run `make test`, which installs it (or apt-get install bpftrace)")
	}
	prog := fmt.Sprintf("uprobe:%s:%s { @c = count(); } interval:ms:100 { print(@c); }", bin, fn)
	b := &bpftrace{done: make(chan struct{})}
	b.cmd = exec.Command(path, "-e", prog)
	b.cmd.Stdout, b.cmd.Stderr = b, b
	check(t, b.cmd.Start())
	go func() { b.cmd.Wait(); close(b.done) }()
	t.Cleanup(func() { b.stop(t) })
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(b.output(), "Attaching") || bytes.Equal(siteBytes(t, pid, addr), before) {
		select {
		case <-b.done:
			t.Fatalf("bpftrace exited: %s", b.output())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("bpftrace did not attach to %s within 15 s; output:\n%s", fn, b.output())
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // let it settle
	return b
}

// count returns the last count bpftrace printed (0 before any).
func (b *bpftrace) count(t *testing.T) uint64 {
	t.Helper()
	out := b.output()
	i := strings.LastIndex(out, "@c: ")
	if i < 0 {
		return 0
	}
	line, _, _ := strings.Cut(out[i+4:], "\n")
	n, err := strconv.ParseUint(strings.TrimSpace(line), 10, 64)
	if err != nil {
		t.Fatalf("bpftrace printed %q", out[i:])
	}
	return n
}

// waitCount waits up to 5 s for the count to reach want and returns it.
func (b *bpftrace) waitCount(t *testing.T, want uint64) uint64 {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		n := b.count(t)
		if n >= want || time.Now().After(deadline) {
			return n
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop ends bpftrace, which removes its uprobe, and waits for it.
func (b *bpftrace) stop(t *testing.T) {
	select {
	case <-b.done:
		return
	default:
	}
	b.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-b.done:
	case <-time.After(10 * time.Second):
		b.cmd.Process.Kill()
		<-b.done
		t.Errorf("bpftrace did not exit on SIGINT")
	}
}
