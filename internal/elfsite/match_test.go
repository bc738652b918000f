package elfsite

import (
	"cmp"
	"fmt"
	"path"
	"slices"
	"testing"
)

// TestMatchSiteSameAsPathMatch checks the fast matcher (literal prefix,
// no allocation) against path.Match of every name of a site.
func TestMatchSiteSameAsPathMatch(t *testing.T) {
	spec := &Spec{Funcs: []Func{
		{Name: "alpha", Raw: "alpha", Addr: 0x10, Size: 8},
		{Name: "ns::f", Raw: "_ZN2ns1fEv", Addr: 0x20, Size: 8, Global: true},
		{Name: "__ns_f_alias", Raw: "__ns_f_alias", Addr: 0x20, Size: 8},
		{Name: "memcpy", Raw: "memcpy@@GLIBC_2.14", Addr: 0x30, Size: 8},
		{Name: "a*b", Raw: "a*b", Addr: 0x40, Size: 8},
		{Name: "fn_a/b", Raw: "fn_a/b", Addr: 0x50, Size: 8},
		{Name: "A::operator/(A)", Raw: "_ZN1AdvES_", Addr: 0x60, Size: 8},
	}}
	sites := []Site{{Addr: 0x10, Func: 0}, {Addr: 0x20, Func: 1}, {Addr: 0x20, Func: 2}, {Addr: 0x30, Func: 3}, {Addr: 0x40, Func: 4}, {Addr: 0x50, Func: 5}, {Addr: 0x60, Func: 6}, {Addr: 0x1234, Func: -1}}
	globs := []string{"*", "alpha", "alph", "al*", "?lpha", "[a-b]lpha", "ns::*", "_ZN2ns*", "__ns*", "memcpy", "memcpy@*",
		"mem*@@GLIBC_2.14", "0x12*", "0x1234", `a\*b`, `a\*c`, "a*b", "[", `alpha\`, "", "ns::f", "*f*", "[!a]*",
		"fn_*", "fn_a*", "fn_a/*", "fn_a/b", "fn_a/b*", "A::operator*", "A::*", "alpha*", "a*", "**", "fn_a/b/*"}
	for _, st := range sites {
		var names []string
		if st.Func >= 0 {
			for _, f := range spec.Aliases(st.Func) {
				names = append(names, f.Name, f.Raw)
			}
		} else {
			names = append(names, spec.SiteName(st))
		}
		for _, g := range globs {
			want := false
			for _, n := range names {
				if ok, _ := path.Match(g, n); ok {
					want = true
				}
			}
			if got := spec.MatchSite(st, g); got != want {
				t.Errorf("MatchSite(%#x func %d, %q) = %v, path.Match of %q says %v", st.Addr, st.Func, g, got, names, want)
			}
		}
	}
	if allocs := testing.AllocsPerRun(100, func() { spec.MatchSite(sites[1], "ns::*", "nomatch*") }); allocs != 0 {
		t.Errorf("MatchSite allocates %v times per call, want 0", allocs)
	}
}

// TestSortFuncs checks sortFuncs against a stable sort by address and
// alias rank, with addresses that pack into one word (radix-sorted in
// one pass, two, or four, or too few to radix-sort) and ones that do not.
func TestSortFuncs(t *testing.T) {
	for _, c := range []struct {
		base, stride uint64
		n            int
	}{{0x401000, 1, 3000}, {0x401000, 16, 3000}, {0x401000, 1 << 28, 3000}, {0x401000, 16, 200}, {1 << 50, 16, 3000}} {
		base := c.base
		var funcs []Func
		for i := 0; i < c.n; i++ {
			addr := base + uint64((i*7919)%1000)*c.stride
			name := fmt.Sprintf("f%d", i%17)
			if i%5 == 0 {
				name = "_" + name
			}
			funcs = append(funcs, Func{Name: name, Raw: name, Addr: addr, Global: i%3 == 0})
		}
		want := slices.Clone(funcs)
		slices.SortStableFunc(want, func(a, b Func) int {
			if c := cmp.Compare(a.Addr, b.Addr); c != 0 {
				return c
			}
			return compareRank(&a, &b)
		})
		if got := sortFuncs(funcs); !slices.Equal(got, want) {
			t.Errorf("base %#x, stride %#x, %d functions: sortFuncs differs from a stable sort by address and rank", base, c.stride, c.n)
		}
	}
}
