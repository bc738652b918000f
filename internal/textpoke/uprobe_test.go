package textpoke

import (
	"bytes"
	"errors"
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
)

func TestHeldByUprobe(t *testing.T) {
	nop := []byte{0x0f, 0x1f, 0x44, 0x00, 0x08}
	site := uint64(0x401000)
	call := func(target uint64) []byte {
		b, err := Call(site, target)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	areas := []Area{{0x400000, 0x401000}}
	for _, c := range []struct {
		name string
		now  []byte
		want bool
	}{
		{"int3 over the nop", []byte{0xcc, 0x1f, 0x44, 0x00, 0x08}, true},
		{"int3 over something else", []byte{0xcc, 0x1f, 0x44, 0x00, 0x00}, false},
		{"call into [uprobes-trampoline]", call(0x400000), true},
		{"call elsewhere", call(0x500000), false},
		{"jmp into [uprobes]", append([]byte{0xe9}, call(0x400ff0)[1:]...), true},
		{"the nop", nop, false},
	} {
		if got := HeldByUprobe(site, c.now, nop, areas); got != c.want {
			t.Errorf("%s (% x): HeldByUprobe = %v, want %v", c.name, c.now, got, c.want)
		}
	}
}

// TestSiteChangedMidBatch plays another tool that rewrites three sites
// while a live batch enables 200 of them, under 4 threads calling every
// function: one before the first write, one under our INT3 between the
// first and second, one between the second and third (each the way the
// kernel's uprobe optimizer does it: tail under the INT3, sync, byte 0,
// sync). The engine must leave those three alone, say so, patch the rest,
// and restore the rest; the target computes the right results throughout.
func TestSiteChangedMidBatch(t *testing.T) {
	testtarget.RequireRoot(t)
	const nfn = 200
	st := startStress(t, testtarget.ClangNop5, nfn, "-t", "4")
	base2, _ := st.run(t, 2)
	baseRun1, _ := st.run(t, 1)
	p, e := st.attach(t, Options{})
	if e.Mode() != ModeLive {
		t.Fatalf("mode %v (%s), want live", e.Mode(), e.Reason())
	}
	other, err := proc.OpenMem(st.tp.Pid()) // the other tool's own fd
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	// The other tool's instruction: a NOP5 with another displacement.
	foreign := bytes.Clone(st.orig[0])
	foreign[4] ^= 0x01
	victims := map[int]int{1: 10, 2: 77, 3: 150} // pass -> function
	// And a byte of the padding after fn_100, between two of our sites
	// in the same run (never executed): the rest of the batch must not
	// write it back.
	pad := st.ends[100]
	if pad >= st.sites[101] {
		t.Fatalf("no padding between fn_100 (ends %#x) and fn_101 (%#x)", pad, st.sites[101])
	}
	padWas := make([]byte, 1)
	if err := other.Read(pad, padWas); err != nil {
		t.Fatal(err)
	}
	padNew := []byte{padWas[0] ^ 0xff}
	var hookErr error
	testHookPass = func(pass int, sync func() error) {
		a := st.sites[victims[pass]]
		var err error
		if pass == 2 {
			hookErr = errors.Join(hookErr, other.Write(pad, padNew))
		}
		if pass == 1 {
			// A NOP5 whose displacement byte changes stays a NOP5 in
			// every state: one byte, no protocol needed.
			err = other.Write(a+4, foreign[4:])
		} else {
			err = errors.Join(other.Write(a+1, foreign[1:]), sync(), other.Write(a, foreign[:1]), sync())
		}
		hookErr = errors.Join(hookErr, err)
	}
	defer func() { testHookPass = nil }()

	if err := testtarget.HammerStress(st.tp, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	stats, err := e.Apply(st.enable(t, upTo(nfn, 1)...))
	testHookPass = nil
	if err != nil || hookErr != nil {
		t.Fatalf("apply: %v (hook: %v)", err, hookErr)
	}
	if stats.Held != 3 || stats.Sites != nfn-3 {
		t.Errorf("stats: %d sites written, %d held; want %d and 3", stats.Sites, stats.Held, nfn-3)
	}
	_, sum, err := testtarget.StopStress(st.tp, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(sum) != baseRun1 {
		t.Fatalf("hammer checksum %d, untraced %s", sum, baseRun1)
	}
	wantHeld := func(when string) {
		t.Helper()
		held := e.Held()
		if len(held) != 3 {
			t.Fatalf("%s: Held() = %+v, want the 3 sites the other tool wrote", when, held)
		}
		for k, h := range held {
			if want := st.sites[victims[k+1]]; h.Addr != want || !bytes.Equal(h.Found, foreign) || h.Uprobe {
				t.Errorf("%s: held[%d] = {%#x % x uprobe=%v}, want {%#x % x uprobe=false}", when, k, h.Addr, h.Found, h.Uprobe, want, foreign)
			}
		}
	}
	wantHeld("after apply")
	checkPad := func(when string) {
		t.Helper()
		got := make([]byte, 1)
		if err := other.Read(pad, got); err != nil {
			t.Fatal(err)
		}
		if got[0] != padNew[0] {
			t.Errorf("%s: the padding byte the other tool wrote at %#x is %#x again, not %#x", when, pad, got[0], padNew[0])
		}
	}
	checkPad("after apply")
	st.run(t, 0)
	sum2, counts := st.run(t, 2)
	if sum2 != base2 {
		t.Fatalf("checksum %s, untraced %s", sum2, base2)
	}
	isVictim := func(i int) bool { return i == victims[1] || i == victims[2] || i == victims[3] }
	for i, c := range counts {
		want := uint64(8)
		if isVictim(i) {
			want = 0
		}
		if c != want {
			t.Errorf("fn %d: %d calls counted, want %d", i, c, want)
		}
	}
	if _, err := e.RestoreAll(); err != nil {
		t.Fatal(err)
	}
	wantHeld("after restore")
	checkPad("after restore")
	if err := p.Detach(); err != nil {
		t.Fatal(err)
	}
	for i, a := range st.sites {
		want := st.orig[i]
		if isVictim(i) {
			want = foreign
		}
		got := make([]byte, 5)
		if err := other.Read(a, got); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("fn %d at %#x holds % x after restore, want % x", i, a, got, want)
		}
	}
	if sum, _ := st.run(t, 2); sum != base2 {
		t.Fatal("checksum changed after detach")
	}
	// The other tool leaves (its NOP5 and the original are both NOP5s;
	// the workers are parked).
	for _, i := range victims {
		if err := other.Write(st.sites[i]+4, st.orig[i][4:]); err != nil {
			t.Fatal(err)
		}
	}
	if err := other.Write(pad, padWas); err != nil {
		t.Fatal(err)
	}
	testtarget.CheckText(t, st.tp.Pid())
}

// TestUprobeOverOurCall: livetrace patches first, then bpftrace puts a
// uprobe on one of the patched functions while no thread calls it, so the
// uprobe stays an INT3 over our CALL. Restoring must keep the INT3 (the
// uprobe keeps counting after we detach), put the original tail under it,
// and the text must be the original once bpftrace exits. Both protocols.
func TestUprobeOverOurCall(t *testing.T) {
	testtarget.RequireRoot(t)
	for _, mode := range []Mode{ModeLive, ModeStop} {
		t.Run(mode.String(), func(t *testing.T) { uprobeOverOurCall(t, mode) })
	}
}

func uprobeOverOurCall(t *testing.T, mode Mode) {
	const nfn, victim = 20, 5
	st := startStressBin(t, stressCopy(t, nfn), nfn, "-t", "2")
	base, _ := st.run(t, 1)
	p, e := st.attach(t, Options{Mode: mode})
	if e.Mode() != mode {
		t.Fatalf("mode %v (%s), want %v", e.Mode(), e.Reason(), mode)
	}
	if _, err := e.Apply(st.enable(t, upTo(nfn, 1)...)); err != nil {
		t.Fatal(err)
	}
	a := st.sites[victim]
	call := st.callTo(t, victim)
	bt := startBpftrace(t, st.bin(), testtarget.StressFuncName(victim, nfn), st.tp.Pid(), a, call)
	if got := bt.site(t); got[0] != 0xcc || !bytes.Equal(got[1:], call[1:]) {
		t.Fatalf("uprobe over our call: site holds % x, want cc + % x", got, call[1:])
	}
	stats, err := e.RestoreAll()
	if err != nil {
		t.Fatal(err)
	}
	held := e.Held()
	if stats.Held != 1 || len(held) != 1 || held[0].Addr != a || !held[0].Uprobe {
		t.Fatalf("restore: %d held, Held() = %+v; want site %#x held by a uprobe", stats.Held, held, a)
	}
	want := append([]byte{0xcc}, st.orig[victim][1:]...)
	if got := bt.site(t); !bytes.Equal(got, want) {
		t.Fatalf("after restore the site holds % x, want the uprobe's INT3 over the original: % x", got, want)
	}
	if err := p.Detach(); err != nil {
		t.Fatal(err)
	}
	n0 := bt.count(t)
	if sum, counts := st.run(t, 1); sum != base || counts[victim] != 0 {
		t.Fatalf("after detach: checksum %s (want %s), %d calls counted by our stub", sum, base, counts[victim])
	}
	if n := bt.waitCount(t, n0+2); n < n0+2 {
		t.Fatalf("the uprobe counted %d hits after we detached, want %d (2 threads, 1 pass)", n-n0, 2)
	}
	bt.stop(t)
	testtarget.CheckText(t, st.tp.Pid())
}

// TestUprobeBeforeUs: bpftrace's uprobe is on a function before livetrace
// patches: the batch must skip that site (not refuse the batch), patch the
// others, and leave the uprobe working through patching and restore. Both
// protocols.
func TestUprobeBeforeUs(t *testing.T) {
	testtarget.RequireRoot(t)
	for _, mode := range []Mode{ModeLive, ModeStop} {
		t.Run(mode.String(), func(t *testing.T) { uprobeBeforeUs(t, mode) })
	}
}

func uprobeBeforeUs(t *testing.T, mode Mode) {
	const nfn, victim = 20, 7
	st := startStressBin(t, stressCopy(t, nfn), nfn, "-t", "2")
	base, _ := st.run(t, 1)
	a := st.sites[victim]
	bt := startBpftrace(t, st.bin(), testtarget.StressFuncName(victim, nfn), st.tp.Pid(), a, st.orig[victim])
	p, e := st.attach(t, Options{Mode: mode})
	if e.Mode() != mode {
		t.Fatalf("mode %v (%s), want %v", e.Mode(), e.Reason(), mode)
	}
	stats, err := e.Apply(st.enable(t, upTo(nfn, 1)...))
	if err != nil {
		t.Fatalf("apply with a uprobe on fn %d: %v", victim, err)
	}
	if held := e.Held(); stats.Held != 1 || len(held) != 1 || held[0].Addr != a || !held[0].Uprobe {
		t.Fatalf("apply: %d held, Held() = %+v; want site %#x held by a uprobe", stats.Held, held, a)
	}
	n0 := bt.count(t)
	sum, counts := st.run(t, 1)
	if sum != base {
		t.Fatalf("checksum %s, untraced %s", sum, base)
	}
	for i, c := range counts {
		want := uint64(2)
		if i == victim {
			want = 0
		}
		if c != want {
			t.Errorf("fn %d: %d calls counted, want %d", i, c, want)
		}
	}
	if n := bt.waitCount(t, n0+2); n < n0+2 {
		t.Fatalf("the uprobe counted %d hits while we traced, want 2", n-n0)
	}
	if _, err := e.RestoreAll(); err != nil {
		t.Fatal(err)
	}
	if err := p.Detach(); err != nil {
		t.Fatal(err)
	}
	if got := bt.site(t); !HeldByUprobe(a, got, st.orig[victim], mustAreas(t, st.tp.Pid())) {
		t.Fatalf("after restore the site holds % x, not the uprobe", got)
	}
	n1 := bt.count(t)
	st.run(t, 1)
	if n := bt.waitCount(t, n1+2); n < n1+2 {
		t.Fatalf("the uprobe counted %d hits after we detached, want 2", n-n1)
	}
	bt.stop(t)
	testtarget.CheckText(t, st.tp.Pid())
}

func mustAreas(t *testing.T, pid int) []Area {
	t.Helper()
	a, err := UprobeAreas(pid)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// bin returns the path of the stress target's executable.
func (st *stressTarget) bin() string {
	p, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", st.tp.Pid()))
	return p
}

// stressCopy builds the stress fixture and copies it into a directory of
// the test: a uprobe is set on a file, and other tests run the cached
// build at the same time.
func stressCopy(t *testing.T, nfn int) string {
	t.Helper()
	src := testtarget.Build(t, "stress", testtarget.ClangNop5, testtarget.Funcs(nfn))
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), filepath.Base(src))
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return dst
}

// bpftrace is a running `bpftrace` that counts the calls of one function
// with a uprobe and prints the count every 100 ms.
type bpftrace struct {
	cmd  *exec.Cmd
	pid  int
	addr uint64
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
// waits until it is in the text of process pid: site addr no longer holds
// before. bpftrace is stopped at cleanup.
func startBpftrace(t *testing.T, bin, fn string, pid int, addr uint64, before []byte) *bpftrace {
	t.Helper()
	path, err := exec.LookPath("bpftrace")
	if err != nil {
		testtarget.SkipOrFatal(t, "bpftrace is not installed: run `make test`, which installs it (or apt-get install bpftrace)")
	}
	prog := fmt.Sprintf("uprobe:%s:%s { @c = count(); } interval:ms:100 { print(@c); }", bin, fn)
	b := &bpftrace{pid: pid, addr: addr, done: make(chan struct{})}
	b.cmd = exec.Command(path, "-e", prog)
	b.cmd.Stdout, b.cmd.Stderr = b, b
	if err := b.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { b.cmd.Wait(); close(b.done) }()
	t.Cleanup(func() { b.stop(t) })
	deadline := time.Now().Add(15 * time.Second)
	for {
		if strings.Contains(b.output(), "Attaching") && !bytes.Equal(b.site(t), before) {
			break
		}
		select {
		case <-b.done:
			t.Fatalf("bpftrace exited: %s", b.output())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("bpftrace did not attach to %s within 15 s; site holds % x; output:\n%s", fn, b.site(t), b.output())
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // let it settle
	return b
}

// site returns the bytes at the probed site.
func (b *bpftrace) site(t *testing.T) []byte {
	t.Helper()
	m, err := proc.OpenMem(b.pid)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	got := make([]byte, 5)
	if err := m.Read(b.addr, got); err != nil {
		t.Fatal(err)
	}
	return got
}

// count returns the last count bpftrace printed (0 before any hit).
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

// stop ends bpftrace (which removes its uprobe) and waits for it.
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
