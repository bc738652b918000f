package elfsite

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/livetrace/livetrace/internal/testtarget"
)

// copyFile copies src to a new file in dir and returns its path.
func copyFile(t *testing.T, src, dir string) string {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, filepath.Base(src))
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return dst
}

func parseCached(t *testing.T, path string, symbolsOnly bool) *Spec {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	spec, err := cachedParse(f, path, symbolsOnly)
	if err != nil {
		t.Fatal(err)
	}
	return spec
}

// TestParseCache checks that a file parsed again comes from the cache, and
// that a file rewritten (even with the same bytes), or a debug file
// installed since, does not.
func TestParseCache(t *testing.T) {
	resetCache()
	defer resetCache()
	t.Setenv(DebugDirEnv, t.TempDir())
	exe := copyFile(t, testtarget.Build(t, testtarget.Simple, testtarget.ClangNop5), t.TempDir())
	a := parseCached(t, exe, false)
	b := parseCached(t, exe, false)
	if len(a.Funcs) == 0 || &a.Funcs[0] != &b.Funcs[0] {
		t.Fatal("the second parse of an unchanged file did not come from the cache")
	}
	if s := parseCached(t, exe, true); !s.SymbolsOnly || len(s.Sites) != 0 {
		t.Fatalf("a symbols-only parse came back with SymbolsOnly %v and %d sites: the cache mixed the two", s.SymbolsOnly, len(s.Sites))
	}
	if len(b.Sites) == 0 || b.SymbolsOnly {
		t.Fatalf("full parse: %d sites, SymbolsOnly %v", len(b.Sites), b.SymbolsOnly)
	}

	// Same bytes written again: a new ctime.
	time.Sleep(10 * time.Millisecond)
	raw, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(exe, raw, 0o755); err != nil {
		t.Fatal(err)
	}
	c := parseCached(t, exe, false)
	if &c.Funcs[0] == &a.Funcs[0] {
		t.Fatal("a rewritten file came from the cache")
	}

	// A debug file for its build ID appears: the parse must see it.
	if a.BuildID == "" {
		t.Fatal("the fixture has no build ID")
	}
	dir := os.Getenv(DebugDirEnv)
	dbg := DebugFilePath(dir, a.BuildID)
	if err := os.MkdirAll(filepath.Dir(dbg), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dbg, []byte("not ELF"), 0o644); err != nil {
		t.Fatal(err)
	}
	if d := parseCached(t, exe, false); &d.Funcs[0] == &c.Funcs[0] {
		t.Fatal("a debug file installed since the last parse did not invalidate the cache")
	}

	// Bounded: the oldest entries go.
	dir2 := t.TempDir()
	for i := range cacheEntries + 2 {
		p := filepath.Join(dir2, strings.Repeat("x", i+1))
		if err := os.WriteFile(p, raw, 0o755); err != nil {
			t.Fatal(err)
		}
		parseCached(t, p, false)
	}
	parseCache.Lock()
	n := len(parseCache.keys)
	parseCache.Unlock()
	if n != cacheEntries {
		t.Fatalf("cache holds %d entries, want %d", n, cacheEntries)
	}
}

// TestParseSymbols checks that ParseSymbols reads the same functions as
// Parse, and neither sites nor what relocation needs.
func TestParseSymbols(t *testing.T) {
	exe := testtarget.Build(t, testtarget.Simple, testtarget.ClangNop5)
	full, err := Open(exe)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(exe)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	syms, err := ParseSymbols(f, exe)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(syms.Funcs, full.Funcs) || syms.BuildID != full.BuildID || !slices.Equal(syms.Loads, full.Loads) {
		t.Fatal("ParseSymbols and Parse disagree on the functions, build ID or segments")
	}
	if !syms.SymbolsOnly || len(syms.Sites) != 0 || full.SymbolsOnly || len(full.Sites) == 0 {
		t.Fatalf("SymbolsOnly %v with %d sites, full parse SymbolsOnly %v with %d sites", syms.SymbolsOnly, len(syms.Sites), full.SymbolsOnly, len(full.Sites))
	}
	for i := range syms.Funcs {
		if _, _, ok := syms.RelocFunc(i); ok {
			t.Fatalf("RelocFunc(%d) analyzed %s in a symbols-only Spec", i, syms.Funcs[i].Name)
		}
	}
}

// TestLiveModulesWithFull checks that the modules Full rejects are parsed
// for their symbols only.
func TestLiveModulesWithFull(t *testing.T) {
	testtarget.RequireRoot(t)
	exe := testtarget.Build(t, testtarget.UseLib, testtarget.ClangNop5)
	p := startReady(t, exe)
	defer p.Kill()
	lib := filepath.Base(testtarget.LibPath(exe))
	mods, _, err := LiveModulesWith(p.Pid(), LiveOptions{Full: func(path string) bool { return filepath.Base(path) == lib }})
	if err != nil {
		t.Fatal(err)
	}
	seen := false
	for _, m := range mods {
		full := m.Name() == lib
		seen = seen || full
		if m.Spec.SymbolsOnly == full {
			t.Errorf("%s: SymbolsOnly %v", m.Path, m.Spec.SymbolsOnly)
		}
		if full && len(m.Spec.Sites) == 0 {
			t.Errorf("%s: no sites", m.Path)
		}
		if len(m.Spec.Funcs) == 0 {
			t.Errorf("%s: no functions", m.Path)
		}
	}
	if !seen {
		t.Fatalf("no module %s in pid %d", lib, p.Pid())
	}
}
