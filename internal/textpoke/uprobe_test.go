package textpoke

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
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
	// With a partner (the batch's text is far below minPartnerText, and
	// its runs are cut short to give the partner some), the rechecks of
	// some runs are made on another thread.
	for _, partner := range []bool{false, true} {
		t.Run(fmt.Sprintf("partner=%v", partner), func(t *testing.T) {
			if partner {
				defer func(n int, l uint64) { minPartnerText, maxRunLen, testPartnerFirst = n, l, false }(minPartnerText, maxRunLen)
				minPartnerText, maxRunLen, testPartnerFirst = 0, 4096, true
			}
			siteChangedMidBatch(t)
		})
	}
}

func siteChangedMidBatch(t *testing.T) {
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
	if stats.Shared != (minPartnerText == 0) {
		t.Errorf("stats: shared %v, want %v", stats.Shared, minPartnerText == 0)
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
	bt := testtarget.StartBpftrace(t, st.bin(), testtarget.StressFuncName(victim, nfn), st.tp.Pid(), a, call)
	if got := bt.Site(t); got[0] != 0xcc || !bytes.Equal(got[1:], call[1:]) {
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
	if got := bt.Site(t); !bytes.Equal(got, want) {
		t.Fatalf("after restore the site holds % x, want the uprobe's INT3 over the original: % x", got, want)
	}
	if err := p.Detach(); err != nil {
		t.Fatal(err)
	}
	n0 := bt.Count(t)
	if sum, counts := st.run(t, 1); sum != base || counts[victim] != 0 {
		t.Fatalf("after detach: checksum %s (want %s), %d calls counted by our stub", sum, base, counts[victim])
	}
	if n := bt.WaitCount(t, n0+2); n < n0+2 {
		t.Fatalf("the uprobe counted %d hits after we detached, want %d (2 threads, 1 pass)", n-n0, 2)
	}
	bt.Stop(t)
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
	bt := testtarget.StartBpftrace(t, st.bin(), testtarget.StressFuncName(victim, nfn), st.tp.Pid(), a, st.orig[victim])
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
	n0 := bt.Count(t)
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
	if n := bt.WaitCount(t, n0+2); n < n0+2 {
		t.Fatalf("the uprobe counted %d hits while we traced, want 2", n-n0)
	}
	if _, err := e.RestoreAll(); err != nil {
		t.Fatal(err)
	}
	if err := p.Detach(); err != nil {
		t.Fatal(err)
	}
	if got := bt.Site(t); !HeldByUprobe(a, got, st.orig[victim], mustAreas(t, st.tp.Pid())) {
		t.Fatalf("after restore the site holds % x, not the uprobe", got)
	}
	n1 := bt.Count(t)
	st.run(t, 1)
	if n := bt.WaitCount(t, n1+2); n < n1+2 {
		t.Fatalf("the uprobe counted %d hits after we detached, want 2", n-n1)
	}
	bt.Stop(t)
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
