package report_test

import (
	"bytes"
	"debug/elf"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/pprof/profile"

	"github.com/livetrace/livetrace/internal/report"
	"github.com/livetrace/livetrace/internal/testtarget"
	"github.com/livetrace/livetrace/internal/tracefile"
	"github.com/livetrace/livetrace/internal/tracefile/tracefiletest"
)

func folded(t *testing.T, rec *tracefile.Recording, f report.Filter) string {
	t.Helper()
	var b bytes.Buffer
	if err := report.ExportFolded(&b, rec, f); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// TestEntryStacks checks the stacks entry mode rebuilds from the recorded
// callers: nested calls, a frame that returned, a recursion (two levels,
// never deeper than it was), an untraced caller at the root, an unknown
// caller, and threads kept apart.
func TestEntryStacks(t *testing.T) {
	b := tracefiletest.New(tracefile.ModeEntry)
	m := b.Thread(1, "main", 0)
	m.Enter("a").Call("b", 10).Enter("c").Call("d", 10).Exit().Exit()
	// e is called by the untraced caller of a (__libc_start_call_main),
	// after a returned: it is not under a.
	m.Call("e", 10)
	m.Enter("fib").Enter("fib").Call("fib", 10).Call("fib", 10).Exit().Call("fib", 10).Exit()
	w := b.Thread(2, "worker", 5)
	w.Enter("c").Call("d", 10).Exit()
	b.RootCaller = 0 // unknown: no caller frame
	u := b.Thread(3, "other", 7)
	u.Call("d", 10)
	got := folded(t, b.Recording(), report.Filter{})
	want := `__libc_start_call_main;a 1
__libc_start_call_main;a;b 1
__libc_start_call_main;a;c 1
__libc_start_call_main;a;c;d 1
__libc_start_call_main;c 1
__libc_start_call_main;c;d 1
__libc_start_call_main;e 1
__libc_start_call_main;fib 1
__libc_start_call_main;fib;fib 4
d 1
`
	if got != want {
		t.Errorf("folded:\n%s\nwant:\n%s", got, want)
	}
	// The module filter hides a: b and c start at it, their caller.
	rec := b.Recording()
	keep := make([]bool, len(rec.Funcs))
	for i := range keep {
		keep[i] = rec.Funcs[i].Name != "a"
	}
	got = folded(t, rec, report.Filter{Funcs: keep})
	if !strings.Contains(got, "\na;b 1\na;c 1\na;c;d 1\n") || strings.Contains(got, "__libc_start_call_main;a") {
		t.Errorf("folded without a:\n%s", got)
	}
	// pprof has the same stacks, leaf first.
	p, err := parsedPprof(b.Recording())
	if err != nil {
		t.Fatal(err)
	}
	var stacks []string
	for _, s := range p.Sample {
		var names []string
		for _, l := range s.Location {
			names = append(names, l.Line[0].Function.Name)
		}
		if strings.Join(names, ";") == "d;c;a;__libc_start_call_main" && s.Value[0] != 1 {
			t.Errorf("pprof d;c;a: %d calls", s.Value[0])
		}
		stacks = append(stacks, strings.Join(names, ";"))
	}
	if len(stacks) != 10 || !strings.Contains(strings.Join(stacks, " "), "d;c;a;__libc_start_call_main") {
		t.Errorf("pprof stacks: %v", stacks)
	}
}

// TestPprofSourceLines exports a profile of a recording of a program built
// with DWARF: its functions carry their file and line; with another build
// ID they do not.
func TestPprofSourceLines(t *testing.T) {
	cc := testtarget.Compiler(testtarget.ClangNop5)
	if _, err := exec.LookPath(cc); err != nil {
		testtarget.SkipOrFatal(t, "%s is needed to build a program with DWARF", cc)
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "lines.c")
	os.WriteFile(src, []byte("int twice(int x)\n{\n\treturn 2 * x;\n}\n\nint main(void)\n{\n\treturn twice(3);\n}\n"), 0o644)
	exe := filepath.Join(dir, "lines")
	// An absolute source name, compiled in the package's directory,
	// which shares no prefix with it: see fixJoin.
	build := exec.Command(cc, "-g", "-O1", "-Wl,--build-id", "-o", exe, src)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", cc, err, out)
	}
	f, err := elf.Open(exe)
	if err != nil {
		t.Fatal(err)
	}
	syms, _ := f.Symbols()
	var addr uint64
	for _, s := range syms {
		if s.Name == "twice" {
			addr = s.Value
		}
	}
	var id string
	for _, s := range f.Sections {
		if s.Name == ".note.gnu.build-id" {
			d, _ := s.Data()
			id = hex.EncodeToString(d[16:])
		}
	}
	f.Close()
	if addr == 0 || id == "" {
		t.Fatalf("twice at %#x, build id %q", addr, id)
	}
	const bias = 0x555555554000
	for _, tc := range []struct {
		buildID string
		file    string
		line    int64
	}{
		{id, src, 2},
		{"0123456789abcdef", exe, 0},
	} {
		rec := &tracefile.Recording{
			Meta: tracefile.Meta{
				Mode:    tracefile.ModeEntry,
				Modules: []tracefile.Module{{Path: exe, Base: bias, Bias: bias, BuildID: tc.buildID}},
				Funcs:   []tracefile.Func{{Name: "twice", Module: 0, Addr: bias + addr}},
			},
			Events: []tracefile.Event{{TSC: 1, TID: 1, Kind: tracefile.KindEntry}},
		}
		p, err := parsedPprof(rec)
		if err != nil {
			t.Fatal(err)
		}
		l := p.Sample[0].Location[0].Line[0]
		if l.Function.Filename != tc.file || l.Line != tc.line || l.Function.StartLine != tc.line {
			t.Errorf("build id %s: %s:%d (starts %d), want %s:%d", tc.buildID, l.Function.Filename, l.Line, l.Function.StartLine, tc.file, tc.line)
		}
	}
}

// parsedPprof exports the pprof profile of rec and reads it back with
// pprof's own parser.
func parsedPprof(rec *tracefile.Recording) (*profile.Profile, error) {
	var b bytes.Buffer
	if err := report.ExportPprof(&b, rec, report.Filter{}); err != nil {
		return nil, err
	}
	return profile.Parse(&b)
}
