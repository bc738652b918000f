package reloc_test

import (
	"debug/elf"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/livetrace/livetrace/internal/elfsite"
	"github.com/livetrace/livetrace/internal/reloc"
	"github.com/livetrace/livetrace/internal/testtarget"
)

// Traceable is the figure of one binary: of the functions livetrace would
// analyze for relocation (no NOP site, not a PLT stub, first alias at its
// address, a size), how many have at least 5 bytes before their first
// branch target (Eligible), and how many of those `livetrace list` shows
// as traceable (Accepted). Refused counts the refusals of eligible
// functions by reason, the offsets and instructions left out.
type Traceable struct {
	Name       string            `json:"name"`
	Path       string            `json:"path"`
	Candidates int               `json:"candidates"`
	Eligible   int               `json:"eligible"`
	Accepted   int               `json:"accepted"`
	Refused    map[string]int    `json:"refused"`
	Examples   map[string]string `json:"examples"`
	// Ineligible counts the candidates left out of the denominator by
	// reason: a branch target in their first 5 bytes, fewer than 5
	// bytes, no size; and the symbols that name no function called at
	// their address (an IFUNC's resolver, the program's entry point),
	// which livetrace refuses whatever their bytes.
	Ineligible map[string]int `json:"ineligible"`
	// TablesChecked counts, in a position-dependent executable, the
	// eligible functions refused for a possible jump table that
	// reloc.Analyze accepts when it checks their absolute jump tables
	// against the read-only data (reloc.Options.ReadOnly). elfsite
	// passes that option, so it is 0 unless the two disagree.
	TablesChecked int `json:"tables_checked,omitempty"`
}

// Percent is Accepted over Eligible, in percent.
func (f *Traceable) Percent() float64 {
	if f.Eligible == 0 {
		return 0
	}
	return 100 * float64(f.Accepted) / float64(f.Eligible)
}

// reasonClass drops what varies from one refusal to the next (offsets,
// the culprit instruction's operands, sizes) from an elfsite refusal, so
// that refusals can be counted: "displaced call at +4 (CALL .+16)" is
// "displaced call", "unrelocatable instruction SYSCALL at +2" is
// "unrelocatable instruction SYSCALL".
func reasonClass(why string) string {
	why = regexp.MustCompile(` at \+\d+.*$`).ReplaceAllString(why, "")
	why = regexp.MustCompile(` \(.*\)$`).ReplaceAllString(why, "")
	return regexp.MustCompile(`function of \d+ bytes`).ReplaceAllString(why, "function of N bytes")
}

// measureTraceable computes the figure of the ELF file at path with the
// analysis livetrace itself runs (elfsite.Spec.RelocFunc), and the
// denominator from the file's bytes: reloc's eligibility over the
// function and the direct branch targets of every executable section,
// the same targets elfsite passes to reloc.Analyze.
func measureTraceable(tb testing.TB, name, path string) *Traceable {
	tb.Helper()
	spec, err := elfsite.Open(path)
	if err != nil {
		tb.Fatalf("%s: %v", name, err)
	}
	f, err := elf.Open(path)
	if err != nil {
		tb.Fatalf("%s: %v", name, err)
	}
	defer f.Close()
	var targets []uint64
	for _, sec := range f.Sections {
		if sec.Type != elf.SHT_PROGBITS || sec.Flags&elf.SHF_EXECINSTR == 0 || strings.HasPrefix(sec.Name, ".plt") {
			continue
		}
		b, err := sec.Data()
		if err != nil {
			tb.Fatalf("%s: read %s: %v", name, sec.Name, err)
		}
		targets = append(targets, reloc.BranchTargets(b, sec.Addr)...)
	}
	sort.Slice(targets, func(i, j int) bool { return targets[i] < targets[j] })
	bytesAt := func(addr, n uint64) []byte {
		for _, p := range f.Progs {
			if p.Type == elf.PT_LOAD && p.Flags&elf.PF_X != 0 && addr >= p.Vaddr && addr-p.Vaddr+n <= p.Filesz {
				b := make([]byte, n)
				if _, err := p.ReadAt(b, int64(addr-p.Vaddr)); err != nil {
					tb.Fatalf("%s: read %d bytes at %#x: %v", name, n, addr, err)
				}
				return b
			}
		}
		return nil
	}
	var ro *reloc.ReadOnly
	if f.Type == elf.ET_EXEC {
		ro = readOnly(tb, f)
	}
	fig := &Traceable{Name: name, Path: path, Refused: map[string]int{}, Examples: map[string]string{}, Ineligible: map[string]int{}}
	for i, fn := range spec.Funcs {
		st, why, ok := spec.RelocFunc(i)
		if !ok {
			continue
		}
		fig.Candidates++
		code := bytesAt(fn.Addr, fn.Size)
		switch {
		case fn.IFunc:
			// The symbol names a function, its address is the resolver
			// that picks an implementation once, at load time.
			fig.Ineligible["IFUNC symbol: its address is the resolver"]++
			continue
		case f.Entry != 0 && fn.Addr == f.Entry:
			fig.Ineligible["the program's entry point"]++
			continue
		case fn.Size == 0:
			fig.Ineligible["no symbol size"]++
			continue
		case code == nil:
			fig.Ineligible["bytes outside the executable segments"]++
			continue
		case !reloc.Eligible(code, fn.Addr, targets):
			if len(code) < reloc.JmpLen+4 && (len(code) < reloc.JmpLen || string(code[:4]) == "\xf3\x0f\x1e\xfa") {
				fig.Ineligible["fewer than 5 bytes"]++
			} else {
				fig.Ineligible["branch target in the first 5 bytes"]++
			}
			if why == "" {
				tb.Errorf("%s: %s at %#x is accepted (%s at %#x) but has a branch target in its first 5 bytes", name, fn.Name, fn.Addr, st.Form, st.Addr)
			}
			continue
		}
		fig.Eligible++
		if why == "" {
			fig.Accepted++
			continue
		}
		c := reasonClass(why)
		if ro != nil && strings.HasPrefix(why, reloc.JumpTable.String()) {
			if _, err := reloc.Analyze(code, fn.Addr, reloc.Options{ExtraTargets: targets, ReadOnly: ro}); err == nil {
				fig.TablesChecked++
			}
		}
		fig.Refused[c]++
		if _, ok := fig.Examples[c]; !ok {
			fig.Examples[c] = fn.Name + ": " + why
		}
	}
	return fig
}

// readOnly scans the read-only data of a position-dependent executable
// for reloc.Options.ReadOnly.
func readOnly(tb testing.TB, f *elf.File) *reloc.ReadOnly {
	var addrs []uint64
	var segs [][]byte
	var code [][2]uint64
	for _, p := range f.Progs {
		switch {
		case p.Type != elf.PT_LOAD:
		case p.Flags&elf.PF_X != 0:
			code = append(code, [2]uint64{p.Vaddr, p.Vaddr + p.Memsz})
		case p.Flags&elf.PF_W == 0:
			b := make([]byte, p.Filesz)
			if _, err := p.ReadAt(b, 0); err != nil {
				tb.Fatalf("read a read-only segment: %v", err)
			}
			addrs, segs = append(addrs, p.Vaddr), append(segs, b)
		}
	}
	return reloc.NewReadOnly(addrs, segs, code)
}

func (f *Traceable) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-26s %5d functions, %5d eligible, %5d traceable = %5.1f%%", f.Name, f.Candidates, f.Eligible, f.Accepted, f.Percent())
	if f.TablesChecked > 0 {
		fmt.Fprintf(&b, "; with absolute jump tables checked: %d = %.1f%%", f.Accepted+f.TablesChecked, 100*float64(f.Accepted+f.TablesChecked)/float64(f.Eligible))
	}
	for _, r := range sortedCounts(f.Refused) {
		fmt.Fprintf(&b, "\n    refused %5d %-40s e.g. %s", f.Refused[r], r, f.Examples[r])
	}
	for _, r := range sortedCounts(f.Ineligible) {
		fmt.Fprintf(&b, "\n    not eligible %5d %s", f.Ineligible[r], r)
	}
	return b.String()
}

// sortedCounts returns the keys of m, largest count first.
func sortedCounts(m map[string]int) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Slice(ks, func(i, j int) bool { return m[ks[i]] > m[ks[j]] || m[ks[i]] == m[ks[j]] && ks[i] < ks[j] })
	return ks
}

// TestTraceable measures the fraction of functions livetrace can trace by
// relocation, the figure `make bench` reports (bench/ltbench): in the
// fixtures built without any tracing flag (stress and workload with its
// shared library, gcc and clang, -O2), the stock libc.so.6,
// libsqlite3.so.0 and /usr/bin/python3. The denominator is the functions
// with at least 5 bytes before their first branch target. With
// LIVETRACE_TRACEABLE_JSON=FILE it writes the figures there as JSON.
//
// It fails if a function is accepted although a branch target lies in its
// first 5 bytes (the analysis and the denominator disagree), or if the
// stock libc falls below the goal of 95%.
func TestTraceable(t *testing.T) {
	var bins [][2]string
	for _, form := range []testtarget.Form{testtarget.GccSled, testtarget.ClangNop5} {
		cc := testtarget.Compiler(form)
		bins = append(bins, [2]string{"stress " + cc + " -O2", testtarget.Build(t, testtarget.Stress, form, testtarget.NoSites(), testtarget.O2())})
		exe := testtarget.Build(t, testtarget.Workload, form, testtarget.NoSites(), testtarget.O2())
		bins = append(bins, [2]string{"workload " + cc + " -O2", exe}, [2]string{testtarget.LibName + " " + cc + " -O2", testtarget.LibPath(exe)})
	}
	for _, sys := range []struct{ path, pkg string }{
		{"/lib/x86_64-linux-gnu/libc.so.6", "libc6"},
		{"/usr/lib/x86_64-linux-gnu/libsqlite3.so.0", "libsqlite3-0"},
		{"/usr/bin/python3", "python3-minimal"},
	} {
		p, err := filepath.EvalSymlinks(sys.path)
		if err != nil {
			testtarget.SkipOrFatal(t, "%s: %v: apt-get install %s (make deps-bench)", sys.path, err, sys.pkg)
		}
		bins = append(bins, [2]string{filepath.Base(p), p})
	}
	var figs []*Traceable
	for _, b := range bins {
		fig := measureTraceable(t, b[0], b[1])
		t.Log(fig)
		figs = append(figs, fig)
		if strings.HasPrefix(fig.Name, "libc.so") && fig.Percent() < 95 {
			t.Errorf("libc: %.1f%% of eligible functions traceable; want at least 95%%", fig.Percent())
		}
		if fig.Eligible == 0 {
			t.Errorf("%s: no eligible function: the figure measures nothing", fig.Name)
		}
	}
	if out := os.Getenv("LIVETRACE_TRACEABLE_JSON"); out != "" {
		data, err := json.MarshalIndent(figs, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(out, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
