package testtarget

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// SQLite is the name of the fixture made of SQLite's amalgamation, real C
// code that nobody here wrote, and the multi-threaded driver
// c/sqlite_driver.c (its protocol is described at the top of that file).
// It is not one of [Fixtures]: its source is fetched from the Go module
// proxy and takes half a minute to compile per form, so it is built only by
// [BuildSQLite], for the tests that trace it.
const SQLite = "sqlite"

// The Go module whose sqlite3-binding.c and sqlite3-binding.h are SQLite's
// amalgamation (with a guard, USE_LIBSQLITE3, that stays undefined).
const (
	SQLiteModule  = "github.com/mattn/go-sqlite3"
	SQLiteVersion = "v1.14.53" // SQLite 3.54.1
)

// sqliteDefines are the compile-time options of the amalgamation: a
// thread-safe library without extension loading (no libdl), with memsys5,
// which the driver gives a static heap so that SQLite maps no memory of
// its own.
var sqliteDefines = []string{"-DSQLITE_THREADSAFE=1", "-DSQLITE_OMIT_LOAD_EXTENSION", "-DSQLITE_ENABLE_MEMSYS5"}

var (
	sqliteOnce sync.Once
	sqliteDir  string
	sqliteErr  error
)

// sqliteSource returns the directory of the module [SQLiteModule] at
// [SQLiteVersion] in the module cache, downloading it with `go mod
// download` the first time.
func sqliteSource() (string, error) {
	sqliteOnce.Do(func() {
		gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
		if _, err := os.Stat(gobin); err != nil {
			if gobin, err = exec.LookPath("go"); err != nil {
				sqliteErr = fmt.Errorf("the go command is not installed (needed to download %s)", SQLiteModule)
				return
			}
		}
		cmd := exec.Command(gobin, "mod", "download", "-json", SQLiteModule+"@"+SQLiteVersion)
		// Outside any module, so that no go.mod or go.sum is touched.
		cmd.Dir = os.TempDir()
		cmd.Env = append(os.Environ(), "GO111MODULE=on", "GOFLAGS=")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		var info struct{ Dir, Error string }
		if jerr := json.Unmarshal(out, &info); jerr == nil && info.Error != "" {
			sqliteErr = fmt.Errorf("go mod download %s@%s: %s", SQLiteModule, SQLiteVersion, info.Error)
			return
		}
		if err != nil {
			sqliteErr = fmt.Errorf("go mod download %s@%s: %v: %s", SQLiteModule, SQLiteVersion, err, strings.TrimSpace(stderr.String()))
			return
		}
		if info.Dir == "" {
			sqliteErr = fmt.Errorf("go mod download %s@%s gave no directory: %q", SQLiteModule, SQLiteVersion, out)
			return
		}
		sqliteDir = info.Dir
	})
	return sqliteDir, sqliteErr
}

// planSQLite plans the sqlite fixture: the amalgamation with -O1 -g0 (it
// is 9 MB of C: -O2 -g costs much more time for the same functions) and
// the driver, both with the sites of form, linked into one executable.
func planSQLite(form Form, cfg *config, cc string) (*buildPlan, error) {
	dir, err := sqliteSource()
	if err != nil {
		return nil, err
	}
	files := map[string][]byte{}
	for _, n := range []string{"sqlite3-binding.c", "sqlite3-binding.h"} {
		b, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil {
			return nil, fmt.Errorf("read SQLite's amalgamation from the module cache: %w", err)
		}
		files[n] = b
	}
	drv, err := readSource("sqlite_driver.c")
	if err != nil {
		return nil, err
	}
	files["sqlite_driver.c"] = drv
	lib := append([]string{"-O1", "-g0"}, sqliteDefines...)
	return &buildPlan{
		exeName: SQLite,
		files:   files,
		phases: [][]step{
			{
				{cc, compileArgs(form, cfg, true, "sqlite3-binding.c", "sqlite3.o", lib...)},
				{cc, compileArgs(form, cfg, true, "sqlite_driver.c", "sqlite_driver.o")},
			},
			{{cc, linkArgs(form, cfg, SQLite, []string{"sqlite_driver.o", "sqlite3.o"}, "-lm")}},
		},
	}, nil
}

// BuildSQLite builds the [SQLite] fixture in form and returns the path of
// the executable, cached like [Build] (the first build of a form takes
// about half a minute of CPU; it is logged). It downloads the module
// [SQLiteModule] first if the module cache does not hold it, and skips tb
// (or fails it when LIVETRACE_REQUIRE_ALL=1) when that is impossible.
func BuildSQLite(tb testing.TB, form Form, opts ...Option) string {
	tb.Helper()
	if _, err := sqliteSource(); err != nil {
		SkipOrFatal(tb, "cannot fetch SQLite's amalgamation: %v (the Go module proxy, or the mirror GOPROXY names, must be reachable once; the module cache keeps it)", err)
		return ""
	}
	if SiteBytes(form) == nil {
		tb.Fatalf("build fixture %s: unknown form %q: use one of %v", SQLite, form, Forms)
	}
	cfg := &config{}
	for _, o := range opts {
		o(cfg)
	}
	cc, err := exec.LookPath(Compiler(form))
	if err != nil {
		SkipOrFatal(tb, "%s is not installed: run `make test`, which installs clang-16 (or apt-get install clang-16 gcc)", Compiler(form))
		return ""
	}
	plan, err := planSQLite(form, cfg, cc)
	if err != nil {
		tb.Fatalf("build fixture %s (%s): %v", SQLite, form, err)
	}
	v, err := compilerVersion(cc)
	if err != nil {
		tb.Fatalf("build fixture %s (%s): %v", SQLite, form, err)
	}
	h := sha256.New()
	fmt.Fprintf(h, "testtarget v1\x00%s\x00%s\x00%s\x00%s\x00", SQLite, form, cc, v)
	plan.hash(h)
	key := fmt.Sprintf("%s-%s-%s", SQLite, form, hex.EncodeToString(h.Sum(nil))[:20])
	root := cacheRoot()
	final := filepath.Join(root, key)
	exe := filepath.Join(final, plan.exeName)

	mu := buildLock(key)
	mu.Lock()
	defer mu.Unlock()
	if _, err := os.Stat(exe); err == nil {
		return exe
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		tb.Fatalf("build fixture %s: create cache directory: %v", SQLite, err)
	}
	pruneOnce.Do(func() { pruneStale(root) })
	tmp, err := os.MkdirTemp(root, key+".tmp*")
	if err != nil {
		tb.Fatalf("build fixture %s: create build directory: %v", SQLite, err)
	}
	defer os.RemoveAll(tmp) // a no-op after a successful rename
	t0, cpu0 := time.Now(), childCPU()
	if err := plan.run(tmp, final); err != nil {
		tb.Fatalf("build fixture %s (%s): %v", SQLite, form, err)
	}
	cpu := childCPU() - cpu0
	// The sources are 10 MB; the cache keeps only what the tests run.
	for n := range plan.files {
		os.Remove(filepath.Join(tmp, n))
	}
	tb.Logf("built %s (%s) in %v (%v of CPU in the compilers)", SQLite, form, time.Since(t0).Round(100*time.Millisecond), cpu.Round(100*time.Millisecond))
	if err := os.Rename(tmp, final); err != nil {
		if _, serr := os.Stat(exe); serr == nil {
			return exe // another process won the race
		}
		tb.Fatalf("build fixture %s: move build into cache: %v", SQLite, err)
	}
	return exe
}

// childCPU returns the CPU time used so far by the waited-for children of
// this process (the compilers of a build, and whatever else ran meanwhile).
func childCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_CHILDREN, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// SQLiteResult is the reply of the [SQLite] fixture to "run N".
type SQLiteResult struct {
	// Checksum folds every row every unit read; it is the same with or
	// without tracing for the same N.
	Checksum uint64
	// Steps counts the driver's calls to sqlite3_step during the run.
	Steps uint64
	// Bad counts the units whose rows differed from the thread's first.
	Bad uint64
}

// RunSQLite sends "run units" to a [SQLite] process and returns its reply.
func RunSQLite(p *Process, units int, timeout time.Duration) (SQLiteResult, error) {
	if err := p.Send(fmt.Sprintf("run %d", units)); err != nil {
		return SQLiteResult{}, err
	}
	l, err := p.Expect("done ", timeout)
	if err != nil {
		return SQLiteResult{}, err
	}
	n, err := parseUints(l, "done", 3)
	if err != nil {
		return SQLiteResult{}, err
	}
	return SQLiteResult{Checksum: n[0], Steps: n[1], Bad: n[2]}, nil
}

// HammerSQLite sends "hammer" to a [SQLite] process and returns once every
// thread runs units in a loop.
func HammerSQLite(p *Process, timeout time.Duration) error {
	if err := p.Send("hammer"); err != nil {
		return err
	}
	_, err := p.Expect("hammering", timeout)
	return err
}

// StopSQLite sends "stop" to a hammering [SQLite] process and returns the
// units run, the bad ones, and the checksum of the last unit of each
// thread, which equals the checksum of [RunSQLite] with one unit.
func StopSQLite(p *Process, timeout time.Duration) (units, bad, checksum uint64, err error) {
	if err := p.Send("stop"); err != nil {
		return 0, 0, 0, err
	}
	l, err := p.Expect("stopped ", timeout)
	if err != nil {
		return 0, 0, 0, err
	}
	n, err := parseUints(l, "stopped", 3)
	if err != nil {
		return 0, 0, 0, err
	}
	return n[0], n[1], n[2], nil
}

// parseUints parses the line "word n1 n2 ... nN".
func parseUints(l, word string, n int) ([]uint64, error) {
	f := strings.Fields(l)
	if len(f) != n+1 || f[0] != word {
		return nil, fmt.Errorf("parse reply %q: want %q and %d numbers", l, word, n)
	}
	out := make([]uint64, n)
	for i := range out {
		v, err := strconv.ParseUint(f[i+1], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("parse reply %q: %w", l, err)
		}
		out[i] = v
	}
	return out, nil
}

// SQLiteProgress sends "progress" to a [SQLite] process (also while it
// hammers) and returns the units each thread has finished since it started,
// writers first.
func SQLiteProgress(p *Process, timeout time.Duration) ([]uint64, error) {
	if err := p.Send("progress"); err != nil {
		return nil, err
	}
	l, err := p.Expect("progress", timeout)
	if err != nil {
		return nil, err
	}
	f := strings.Fields(l)
	return parseUints(l, "progress", len(f)-1)
}
