// Package testtarget compiles the C and C++ test fixtures of livetrace in
// each patchable-site form and runs them as child processes under test.
//
// A fixture is built with [Build], which caches the result under
// os.TempDir() keyed by fixture, form, options, sources and compiler, so
// that repeated builds in one `go test` run, and across the test binaries
// of several packages, are cheap. The executable is then started with
// [Start], which returns a [Process] that speaks the fixture's line
// protocol on stdin and stdout.
//
// Every fixture prints "ready" on stdout once it has set itself up; wait
// for it with [Process.Expect] before attaching to the process. The
// protocol of each fixture is described at the top of its C source under
// c/ and in the doc comment of its name constant ([Simple], [Workload],
// [Stress], ...).
package testtarget

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Form is a way of compiling a program so that its functions start with a
// patchable site. See docs/BUILDING.md.
type Form string

const (
	// ClangNop5 is clang-16 -O2 -fpatchable-function-entry=5 -fPIE -pie: one
	// NOP5 (0f 1f 44 00 08) per function, listed in
	// __patchable_function_entries.
	ClangNop5 Form = "clang-nop5"
	// GccMcount is gcc -O2 -pg -mfentry -mnop-mcount -mrecord-mcount
	// -fno-pie -no-pie: one NOP5 (0f 1f 44 00 00) per function, listed in
	// __mcount_loc. gcc refuses -mnop-mcount with -fPIC, so the shared
	// library of this form (see [LibName]) is built with
	// -fpatchable-function-entry=5 instead and holds sleds.
	GccMcount Form = "gcc-mcount"
	// GccSled is gcc -O2 -fpatchable-function-entry=5 -fPIE -pie: five
	// one-byte NOPs (90) per function, listed in
	// __patchable_function_entries.
	GccSled Form = "gcc-sled"
)

// Forms lists every [Form], in a fixed order, for table-driven tests.
var Forms = []Form{ClangNop5, GccMcount, GccSled}

// SiteBytes returns the bytes a site of form f holds before it is patched.
// With [CFProtection] the site follows an ENDBR64 (f3 0f 1e fa).
func SiteBytes(f Form) []byte {
	switch f {
	case ClangNop5:
		return []byte{0x0f, 0x1f, 0x44, 0x00, 0x08}
	case GccMcount:
		return []byte{0x0f, 0x1f, 0x44, 0x00, 0x00}
	case GccSled:
		return []byte{0x90, 0x90, 0x90, 0x90, 0x90}
	}
	return nil
}

// SiteSection returns the name of the ELF section that lists the sites of
// an executable built in form f.
func SiteSection(f Form) string {
	if f == GccMcount {
		return "__mcount_loc"
	}
	return "__patchable_function_entries"
}

// LibSiteForm returns the form the sites of the shared library
// libltshared.so have when it is built for form f. It is f itself, except
// for [GccMcount], where gcc refuses -mnop-mcount with -fPIC and the
// library is built with -fpatchable-function-entry=5, which gives sleds.
func LibSiteForm(f Form) Form {
	if f == GccMcount {
		return GccSled
	}
	return f
}

// Endbr64 is the encoding of the ENDBR64 instruction that starts every
// function built with [CFProtection].
var Endbr64 = []byte{0xf3, 0x0f, 0x1e, 0xfa}

// Option changes how [Build] compiles a fixture.
type Option func(*config)

type config struct {
	cfProtection bool
	noSites      bool
	opt          string // "-O2" unless O0 or O3
	pie          *bool  // PIE or not, instead of the form's choice
	defines      map[string]string
	funcs        int  // stress only
	shapes       bool // stress only: see Shapes
	ident        bool // keep the compiler's identification: see Ident
}

// CFProtection builds with -fcf-protection=full, so that every function
// starts with ENDBR64 and its site follows it. Without it fixtures are
// built with -fcf-protection=none, whatever the compiler's default.
func CFProtection() Option { return func(c *config) { c.cfProtection = true } }

// Define adds -Dname=value to the compile flags.
func Define(name, value string) Option {
	return func(c *config) {
		if c.defines == nil {
			c.defines = map[string]string{}
		}
		c.defines[name] = value
	}
}

// Ident keeps the compiler's name in the binary (.comment and DWARF's
// producer), which fixtures otherwise leave out (-fno-ident).
func Ident() Option { return func(c *config) { c.ident = true } }

// NoSites builds without any site flags: a plain -O2 build of the form's
// compiler (with the form's PIE setting), used as a program that has no
// sites at all and as the "tracing disabled" baseline of benchmarks.
func NoSites() Option { return func(c *config) { c.noSites = true } }

// O0 builds with -O0 instead of -O2.
func O0() Option { return func(c *config) { c.opt = "-O0" } }

// O2 builds with -O2, the default.
func O2() Option { return func(c *config) { c.opt = "-O2" } }

// O3 builds with -O3 instead of -O2.
func O3() Option { return func(c *config) { c.opt = "-O3" } }

// PIE builds a position-independent executable (on) or a fixed-address
// one, whatever the form's own choice.
func PIE(on bool) Option { return func(c *config) { c.pie = &on } }

// Shapes makes the generated functions of the [Stress] fixture differ in
// the shape of their first instructions, for the relocator: besides the
// plain arithmetic, a RIP-relative load first, a conditional branch in the
// first bytes, a loop whose head is a few bytes past the entry (a branch
// target inside the first 5 bytes: refused), and tiny functions shorter
// than 5 bytes (refused). [StressShape] tells which is which.
func Shapes() Option { return func(c *config) { c.shapes = true } }

// Funcs sets the number of generated functions of the [Stress] fixture
// (default 1000, at most 1,000,000). Other fixtures ignore it.
func Funcs(n int) Option { return func(c *config) { c.funcs = n } }

// requireAll reports whether missing tools must fail tests instead of
// skipping them.
func requireAll() bool { return os.Getenv("LIVETRACE_REQUIRE_ALL") == "1" }

// SkipOrFatal skips tb, or fails it when LIVETRACE_REQUIRE_ALL=1 (as `make
// test` and CI set it): a test that cannot run there must not pass silently.
func SkipOrFatal(tb testing.TB, format string, args ...any) {
	tb.Helper()
	msg := fmt.Sprintf(format, args...)
	if requireAll() {
		tb.Fatal(msg + " (LIVETRACE_REQUIRE_ALL=1)")
	}
	tb.Skip(msg)
}

// Compiler returns the C compiler command for form f: the value of the
// environment variable LIVETRACE_CLANG (default "clang-16") for
// [ClangNop5], and "gcc" for the gcc forms.
func Compiler(f Form) string {
	if f == ClangNop5 {
		if c := os.Getenv("LIVETRACE_CLANG"); c != "" {
			return c
		}
		return "clang-16"
	}
	return "gcc"
}

// CXXCompiler returns the C++ compiler command for form f: clang++ of the
// same version as [Compiler] (for LIVETRACE_CLANG=clang-17, clang++-17) for
// [ClangNop5], and "g++" for the gcc forms.
func CXXCompiler(f Form) string {
	if f == ClangNop5 {
		c := Compiler(f)
		dir, base := filepath.Split(c)
		if strings.HasPrefix(base, "clang") && !strings.HasPrefix(base, "clang++") {
			return dir + "clang++" + strings.TrimPrefix(base, "clang")
		}
		return c
	}
	return "g++"
}

// siteFlags returns the compile flags that make sites for form f, for an
// executable (pic false) or a shared library (pic true).
func siteFlags(f Form, pic bool) []string {
	switch f {
	case GccMcount:
		if pic {
			// gcc: "-mnop-mcount is not implemented for -fPIC".
			return []string{"-fpatchable-function-entry=5"}
		}
		return []string{"-pg", "-mfentry", "-mnop-mcount", "-mrecord-mcount"}
	default:
		return []string{"-fpatchable-function-entry=5"}
	}
}

// picFlags returns the code-model compile flags and the link flags of an
// executable of form f.
func picFlags(f Form, cfg *config) (cflags, ldflags []string) {
	if cfg.pie != nil && !*cfg.pie || cfg.pie == nil && f == GccMcount {
		return []string{"-fno-pie"}, []string{"-no-pie"}
	}
	return []string{"-fPIE"}, []string{"-pie"}
}

// baseFlags returns the flags every compile of form f with cfg uses.
func baseFlags(cfg *config) []string {
	opt := "-O2"
	if cfg.opt != "" {
		opt = cfg.opt
	}
	fl := []string{opt, "-g", "-Wall"}
	if !cfg.ident {
		fl = append(fl, "-fno-ident")
	}
	if cfg.cfProtection {
		fl = append(fl, "-fcf-protection=full")
	} else {
		fl = append(fl, "-fcf-protection=none")
	}
	keys := make([]string, 0, len(cfg.defines))
	for k := range cfg.defines {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fl = append(fl, "-D"+k+"="+cfg.defines[k])
	}
	return fl
}

// LibName is the file name of the shared library that the [Workload] and
// [UseLib] fixtures link against. It sits in the same directory as the
// executable (see [LibPath]), which the executable finds through its rpath.
const LibName = "libltshared.so"

// LibPath returns the path of libltshared.so that belongs to an executable
// returned by [Build] for [Workload] or [UseLib].
func LibPath(exe string) string { return filepath.Join(filepath.Dir(exe), LibName) }

var (
	versionMu sync.Mutex
	versions  = map[string]string{}

	buildLocksMu sync.Mutex
	buildLocks   = map[string]*sync.Mutex{}
)

// compilerVersion returns the `--version` output of the compiler at path,
// once per process.
func compilerVersion(path string) (string, error) {
	versionMu.Lock()
	defer versionMu.Unlock()
	if v, ok := versions[path]; ok {
		return v, nil
	}
	out, err := exec.Command(path, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("run %s --version: %w", path, err)
	}
	versions[path] = string(out)
	return string(out), nil
}

func buildLock(key string) *sync.Mutex {
	buildLocksMu.Lock()
	defer buildLocksMu.Unlock()
	m := buildLocks[key]
	if m == nil {
		m = new(sync.Mutex)
		buildLocks[key] = m
	}
	return m
}

// cacheRoot is the directory that holds every cached build.
func cacheRoot() string {
	return filepath.Join(os.TempDir(), "livetrace-testtarget-"+strconv.Itoa(os.Getuid()))
}

// Build compiles fixture name (one of [Fixtures]) in form and returns the
// path of the executable. The result is cached per (name, form, options,
// source hash, compiler) in a directory under os.TempDir(), which also
// holds libltshared.so for fixtures that use it. Build calls tb.Fatal with
// the compiler output when compiling fails, and skips tb (or fails it when
// LIVETRACE_REQUIRE_ALL=1) when the compiler is missing.
//
// Build is safe for concurrent use, also by several test binaries at once:
// each build happens in a fresh directory that is renamed into place.
func Build(tb testing.TB, name string, form Form, opts ...Option) string {
	tb.Helper()
	path, err := build(tb, name, form, opts...)
	if err != nil {
		tb.Fatalf("build fixture %s (%s): %v", name, form, err)
	}
	return path
}

// errMissingCompiler marks a compiler that is not installed.
var errMissingCompiler = errors.New("compiler not found")

func build(tb testing.TB, name string, form Form, opts ...Option) (string, error) {
	tb.Helper()
	fx, ok := fixtures[name]
	if !ok {
		return "", fmt.Errorf("unknown fixture %q: use one of %s", name, strings.Join(Fixtures(), ", "))
	}
	if SiteBytes(form) == nil {
		return "", fmt.Errorf("unknown form %q: use one of %v", form, Forms)
	}
	cfg := &config{funcs: 1000}
	for _, o := range opts {
		o(cfg)
	}
	if cfg.funcs < 1 || cfg.funcs > 1000000 {
		return "", fmt.Errorf("bad function count %d: use 1..1000000", cfg.funcs)
	}

	ccName := Compiler(form)
	if fx.cxx {
		ccName = CXXCompiler(form)
	}
	cc, err := exec.LookPath(ccName)
	if err != nil {
		SkipOrFatal(tb, "%s is not installed: run `make test`, which installs clang-16 (or apt-get install clang-16 gcc g++)", ccName)
		return "", errMissingCompiler
	}
	// The C runtime of the stress fixture and the library are always C.
	cName := Compiler(form)
	ccC, err := exec.LookPath(cName)
	if err != nil {
		SkipOrFatal(tb, "%s is not installed: run `make test`, which installs clang-16 (or apt-get install clang-16 gcc)", cName)
		return "", errMissingCompiler
	}

	plan, err := fx.plan(form, cfg, cc, ccC)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	fmt.Fprintf(h, "testtarget v1\x00%s\x00%s\x00", name, form)
	for _, c := range []string{cc, ccC} {
		v, err := compilerVersion(c)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s\x00%s\x00", c, v)
	}
	plan.hash(h)
	key := fmt.Sprintf("%s-%s-%s", name, form, hex.EncodeToString(h.Sum(nil))[:20])

	root := cacheRoot()
	final := filepath.Join(root, key)
	exe := filepath.Join(final, plan.exeName)

	mu := buildLock(key)
	mu.Lock()
	defer mu.Unlock()
	if _, err := os.Stat(exe); err == nil {
		return exe, nil
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return "", fmt.Errorf("create cache directory: %w", err)
	}
	pruneOnce.Do(func() { pruneStale(root) })
	tmp, err := os.MkdirTemp(root, key+".tmp*")
	if err != nil {
		return "", fmt.Errorf("create build directory: %w", err)
	}
	defer os.RemoveAll(tmp) // a no-op after a successful rename
	if err := plan.run(tmp, final); err != nil {
		return "", err
	}
	if err := os.Rename(tmp, final); err != nil {
		// Another process won the race: use its build.
		if _, serr := os.Stat(exe); serr == nil {
			return exe, nil
		}
		return "", fmt.Errorf("move build into cache: %w", err)
	}
	return exe, nil
}

var pruneOnce sync.Once

// pruneStale removes build directories under root that a killed build left
// behind more than an hour ago.
func pruneStale(root string) {
	ents, err := os.ReadDir(root)
	if err != nil {
		return
	}
	for _, e := range ents {
		if !strings.Contains(e.Name(), ".tmp") {
			continue
		}
		if fi, err := e.Info(); err == nil && time.Since(fi.ModTime()) > time.Hour {
			os.RemoveAll(filepath.Join(root, e.Name()))
		}
	}
}

// step is one compiler invocation of a build plan.
type step struct {
	cc   string
	args []string // relative file names are relative to the build directory
}

// buildPlan is everything needed to build a fixture: the sources to write
// and the compiler invocations, in phases that run one after the other;
// the steps of one phase run in parallel.
type buildPlan struct {
	exeName string
	files   map[string][]byte
	phases  [][]step
}

func (p *buildPlan) hash(w interface{ Write([]byte) (int, error) }) {
	names := make([]string, 0, len(p.files))
	for n := range p.files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		sum := sha256.Sum256(p.files[n])
		fmt.Fprintf(w, "file %s %x\x00", n, sum)
	}
	for _, ph := range p.phases {
		for _, s := range ph {
			fmt.Fprintf(w, "step %s %q\x00", s.cc, s.args)
		}
		fmt.Fprintf(w, "phase\x00")
	}
}

// finalDirToken stands for the final cache directory in step arguments
// (for -Wl,-rpath), which is only known when the plan runs.
const finalDirToken = "@FINAL@"

func (p *buildPlan) run(dir, final string) error {
	for n, b := range p.files {
		if err := os.WriteFile(filepath.Join(dir, n), b, 0o644); err != nil {
			return fmt.Errorf("write source: %w", err)
		}
	}
	for _, ph := range p.phases {
		errs := make([]error, len(ph))
		sem := make(chan struct{}, runtime.NumCPU())
		var wg sync.WaitGroup
		for i, s := range ph {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				args := make([]string, len(s.args))
				for j, a := range s.args {
					args[j] = strings.ReplaceAll(a, finalDirToken, final)
				}
				cmd := exec.Command(s.cc, args...)
				cmd.Dir = dir
				var out bytes.Buffer
				cmd.Stdout = &out
				cmd.Stderr = &out
				if err := cmd.Run(); err != nil {
					errs[i] = fmt.Errorf("run %s %s: %w\n%s", s.cc, strings.Join(args, " "), err, out.String())
				}
			}()
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			return err
		}
	}
	return nil
}

// RequireRoot skips tb unless it runs as root (ptrace needs it here), or
// fails it when LIVETRACE_REQUIRE_ALL=1 (as `make test` and CI set it).
func RequireRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		SkipOrFatal(tb, "this test needs root (ptrace): run it as root")
	}
}
