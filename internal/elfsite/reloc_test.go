package elfsite

import (
	"math/rand/v2"
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
// function next to them is one, and so are V8's builtins, runtime
// functions and API callbacks, which graph mode leaves out.
func TestRelocRefusals(t *testing.T) {
	out := buildAsm(t, "refuse", nil, `__asm__(
	".text\n"
	".globl tiny\n.type tiny,@function\ntiny:\n ret\n.size tiny, .-tiny\n"
	".globl loopk\n.type loopk,@function\nloopk:\n xor %eax,%eax\n1: inc %eax\n cmp $10,%eax\n jne 1b\n ret\n.size loopk, .-loopk\n"
	".globl plain\n.type plain,@function\nplain:\n push %rbx\n mov %rdi,%rbx\n lea 1(%rbx),%rax\n pop %rbx\n ret\n.size plain, .-plain\n"
	".globl Builtins_Add\n.type Builtins_Add,@function\nBuiltins_Add:\n push %rbx\n mov %rdi,%rbx\n lea 1(%rbx),%rax\n pop %rbx\n ret\n.size Builtins_Add, .-Builtins_Add\n"
	".globl _ZN2v88internal18Runtime_StackGuardEiPmPNS0_7IsolateE\n.type _ZN2v88internal18Runtime_StackGuardEiPmPNS0_7IsolateE,@function\n_ZN2v88internal18Runtime_StackGuardEiPmPNS0_7IsolateE:\n push %rbx\n mov %rdi,%rbx\n lea 1(%rbx),%rax\n pop %rbx\n ret\n.size _ZN2v88internal18Runtime_StackGuardEiPmPNS0_7IsolateE, .-_ZN2v88internal18Runtime_StackGuardEiPmPNS0_7IsolateE\n"
	".globl _ZN4node4ReadERKN2v820FunctionCallbackInfoINS0_5ValueEEE\n.type _ZN4node4ReadERKN2v820FunctionCallbackInfoINS0_5ValueEEE,@function\n_ZN4node4ReadERKN2v820FunctionCallbackInfoINS0_5ValueEEE:\n push %rbx\n mov %rdi,%rbx\n lea 1(%rbx),%rax\n pop %rbx\n ret\n.size _ZN4node4ReadERKN2v820FunctionCallbackInfoINS0_5ValueEEE, .-_ZN4node4ReadERKN2v820FunctionCallbackInfoINS0_5ValueEEE\n"
	// Functions that fall into the next one, as libgmp's hand-written
	// __gmpn_modexact_1_odd does: intoA is a push kept in place, and its
	// region would start at intoB's entry; fallC is 5 bytes, its region
	// those 5 exactly; outerD's 2-byte first instruction is not kept and
	// its region would cover innerE's entry.
	".globl intoA\n.type intoA,@function\n.size intoA, 10\nintoA:\n push %rbx\n"
	".globl intoB\n.type intoB,@function\nintoB:\n mov %rdi,%rbx\n lea 1(%rbx),%rax\n pop %rbx\n ret\n.size intoB, .-intoB\n"
	".globl fallC\n.type fallC,@function\n.size fallC, 15\nfallC:\n mov $0,%ecx\n"
	".globl fallD\n.type fallD,@function\nfallD:\n mov %rdx,%r8\n shr %edx\n lea (%rdx,%rcx),%rax\n ret\n.size fallD, .-fallD\n"
	".globl outerD\n.type outerD,@function\n.size outerD, 12\nouterD:\n xor %eax,%eax\n"
	".globl innerE\n.type innerE,@function\ninnerE:\n mov %rdx,%r8\n shr %edx\n lea (%rdx,%rcx),%rax\n ret\n.size innerE, .-innerE\n"
	// Functions that return twice, or on another stack, by their names.
	".type __sigsetjmp,@function\n__sigsetjmp:\n push %rbx\n mov %rdi,%rbx\n lea 1(%rbx),%rax\n pop %rbx\n ret\n.size __sigsetjmp, .-__sigsetjmp\n"
	".type jump_fcontext,@function\njump_fcontext:\n push %rbx\n mov %rdi,%rbx\n lea 1(%rbx),%rax\n pop %rbx\n ret\n.size jump_fcontext, .-jump_fcontext\n");
`)
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
	at := map[string]Site{}
	for _, st := range sites {
		at[spec.SiteName(st)] = st
	}
	for _, c := range []struct{ fn, entry string }{{"fallC", "fallC"}, {"fallD", "fallD"}, {"intoB", "intoB"}, {"innerE", "innerE"}} {
		f, ok := spec.FuncAt(at[c.fn].Addr)
		if st, found := at[c.fn]; !found || !ok || f.Name != c.entry || st.Addr != f.Addr+uint64(len(st.Plan.Kept)) {
			t.Errorf("%s: site %+v (refused %q), want its region where %s starts", c.fn, at[c.fn], why[c.fn], c.entry)
		}
	}
	// intoA falls back to a region at its start, which then holds
	// intoB's entry; outerD's region holds innerE's.
	if !strings.HasPrefix(why["intoA"], "branch target at +1 (the entry of intoB)") {
		t.Errorf("intoA: refused %q, want intoB's entry at +1", why["intoA"])
	}
	if !strings.HasPrefix(why["outerD"], "branch target at +2 (the entry of innerE)") {
		t.Errorf("outerD: refused %q, want innerE's entry at +2", why["outerD"])
	}
	if st, ok := at["fallC"]; ok && (st.Addr != spec.Funcs[st.Func].Addr || len(st.Plan.Kept) != 0) {
		t.Errorf("fallC: region at %#x kept %x, want the 5 bytes at its start", st.Addr, st.Plan.Kept)
	}
	if !reloc["plain"] {
		t.Errorf("plain must be a relocating site: %v (refused: %v)", reloc, why)
	}
	// V8's embedded builtins, its runtime functions and API callbacks
	// are traced, but not in graph mode: V8 reads their return addresses.
	v8 := map[string]string{"Builtins_Add": "V8's embedded builtin", "v8::internal::Runtime_StackGuard": "return address read by V8", "node::Read": "return address read by V8",
		"__sigsetjmp": "returns twice: its return address is saved for a longjmp", "jump_fcontext": "switches stacks"}
	for _, st := range sites {
		name := spec.SiteName(st)
		if want := v8[name]; !strings.HasPrefix(st.GraphUnsafe, want) || want == "" && st.GraphUnsafe != "" {
			t.Errorf("%s: graph-unsafe %q, want %q", name, st.GraphUnsafe, want)
		}
		delete(v8, name)
	}
	if len(v8) > 0 {
		t.Errorf("not relocating sites: %v", v8)
	}
}

// TestRelocPrepared: analyzing a few functions, whose pass over the
// module keeps only the branch targets and read-only pointers near them
// (PrepareReloc), or one function after another unprepared, gives each
// the same answer as analyzing every function. The position-dependent
// fixture has an absolute jump table the read-only data proves (tabok),
// one it refuses (a word of read-only data points inside tabbad's
// region), and a function another one jumps into (inner); libc has cold
// parts that branch back into their functions.
func TestRelocPrepared(t *testing.T) {
	exe := buildAsm(t, "prep", []string{"-no-pie"}, `__asm__(
	".text\n"
	".globl inner\n.type inner,@function\ninner:\n push %rbx\n mov %rdi,%rbx\n lea 1(%rbx),%rax\n pop %rbx\n ret\n.size inner, .-inner\n"
	".globl outside\n.type outside,@function\noutside:\n mov %rdi,%rax\n jmp inner+1\n.size outside, .-outside\n"
	".globl tabok\n.type tabok,@function\ntabok:\n mov %edi,%eax\n and $1,%eax\n jmp *tabA(,%rax,8)\n1: mov $1,%eax\n ret\n2: mov $2,%eax\n ret\n.size tabok, .-tabok\n"
	".globl tabbad\n.type tabbad,@function\ntabbad:\n mov %edi,%eax\n and $1,%eax\n jmp *tabB(,%rax,8)\n3: mov $1,%eax\n ret\n4: mov $2,%eax\n ret\n.size tabbad, .-tabbad\n"
	".section .rodata\n.balign 8\ntabA: .quad 1b, 2b\ntabB: .quad 3b, 4b\n.quad tabbad+2\n.text\n");
`)
	type answer struct {
		why  string
		orig string
		addr uint64
	}
	for _, path := range []string{exe, "/lib/x86_64-linux-gnu/libc.so.6"} {
		t.Run(filepath.Base(path), func(t *testing.T) {
			all, err := Open(path)
			if err != nil {
				t.Fatal(err)
			}
			want := map[int]answer{}
			sites, refused := all.RelocSites()
			for _, st := range sites {
				want[st.Func] = answer{orig: string(st.Plan.Orig()), addr: st.Addr}
			}
			for _, r := range refused {
				want[r.Func] = answer{why: r.Reason}
			}
			if path == exe {
				byName := map[string]answer{}
				for i, a := range want {
					byName[all.Funcs[i].Name] = a
				}
				for name, w := range map[string]string{"inner": "branch target at +1", "tabbad": "indirect jump", "tabok": "", "outside": ""} {
					if got := byName[name].why; !strings.HasPrefix(got, w) || w == "" && got != "" {
						t.Errorf("%s: refused %q, want %q", name, got, w)
					}
				}
			}
			var cands []int
			for i := range all.Funcs {
				if all.RelocCandidate(i) {
					cands = append(cands, i)
				}
			}
			rng := rand.New(rand.NewPCG(1, uint64(len(cands))))
			check := func(spec *Spec, idx []int) {
				for _, i := range idx {
					st, why, ok := spec.RelocFunc(i)
					got := answer{why: why}
					if why == "" {
						got = answer{orig: string(st.Plan.Orig()), addr: st.Addr}
					}
					if !ok || got != want[i] {
						t.Errorf("%s: %+v, ok %v; analyzing every function gave %+v", all.Funcs[i].Name, got, ok, want[i])
					}
				}
			}
			for round := range 6 {
				spec, err := Open(path)
				if err != nil {
					t.Fatal(err)
				}
				var idx []int
				for _, i := range cands {
					if rng.IntN(1<<uint(round)) == 0 {
						idx = append(idx, i)
					}
				}
				spec.PrepareReloc(idx)
				check(spec, idx)
			}
			// One at a time, unprepared: the first takes a pass for all.
			spec, err := Open(path)
			if err != nil {
				t.Fatal(err)
			}
			idx := cands
			if len(idx) > 40 {
				idx = nil
				for range 40 {
					idx = append(idx, cands[rng.IntN(len(cands))])
				}
			}
			check(spec, idx)
		})
	}
}

// buildAsm builds a program of the top-level asm in code, with an empty
// main, by gcc -O2 and flags, and returns its path.
func buildAsm(t *testing.T, name string, flags []string, code string) string {
	gcc := needTool(t, "gcc")
	dir := t.TempDir()
	src := filepath.Join(dir, name+".c")
	out := filepath.Join(dir, name)
	if err := os.WriteFile(src, []byte(code+"int main(void) { return 0; }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	args := append(append([]string{"-O2"}, flags...), "-o", out, src)
	if b, err := exec.Command(gcc, args...).CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, b)
	}
	return out
}
