package elfsite

import (
	"runtime"
	"testing"
	"time"

	"github.com/livetrace/livetrace/internal/gcpause"
	"github.com/livetrace/livetrace/internal/testtarget"
)

// BenchmarkLiveModules measures what an attach to a process of 10,000
// functions spends reading its modules (the program, libc and its debug
// file, the dynamic linker) the first time, as a new livetrace does: the
// parse cache is emptied before each read, and the collector is off, as
// it is on the attach path (session.Start).
func BenchmarkLiveModules(b *testing.B) {
	testtarget.RequireRoot(b)
	exe := testtarget.Build(b, testtarget.Stress, testtarget.ClangNop5, testtarget.Funcs(10000))
	tp := testtarget.Start(b, exe, "-t", "1")
	if _, err := tp.Expect("ready", 30*time.Second); err != nil {
		b.Fatal(err)
	}
	var total time.Duration
	for b.Loop() {
		b.StopTimer()
		resetCache()
		runtime.GC()
		restore := gcpause.Relax()
		b.StartTimer()
		t0 := time.Now()
		mods, _, err := LiveModulesWith(tp.Pid(), LiveOptions{})
		total += time.Since(t0)
		if err != nil || len(mods) == 0 || len(mods[0].Spec.Sites) < 10000 {
			b.Fatalf("modules of the stress fixture: %v (%d modules)", err, len(mods))
		}
		b.StopTimer()
		restore()
		b.StartTimer()
	}
	b.ReportMetric(float64(total.Microseconds())/1e3/float64(b.N), "ms/read")
}

// BenchmarkRelocPrepare is the relocation analysis of a stock libc for a
// selection of functions, as an attach with -F makes it: a fresh parse,
// PrepareReloc of the selection and RelocFunc of each. "100" is every
// 30th function, "all" every one; the first costs about a pass over the
// module (the sweep of its text), not the module's every analysis.
//
//	go test -run '^$' -bench RelocPrepare ./internal/elfsite
func BenchmarkRelocPrepare(b *testing.B) {
	const libc = "/lib/x86_64-linux-gnu/libc.so.6"
	for _, sel := range []struct {
		name  string
		every int
	}{{"100", 30}, {"all", 1}} {
		b.Run(sel.name, func(b *testing.B) {
			for b.Loop() {
				spec, err := Open(libc)
				if err != nil {
					b.Fatal(err)
				}
				var idx []int
				for i := range spec.Funcs {
					if spec.RelocCandidate(i) && i%sel.every == 0 {
						idx = append(idx, i)
					}
				}
				spec.PrepareReloc(idx)
				for _, i := range idx {
					spec.RelocFunc(i)
				}
			}
		})
	}
}
