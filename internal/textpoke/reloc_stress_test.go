package textpoke

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/livetrace/livetrace/internal/elfsite"
	"github.com/livetrace/livetrace/internal/proc"
	"github.com/livetrace/livetrace/internal/reloc"
	"github.com/livetrace/livetrace/internal/testtarget"
	"golang.org/x/sys/unix"
)

// relocStubSize is the slot of one counting relocation stub:
// `lock incq counter(%rip)`, the displaced instructions, the jump back.
const relocStubSize = 64

// TestStressReloc flips random subsets of the functions of a stress
// program built without tracing flags between their original first
// instructions and `jmp stub` (regions) while 4 threads call every
// function in a loop, in live mode (the INT3 protocol, with each thread
// taken out of the regions alone) and in stop mode. Each stub counts its
// calls. The program's results must equal an untraced run, at checkpoints
// every call to an enabled function must have been counted and none to a
// disabled one, and after RestoreAll the text is the file's.
func TestStressReloc(t *testing.T) {
	testtarget.RequireRoot(t)
	toggles := 100
	if os.Getenv("LIVETRACE_SOAK") != "" {
		toggles = 2000
	}
	for _, form := range []testtarget.Form{testtarget.ClangNop5, testtarget.GccMcount} {
		for _, mode := range []Mode{ModeLive, ModeStop} {
			t.Run(string(form)+"/"+mode.String(), func(t *testing.T) {
				bin := testtarget.Build(t, "stress", form, testtarget.Funcs(300), testtarget.NoSites(), testtarget.Shapes())
				stressReloc(t, bin, false, mode, 300, toggles)
			})
		}
	}
}

// TestStressRelocBuilds runs the stress test in live mode on builds with no
// tracing flags in every combination: gcc and clang, -O0, -O2 and -O3,
// with and without -fcf-protection (ENDBR64 first), PIE and not.
func TestStressRelocBuilds(t *testing.T) {
	testtarget.RequireRoot(t)
	toggles := 20
	if os.Getenv("LIVETRACE_SOAK") != "" {
		toggles = 300
	}
	opts := []struct {
		name string
		opt  testtarget.Option
	}{{"O0", testtarget.O0()}, {"O2", testtarget.O2()}, {"O3", testtarget.O3()}}
	for _, cc := range []testtarget.Form{testtarget.ClangNop5, testtarget.GccMcount} {
		for _, o := range opts {
			for _, cet := range []bool{false, true} {
				for _, pie := range []bool{true, false} {
					name := fmt.Sprintf("%s/%s/cet=%v/pie=%v", testtarget.Compiler(cc), o.name, cet, pie)
					t.Run(name, func(t *testing.T) {
						bo := []testtarget.Option{testtarget.Funcs(120), testtarget.NoSites(), testtarget.Shapes(), testtarget.PIE(pie), o.opt}
						if cet {
							bo = append(bo, testtarget.CFProtection())
						}
						bin := testtarget.Build(t, "stress", cc, bo...)
						stressReloc(t, bin, o.name == "O0", ModeLive, 120, toggles)
					})
				}
			}
		}
	}
}

func stressReloc(t *testing.T, bin string, o0 bool, mode Mode, nfn, toggles int) {
	tp := testtarget.Start(t, bin, "-t", "4")
	if _, err := tp.Expect("ready", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	st := &stressTarget{tp: tp, nfn: nfn}
	base2, _ := st.run(t, 2)
	baseRun1, _ := st.run(t, 1)
	st.run(t, 0)

	mods, err := elfsite.LiveModules(tp.Pid())
	if err != nil {
		t.Fatal(err)
	}
	var mod *elfsite.Module
	for _, m := range mods {
		if strings.HasSuffix(strings.TrimSuffix(m.Path, " (deleted)"), bin[strings.LastIndexByte(bin, '/'):]) {
			mod = m
		}
	}
	if mod == nil {
		t.Fatal("the stress program's module is not mapped")
	}
	p, e := st.attach(t, Options{Mode: mode})

	// The relocating sites of fn_*, analyzed again at runtime addresses.
	type site struct {
		fn   int // index of fn_NNNNN
		plan *reloc.Plan
	}
	var sites []site
	refused := 0
	fnIndex := func(name string) int {
		i, err := strconv.Atoi(strings.TrimLeft(name[3:], "0") + "0")
		if err != nil || i/10 >= nfn {
			return -1
		}
		return i / 10
	}
	// Per shape of function (testtarget.Shapes): relocated, or why not.
	shapes := map[string]map[string]int{}
	note := func(fn int, what string) {
		sh := testtarget.StressShape(fn)
		if shapes[sh] == nil {
			shapes[sh] = map[string]int{}
		}
		shapes[sh][what]++
	}
	relocSites, relocRefused := mod.Spec.RelocSites()
	for _, rs := range relocSites {
		f := mod.Spec.Funcs[rs.Func]
		if !strings.HasPrefix(f.Name, "fn_") {
			continue
		}
		i := fnIndex(f.Name) * 10
		if i < 0 {
			continue
		}
		code := make([]byte, f.Size)
		if err := p.ReadMem(mod.Runtime(f.Addr), code); err != nil {
			t.Fatal(err)
		}
		plan, err := reloc.Analyze(code, mod.Runtime(f.Addr), reloc.Options{KeepFirst: rs.Plan.Kept != nil})
		if err != nil || plan.Len != rs.Plan.Len || plan.Entry != mod.Runtime(rs.Addr) {
			t.Fatalf("%s: the live text does not analyze as the file's: %v", f.Name, err)
		}
		if len(plan.EntryBranches) > 0 || 10+plan.MaxStubLen() > relocStubSize {
			// Relocatable, but not with this test's counting stubs: a
			// branch back to the entry would count loop iterations.
			note(i/10, "skipped: loops to its entry")
			refused++
			continue
		}
		note(i/10, "relocated")
		sites = append(sites, site{fn: i / 10, plan: plan})
	}
	for _, r := range relocRefused {
		name := mod.Spec.Funcs[r.Func].Name
		if !strings.HasPrefix(name, "fn_") || fnIndex(name) < 0 {
			continue
		}
		if r.Reason == "" {
			t.Errorf("%s is refused with no reason", name)
		}
		why := r.Reason
		if i := strings.Index(why, " at +"); i >= 0 {
			why = why[:i]
		}
		note(fnIndex(name), "refused: "+why)
		refused++
	}
	kept, live := 0, 0
	for _, s := range sites {
		if s.plan.Kept != nil {
			kept++
		}
		if s.plan.KeptLive {
			live++
		}
	}
	t.Logf("%d functions relocatable (%d with their first instruction kept in place, %d of them keeping flags), %d refused; by shape: %v", len(sites), kept, live, refused, shapes)
	if loop := shapes[testtarget.ShapeLoop]; loop["refused: branch target"] != nfn/8 {
		t.Errorf("functions that loop back to entry+3: %v, want all %d refused for the branch target", loop, nfn/8)
	}
	if tiny := shapes[testtarget.ShapeTiny]; !o0 && tiny["relocated"] > 0 {
		t.Errorf("%d functions shorter than 5 bytes were relocated", tiny["relocated"])
	}
	if len(sites) < nfn/2 {
		t.Fatalf("only %d of %d functions relocatable", len(sites), nfn)
	}

	// Stubs and counters, within rel32 reach of the module.
	stubsSize := uint64(len(sites) * relocStubSize)
	stubsSize = (stubsSize + 4095) &^ 4095
	ctrSize := uint64((len(sites)*8 + 4095) &^ 4095)
	hint := (mod.Mappings[len(mod.Mappings)-1].End + 64<<20) &^ 4095
	var base uint64
	{
		r, err := p.HoldRemote()
		if err != nil {
			t.Fatal(err)
		}
		for try := 0; try < 16 && base == 0; try++ {
			a := hint + uint64(try)<<24
			got, err := r.Syscall(proc.SysMmap, a, stubsSize+ctrSize, unix.PROT_READ|unix.PROT_WRITE,
				unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_FIXED_NOREPLACE, ^uint64(0), 0)
			if err == nil && got == a {
				base = a
			}
		}
		if base == 0 {
			r.Release()
			t.Fatal("no room for the stubs near the module")
		}
		code := make([]byte, stubsSize)
		for k, s := range sites {
			at := base + uint64(k*relocStubSize)
			ctr := base + stubsSize + uint64(8*k)
			// lock incq ctr(%rip). A first instruction left in
			// place (reloc.Plan.Kept) has run already, and the
			// body follows it; a test or compare there leaves flags
			// the body reads: pushfq/popfq around the count.
			var b []byte
			if s.plan.KeptLive {
				b = append(b, 0x9c)
			}
			b = append(b, 0xf0, 0x48, 0xff, 0x05)
			b = binary.LittleEndian.AppendUint32(b, uint32(int32(int64(ctr-(at+uint64(len(b))+4)))))
			if s.plan.KeptLive {
				b = append(b, 0x9d)
			}
			body, err := s.plan.Relocate(at + uint64(len(b)))
			if err != nil {
				r.Release()
				t.Fatal(err)
			}
			copy(code[k*relocStubSize:], append(b, body...))
		}
		if err := p.WriteMem(base, code); err != nil {
			r.Release()
			t.Fatal(err)
		}
		if _, err := r.SyscallOK("mprotect", proc.SysMprotect, base, stubsSize, unix.PROT_READ|unix.PROT_EXEC); err != nil {
			r.Release()
			t.Fatal(err)
		}
		if err := r.Release(); err != nil {
			t.Fatal(err)
		}
	}
	counters := func() []uint64 {
		b := make([]byte, 8*len(sites))
		if err := p.ReadMem(base+stubsSize, b); err != nil {
			t.Fatal(err)
		}
		c := make([]uint64, len(sites))
		for k := range c {
			c[k] = binary.LittleEndian.Uint64(b[8*k:])
		}
		return c
	}

	jmps := make([][]byte, len(sites))
	for k, s := range sites {
		jmps[k], err = s.plan.Patch(base + uint64(k*relocStubSize))
		if err != nil {
			t.Fatal(err)
		}
	}
	cur := make([][]byte, len(sites))
	for k, s := range sites {
		cur[k] = s.plan.Orig()
	}
	enabled := make([]bool, len(sites))
	rng := rand.New(rand.NewSource(int64(len(bin))))
	hammer := func() {
		if err := testtarget.HammerStress(tp, 10*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	stop := func() {
		_, sum, err := testtarget.StopStress(tp, 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(sum) != baseRun1 {
			t.Fatalf("hammer checksum %d, untraced %s", sum, baseRun1)
		}
	}
	check := func() {
		before := counters()
		sum, _ := st.run(t, 2)
		if sum != base2 {
			t.Fatalf("checksum %s differs from the untraced run %s", sum, base2)
		}
		after := counters()
		for k := range sites {
			want := uint64(0)
			if enabled[k] {
				want = 2 * 4
			}
			if got := after[k] - before[k]; got != want {
				t.Fatalf("fn_%05d (enabled %v): counted %d calls, want %d", sites[k].fn, enabled[k], got, want)
			}
		}
	}

	var total Stats
	hammer()
	for n := 0; n < toggles; n++ {
		k := 1 + rng.Intn(len(sites))
		if n%20 == 0 {
			k = len(sites)
		}
		var ps []Patch
		for _, i := range rng.Perm(len(sites))[:k] {
			nw := jmps[i]
			if enabled[i] {
				nw = sites[i].plan.Orig()
			}
			// A thread that reaches the region while its original
			// bytes go back runs them in the stub, uncounted.
			at := base + uint64(i*relocStubSize) + 8
			if sites[i].plan.KeptLive {
				at += 2 // pushfq, popfq
			}
			ps = append(ps, Patch{Addr: sites[i].plan.Entry, Old: cur[i], New: nw, Region: true, Detour: at})
			cur[i] = nw
			enabled[i] = !enabled[i]
		}
		stats, err := e.Apply(ps)
		if err != nil {
			t.Fatalf("batch %d: %v", n, err)
		}
		if stats.Mode != mode {
			t.Fatalf("batch %d: mode %v, want %v", n, stats.Mode, mode)
		}
		total.Traps += stats.Traps
		total.SteppedOut += stats.SteppedOut
		total.RegionCheck += stats.RegionCheck
		total.Sites += stats.Sites
		total.Paused += stats.Paused
		if n%20 == 19 {
			stop()
			check()
			hammer()
		}
	}
	stop()
	check()
	t.Logf("%s: %d batches, %d region writes, %d INT3 hits emulated, %d threads stepped out of regions, threads paused %v in all, region checks %v in all",
		mode, toggles, total.Sites, total.Traps, total.SteppedOut, total.Paused, total.RegionCheck)

	if _, err := e.RestoreAll(); err != nil {
		t.Fatal(err)
	}
	for k, s := range sites {
		got := make([]byte, s.plan.Len)
		if err := p.ReadMem(s.plan.Entry, got); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, s.plan.Orig()) {
			t.Fatalf("fn_%05d at %#x holds % x after restore, file has % x", s.fn, s.plan.Entry, got, s.plan.Orig())
		}
		if k > 20 {
			break // CheckText covers the rest
		}
	}
	if err := p.Detach(); err != nil {
		t.Fatal(err)
	}
	testtarget.CheckText(t, tp.Pid())
	if sum, _ := st.run(t, 2); sum != base2 {
		t.Fatal("checksum changed after restore")
	}
}
