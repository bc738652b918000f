package testtarget

import (
	"bytes"
	"debug/elf"
	"fmt"
	"testing"
	"time"
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
