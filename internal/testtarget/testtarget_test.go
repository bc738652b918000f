package testtarget

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

const timeout = 20 * time.Second

// funcBytes returns the first n bytes of the function sym in the ELF file
// path.
func funcBytes(t *testing.T, path, sym string, n int) []byte {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	defer f.Close()
	syms, err := f.Symbols()
	if err != nil {
		t.Fatalf("read symbols of %s: %v", path, err)
	}
	var dsyms []elf.Symbol
	if ds, err := f.DynamicSymbols(); err == nil {
		dsyms = ds
	}
	for _, s := range append(syms, dsyms...) {
		if s.Name != sym || elf.ST_TYPE(s.Info) != elf.STT_FUNC || s.Value == 0 {
			continue
		}
		for _, p := range f.Progs {
			if p.Type != elf.PT_LOAD || s.Value < p.Vaddr || s.Value+uint64(n) > p.Vaddr+p.Filesz {
				continue
			}
			b := make([]byte, n)
			if _, err := p.ReadAt(b, int64(s.Value-p.Vaddr)); err != nil {
				t.Fatalf("read %s in %s: %v", sym, path, err)
			}
			return b
		}
	}
	t.Fatalf("function %s not found in %s", sym, path)
	return nil
}

// checkSites checks that path has the site section of form and that each
// of syms starts with the site bytes of form (after ENDBR64 when cf).
func checkSites(t *testing.T, path string, form Form, cf bool, syms ...string) {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	sec := f.Section(SiteSection(form))
	f.Close()
	if sec == nil || sec.Size == 0 {
		t.Errorf("%s: no %s section", path, SiteSection(form))
	}
	want := SiteBytes(form)
	if cf {
		want = append(append([]byte{}, Endbr64...), want...)
	}
	for _, s := range syms {
		if got := funcBytes(t, path, s, len(want)); !bytes.Equal(got, want) {
			t.Errorf("%s: %s starts with % x, want % x", path, s, got, want)
		}
	}
}

// siteSyms names a few functions of each fixture that must have sites.
var siteSyms = map[string][]string{
	Simple:   {"simple_alpha", "simple_recurse", "simple_round"},
	CXX:      {"_ZN6shapes7Counter3addEl", "_ZN6shapes5scaleIiEET_S1_S1_", "_ZN6shapes5scaleIdEET_S1_S1_", "_ZN6shapes7guardedEl"},
	Workload: {"work_leaf", "work_nested", "work_recurse"},
	UseLib:   {"work_leaf"},
	Stress:   {"fn_00000", "fn_00999"},
	Sleeper:  {"sleeper_nanosleep", "sleeper_futex", "sleeper_epoll"},
	Ucontext: {"uc_run", "uc_resume", "uc_body", "uc_yield", "uc_jump", "uc_alt_deep"},
	JITCall:  {"jit_vm", "jit_direct"},
}

func TestBuildAll(t *testing.T) {
	for _, name := range Fixtures() {
		for _, form := range Forms {
			for _, cf := range []bool{false, true} {
				t.Run(fmt.Sprintf("%s/%s/cf=%v", name, form, cf), func(t *testing.T) {
					t.Parallel()
					var opts []Option
					if cf {
						opts = append(opts, CFProtection())
					}
					exe := Build(t, name, form, opts...)
					checkSites(t, exe, form, cf, siteSyms[name]...)
					if name == Workload || name == UseLib {
						checkSites(t, LibPath(exe), LibSiteForm(form), cf, "lib_add", "lib_recurse")
					}
				})
			}
		}
	}
}

func expect(t *testing.T, p *Process, prefix string) string {
	t.Helper()
	l, err := p.Expect(prefix, timeout)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func send(t *testing.T, p *Process, line string) {
	t.Helper()
	if err := p.Send(line); err != nil {
		t.Fatal(err)
	}
}

func TestSimpleAndCXXRunOnce(t *testing.T) {
	for _, name := range []string{Simple, CXX} {
		for _, form := range Forms {
			t.Run(name+"/"+string(form), func(t *testing.T) {
				t.Parallel()
				p := Start(t, Build(t, name, form))
				expect(t, p, "ready")
				if err := p.Wait(); err != nil {
					t.Fatalf("%s exited with %v, want status 0", name, err)
				}
			})
		}
	}
}

func TestSimpleLoop(t *testing.T) {
	p := Start(t, Build(t, Simple, ClangNop5), "loop")
	expect(t, p, "ready")
	time.Sleep(50 * time.Millisecond)
	if _, err := p.ReadLine(10 * time.Millisecond); err == nil {
		t.Fatal("simple loop printed more than ready")
	}
	p.Kill()
}

func TestWorkload(t *testing.T) {
	for _, name := range []string{Workload, UseLib} {
		for _, form := range Forms {
			t.Run(name+"/"+string(form), func(t *testing.T) {
				t.Parallel()
				p := Start(t, Build(t, name, form), "-t", "4")
				expect(t, p, "ready")
				for range 2 { // counters reset between runs
					got, err := RunWorkload(p, 3, timeout)
					if err != nil {
						t.Fatal(err)
					}
					if want := WorkloadCounts(3, 4); !cmp.Equal(got, want) {
						t.Errorf("run 3: counts differ (-got +want):\n%s", cmp.Diff(got, want))
					}
				}
				got, err := SpawnWorkload(p, 5, timeout)
				if err != nil {
					t.Fatal(err)
				}
				if want := WorkloadCounts(1, 5); !cmp.Equal(got, want) {
					t.Errorf("spawn 5: counts differ (-got +want):\n%s", cmp.Diff(got, want))
				}
				send(t, p, "quit")
				if err := p.Wait(); err != nil {
					t.Fatalf("workload exited with %v, want status 0", err)
				}
			})
		}
	}
}

func TestWorkloadEOF(t *testing.T) {
	p := Start(t, Build(t, Workload, ClangNop5))
	expect(t, p, "ready")
	if err := p.CloseStdin(); err != nil {
		t.Fatal(err)
	}
	if err := p.Wait(); err != nil {
		t.Fatalf("workload exited with %v at EOF, want status 0", err)
	}
}

// stressRun runs RunStress and fails t on error.
func stressRun(t *testing.T, p *Process, n int) (uint64, []uint64) {
	t.Helper()
	sum, counts, err := RunStress(p, n, timeout)
	if err != nil {
		t.Fatal(err)
	}
	return sum, counts
}

func TestStress(t *testing.T) {
	for _, form := range Forms {
		t.Run(string(form), func(t *testing.T) {
			t.Parallel()
			p := Start(t, Build(t, Stress, form, Funcs(200)), "-t", "3")
			expect(t, p, "ready")
			sum1, counts := stressRun(t, p, 1)
			if len(counts) != 200 {
				t.Fatalf("got %d counts, want 200", len(counts))
			}
			for i, c := range counts {
				if c != 0 {
					t.Fatalf("count %d = %d with nothing patched, want 0", i, c)
				}
			}
			sum2, _ := stressRun(t, p, 2)
			if again, _ := stressRun(t, p, 2); again != sum2 {
				t.Errorf("run 2 checksum changed: %d then %d", sum2, again)
			}
			if err := HammerStress(p, timeout); err != nil {
				t.Fatal(err)
			}
			time.Sleep(20 * time.Millisecond)
			stall, sum, err := StopStress(p, timeout)
			if err != nil {
				t.Fatal(err)
			}
			if stall <= 0 || stall > time.Minute {
				t.Errorf("stall %v: want a positive duration", stall)
			}
			if sum != sum1 {
				t.Errorf("hammer checksum %d, want the run 1 checksum %d", sum, sum1)
			}
			send(t, p, "trap")
			expect(t, p, "error trap needs -own-sigtrap")
			send(t, p, "quit")
			if err := p.Wait(); err != nil {
				t.Fatalf("stress exited with %v, want status 0", err)
			}
		})
	}
}

func TestStressOwnSigtrap(t *testing.T) {
	p := Start(t, Build(t, Stress, ClangNop5, Funcs(200)), "-own-sigtrap", "-t", "1")
	expect(t, p, "ready")
	for i := 1; i <= 2; i++ {
		send(t, p, "trap")
		if l, want := expect(t, p, "trapped"), fmt.Sprintf("trapped %d", i); l != want {
			t.Errorf("got %q, want %q", l, want)
		}
	}
}

func TestStressSignalArgs(t *testing.T) {
	for _, arg := range []string{"-block-sigtrap", "-ignore-sigtrap"} {
		p := Start(t, Build(t, Stress, ClangNop5, Funcs(200)), arg)
		expect(t, p, "ready")
		field := "SigBlk"
		if arg == "-ignore-sigtrap" {
			field = "SigIgn"
		}
		mask := statusMask(t, p.Pid(), field)
		if mask&(1<<(5-1)) == 0 { // SIGTRAP is 5
			t.Errorf("%s: %s of pid %d is %#x, want SIGTRAP set", arg, field, p.Pid(), mask)
		}
		p.Kill()
	}
}

func statusMask(t *testing.T, pid int, field string) uint64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			m, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				t.Fatalf("parse %q: %v", l, err)
			}
			return m
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// TestStressCounterStub patches sites in a copy of the stress executable
// into "call lt_counter_stub", the way the engine will patch them in
// memory, and checks that the stub counts every call and that the
// checksum does not change.
func TestStressCounterStub(t *testing.T) {
	const n = 300
	for _, form := range Forms {
		for _, cf := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/cf=%v", form, cf), func(t *testing.T) {
				t.Parallel()
				opts := []Option{Funcs(n)}
				if cf {
					opts = append(opts, CFProtection())
				}
				exe := Build(t, Stress, form, opts...)
				p := Start(t, exe, "-t", "2")
				expect(t, p, "ready")
				want, _ := stressRun(t, p, 3)
				p.Kill()

				patched := filepath.Join(t.TempDir(), "stress")
				b, err := os.ReadFile(exe)
				if err != nil {
					t.Fatal(err)
				}
				f, err := elf.Open(exe)
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				syms, err := f.Symbols()
				if err != nil {
					t.Fatal(err)
				}
				addr := map[string]uint64{}
				for _, s := range syms {
					addr[s.Name] = s.Value
				}
				fileOff := func(v uint64) int {
					for _, p := range f.Progs {
						if p.Type == elf.PT_LOAD && v >= p.Vaddr && v < p.Vaddr+p.Filesz {
							return int(p.Off + v - p.Vaddr)
						}
					}
					t.Fatalf("address %#x is in no PT_LOAD", v)
					return 0
				}
				stub, ok := addr["lt_counter_stub"]
				if !ok {
					t.Fatal("no lt_counter_stub symbol")
				}
				siteLen := len(SiteBytes(form))
				// Patch every even function.
				for i := 0; i < n; i += 2 {
					site := addr[StressFuncName(i, n)]
					if cf {
						site += 4
					}
					off := fileOff(site)
					if !bytes.Equal(b[off:off+siteLen], SiteBytes(form)) {
						t.Fatalf("site of function %d holds % x", i, b[off:off+siteLen])
					}
					b[off] = 0xe8
					binary.LittleEndian.PutUint32(b[off+1:], uint32(int32(int64(stub)-int64(site+5))))
				}
				if err := os.WriteFile(patched, b, 0o755); err != nil {
					t.Fatal(err)
				}
				p = Start(t, patched, "-t", "2")
				expect(t, p, "ready")
				for range 2 {
					sum, counts := stressRun(t, p, 3)
					if sum != want {
						t.Errorf("checksum %d with patched sites, want %d", sum, want)
					}
					for i, c := range counts {
						w := uint64(0)
						if i%2 == 0 {
							w = 3 * 2
						}
						if c != w {
							t.Fatalf("function %d called %d times, want %d", i, c, w)
						}
					}
				}
				send(t, p, "unknown")
				expect(t, p, "unknown 0")
			})
		}
	}
}

func TestSleeper(t *testing.T) {
	p := Start(t, Build(t, Sleeper, ClangNop5))
	expect(t, p, "ready")
	send(t, p, "echo hello there")
	if l := expect(t, p, "echo"); l != "echo hello there" {
		t.Errorf("got %q", l)
	}
	for _, c := range []struct{ cmd, prefix, ret, errno string }{
		{"sleep 50", "slept", "0", "0"},
		{"futex 50", "futex", "-1", "110"},
		{"epoll 50", "epoll", "0", "0"},
	} {
		send(t, p, c.cmd)
		f := strings.Fields(expect(t, p, c.prefix+" "))
		if len(f) != 4 {
			t.Fatalf("%s: bad reply %q", c.cmd, f)
		}
		ms, err := strconv.Atoi(f[1])
		if err != nil || ms < 50 || ms > 5000 {
			t.Errorf("%s: elapsed %q ms, want about 50", c.cmd, f[1])
		}
		if f[2] != c.ret || f[3] != c.errno {
			t.Errorf("%s: ret %s errno %s, want %s %s", c.cmd, f[2], f[3], c.ret, c.errno)
		}
	}
	send(t, p, "stats")
	expect(t, p, "stats read_eintr 0")
	send(t, p, "bogus")
	expect(t, p, "error unknown command")
	send(t, p, "quit")
	if err := p.Wait(); err != nil {
		t.Fatalf("sleeper exited with %v, want status 0", err)
	}
}

func TestNoSites(t *testing.T) {
	for _, form := range Forms {
		exe := Build(t, Simple, form, NoSites())
		f, err := elf.Open(exe)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range []string{"__mcount_loc", "__patchable_function_entries"} {
			if f.Section(s) != nil {
				t.Errorf("%s: NoSites build has %s", form, s)
			}
		}
		f.Close()
	}
}

func TestDefineChangesBuild(t *testing.T) {
	a := Build(t, Simple, ClangNop5)
	b := Build(t, Simple, ClangNop5, Define("LT_UNUSED", "1"))
	if a == b {
		t.Errorf("Define did not change the cache key: both builds are %s", a)
	}
	if c := Build(t, Simple, ClangNop5); c != a {
		t.Errorf("second build is %s, want the cached %s", c, a)
	}
}

func TestCompilers(t *testing.T) {
	t.Setenv("LIVETRACE_CLANG", "/opt/x/clang-17")
	if got := CXXCompiler(ClangNop5); got != "/opt/x/clang++-17" {
		t.Errorf("CXXCompiler = %q", got)
	}
	if got := Compiler(GccSled); got != "gcc" {
		t.Errorf("Compiler(GccSled) = %q", got)
	}
}

// TestStressOnlyGeneratedSites checks that the generated functions are the
// only sites of the stress fixture, so that patching every site patches
// exactly them.
func TestStressOnlyGeneratedSites(t *testing.T) {
	const n = 300
	for _, form := range Forms {
		exe := Build(t, Stress, form, Funcs(n))
		f, err := elf.Open(exe)
		if err != nil {
			t.Fatal(err)
		}
		sec := f.Section(SiteSection(form))
		if sec == nil {
			t.Fatalf("%s: no %s", form, SiteSection(form))
		}
		if got := sec.Size / 8; got != n {
			t.Errorf("%s: %s has %d entries, want %d", form, SiteSection(form), got, n)
		}
		f.Close()
	}
}

// TestStressHuge builds the stress fixture with 100,000 functions (about
// 30 s of CPU the first time; the build is cached in os.TempDir()).
func TestStressHuge(t *testing.T) {
	if testing.Short() {
		t.Skip("builds 100,000 functions; skipped with -short")
	}
	const n = 100000
	start := time.Now()
	exe := Build(t, Stress, ClangNop5, Funcs(n))
	t.Logf("built %d functions in %v", n, time.Since(start))
	checkSites(t, exe, ClangNop5, false, StressFuncName(0, n), StressFuncName(n-1, n))
	p := Start(t, exe, "-t", "2")
	expect(t, p, "ready")
	if _, counts := stressRun(t, p, 1); len(counts) != n {
		t.Errorf("got %d counts, want %d", len(counts), n)
	}
}
