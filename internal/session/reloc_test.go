package session

import (
	"path/filepath"
	"testing"

	"github.com/livetrace/livetrace/internal/elfsite"
	"github.com/livetrace/livetrace/internal/testtarget"
	"github.com/livetrace/livetrace/internal/tracefile"
)

// TestRelocExactCounts traces a program and its library built with no
// tracing flags at all (gcc and clang, -O0 and -O2, PIE and not, with and
// without ENDBR64): every traced function is a relocating site, written
// with `jmp stub`. The recorded calls equal the program's own counts, and
// the text is byte for byte the file's afterwards.
func TestRelocExactCounts(t *testing.T) {
	testtarget.RequireRoot(t)
	for _, form := range testtarget.Forms {
		for _, o0 := range []bool{false, true} {
			for _, cet := range []bool{false, true} {
				name := string(form) + "-plain"
				opts := []testtarget.Option{testtarget.NoSites()}
				if o0 {
					name += "-O0"
					opts = append(opts, testtarget.O0())
				}
				if cet {
					name += "-cet"
					opts = append(opts, testtarget.CFProtection())
				}
				t.Run(name, func(t *testing.T) {
					tp := startWorkload(t, form, opts...)
					workloadRun(t, tp, 1)
					spawn(t, tp, 2)
					before := testtarget.TakeSnapshot(t, tp.Pid())
					out := filepath.Join(t.TempDir(), "rec.data")
					s, err := Start(tp.Pid(), Options{Funcs: []string{"work_leaf", "work_nested", "work_recurse", "lib_add"}, Output: out})
					if err != nil {
						t.Fatal(err)
					}
					traced := map[string]bool{}
					for _, x := range s.sel {
						if x.site.Form != elfsite.FormReloc {
							t.Errorf("%s: form %s, want reloc (built without flags)", x.name, x.site.Form)
						}
						traced[x.name] = true
					}
					t.Logf("traced %v", traced)
					for _, r := range s.Untraceable() {
						t.Logf("untraceable: %s: %s", r.Name, r.Reason)
					}
					want := spawn(t, tp, 2)
					for fn, n := range workloadRun(t, tp, 50) {
						want[fn] += n
					}
					if err := s.Close(); err != nil {
						t.Fatal(err)
					}
					alive(t, tp)
					rec, err := tracefile.Read(out)
					if err != nil {
						t.Fatal(err)
					}
					got := countEntries(rec)
					for fn, n := range want {
						if !traced[fn] {
							t.Errorf("%s is not traced", fn)
						}
						if got[fn] != n {
							t.Errorf("%s: recorded %d calls, the program counted %d", fn, got[fn], n)
						}
					}
					if rec.Lost != 0 {
						t.Errorf("%d events lost", rec.Lost)
					}
					testtarget.CheckText(t, tp.Pid())
					before.CheckSame(t, tp.Pid())
					if again := workloadRun(t, tp, 2); again["work_leaf"] != 2*4*3 {
						t.Errorf("after detach: %v", again)
					}
				})
			}
		}
	}
}
