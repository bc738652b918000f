package session

import (
	"runtime"
	"testing"
	"time"

	"github.com/livetrace/livetrace/internal/elfsite"
	"github.com/livetrace/livetrace/internal/gcpause"
	"github.com/livetrace/livetrace/internal/testtarget"
)

// BenchmarkSelectSites measures the choice of the functions to trace at
// attach (selectSites) in a process of 10,000 functions, its modules
// read: all of them by a glob (-F 'fn_*', which also looks for functions
// without a NOP in libc), and 100 of them. The collector is off, as it
// is on the attach path.
func BenchmarkSelectSites(b *testing.B) {
	testtarget.RequireRoot(b)
	exe := testtarget.Build(b, testtarget.Stress, testtarget.ClangNop5, testtarget.Funcs(10000))
	tp := testtarget.Start(b, exe, "-t", "1")
	if _, err := tp.Expect("ready", 30*time.Second); err != nil {
		b.Fatal(err)
	}
	mods, _, err := elfsite.LiveModulesWith(tp.Pid(), elfsite.LiveOptions{})
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name, glob string
		want       int
	}{{"10k-of-10k", "fn_*", 10000}, {"100-of-10k", "fn_000[0-9][0-9]", 100}} {
		b.Run(c.name, func(b *testing.B) {
			defer gcpause.Relax()()
			i := 0
			for b.Loop() {
				if i++; i%32 == 0 {
					b.StopTimer()
					runtime.GC() // a fresh heap, as a new tracer has
					b.StartTimer()
				}
				s := &Session{pid: tp.Pid(), opts: Options{Funcs: []string{c.glob}}, mods: mods}
				if err := s.selectSites(); err != nil {
					b.Fatal(err)
				}
				if len(s.sel) != c.want {
					b.Fatalf("-F %s selected %d functions, want %d", c.glob, len(s.sel), c.want)
				}
			}
		})
	}
}
