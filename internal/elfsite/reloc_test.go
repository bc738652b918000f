package elfsite

import (
	"strings"
	"testing"
	"time"
)

// TestRelocLibc reads the stock libc.so.6: most exported functions are
// relocating sites, every other one has a reason.
func TestRelocLibc(t *testing.T) {
	const libc = "/lib/x86_64-linux-gnu/libc.so.6"
	t0 := time.Now()
	spec, err := Open(libc)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: %d reloc sites, %d refused, %d funcs, parsed in %v", libc, len(spec.Reloc), len(spec.RelocRefused), len(spec.Funcs), time.Since(t0))
	found := map[string]bool{}
	for _, st := range spec.Reloc {
		if st.Form != FormReloc || st.Plan == nil || st.Plan.Entry != st.Addr || st.Plan.Len < 5 {
			t.Fatalf("bad reloc site %+v", st)
		}
		found[spec.SiteName(st)] = true
	}
	for _, name := range []string{"malloc", "free", "qsort", "strtol"} {
		if !found[name] {
			t.Errorf("%s is not a relocating site", name)
		}
	}
	reasons := map[string]int{}
	for _, r := range spec.RelocRefused {
		if r.Reason == "" {
			t.Fatalf("refusal of %s without a reason", spec.Funcs[r.Func].Name)
		}
		k := r.Reason
		if i := strings.Index(k, " at +"); i > 0 {
			k = k[:i]
		}
		reasons[k]++
	}
	t.Logf("refusals: %v", reasons)
}
