package elfsite

import (
	"os"
	"os/exec"
	"path/filepath"
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
	t1 := time.Now()
	sites, refused := spec.RelocSites()
	t.Logf("%s: %d reloc sites, %d refused, %d funcs, parsed in %v, analyzed in %v", libc, len(sites), len(refused), len(spec.Funcs), t1.Sub(t0), time.Since(t1))
	found := map[string]bool{}
	for _, st := range sites {
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
	for _, r := range refused {
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

// TestRelocRefusals: a function shorter than 5 bytes and one that loops
// back to entry+2 are no relocating sites, and each says why; an ordinary
// function next to them is one.
func TestRelocRefusals(t *testing.T) {
	gcc := needTool(t, "gcc")
	dir := t.TempDir()
	src := filepath.Join(dir, "refuse.c")
	out := filepath.Join(dir, "refuse")
	code := `__asm__(
	".text\n"
	".globl tiny\n.type tiny,@function\ntiny:\n ret\n.size tiny, .-tiny\n"
	".globl loopk\n.type loopk,@function\nloopk:\n xor %eax,%eax\n1: inc %eax\n cmp $10,%eax\n jne 1b\n ret\n.size loopk, .-loopk\n"
	".globl plain\n.type plain,@function\nplain:\n push %rbx\n mov %rdi,%rbx\n lea 1(%rbx),%rax\n pop %rbx\n ret\n.size plain, .-plain\n");
int main(void) { return 0; }
`
	if err := os.WriteFile(src, []byte(code), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, err := exec.Command(gcc, "-O2", "-o", out, src).CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, b)
	}
	spec, err := Open(out)
	if err != nil {
		t.Fatal(err)
	}
	sites, refused := spec.RelocSites()
	why := map[string]string{}
	for _, r := range refused {
		why[spec.Funcs[r.Func].Name] = r.Reason
	}
	reloc := map[string]bool{}
	for _, st := range sites {
		reloc[spec.SiteName(st)] = true
	}
	if !strings.HasPrefix(why["tiny"], "function shorter than 5 bytes") {
		t.Errorf("tiny: refused %q, want too short", why["tiny"])
	}
	if !strings.HasPrefix(why["loopk"], "branch target at +2") {
		t.Errorf("loopk: refused %q, want branch target at +2", why["loopk"])
	}
	if !strings.HasPrefix(why["_start"], "the program's entry point") {
		t.Errorf("_start: refused %q, want the entry point", why["_start"])
	}
	if !reloc["plain"] {
		t.Errorf("plain must be a relocating site: %v (refused: %v)", reloc, why)
	}
}
