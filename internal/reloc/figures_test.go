package reloc

import (
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/livetrace/livetrace/internal/testtarget"
)

// tally counts the verdicts of Analyze over the functions of one binary.
type tally struct {
	name     string
	funcs    int // STT_FUNC symbols of at least 5 bytes
	accepted int
	reasons  map[Reason]int
	examples map[Reason]string
}

// eligible is the number of functions that have at least 5 bytes before
// their first branch target: the ones this technique can hope to trace.
func (t *tally) eligible() int { return t.funcs - t.reasons[BranchTarget] }

func (t *tally) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-28s %5d funcs  accepted %5d = %5.1f%%  of eligible %5d = %5.1f%%",
		t.name, t.funcs, t.accepted, pct(t.accepted, t.funcs), t.eligible(), pct(t.accepted, t.eligible()))
	type rc struct {
		r Reason
		n int
	}
	var rs []rc
	for r, n := range t.reasons {
		rs = append(rs, rc{r, n})
	}
	sort.Slice(rs, func(i, j int) bool { return rs[i].n > rs[j].n || rs[i].n == rs[j].n && rs[i].r < rs[j].r })
	for _, r := range rs {
		fmt.Fprintf(&b, "\n    %5d %-45s e.g. %s", r.n, r.r, t.examples[r.r])
	}
	return b.String()
}

func pct(a, b int) float64 {
	if b == 0 {
		return 0
	}
	return 100 * float64(a) / float64(b)
}

// analyzeELF runs Analyze on every STT_FUNC symbol of at least 5 bytes of
// the ELF file at path (.symtab, or .dynsym when stripped), once per
// address. With section-wide targets, direct branches from anywhere in
// the symbol's section count as well (Options.ExtraTargets).
func analyzeELF(tb testing.TB, name, path string, sectionWide, emulateCalls bool) *tally {
	tb.Helper()
	f, err := elf.Open(path)
	if err != nil {
		tb.Fatalf("open %s: %v", path, err)
	}
	defer f.Close()
	syms, err := f.Symbols()
	if err != nil || len(syms) == 0 {
		syms, err = f.DynamicSymbols()
	}
	if err != nil {
		tb.Fatalf("read symbols of %s: %v", path, err)
	}
	t := &tally{name: name, reasons: map[Reason]int{}, examples: map[Reason]string{}}
	data := map[elf.SectionIndex][]byte{}
	targets := map[elf.SectionIndex][]uint64{}
	seen := map[[2]uint64]bool{}
	for _, s := range syms {
		if elf.ST_TYPE(s.Info) != elf.STT_FUNC || s.Size < JmpLen || s.Section >= elf.SectionIndex(len(f.Sections)) || s.Section == elf.SHN_UNDEF {
			continue
		}
		sec := f.Sections[s.Section]
		if sec.Type != elf.SHT_PROGBITS || sec.Flags&elf.SHF_EXECINSTR == 0 {
			continue
		}
		key := [2]uint64{uint64(s.Section), s.Value}
		if seen[key] {
			continue
		}
		seen[key] = true
		b, ok := data[s.Section]
		if !ok {
			if b, err = sec.Data(); err != nil {
				tb.Fatalf("read %s of %s: %v", sec.Name, path, err)
			}
			data[s.Section] = b
			if sectionWide {
				targets[s.Section] = BranchTargets(b, sec.Addr)
			}
		}
		// In a relocatable object, symbol values are section offsets.
		base := sec.Addr
		if f.Type == elf.ET_REL {
			base = 0
		}
		lo := s.Value - base
		if lo > uint64(len(b)) || s.Size > uint64(len(b))-lo {
			continue
		}
		t.funcs++
		addr := sec.Addr + lo
		_, err := Analyze(b[lo:lo+s.Size], addr, Options{ExtraTargets: targets[s.Section], EmulateCalls: emulateCalls})
		var r *Refusal
		switch {
		case err == nil:
			t.accepted++
		case errors.As(err, &r):
			t.reasons[r.Reason]++
			if _, ok := t.examples[r.Reason]; !ok {
				t.examples[r.Reason] = s.Name + ": " + err.Error()
			}
		default:
			tb.Errorf("%s %s: %v", name, s.Name, err)
		}
	}
	return t
}

// figureBinaries returns the binaries TestAcceptance measures: the C test
// fixtures compiled by gcc and clang at -O0, -O2 and -O3 without site
// flags, the stress fixture (1000 generated functions) at -O2, and the
// system's libc, python3 and libsqlite3.
func figureBinaries(tb testing.TB) [][2]string {
	var bins [][2]string
	srcs, _ := filepath.Glob("../testtarget/c/*.c")
	for _, cc := range []string{"gcc", testtarget.Compiler(testtarget.ClangNop5)} {
		for _, o := range []string{"-O0", "-O2", "-O3"} {
			for _, src := range srcs {
				if strings.Contains(src, "hostile") || strings.Contains(src, "sqlite") {
					continue // needs its own headers (SQLite's amalgamation)
				}
				obj := buildCached(tb, cc, []string{o, "-c", "-fcf-protection=none", "-fPIC", "-I../testtarget/c"}, src, "a.o")
				bins = append(bins, [2]string{fmt.Sprintf("%s %s %s", cc, o, filepath.Base(src)), obj})
			}
		}
	}
	for _, f := range []testtarget.Form{testtarget.GccSled, testtarget.ClangNop5} {
		bins = append(bins, [2]string{fmt.Sprintf("stress %s -O2", testtarget.Compiler(f)), testtarget.Build(tb, testtarget.Stress, f, testtarget.NoSites())})
	}
	for _, sys := range []string{"/lib/x86_64-linux-gnu/libc.so.6", "/usr/bin/python3", "/usr/lib/x86_64-linux-gnu/libsqlite3.so.0"} {
		p, err := filepath.EvalSymlinks(sys)
		if err != nil {
			testtarget.SkipOrFatal(tb, "%s: %v: apt-get install libc6 python3-minimal libsqlite3-0", sys, err)
		}
		bins = append(bins, [2]string{filepath.Base(p), p})
	}
	return bins
}

// TestAcceptance measures the fraction of functions Analyze accepts in
// real binaries, and prints it with the top refusal reasons (go test -v,
// or LIVETRACE_RELOC_FIGURES=1 to print on stdout). Each binary is
// measured three ways: the function's own bytes only; with the direct
// branch targets of its whole section (+xfn, Options.ExtraTargets); and
// with that and Options.EmulateCalls (+calls). It fails if Analyze returns
// anything but a Plan or a Refusal, or if the acceptance of eligible
// functions (those with 5 bytes before their first branch target) in
// libc drops below 95%. It compares variants of the analysis; the figure
// of `make bench`, with livetrace's own analysis and the denominator of
// docs/DESIGN-NOTES.md, is TestTraceable.
func TestAcceptance(t *testing.T) {
	type variant struct {
		suffix      string
		wide, calls bool
	}
	variants := []variant{{"", false, false}, {" +xfn", true, false}, {" +xfn+calls", true, true}}
	names := []string{"gcc -O0", "gcc -O2", "gcc -O3", "clang -O0", "clang -O2", "clang -O3"}
	objs := map[string]*tally{}
	var order []string
	var all []*tally
	for _, b := range figureBinaries(t) {
		for _, v := range variants {
			obj := strings.HasSuffix(b[1], ".o")
			if obj && v.wide && !v.calls {
				continue // the sections of an object file hold one file's code
			}
			tl := analyzeELF(t, b[0], b[1], v.wide && !obj, v.calls)
			if obj {
				name := ""
				for _, n := range names {
					cc, o, _ := strings.Cut(n, " ")
					if strings.HasPrefix(b[0], cc) && strings.Contains(b[0], o) {
						name = n + " fixtures"
					}
				}
				if v.calls {
					name += " +calls"
				}
				if objs[name] == nil {
					objs[name] = &tally{name: name, reasons: map[Reason]int{}, examples: map[Reason]string{}}
					order = append(order, name)
				}
				objs[name].add(tl)
				continue
			}
			tl.name += v.suffix
			all = append(all, tl)
			if strings.HasPrefix(tl.name, "libc.so") && !v.wide && pct(tl.accepted, tl.eligible()) < 95 {
				t.Errorf("libc: %.1f%% of eligible functions accepted; want at least 95%%", pct(tl.accepted, tl.eligible()))
			}
		}
	}
	sort.Strings(order)
	for _, n := range order {
		all = append([]*tally{objs[n]}, all...)
	}
	sort.SliceStable(all[:len(order)], func(i, j int) bool { return all[i].name < all[j].name })
	for _, tl := range all {
		t.Log(tl)
		if os.Getenv("LIVETRACE_RELOC_FIGURES") != "" {
			fmt.Println(tl)
		}
	}
}

// BenchmarkAnalyze measures Analyze over every function of libc.
func BenchmarkAnalyze(b *testing.B) {
	f, err := elf.Open("/lib/x86_64-linux-gnu/libc.so.6")
	if err != nil {
		testtarget.SkipOrFatal(b, "open libc: %v", err)
	}
	defer f.Close()
	syms, err := f.DynamicSymbols()
	if err != nil {
		b.Fatal(err)
	}
	text := f.Section(".text")
	code, err := text.Data()
	if err != nil {
		b.Fatal(err)
	}
	var fns [][2]uint64
	for _, s := range syms {
		if elf.ST_TYPE(s.Info) == elf.STT_FUNC && s.Value >= text.Addr && s.Value+s.Size <= text.Addr+uint64(len(code)) && s.Size >= JmpLen {
			fns = append(fns, [2]uint64{s.Value, s.Size})
		}
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, fn := range fns {
			lo := fn[0] - text.Addr
			Analyze(code[lo:lo+fn[1]], fn[0], Options{})
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(fns)), "ns/func")
}

func (t *tally) add(o *tally) {
	t.funcs += o.funcs
	t.accepted += o.accepted
	for r, n := range o.reasons {
		t.reasons[r] += n
		if _, ok := t.examples[r]; !ok {
			t.examples[r] = o.name + " " + o.examples[r]
		}
	}
}
