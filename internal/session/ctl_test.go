package session

import (
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/livetrace/livetrace/internal/elfsite"
	"github.com/livetrace/livetrace/internal/testtarget"
	"github.com/livetrace/livetrace/internal/tracefile"
)

// eventCounter counts entries per function name as the session delivers
// them (Options.OnEvents); take returns the counts since the last take.
type eventCounter struct {
	mu     sync.Mutex
	s      *Session
	counts map[uint32]uint64
}

func (c *eventCounter) events(evs []tracefile.Event, _ string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, ev := range evs {
		if ev.Kind == tracefile.KindEntry {
			c.counts[ev.Func]++
		}
	}
}

// take drains the shared buffer (the calls made so far have all written
// their records) and returns the entries per function since the last take.
func (c *eventCounter) take(t *testing.T) map[string]uint64 {
	t.Helper()
	if _, err := c.s.consume(true); err != nil {
		t.Fatal(err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]uint64{}
	fs := c.s.Funcs()
	for f, n := range c.counts {
		out[fs[f].Name] += n
	}
	c.counts = map[uint32]uint64{}
	return out
}

func startCounting(t *testing.T, pid int, opts Options) (*Session, *eventCounter) {
	t.Helper()
	c := &eventCounter{counts: map[uint32]uint64{}}
	opts.OnEvents, opts.Discard = c.events, true
	s, err := Start(pid, opts)
	if err != nil {
		t.Fatal(err)
	}
	c.s = s
	return s, c
}

// checkWindow compares the entries of one window with the workload's
// counts: exact for the functions traced, zero for the others.
func checkWindow(t *testing.T, what string, got, want map[string]uint64, on map[string]bool) {
	t.Helper()
	for fn, n := range want {
		exp := uint64(0)
		if on[fn] {
			exp = n
		}
		if got[fn] != exp {
			t.Errorf("%s: %s recorded %d calls, want %d (the program made %d; traced: %v)", what, fn, got[fn], exp, n, on[fn])
		}
	}
	for fn, n := range got {
		if _, ok := want[fn]; !ok && n > 0 {
			t.Errorf("%s: %d calls of %s, which the workload does not count", what, n, fn)
		}
	}
}

// burn keeps a core busy until the test ends: the rounds run under load.
func burn(t *testing.T) {
	var stop atomic.Bool
	var wg sync.WaitGroup
	for range runtime.NumCPU() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			x := 0
			for !stop.Load() {
				for i := 0; i < 1e5; i++ {
					x += i
				}
			}
			_ = x
		}()
	}
	t.Cleanup(func() { stop.Store(true); wg.Wait() })
}

// TestCtlRounds enables and disables functions of a running multi-threaded
// program 100 times, each change one batch while the program runs its
// workload and the machine is loaded, and checks the calls recorded in
// every window: exactly the program's own counts for the functions
// enabled, none for the functions disabled.
func TestCtlRounds(t *testing.T) {
	testtarget.RequireRoot(t)
	tp := startWorkload(t, testtarget.ClangNop5)
	before := testtarget.TakeSnapshot(t, tp.Pid())
	fns := []string{"work_leaf", "work_nested", "work_recurse", "lib_add"}
	s, c := startCounting(t, tp.Pid(), Options{Funcs: fns})
	burn(t)
	// Calls keep running in other threads while the batches patch: the
	// target's own threads hammer between windows too.
	want := workloadRun(t, tp, 5)
	checkWindow(t, "all on", c.take(t), want, map[string]bool{"work_leaf": true, "work_nested": true, "work_recurse": true, "lib_add": true})
	var batches time.Duration
	rounds := 100
	for r := 0; r < rounds; r++ {
		on := map[string]bool{}
		var enable, disable []string
		for i, fn := range fns {
			if (r+1)>>i&1 == 1 {
				on[fn] = true
				enable = append(enable, fn)
			} else {
				disable = append(disable, fn)
			}
		}
		t0 := time.Now()
		if len(enable) > 0 {
			if _, err := s.Enable(enable); err != nil {
				t.Fatalf("round %d: enable %v: %v", r, enable, err)
			}
		}
		if len(disable) > 0 {
			if _, err := s.Disable(disable); err != nil {
				t.Fatalf("round %d: disable %v: %v", r, disable, err)
			}
		}
		batches += time.Since(t0)
		want = workloadRun(t, tp, 3)
		checkWindow(t, fmt.Sprintf("round %d", r), c.take(t), want, on)
		if t.Failed() {
			break
		}
	}
	t.Logf("%d rounds, %v per round of changes (machine loaded)", rounds, batches/time.Duration(rounds))
	if n := len(s.Changes()); n < rounds {
		t.Errorf("%d changes recorded, want at least %d", n, rounds)
	}
	m := s.Meta()
	if len(m.Changes) != len(s.Changes()) {
		t.Errorf("metadata has %d changes, the session %d", len(m.Changes), len(s.Changes()))
	}
	check(t, s.Close())
	alive(t, tp)
	before.CheckSame(t, tp.Pid())
}

// TestCtlEnableNew enables functions not selected at attach, with a NOP
// (in the program and in its library) and without one (relocated), counts
// their calls exactly, disables them, and detaches to the file's text.
// The recording lists the new functions and every change.
func TestCtlEnableNew(t *testing.T) {
	testtarget.RequireRoot(t)
	for _, tc := range []struct {
		name  string
		build testtarget.Form
		opts  []testtarget.Option
		form  elfsite.Form
		graph bool
	}{
		{"nop", testtarget.ClangNop5, nil, elfsite.FormNop5, false},
		{"sled", testtarget.GccSled, nil, elfsite.FormSled, false},
		{"reloc", testtarget.ClangNop5, []testtarget.Option{testtarget.NoSites()}, elfsite.FormReloc, false},
		{"nop-graph", testtarget.ClangNop5, nil, elfsite.FormNop5, true},
		{"reloc-graph", testtarget.ClangNop5, []testtarget.Option{testtarget.NoSites()}, elfsite.FormReloc, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tp := startWorkload(t, tc.build, tc.opts...)
			before := testtarget.TakeSnapshot(t, tp.Pid())
			out := filepath.Join(t.TempDir(), "rec.data")
			c := &eventCounter{counts: map[uint32]uint64{}}
			s, err := Start(tp.Pid(), Options{Funcs: []string{"work_leaf"}, Output: out, NoSpool: true, Graph: tc.graph})
			check(t, err)
			c.s = s
			s.opts.OnEvents = c.events // counts as the recording is written
			if s.Functions() != 1 {
				t.Fatalf("%d functions traced at the start, want 1", s.Functions())
			}
			if _, err := s.Enable([]string{"no_such_function*"}); !errors.Is(err, ErrNoMatch) {
				t.Errorf("enable of a glob that matches nothing: %v, want ErrNoMatch", err)
			}
			if res, err := s.Disable([]string{"work_nested"}); err != nil || len(res.Changed) != 0 {
				t.Errorf("disable of a function never traced: %+v, %v; want nothing done", res, err)
			}
			if _, err := s.Disable([]string{"no_such_function"}); !errors.Is(err, ErrNoMatch) {
				t.Errorf("disable of a glob that matches nothing: %v, want ErrNoMatch", err)
			}
			t0 := time.Now()
			res, err := s.Enable([]string{"work_nested", "lib_add"})
			check(t, err)
			t.Logf("enable of 2 new functions (stubs mapped, table appended, one batch): %v", time.Since(t0))
			if len(res.Changed) != 2 {
				t.Fatalf("enable: %+v, want work_nested and lib_add", res)
			}
			for _, x := range s.sel[1:] {
				if x.site.Form != tc.form {
					t.Errorf("%s: form %s, want %s", x.name, x.site.Form, tc.form)
				}
			}
			on := map[string]bool{"work_leaf": true, "work_nested": true, "lib_add": true}
			want := workloadRun(t, tp, 20)
			checkWindow(t, "enabled", c.take(t), want, on)
			res, err = s.Enable([]string{"work_*"})
			check(t, err)
			on["work_recurse"] = true
			if len(res.Changed) == 0 || res.Already != 2 {
				t.Errorf("enable work_*: %+v, want work_recurse (and others) changed, 2 already on", res)
			}
			want = workloadRun(t, tp, 20)
			got := c.take(t)
			for _, fn := range []string{"work_leaf", "work_nested", "work_recurse", "lib_add"} {
				if got[fn] != want[fn] {
					t.Errorf("work_* enabled: %s recorded %d calls, want %d", fn, got[fn], want[fn])
				}
			}
			_, err = s.Disable([]string{"work_*", "lib_add"})
			check(t, err)
			if s.Functions() != 0 {
				t.Errorf("%d functions traced after disabling all", s.Functions())
			}
			_, err = s.Enable([]string{"work_leaf"})
			check(t, err)
			want = workloadRun(t, tp, 20)
			checkWindow(t, "disabled", c.take(t), want, map[string]bool{"work_leaf": true})
			check(t, s.Close())
			alive(t, tp)
			before.CheckSame(t, tp.Pid())
			rec, err := tracefile.Read(out)
			check(t, err)
			if tc.graph {
				// Every entry has its exit, the new functions' too.
				exits := countExits(rec)
				if got := countEntries(rec); fmt.Sprint(got) != fmt.Sprint(exits) {
					t.Errorf("entries %v, exits %v", got, exits)
				}
			}
			if len(rec.Changes) != 4 || rec.Changes[0].Op != "enable" || rec.Changes[2].Op != "disable" {
				t.Fatalf("recorded changes %+v, want enable, enable, disable, enable", rec.Changes)
			}
			for _, f := range rec.Changes[0].Funcs {
				if n := rec.Funcs[f].Name; n != "work_nested" && n != "lib_add" {
					t.Errorf("first change names %s", n)
				}
			}
		})
	}
}
