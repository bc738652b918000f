package textpoke

import (
	"bytes"
	"fmt"
	"math/rand"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/livetrace/livetrace/internal/elfsite"
	"github.com/livetrace/livetrace/internal/proc"
	"github.com/livetrace/livetrace/internal/testtarget"
)

// stressTarget is a running stress fixture with its sites resolved.
type stressTarget struct {
	tp    *testtarget.Process
	sites []uint64 // runtime site address of fn_i, in function order
	orig  [][]byte // file bytes of each site
	ends  []uint64 // runtime address of the end of fn_i (its symbol's size)
	stub  uint64   // runtime address of lt_counter_stub
	nfn   int
}

func startStress(t testing.TB, form testtarget.Form, nfn int, args ...string) *stressTarget {
	t.Helper()
	return startStressBin(t, testtarget.Build(t, "stress", form, testtarget.Funcs(nfn)), nfn, args...)
}

// startStressBin is startStress for the stress executable bin, built with
// nfn functions.
func startStressBin(t testing.TB, bin string, nfn int, args ...string) *stressTarget {
	t.Helper()
	tp := testtarget.Start(t, bin, args...)
	if _, err := tp.Expect("ready", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	mods, err := elfsite.LiveModules(tp.Pid())
	if err != nil {
		t.Fatal(err)
	}
	st := &stressTarget{tp: tp, nfn: nfn, sites: make([]uint64, nfn), orig: make([][]byte, nfn), ends: make([]uint64, nfn)}
	found := 0
	for _, m := range mods {
		if m.Spec.Path == "" || !strings.HasSuffix(strings.TrimSuffix(m.Path, " (deleted)"), bin[strings.LastIndexByte(bin, '/'):]) {
			continue
		}
		for _, f := range m.Spec.Funcs {
			if f.Name == "lt_counter_stub" {
				st.stub = m.Runtime(f.Addr)
			}
		}
		for _, s := range m.Spec.Sites {
			if s.Func < 0 {
				continue
			}
			name := m.Spec.Funcs[s.Func].Name
			if !strings.HasPrefix(name, "fn_") {
				continue
			}
			i, err := strconv.Atoi(strings.TrimLeft(name[3:], "0") + "0")
			if err != nil {
				continue
			}
			i /= 10
			if i >= nfn {
				continue
			}
			st.sites[i] = m.Runtime(s.Addr)
			st.ends[i] = m.Runtime(m.Spec.Funcs[s.Func].Addr + m.Spec.Funcs[s.Func].Size)
			st.orig[i] = bytes.Clone(s.Bytes[:])
			found++
		}
	}
	if found != nfn || st.stub == 0 {
		t.Fatalf("found %d of %d sites, stub %#x", found, nfn, st.stub)
	}
	return st
}

// run asks every worker for n passes and returns the checksum and counts.
func (st *stressTarget) run(t testing.TB, n int) (string, []uint64) {
	t.Helper()
	if err := st.tp.Send(fmt.Sprintf("run %d", n)); err != nil {
		t.Fatal(err)
	}
	done, err := st.tp.Expect("done", 60*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	line, err := st.tp.Expect("counts", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(line)[1:]
	counts := make([]uint64, len(f))
	for i, s := range f {
		counts[i], _ = strconv.ParseUint(s, 10, 64)
	}
	return strings.Fields(done)[1], counts
}

// attach seizes the target and makes an engine for it; the process is
// detached at cleanup (Detach is idempotent).
func (st *stressTarget) attach(t testing.TB, opts Options) (*proc.Process, *Engine) {
	t.Helper()
	p, err := proc.Attach(st.tp.Pid())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Detach() })
	e, err := New(p, opts)
	if err != nil {
		t.Fatal(err)
	}
	return p, e
}

// enable returns the patches that turn the NOP of fn_i into a CALL to the
// counting stub, for every i in idx.
func (st *stressTarget) enable(t testing.TB, idx ...int) []Patch {
	ps := make([]Patch, len(idx))
	for k, i := range idx {
		ps[k] = Patch{Addr: st.sites[i], Old: st.orig[i], New: st.callTo(t, i)}
	}
	return ps
}

// upTo returns 0, step, 2*step, ... below n.
func upTo(n, step int) []int {
	var idx []int
	for i := 0; i < n; i += step {
		idx = append(idx, i)
	}
	return idx
}

func (st *stressTarget) callTo(t testing.TB, i int) []byte {
	b, err := Call(st.sites[i], st.stub)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestStress flips random subsets of 1000 sites between NOP and CALL at
// least 500 times while 4 threads call every function in a loop, in every
// site form. The fixture's results must equal an untraced run, and at
// checkpoints (threads parked, then a counted run) every call to an enabled
// function must have been counted, and none to a disabled one. At the end
// the text must be byte-identical to the file.
func TestStress(t *testing.T) {
	testtarget.RequireRoot(t)
	toggles := 500
	if testing.Short() {
		toggles = 100
	}
	if os.Getenv("LIVETRACE_SOAK") != "" {
		toggles = 20000
	}
	for _, form := range testtarget.Forms {
		t.Run(string(form), func(t *testing.T) {
			stressForm(t, form, 1000, toggles)
		})
	}
}

func stressForm(t *testing.T, form testtarget.Form, nfn, toggles int) {
	st := startStress(t, form, nfn, "-t", "4")
	baseRun1, zero := st.run(t, 1)
	base2, _ := st.run(t, 2)
	for i, c := range zero {
		if c != 0 {
			t.Fatalf("untraced count[%d] = %d", i, c)
		}
	}

	p, e := st.attach(t, Options{})
	if e.Mode() != ModeLive {
		t.Fatalf("mode %v (%s), want live", e.Mode(), e.Reason())
	}
	// cur[i] is what site i holds now.
	cur := make([][]byte, nfn)
	copy(cur, st.orig)
	nop := st.orig[0]
	if form == testtarget.GccSled {
		stats, err := e.ConvertSleds(st.sites)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("sled conversion: %d sites, paused %v", stats.Sites, stats.Paused)
		for i := range cur {
			cur[i] = NOP5
		}
		nop = NOP5
	}
	enabled := make([]bool, nfn)
	rng := rand.New(rand.NewSource(int64(len(form))))
	var total Stats

	hammer := func() {
		if err := testtarget.HammerStress(st.tp, 10*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	stop := func() {
		_, sum, err := testtarget.StopStress(st.tp, 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(sum) != baseRun1 {
			t.Fatalf("hammer checksum %d, untraced %s", sum, baseRun1)
		}
	}
	check := func() {
		st.run(t, 0) // reset the counters the hammer phase left
		sum, counts := st.run(t, 2)
		if sum != base2 {
			t.Fatalf("checksum %s differs from the untraced run", sum)
		}
		for i, c := range counts {
			want := uint64(0)
			if enabled[i] {
				want = 2 * 4
			}
			if c != want {
				t.Fatalf("fn %d (enabled %v): counted %d calls, want %d", i, enabled[i], c, want)
			}
		}
	}

	hammer()
	defer func(n int, l uint64) { minPartnerText, maxRunLen = n, l }(minPartnerText, maxRunLen)
	for n := 0; n < toggles; n++ {
		// Every other batch shares its passes with a partner (pass),
		// in short runs.
		if n%2 == 1 {
			minPartnerText, maxRunLen = 0, 4096
		} else {
			minPartnerText, maxRunLen = 1<<30, 256<<10
		}
		// Flip a random subset, from one site to all of them.
		k := 1 + rng.Intn(nfn)
		if n%50 == 0 {
			k = nfn
		}
		var ps []Patch
		for _, i := range rng.Perm(nfn)[:k] {
			var nw []byte
			if enabled[i] {
				nw = nop
			} else {
				nw = st.callTo(t, i)
			}
			ps = append(ps, Patch{Addr: st.sites[i], Old: cur[i], New: nw})
			cur[i] = nw
			enabled[i] = !enabled[i]
		}
		stats, err := e.Apply(ps)
		if err != nil {
			t.Fatalf("batch %d: %v", n, err)
		}
		if stats.Syncs != 3 {
			t.Fatalf("batch %d: %d syncs, want 3", n, stats.Syncs)
		}
		total.Sites += stats.Sites
		total.Writes += stats.Writes
		total.Traps += stats.Traps
		total.Duration += stats.Duration
		if n%100 == 99 {
			stop()
			check()
			hammer()
		}
	}
	stop()
	check()
	t.Logf("%d batches, %d site writes, %d mem writes, %d traps emulated, %v in batches",
		toggles, total.Sites, total.Writes, total.Traps, total.Duration)

	if _, err := e.RestoreAll(); err != nil {
		t.Fatal(err)
	}
	if err := p.Detach(); err != nil {
		t.Fatal(err)
	}
	for i, a := range st.sites {
		got := make([]byte, 5)
		m, err := proc.OpenMem(st.tp.Pid())
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Read(a, got); err != nil {
			t.Fatal(err)
		}
		m.Close()
		if !bytes.Equal(got, st.orig[i]) {
			t.Fatalf("site %d at %#x holds % x after restore, file has % x", i, a, got, st.orig[i])
		}
		if i > 20 {
			break // the full-text comparison below covers the rest
		}
	}
	testtarget.CheckText(t, st.tp.Pid())
	sum, counts := st.run(t, 2)
	if sum != base2 {
		t.Fatal("checksum changed after detach")
	}
	for i, c := range counts {
		if c != 0 {
			t.Fatalf("fn %d counted %d calls after detach", i, c)
		}
	}
}

// TestStopModeChosen checks that a process that blocks or ignores SIGTRAP
// is patched in stop mode, with exact counts, and restored.
func TestStopModeChosen(t *testing.T) {
	testtarget.RequireRoot(t)
	// The third: a process whose threads run with a CET shadow stack,
	// played (this machine may have none).
	for _, arg := range []string{"-block-sigtrap", "-ignore-sigtrap", "shadow-stack"} {
		t.Run(arg, func(t *testing.T) {
			args := []string{"-t", "2", arg}
			if arg == "shadow-stack" {
				args = args[:2]
				trapStatus = func(pid int) (proc.TrapStatus, error) {
					ts, err := proc.ReadTrapStatus(pid)
					ts.ShadowStack = true
					return ts, err
				}
				defer func() { trapStatus = proc.ReadTrapStatus }()
			}
			st := startStress(t, testtarget.ClangNop5, 200, args...)
			base, _ := st.run(t, 2)
			p, e := st.attach(t, Options{})
			if e.Mode() != ModeStop || e.Reason() == "" {
				t.Fatalf("mode %v (%q), want stop with a reason", e.Mode(), e.Reason())
			}
			if arg == "shadow-stack" && !strings.Contains(e.Reason(), "shadow stack") {
				t.Errorf("reason %q does not name the shadow stack", e.Reason())
			}
			if _, err := New(p, Options{Mode: ModeLive}); err == nil {
				t.Fatalf("live mode accepted although %s", e.Reason())
			}
			stats, err := e.Apply(st.enable(t, upTo(200, 2)...))
			if err != nil {
				t.Fatal(err)
			}
			if stats.Paused <= 0 || stats.Mode != ModeStop {
				t.Fatalf("stats %+v: want a measured pause in stop mode", stats)
			}
			sum, counts := st.run(t, 2)
			if sum != base {
				t.Fatal("checksum differs")
			}
			for i, c := range counts {
				want := uint64(0)
				if i%2 == 0 {
					want = 4
				}
				if c != want {
					t.Fatalf("fn %d: %d calls counted, want %d", i, c, want)
				}
			}
			restoreAndDetach(t, p, e, st)
		})
	}
}

// TestPatchesChecked: a batch given sorted, as it is taken without a copy,
// still has its bytes checked: an instruction the trap handler could not
// run refuses the batch, and a no-op patch is left out of it.
func TestPatchesChecked(t *testing.T) {
	testtarget.RequireRoot(t)
	st := startStress(t, testtarget.ClangNop5, 50, "-t", "1")
	p, e := st.attach(t, Options{})
	ps := st.enable(t, upTo(50, 1)...)
	ps[30].New = []byte{0xcc, 0xcc, 0xcc, 0xcc, 0xcc}
	if _, err := e.Apply(ps); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("site %#x: cc cc cc cc cc is not", st.sites[30])) {
		t.Fatalf("err = %v, want the instruction of site 30 refused", err)
	}
	testtarget.CheckText(t, st.tp.Pid())
	ps = st.enable(t, upTo(50, 1)...)
	ps[12].New = st.orig[12]
	stats, err := e.Apply(ps)
	if err != nil || stats.Sites != 49 {
		t.Fatalf("apply with a no-op: %d sites written, err %v; want 49", stats.Sites, err)
	}
	st.run(t, 0)
	_, counts := st.run(t, 1)
	for i, c := range counts {
		if want := uint64(1); (c != want) != (i == 12) {
			t.Errorf("fn %d: %d calls counted, want %d (fn 12: none)", i, c, want)
		}
	}
	restoreAndDetach(t, p, e, st)
}

// restoreAndDetach puts every site back, detaches, and checks that the
// text is the original.
func restoreAndDetach(t *testing.T, p *proc.Process, e *Engine, st *stressTarget) {
	t.Helper()
	if _, err := e.RestoreAll(); err != nil {
		t.Fatal(err)
	}
	if err := p.Detach(); err != nil {
		t.Fatal(err)
	}
	testtarget.CheckText(t, st.tp.Pid())
}

// TestVerifyRefuses checks that a batch with one wrong byte writes nothing
// and names the site.
func TestVerifyRefuses(t *testing.T) {
	testtarget.RequireRoot(t)
	st := startStress(t, testtarget.ClangNop5, 50, "-t", "1")
	p, e := st.attach(t, Options{})
	ps := st.enable(t, upTo(50, 1)...)
	ps[17].Old = []byte{0x90, 0x90, 0x90, 0x90, 0x90}
	_, err := e.Apply(ps)
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("%#x", st.sites[17])) || !strings.Contains(err.Error(), "0f 1f 44 00") {
		t.Fatalf("err = %v, want a verify error naming site 17 and its bytes", err)
	}
	if err := p.Detach(); err != nil {
		t.Fatal(err)
	}
	testtarget.CheckText(t, st.tp.Pid())
}

// TestForeignSIGTRAP checks that a SIGTRAP raised by the application's own
// int3 reaches its handler while we are attached and patching.
func TestForeignSIGTRAP(t *testing.T) {
	testtarget.RequireRoot(t)
	st := startStress(t, testtarget.ClangNop5, 100, "-t", "2", "-own-sigtrap")
	p, e := st.attach(t, Options{})
	if _, err := e.Apply(st.enable(t, upTo(100, 1)...)); err != nil {
		t.Fatal(err)
	}
	for n := 1; n <= 3; n++ {
		if err := st.tp.Send("trap"); err != nil {
			t.Fatal(err)
		}
		line, err := st.tp.Expect("trapped", 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if line != fmt.Sprintf("trapped %d", n) {
			t.Fatalf("got %q, want trapped %d", line, n)
		}
	}
	if _, err := e.RestoreAll(); err != nil {
		t.Fatal(err)
	}
	if err := p.Detach(); err != nil {
		t.Fatal(err)
	}
	testtarget.CheckText(t, st.tp.Pid())
}

// TestBatchSlice checks that a live batch's ptrace thread runs with
// proc.BatchSlice during every pass and gets its default slice back after
// the batch (proc.ShortSlice).
func TestBatchSlice(t *testing.T) {
	testtarget.RequireRoot(t)
	st := startStress(t, testtarget.ClangNop5, 50, "-t", "2")
	_, e := st.attach(t, Options{Mode: ModeLive})
	on, off := st.toggles(t, 50)
	var tid int
	var seen []uint64
	testHookPass = func(pass int, sync func() error) {
		tid = unix.Gettid()
		if a, err := unix.SchedGetAttr(0, 0); err == nil {
			seen = append(seen, a.Runtime)
		}
	}
	defer func() { testHookPass = nil }()
	before, err := unix.SchedGetAttr(0, 0) // a thread of the tracer at the default
	if err != nil {
		t.Fatal(err)
	}
	for _, ps := range [][]Patch{on, off} {
		if _, err := e.Apply(ps); err != nil {
			t.Fatal(err)
		}
	}
	if len(seen) != 6 {
		t.Fatalf("%d passes seen, want 6", len(seen))
	}
	for i, s := range seen {
		if s != uint64(proc.BatchSlice) {
			t.Errorf("pass %d: the ptrace thread's slice is %d ns, want %d", i%3+1, s, proc.BatchSlice)
		}
	}
	a, err := unix.SchedGetAttr(tid, 0)
	if err != nil {
		t.Fatal(err)
	}
	if a.Runtime != before.Runtime || a.Policy != unix.SCHED_NORMAL {
		t.Errorf("after the batches the ptrace thread has slice %d ns (policy %d), want the default %d", a.Runtime, a.Policy, before.Runtime)
	}
}
