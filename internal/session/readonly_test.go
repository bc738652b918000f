package session

import (
	"debug/elf"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/livetrace/livetrace/internal/elfsite"
	"github.com/livetrace/livetrace/internal/reloc"
	"github.com/livetrace/livetrace/internal/testtarget"
	"github.com/livetrace/livetrace/internal/tracefile"
)

// TestRelocJumpTablesPython traces, in a running stock /usr/bin/python3
// (Debian's is position-dependent), the functions that the relocator
// accepts only because their absolute jump tables were checked against the
// read-only data (reloc.Options.ReadOnly): the session must analyze them
// at runtime with the same proof, python must compute the same result, and
// the text must come back byte for byte.
func TestRelocJumpTablesPython(t *testing.T) {
	testtarget.RequireRoot(t)
	const py = "/usr/bin/python3"
	exe, err := filepath.EvalSymlinks(py)
	if err != nil {
		testtarget.SkipOrFatal(t, "%s: %v: run `make deps-bench`, which installs python3-minimal", py, err)
	}
	spec, err := elfsite.Open(exe)
	if err != nil {
		t.Fatal(err)
	}
	if spec.Type != elf.ET_EXEC {
		testtarget.SkipOrFatal(t, "%s is not position-dependent: no absolute jump tables to check", exe)
	}
	f, err := elf.Open(exe)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	code := func(addr, size uint64) []byte {
		for _, p := range f.Progs {
			if p.Type == elf.PT_LOAD && p.Flags&elf.PF_X != 0 && addr >= p.Vaddr && addr+size <= p.Vaddr+p.Filesz {
				b := make([]byte, size)
				if _, err := p.ReadAt(b, int64(addr-p.Vaddr)); err != nil {
					return nil
				}
				return b
			}
		}
		return nil
	}
	var names []string
	for i, fn := range spec.Funcs {
		if _, why, ok := spec.RelocFunc(i); !ok || why != "" {
			continue
		}
		b := code(fn.Addr, fn.Size)
		if b == nil {
			continue
		}
		_, err := reloc.Analyze(b, fn.Addr, reloc.Options{})
		var r *reloc.Refusal
		if errors.As(err, &r) && r.Reason == reloc.JumpTable {
			names = append(names, fn.Name)
		}
	}
	if len(names) == 0 {
		t.Fatalf("no function of %s is accepted thanks to its jump tables", exe)
	}
	script := filepath.Join(t.TempDir(), "loop.py")
	if err := os.WriteFile(script, []byte(`import sys, json, re
sys.stdout.write("ready\n"); sys.stdout.flush()
for line in sys.stdin:
    n = int(line)
    acc = 0
    for i in range(n):
        d = json.loads(json.dumps({"k": [i, str(i), i * 0.5, None, True]}))
        acc += len(re.findall(r"\d", str(d))) + d["k"][0]
    sys.stdout.write("done %d\n" % acc); sys.stdout.flush()
`), 0o644); err != nil {
		t.Fatal(err)
	}
	tp := testtarget.Start(t, py, script)
	if _, err := tp.Expect("ready", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	round := func(n string) string {
		t.Helper()
		if err := tp.Send(n); err != nil {
			t.Fatal(err)
		}
		l, err := tp.Expect("done", 60*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	want := round("3000")
	out := filepath.Join(t.TempDir(), "rec.data")
	s, err := Start(tp.Pid(), Options{Funcs: names, Modules: []string{filepath.Base(exe)}, Output: out})
	if err != nil {
		t.Fatal(err)
	}
	got := round("3000")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("traced python computed %q, untraced %q", got, want)
	}
	rec, err := tracefile.Read(out)
	if err != nil {
		t.Fatal(err)
	}
	calls := countEntries(rec)
	total := uint64(0)
	for _, n := range calls {
		total += n
	}
	t.Logf("%d functions accepted through their jump tables (e.g. %s); traced %d of them, %d calls",
		len(names), strings.Join(names[:min(3, len(names))], ", "), len(s.sel), total)
	if total == 0 {
		t.Errorf("none of %s was called", strings.Join(names, ", "))
	}
	testtarget.CheckText(t, tp.Pid())
	if again := round("3000"); again != want {
		t.Errorf("after detach python computed %q, want %q", again, want)
	}
}
