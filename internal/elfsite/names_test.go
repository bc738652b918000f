package elfsite

import (
	"os"
	"slices"
	"strings"
	"testing"
)

// TestSymbolsOnlyNames reads libstdc++ (which gcc needs, so it is always
// there) for its symbols only and in full: the symbols-only Spec keeps
// its thousands of C++ names mangled in Funcs, and Name gives, function
// for function, the names the full parse demangled. Copies that the cache
// hands out share the demangled names.
func TestSymbolsOnlyNames(t *testing.T) {
	const path = "/usr/lib/x86_64-linux-gnu/libstdc++.so.6"
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	full, err := Parse(f, path)
	if err != nil {
		t.Fatal(err)
	}
	syms, err := ParseSymbols(f, path)
	if err != nil {
		t.Fatal(err)
	}
	mangled := 0
	for _, fn := range syms.Funcs {
		if strings.HasPrefix(fn.Name, "_Z") {
			mangled++
		}
	}
	if mangled < 1000 {
		t.Fatalf("%d mangled names kept by ParseSymbols, want thousands", mangled)
	}
	want := make([]string, len(full.Funcs))
	for i := range full.Funcs {
		want[i] = full.Funcs[i].Name
	}
	got := make([]string, len(syms.Funcs))
	for i := range syms.Funcs {
		got[i] = syms.Name(i)
		if full.Name(i) != full.Funcs[i].Name {
			t.Fatalf("Name(%d) of a full parse is %q, its Funcs say %q", i, full.Name(i), full.Funcs[i].Name)
		}
	}
	// Aliases at one address may rank differently by mangled name:
	// compare the names, not their order.
	slices.Sort(want)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("the demangled names of the symbols-only parse differ from the full parse's (%d and %d names)", len(got), len(want))
	}
	cp := *syms
	if cp.Name(0) != syms.Name(0) || cp.names != syms.names {
		t.Fatal("a copy of the Spec does not share its demangled names")
	}
}
