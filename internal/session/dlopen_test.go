package session

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/livetrace/livetrace/internal/agent"
	"github.com/livetrace/livetrace/internal/testtarget"
	"github.com/livetrace/livetrace/internal/tracefile"
)

// runDlopen sends "run N" to the dlopen fixture and parses its "done"
// line: the calls it made and how often the library was mapped anew.
func runDlopen(t *testing.T, p *testtarget.Process, rounds int) (outer, leaf, loads uint64, bases int) {
	t.Helper()
	if err := p.Send(fmt.Sprintf("run %d", rounds)); err != nil {
		t.Fatal(err)
	}
	l, err := p.Expect("done ", 60*time.Second)
	if err != nil {
		t.Fatalf("%v (stderr: %s)", err, p.Stderr())
	}
	if _, err := fmt.Sscanf(l, "done plug_outer=%d plug_leaf=%d loads=%d bases=%d", &outer, &leaf, &loads, &bases); err != nil {
		t.Fatalf("parse %q: %v", l, err)
	}
	return outer, leaf, loads, bases
}

// checkRbrk checks the bytes at the loader's r_brk of a session that
// follows it: the INT3, then a second `ret` in the padding (glibc's ld.so
// has it), which the owner record lists.
func checkRbrk(t *testing.T, s *Session) {
	t.Helper()
	at, pad := s.loader.addr.Load(), s.loader.pad.Load()
	var b [2]byte
	if err := s.p.ReadMem(at, b[:]); err != nil || b != [2]byte{opInt3, opRet} || pad>>8 != 1 {
		t.Errorf("r_brk at %#x holds % x (%v), padding %#x; want the INT3 and a second ret in the padding", at, b, err, pad)
	}
	ob := make([]byte, agent.SizeofOwner)
	if err := s.p.ReadMem(s.inj.addrs.Owner, ob); err != nil {
		t.Fatal(err)
	}
	if o, err := agent.DecodeOwner(ob); err != nil || o.Rbrk != at || o.RbrkPad != pad {
		t.Errorf("owner record %+v, %v; want r_brk %#x and padding %#x", o, err, at, pad)
	}
}

// TestDlopenFollow traces the functions of a library that two threads
// load, call and unload over and over, in entry and graph mode: every call
// made while the library was loaded is recorded (the functions are patched
// before dlopen returns), its sites are dropped before dlclose unmaps it
// (a library mapped again at the same or another address gets fresh ones),
// and the text is the file's again after detach.
func TestDlopenFollow(t *testing.T) {
	testtarget.RequireRoot(t)
	exe := testtarget.Build(t, testtarget.Dlopen, testtarget.ClangNop5)
	for _, graph := range []bool{false, true} {
		name := "entry"
		if graph {
			name = "graph"
		}
		t.Run(name, func(t *testing.T) {
			// One malloc arena: no arena the threads create later
			// shows as a mapping the tracer left.
			t.Setenv("MALLOC_ARENA_MAX", "1")
			p := testtarget.Start(t, exe)
			if _, err := p.Expect("ready", 10*time.Second); err != nil {
				t.Fatal(err)
			}
			// One round first: the threads' stacks and malloc arenas
			// stay mapped after it, the snapshot must hold them.
			runDlopen(t, p, 1)
			before := testtarget.TakeSnapshot(t, p.Pid())
			s, c := startCounting(t, p.Pid(), Options{Funcs: []string{"plug_*", "round_done"}, Graph: graph})
			closed := false
			defer func() {
				if !closed {
					_ = s.Close()
				}
			}()
			if st := s.Loader(); !st.Following {
				t.Fatalf("not following dlopen: %s", st.Why)
			}
			checkRbrk(t, s)
			const rounds = 60
			outer, leaf, loads, bases := runDlopen(t, p, rounds)
			got := c.take(t)
			if got["plug_outer"] != outer || got["plug_leaf"] != leaf || got["round_done"] != 2*rounds {
				t.Errorf("recorded plug_outer %d plug_leaf %d round_done %d, the program made %d, %d and %d calls",
					got["plug_outer"], got["plug_leaf"], got["round_done"], outer, leaf, 2*rounds)
			}
			st := s.Loader()
			t.Logf("%d rounds: %d loads (%d addresses); session saw %d loads, %d unloads, %d stops; errors %v",
				rounds, loads, bases, st.Loads, st.Unloads, st.Stops, st.Errors)
			if len(st.Errors) > 0 {
				t.Errorf("loader errors: %v", st.Errors)
			}
			if uint64(st.Loads) != loads || st.Unloads != st.Loads {
				t.Errorf("session saw %d loads and %d unloads, the program mapped the library %d times", st.Loads, st.Unloads, loads)
			}
			if bases < 2 {
				t.Errorf("the library was mapped at %d address(es): the fixture should move it", bases)
			}
			var nload, nunload int
			for _, ch := range s.Changes() {
				switch ch.Op {
				case "load":
					if strings.HasSuffix(ch.Globs[0], "libltplugin.so") {
						nload++
						if len(ch.Funcs) != 2 {
							t.Errorf("load change with %d functions, want 2", len(ch.Funcs))
						}
					}
				case "unload":
					nunload++
				}
			}
			if nload != int(loads) || nunload != int(loads) {
				t.Errorf("recording lists %d loads and %d unloads of the library, want %d", nload, nunload, loads)
			}
			closed = true
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			testtarget.CheckText(t, p.Pid())
			before.CheckSame(t, p.Pid())
			// The program runs on untraced.
			if o, _, _, _ := runDlopen(t, p, 3); o != 3*2*5 {
				t.Errorf("after detach: %d calls of plug_outer, want 30", o)
			}
		})
	}
}

// TestDlopenPython traces a C extension module of a real program that is
// not loaded yet: python3 (Debian's, whose extension modules are shared
// objects in lib-dynload) imports _json after the attach, and -m names
// it. Its init function, which has no compiler NOP (it is relocated), is
// traced before dlopen returns: the import's one call is recorded.
func TestDlopenPython(t *testing.T) {
	testtarget.RequireRoot(t)
	const python = "/usr/bin/python3"
	if _, err := os.Stat(python); err != nil {
		testtarget.SkipOrFatal(t, "%s: %v (make deps-test installs python3)", python, err)
	}
	script := filepath.Join(t.TempDir(), "imp.py")
	if err := os.WriteFile(script, []byte(`import sys
print("ready", flush=True)
for line in sys.stdin:
    if line.startswith("import"):
        import _json
        print("done", _json.__file__, flush=True)
`), 0o644); err != nil {
		t.Fatal(err)
	}
	p := testtarget.Start(t, python, "-S", script)
	if _, err := p.Expect("ready", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	s, c := startCounting(t, p.Pid(), Options{Modules: []string{"_json*"}, WaitModules: true, Funcs: []string{"PyInit__json"}})
	defer s.Close()
	if !s.Waiting() {
		t.Fatalf("the session did not wait for _json")
	}
	if err := p.Send("import"); err != nil {
		t.Fatal(err)
	}
	l, err := p.Expect("done", 30*time.Second)
	if err != nil {
		t.Fatalf("%v (stderr: %s)", err, p.Stderr())
	}
	got := c.take(t)
	st := s.Loader()
	t.Logf("%s; loads %d, stops %d, errors %v; recorded %v", l, st.Loads, st.Stops, st.Errors, got)
	if got["PyInit__json"] != 1 {
		t.Errorf("recorded %d calls of PyInit__json, want 1 (the import)", got["PyInit__json"])
	}
	if len(st.Errors) > 0 {
		t.Errorf("loader errors: %v", st.Errors)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	testtarget.CheckText(t, p.Pid())
}

// BenchmarkDlopenCycle measures what one dlopen, 5 calls and dlclose of a
// small library cost one thread of the dlopen fixture: untraced, traced
// with its functions matching (-F plug_*: patched at every load) and
// traced without a match (only the loader's stops). Run with
// `go test -run XXX -bench DlopenCycle -benchtime 1x ./internal/session`.
func BenchmarkDlopenCycle(b *testing.B) {
	testtarget.RequireRoot(b)
	exe := testtarget.Build(b, testtarget.Dlopen, testtarget.ClangNop5)
	const rounds = 400
	for _, c := range []struct {
		name  string
		funcs []string
	}{{"untraced", nil}, {"match", []string{"plug_*", "round_done"}}, {"nomatch", []string{"round_done"}}} {
		b.Run(c.name, func(b *testing.B) {
			p := testtarget.Start(b, exe, "-t", "1")
			if _, err := p.Expect("ready", 10*time.Second); err != nil {
				b.Fatal(err)
			}
			run := func() time.Duration {
				t0 := time.Now()
				if err := p.Send(fmt.Sprintf("run %d", rounds)); err != nil {
					b.Fatal(err)
				}
				if _, err := p.Expect("done ", 120*time.Second); err != nil {
					b.Fatal(err)
				}
				return time.Since(t0)
			}
			run() // warm up
			var s *Session
			if c.funcs != nil {
				var err error
				s, err = Start(p.Pid(), Options{Funcs: c.funcs, Discard: true})
				if err != nil {
					b.Fatal(err)
				}
				defer s.Close()
			}
			b.ResetTimer()
			var d time.Duration
			for range b.N {
				d += run()
			}
			b.ReportMetric(float64(d.Nanoseconds())/float64(b.N*rounds), "ns/cycle")
			if s != nil {
				st := s.Loader()
				b.ReportMetric(float64(st.Stops)/float64((b.N+0)*rounds), "stops/cycle")
			}
		})
	}
}

// TestDlopenArgs: a function of a library loaded after the attach
// captures what record -A names, as one selected at the start does.
func TestDlopenArgs(t *testing.T) {
	testtarget.RequireRoot(t)
	exe := testtarget.Build(t, testtarget.Dlopen, testtarget.ClangNop5)
	p := testtarget.Start(t, exe)
	if _, err := p.Expect("ready", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "rec.data")
	s, err := Start(p.Pid(), Options{Funcs: []string{"plug_leaf", "round_done"}, Output: out,
		Args: []ArgRule{{Glob: "plug_leaf", Args: []tracefile.ArgSpec{{Reg: 1, Format: tracefile.FormatDecimal}}}}})
	if err != nil {
		t.Fatal(err)
	}
	_, leaf, _, _ := runDlopen(t, p, 3)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	rec, err := tracefile.Read(out)
	if err != nil {
		t.Fatal(err)
	}
	var n, withArgs uint64
	for _, ev := range rec.Events {
		if ev.Kind != tracefile.KindEntry || rec.Funcs[ev.Func].Name != "plug_leaf" {
			continue
		}
		n++
		if vals, err := tracefile.DecodeArgs(ev.Args); err == nil && len(vals) == 1 && vals[0].Reg == 1 {
			withArgs++
		}
	}
	if n != leaf || withArgs != n {
		t.Errorf("plug_leaf: %d calls recorded, %d with its argument; the program made %d", n, withArgs, leaf)
	}
}
