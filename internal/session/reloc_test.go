package session

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/livetrace/livetrace/internal/elfsite"
	"github.com/livetrace/livetrace/internal/testtarget"
	"github.com/livetrace/livetrace/internal/tracefile"
)

// TestRelocExactCounts traces a program and its library built with no
// tracing flags at all (gcc and clang, -O0 and -O2, PIE and not, with and
// without ENDBR64): every traced function is a relocating site, written
// with `jmp stub`. The recorded calls equal the program's own counts, and
// the text is byte for byte the file's afterwards.
func TestRelocExactCounts(t *testing.T) {
	testtarget.RequireRoot(t)
	for _, form := range testtarget.Forms {
		for _, o0 := range []bool{false, true} {
			for _, cet := range []bool{false, true} {
				name := string(form) + "-plain"
				opts := []testtarget.Option{testtarget.NoSites()}
				if o0 {
					name += "-O0"
					opts = append(opts, testtarget.O0())
				}
				if cet {
					name += "-cet"
					opts = append(opts, testtarget.CFProtection())
				}
				t.Run(name, func(t *testing.T) {
					tp := startWorkload(t, form, opts...)
					workloadRun(t, tp, 1)
					spawn(t, tp, 2)
					before := testtarget.TakeSnapshot(t, tp.Pid())
					out := filepath.Join(t.TempDir(), "rec.data")
					s, err := Start(tp.Pid(), Options{Funcs: []string{"work_leaf", "work_nested", "work_recurse", "lib_add"}, Output: out})
					if err != nil {
						t.Fatal(err)
					}
					traced := map[string]bool{}
					for _, x := range s.sel {
						if x.site.Form != elfsite.FormReloc {
							t.Errorf("%s: form %s, want reloc (built without flags)", x.name, x.site.Form)
						}
						traced[x.name] = true
					}
					t.Logf("traced %v", traced)
					for _, r := range s.Untraceable() {
						t.Logf("untraceable: %s: %s", r.Name, r.Reason)
					}
					want := spawn(t, tp, 2)
					for fn, n := range workloadRun(t, tp, 50) {
						want[fn] += n
					}
					if err := s.Close(); err != nil {
						t.Fatal(err)
					}
					alive(t, tp)
					rec, err := tracefile.Read(out)
					if err != nil {
						t.Fatal(err)
					}
					got := countEntries(rec)
					// Callers are measured from the relocation stub:
					// work_leaf's are in the program, next to it.
					known := 0
					for _, ev := range rec.Events {
						f := rec.Funcs[ev.Func]
						if ev.Kind != tracefile.KindEntry || f.Name != "work_leaf" || ev.Caller == 0 {
							continue
						}
						known++
						if m := rec.Modules[f.Module]; ev.Caller < m.Base || ev.Caller >= m.Limit {
							t.Fatalf("work_leaf called from %#x, outside its module [%#x, %#x)", ev.Caller, m.Base, m.Limit)
						}
					}
					if known == 0 {
						t.Errorf("no caller of work_leaf known")
					}
					for fn, n := range want {
						if !traced[fn] {
							t.Errorf("%s is not traced", fn)
						}
						if got[fn] != n {
							t.Errorf("%s: recorded %d calls, the program counted %d", fn, got[fn], n)
						}
					}
					if rec.Lost != 0 {
						t.Errorf("%d events lost", rec.Lost)
					}
					testtarget.CheckText(t, tp.Pid())
					before.CheckSame(t, tp.Pid())
					if again := workloadRun(t, tp, 2); again["work_leaf"] != 2*4*3 {
						t.Errorf("after detach: %v", again)
					}
				})
			}
		}
	}
}

// TestRelocLibc traces strtol, qsort, malloc and free in the stock
// libc.so.6 (built without tracing flags) of a running multi-threaded
// program. strtol and qsort counts are exact; libc calls malloc and free
// itself, so theirs are at least the program's and close to it. The text
// is the file's afterwards.
func TestRelocLibc(t *testing.T) {
	tp := startLibcCalls(t, "4")
	workloadRun(t, tp, 1) // bind the PLT entries
	before := testtarget.TakeSnapshot(t, tp.Pid())
	out := filepath.Join(t.TempDir(), "rec.data")
	s, err := Start(tp.Pid(), Options{Modules: []string{"libc.so.6"}, Funcs: []string{"strtol", "qsort", "malloc", "free"}, Output: out})
	if err != nil {
		t.Fatal(err)
	}
	if len(s.sel) != 4 {
		t.Fatalf("%d sites selected, want 4", len(s.sel))
	}
	for _, x := range s.sel {
		if x.site.Form != elfsite.FormReloc || !strings.HasSuffix(s.mods[x.mod].Path, "libc.so.6") {
			t.Errorf("%s: form %s in %s, want reloc in libc.so.6", x.name, x.site.Form, s.mods[x.mod].Path)
		}
	}
	want := workloadRun(t, tp, 2000)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	rec, err := tracefile.Read(out)
	if err != nil {
		t.Fatal(err)
	}
	got := countEntries(rec)
	for _, fn := range []string{"strtol", "qsort"} {
		if got[fn] != want[fn] {
			t.Errorf("%s: recorded %d calls, the program counted %d", fn, got[fn], want[fn])
		}
	}
	// glibc's qsort ends with free(tmp), tmp NULL when its buffer was
	// on the stack: one call of free per qsort on top of the program's.
	libcOwn := map[string]uint64{"malloc": 0, "free": want["qsort"]}
	for fn, own := range libcOwn {
		if got[fn] < want[fn]+own || got[fn] > want[fn]+own+want[fn]/100+50 {
			t.Errorf("%s: recorded %d calls, the program counted %d and libc's qsort %d (libc's own calls come on top, a few)", fn, got[fn], want[fn], own)
		}
	}
	t.Logf("recorded %v, the program counted %v", got, want)
	if rec.Lost != 0 {
		t.Errorf("%d events lost", rec.Lost)
	}
	testtarget.CheckText(t, tp.Pid())
	before.CheckSame(t, tp.Pid())
	if again := workloadRun(t, tp, 3); again["qsort"] != 3*4 {
		t.Errorf("after detach: %v", again)
	}
}

// TestRelocGraph records entries and exits of relocating sites: the stub
// calls the agent with the function's return address at [rsp+8], as a NOP
// site's CALL does, so graph mode hijacks the right slot.
func TestRelocGraph(t *testing.T) {
	testtarget.RequireRoot(t)
	for _, form := range []testtarget.Form{testtarget.ClangNop5, testtarget.GccMcount} {
		t.Run(string(form), func(t *testing.T) {
			tp := startWorkload(t, form, testtarget.NoSites())
			workloadRun(t, tp, 1)
			out := filepath.Join(t.TempDir(), "rec.data")
			s, err := Start(tp.Pid(), Options{Funcs: []string{"work_leaf", "work_nested", "work_recurse", "lib_add"}, Graph: true, Output: out})
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range s.Refused() {
				t.Logf("refused in graph mode: %s: %s", r.Name, r.Reason)
			}
			want := workloadRun(t, tp, 30)
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			alive(t, tp)
			rec, err := tracefile.Read(out)
			check(t, err)
			got := countEntries(rec)
			exits := countExits(rec)
			for fn, n := range want {
				if got[fn] != n || exits[fn] != n {
					t.Errorf("%s: %d entries and %d exits recorded, the program counted %d", fn, got[fn], exits[fn], n)
				}
			}
			testtarget.CheckText(t, tp.Pid())
		})
	}
}

// TestRelocSelection: --only-nop keeps a program built without flags
// untraceable, a module glob that matches nothing is an error naming it,
// a named function that cannot be relocated is reported with its reason,
// and -m keeps the selection to the modules it matches.
func TestRelocSelection(t *testing.T) {
	testtarget.RequireRoot(t)
	tp := startWorkload(t, testtarget.ClangNop5, testtarget.NoSites())
	out := filepath.Join(t.TempDir(), "rec.data")
	_, err := Start(tp.Pid(), Options{Funcs: []string{"work_leaf"}, OnlyNop: true, Output: out})
	if err == nil || !strings.Contains(err.Error(), "no patchable sites") {
		t.Errorf("--only-nop on a build without NOPs: %v, want no patchable sites", err)
	}
	_, err = Start(tp.Pid(), Options{Funcs: []string{"work_leaf"}, Modules: []string{"nosuchlib.so*"}, Output: out})
	if err == nil || !strings.Contains(err.Error(), "no module of process") || !strings.Contains(err.Error(), "nosuchlib.so*") {
		t.Errorf("-m nosuchlib.so*: %v, want no module matches", err)
	}
	// lib_add lives in libltshared.so: -m keeps to it.
	s, err := Start(tp.Pid(), Options{Funcs: []string{"work_leaf", "lib_add", "raise"}, Modules: []string{"libltshared.so", "libc.so.6"}, Output: out})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var names []string
	for _, x := range s.sel {
		names = append(names, x.name)
	}
	if len(names) != 1 || names[0] != "lib_add" {
		t.Errorf("selected %v, want lib_add only (work_leaf is in the program)", names)
	}
	u := s.Untraceable()
	if len(u) != 1 || u[0].Name != "raise" || !strings.Contains(u[0].Reason, "displaced call") {
		t.Errorf("Untraceable() = %+v, want raise: displaced call", u)
	}
}

// TestRelocStripped traces a shared library built without flags and
// stripped (its functions named by .dynsym only), called from a stripped
// program: exact counts, text restored.
func TestRelocStripped(t *testing.T) {
	testtarget.RequireRoot(t)
	strip, err := exec.LookPath("strip")
	if err != nil {
		testtarget.SkipOrFatal(t, "strip is not installed (apt-get install binutils)")
	}
	exe := testtarget.Build(t, testtarget.Workload, testtarget.ClangNop5, testtarget.NoSites())
	dir := t.TempDir()
	for _, f := range []string{exe, testtarget.LibPath(exe)} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(dir, filepath.Base(f))
		if err := os.WriteFile(dst, b, 0o755); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(strip, "--strip-all", dst).CombinedOutput(); err != nil {
			t.Fatalf("strip: %v\n%s", err, out)
		}
	}
	t.Setenv("LD_LIBRARY_PATH", dir) // before the RUNPATH to the unstripped one
	tp := testtarget.Start(t, filepath.Join(dir, filepath.Base(exe)), "-t", "4")
	if _, err := tp.Expect("ready", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	workloadRun(t, tp, 1)
	out := filepath.Join(t.TempDir(), "rec.data")
	s, err := Start(tp.Pid(), Options{Funcs: []string{"lib_*"}, Modules: []string{testtarget.LibName}, Output: out})
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range s.sel {
		m := s.mods[x.mod]
		if !m.Spec.Stripped || !strings.HasPrefix(m.Path, dir) || x.site.Form != elfsite.FormReloc {
			t.Errorf("%s in %s (stripped %v), form %s: want a relocating site of the stripped copy", x.name, m.Path, m.Spec.Stripped, x.site.Form)
		}
	}
	want := workloadRun(t, tp, 40)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	rec, err := tracefile.Read(out)
	check(t, err)
	if got := countEntries(rec); got["lib_add"] != want["lib_add"] || want["lib_add"] == 0 {
		t.Errorf("lib_add: recorded %d calls, the program counted %d", got["lib_add"], want["lib_add"])
	}
	testtarget.CheckText(t, tp.Pid())
}

// TestRelocMixed traces NOP sites of a program and relocating sites of
// libc in one session: the NOP sites go in live, the regions in their own
// stop-mode batch; counts of the NOP sites stay exact and the text is
// restored.
func TestRelocMixed(t *testing.T) {
	testtarget.RequireRoot(t)
	tp := startWorkload(t, testtarget.ClangNop5)
	workloadRun(t, tp, 1)
	out := filepath.Join(t.TempDir(), "rec.data")
	s, err := Start(tp.Pid(), Options{Funcs: []string{"work_leaf", "malloc", "free"}, Output: out})
	if err != nil {
		t.Fatal(err)
	}
	forms := map[string]string{}
	for _, x := range s.sel {
		forms[x.name] = x.site.Form.String()
	}
	if forms["work_leaf"] != "nop5" || forms["malloc"] != "reloc" || forms["free"] != "reloc" {
		t.Errorf("forms %v, want work_leaf nop5, malloc and free reloc", forms)
	}
	want := workloadRun(t, tp, 20)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	rec, err := tracefile.Read(out)
	check(t, err)
	if got := countEntries(rec); got["work_leaf"] != want["work_leaf"] {
		t.Errorf("work_leaf: recorded %d calls, the program counted %d", got["work_leaf"], want["work_leaf"])
	}
	testtarget.CheckText(t, tp.Pid())
	alive(t, tp)
}

// TestRelocLibcAll traces every function of the stock libc.so.6 that can
// be relocated (about 2000), in entry and in graph mode, in a running
// multi-threaded program: the program keeps computing right, qsort's count
// is exact, and the text is restored.
func TestRelocLibcAll(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := testtarget.Build(t, testtarget.LibcCalls, testtarget.ClangNop5, testtarget.NoSites())
	for _, graph := range []bool{false, true} {
		t.Run(fmt.Sprintf("graph=%v", graph), func(t *testing.T) {
			tp := testtarget.Start(t, bin, "-t", "4")
			if _, err := tp.Expect("ready", 10*time.Second); err != nil {
				t.Fatal(err)
			}
			workloadRun(t, tp, 1)
			out := filepath.Join(t.TempDir(), "rec.data")
			t0 := time.Now()
			s, err := Start(tp.Pid(), Options{Modules: []string{"libc.so.6"}, Funcs: []string{"*"}, Graph: graph, Output: out})
			if err != nil {
				t.Fatal(err)
			}
			ps := s.PatchStats()
			t.Logf("%d functions traced (%d refused in graph mode), started in %v, patched in %v", len(s.sel), len(s.Refused()), time.Since(t0), ps.Duration)
			if len(s.sel) < 1500 {
				t.Errorf("only %d functions of libc traced", len(s.sel))
			}
			want := workloadRun(t, tp, 300)
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			rec, err := tracefile.Read(out)
			check(t, err)
			if got := countEntries(rec); got["qsort"] != want["qsort"] || got["strtol"] != want["strtol"] {
				t.Errorf("recorded qsort %d and strtol %d calls, the program counted %d and %d", got["qsort"], got["strtol"], want["qsort"], want["strtol"])
			}
			// Every sigsetjmp and getcontext came back twice, the second
			// time through its saved return address.
			if want["setjmp"] != 300*4 || want["getcontext"] != 300*4 {
				t.Errorf("while traced: %v, want 1200 setjmp and getcontext returns", want)
			}
			testtarget.CheckText(t, tp.Pid())
			if again := workloadRun(t, tp, 2); again["qsort"] != 2*4 || again["setjmp"] != 2*4 {
				t.Errorf("after detach: %v", again)
			}
		})
	}
}

// TestRelocIFunc: -F strlen and -F wcsrchr, IFUNC symbols of libc.so.6
// (their addresses are resolvers, called once at load time), trace the
// implementations the process calls (__strlen_avx2, __strlen_evex, ... by
// the CPU): strlen's read from libc's own IRELATIVE slot, wcsrchr's, which
// libc never calls, from the program's PLT slot. Every call of the
// program's is recorded under the implementation's name, and record says
// which; ctl's enable and disable name it by the IFUNC's name too. An
// IFUNC nothing in the process calls through a GOT (strstr) is refused,
// saying so.
func TestRelocIFunc(t *testing.T) {
	tp := startLibcCalls(t, "2")
	workloadRun(t, tp, 1) // bind the PLT entries
	out := filepath.Join(t.TempDir(), "rec.data")
	s, err := Start(tp.Pid(), Options{Modules: []string{"libc.so.6"}, Funcs: []string{"strlen", "wcsrchr", "strstr"}, Output: out})
	if err != nil {
		t.Fatal(err)
	}
	impl := map[string]string{} // IFUNC -> implementation
	for _, n := range s.IFuncs() {
		var ifunc, fn string
		if _, err := fmt.Sscanf(n, "%s is an IFUNC: tracing %s", &ifunc, &fn); err == nil {
			impl[ifunc] = strings.TrimSuffix(fn, ",")
		}
	}
	if len(s.sel) != 2 || !strings.HasPrefix(impl["strlen"], "__strlen_") || !strings.HasPrefix(impl["wcsrchr"], "__wcsrchr_") {
		t.Fatalf("selected %d functions; IFuncs() = %q", len(s.sel), s.IFuncs())
	}
	if u := s.Untraceable(); len(u) != 1 || u[0].Name != "strstr" || !strings.Contains(u[0].Reason, "no module calls it through a GOT slot") {
		t.Errorf("Untraceable() = %+v, want strstr without a GOT slot", u)
	}
	// ctl names the implementation by the IFUNC's name too.
	if res, err := s.Disable([]string{"strlen"}); err != nil || len(res.Changed) != 1 || res.Changed[0] != impl["strlen"] {
		t.Errorf("disable strlen: %+v, %v; want %s off", res, err, impl["strlen"])
	}
	if res, err := s.Enable([]string{"strlen"}); err != nil || len(res.Changed) != 1 {
		t.Errorf("enable strlen: %+v, %v; want %s on again", res, err, impl["strlen"])
	}
	if res, err := s.Enable([]string{"strlen"}); err != nil || len(res.Changed) != 0 || res.Already != 1 {
		t.Errorf("enable strlen again: %+v, %v; want it already on", res, err)
	}
	want := workloadRun(t, tp, 1000)
	got := countEntries(closeRead(t, s, out))
	// libc calls strlen itself now and then (stdio): a few on top.
	if n := got[impl["strlen"]]; n < want["strlen"] || n > want["strlen"]+50 {
		t.Errorf("%s: recorded %d calls, the program made %d", impl["strlen"], n, want["strlen"])
	}
	if n := got[impl["wcsrchr"]]; n != want["wcsrchr"] {
		t.Errorf("%s: recorded %d calls, the program made %d", impl["wcsrchr"], n, want["wcsrchr"])
	}
	testtarget.CheckText(t, tp.Pid())
}

// startLibcCalls starts the libccalls fixture (stock libc calls, no NOP
// sites) with threads workers, ready for its workload.
func startLibcCalls(tb testing.TB, threads string) *testtarget.Process {
	tb.Helper()
	testtarget.RequireRoot(tb)
	bin := testtarget.Build(tb, testtarget.LibcCalls, testtarget.ClangNop5, testtarget.NoSites())
	tp := testtarget.Start(tb, bin, "-t", threads)
	if _, err := tp.Expect("ready", 10*time.Second); err != nil {
		tb.Fatal(err)
	}
	return tp
}
