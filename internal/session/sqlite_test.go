package session

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/livetrace/livetrace/internal/elfsite"
	"github.com/livetrace/livetrace/internal/testtarget"
	"github.com/livetrace/livetrace/internal/tracefile"
)

// sqliteCycles is the number of attach/detach cycles of TestSQLiteLive per
// form and mode: 50 in `make soak` (LIVETRACE_SOAK=1).
func sqliteCycles() int {
	if os.Getenv("LIVETRACE_SOAK") != "" {
		return 50
	}
	if testing.Short() {
		return 2
	}
	return 3
}

// mapsBut returns the lines of /proc/PID/maps of a snapshot without those of
// SQLite's WAL index (the -shm file), which SQLite maps by itself in 32 KiB
// pieces as its write-ahead log grows.
func mapsBut(s testtarget.Snapshot) map[string]bool {
	m := map[string]bool{}
	for _, l := range s.Maps {
		if !strings.HasSuffix(l, "-shm") {
			m[l] = true
		}
	}
	return m
}

// checkSameButShm is Snapshot.CheckSame without the WAL index mappings.
func checkSameButShm(t *testing.T, before testtarget.Snapshot, pid int) {
	t.Helper()
	now := testtarget.TakeSnapshot(t, pid)
	a, b := mapsBut(before), mapsBut(now)
	for l := range a {
		if !b[l] {
			t.Errorf("mapping gone after the recordings: %s", l)
		}
	}
	for l := range b {
		if !a[l] {
			t.Errorf("mapping new after the recordings: %s", l)
		}
	}
	if fmt.Sprint(before.Fds) != fmt.Sprint(now.Fds) {
		t.Errorf("file descriptors changed:\n%v\n%v", before.Fds, now.Fds)
	}
}

// TestSQLiteLive traces SQLite, real C code that nobody here wrote
// (the amalgamation of the Go module github.com/mattn/go-sqlite3, see
// testtarget.BuildSQLite), in every site form and in entry and graph mode.
// Two writer and two reader threads run transactions on a WAL database
// while livetrace attaches, traces every function named sqlite3* (thousands),
// records a few tens of ms and detaches, again and again. Then it traces
// sqlite3_step during a run of known size and compares the count with the
// driver's own. At the end the results are those of the untraced program
// (every row every transaction read is folded into a checksum), the text is
// byte for byte the file's, and the mappings and fds are as before.
func TestSQLiteLive(t *testing.T) {
	testtarget.RequireRoot(t)
	cycles := sqliteCycles()
	for _, form := range testtarget.Forms {
		t.Run(string(form), func(t *testing.T) {
			exe := testtarget.BuildSQLite(t, form)
			spec, err := elfsite.Open(exe)
			check(t, err)
			t.Logf("%s: %d patchable sites", form, len(spec.Patchable()))
			for _, graph := range []bool{false, true} {
				name := "entry"
				if graph {
					name = "graph"
				}
				t.Run(name, func(t *testing.T) { sqliteLive(t, exe, graph, cycles) })
			}
		})
	}
}

func sqliteLive(t *testing.T, exe string, graph bool, cycles int) {
	tp := testtarget.Start(t, exe, "-w", "2", "-r", "2", "-d", filepath.Join(t.TempDir(), "db"))
	if _, err := tp.Expect("ready", 60*time.Second); err != nil {
		t.Fatal(err)
	}
	run := func(units int) testtarget.SQLiteResult {
		t.Helper()
		r, err := testtarget.RunSQLite(tp, units, 60*time.Second)
		if err != nil {
			t.Fatalf("%v (the target died? stderr %q)", err, tp.Stderr())
		}
		if r.Bad != 0 {
			t.Fatalf("run %d: %d units read other rows than the first", units, r.Bad)
		}
		return r
	}
	// The untraced results.
	one, three := run(1), run(3)
	before := testtarget.TakeSnapshot(t, tp.Pid())

	check(t, testtarget.HammerSQLite(tp, 30*time.Second))
	var events, lost, restored uint64
	funcs := map[string]int{}
	var attach, detach time.Duration
	start := time.Now()
	for i := 0; i < cycles; i++ {
		out := filepath.Join(t.TempDir(), fmt.Sprintf("rec%d.data", i))
		t0 := time.Now()
		// Every other cycle traces every function, SQLite's static ones
		// (btree*, pager*, memsys5*, ...) and the driver's too. The event
		// buffer is small: the cycles are about patching and unpatching
		// under load, and millions of events per cycle would only make
		// the test slow to read them back.
		glob := "sqlite3*"
		if i%2 == 1 {
			glob = "*"
		}
		s, err := Start(tp.Pid(), Options{Funcs: []string{glob}, Output: out, Graph: graph, Chunks: 16})
		if err != nil {
			t.Fatalf("cycle %d: %v (stderr of the target: %q)", i, err, tp.Stderr())
		}
		attach += time.Since(t0)
		p0, err := testtarget.SQLiteProgress(tp, 10*time.Second)
		check(t, err)
		funcs[glob] = s.Functions()
		// Record at least 30 ms, and until some thread has run a whole
		// unit (finished two) while traced, or 5 s on a machine so
		// overloaded that the threads barely run.
		whole := false
		for begin := time.Now(); ; {
			time.Sleep(3 * time.Millisecond)
			if _, err := s.Poll(); err != nil {
				t.Fatal(err)
			}
			if time.Since(begin) < 30*time.Millisecond {
				continue
			}
			p1, err := testtarget.SQLiteProgress(tp, 10*time.Second)
			check(t, err)
			for k := range p0 {
				whole = whole || (k < len(p1) && p1[k] >= p0[k]+2)
			}
			if whole || time.Since(begin) > 5*time.Second {
				break
			}
		}
		t1 := time.Now()
		if err := s.Close(); err != nil {
			t.Fatalf("cycle %d: %v (stderr of the target: %q)", i, err, tp.Stderr())
		}
		detach += time.Since(t1)
		restored += uint64(s.restoredReturns)
		// What the tracer saw of the target's end, should it be dead:
		// a status reaped by the tracer is gone for tp.Wait.
		seen := "running at detach"
		select {
		case <-s.Exited():
			seen = s.EndReason()
		default:
		}
		sqliteAlive(t, tp, fmt.Sprintf("cycle %d (%s, graph %v): %+v, %+v; the tracer saw: %s", i, glob, graph, s.Summary(), s.PatchStats(), seen))
		testtarget.CheckText(t, tp.Pid())
		rec, err := tracefile.Read(out)
		check(t, err)
		sum := s.Summary()
		checkSQLiteRecording(t, i, rec, glob, graph, whole)
		events += sum.Events
		lost += sum.Lost
		os.Remove(out)
	}
	units, bad, sum, err := testtarget.StopSQLite(tp, 120*time.Second)
	if err != nil {
		t.Fatalf("%v (the target died? stderr %q)", err, tp.Stderr())
	}
	if bad != 0 || sum != one.Checksum {
		t.Fatalf("while traced %d of %d units read other rows than the untraced ones (checksum %d, untraced %d)", bad, units, sum, one.Checksum)
	}
	n := time.Duration(max(cycles, 1))
	t.Logf("%d cycles of %v functions in %v: %d units, %d events, %d lost, attach %v and detach %v on average, %d return addresses restored",
		cycles, funcs, time.Since(start).Round(time.Millisecond), units, events, lost, (attach / n).Round(time.Millisecond), (detach / n).Round(time.Millisecond), restored)

	// Exact counts: sqlite3_step traced during a run of known size.
	out := filepath.Join(t.TempDir(), "exact.data")
	s, err := Start(tp.Pid(), Options{Funcs: []string{"sqlite3_step"}, Output: out, Graph: graph})
	check(t, err)
	traced := run(3)
	check(t, s.Close())
	if traced.Checksum != three.Checksum || traced.Steps != three.Steps {
		t.Errorf("traced run: checksum %d, %d steps; untraced: %d, %d", traced.Checksum, traced.Steps, three.Checksum, three.Steps)
	}
	rec, err := tracefile.Read(out)
	check(t, err)
	var entries, exits uint64
	for _, ev := range rec.Events {
		switch ev.Kind {
		case tracefile.KindEntry:
			entries++
		case tracefile.KindExit:
			exits++
		}
	}
	if rec.Lost != 0 || entries != traced.Steps {
		t.Errorf("sqlite3_step: %d entries recorded (%d lost), the driver called it %d times", entries, rec.Lost, traced.Steps)
	}
	if graph && exits != entries {
		t.Errorf("sqlite3_step: %d entries, %d exits", entries, exits)
	}

	testtarget.CheckText(t, tp.Pid())
	checkSameButShm(t, before, tp.Pid())
	if after := run(3); after != three {
		t.Errorf("after the recordings: %+v, untraced %+v", after, three)
	}
}

// sqliteAlive fails t when the target died: after what, how and what it
// said.
func sqliteAlive(t *testing.T, tp *testtarget.Process, after string) {
	t.Helper()
	if syscall.Kill(tp.Pid(), 0) == nil {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", tp.Pid()))
		if err == nil && !strings.Contains(string(b), ") Z ") {
			return
		}
	}
	t.Fatalf("the target died after %s: %v; stderr: %q", after, tp.Wait(), tp.Stderr())
}

// checkSQLiteRecording checks that a recording of sqlite3* under load holds
// plausible events: only functions of the selection, sqlite3_step among
// many, and in graph mode no more exits than entries of any function.
func checkSQLiteRecording(t *testing.T, cycle int, rec *tracefile.Recording, glob string, graph, whole bool) {
	t.Helper()
	entries := map[string]uint64{}
	exits := map[string]uint64{}
	for _, ev := range rec.Events {
		name := rec.Funcs[ev.Func].Name
		if ok, _ := filepath.Match(glob, name); !ok {
			t.Fatalf("cycle %d: event for %s, which is not in the selection %s", cycle, name, glob)
		}
		switch ev.Kind {
		case tracefile.KindEntry:
			entries[name]++
		case tracefile.KindExit:
			exits[name]++
		}
	}
	// The event buffer is small and overflows: what it holds depends on
	// the moment, but a whole unit (whole: some thread ran one while the
	// sites were patched) calls sqlite3_step and dozens of other functions.
	// On an overloaded machine the threads may not have run at all.
	switch {
	case whole && len(rec.Events) == 0,
		whole && rec.Lost == 0 && (entries["sqlite3_step"] == 0 || len(entries) < 20):
		t.Errorf("cycle %d: a thread ran a whole unit while traced, but %d calls of sqlite3_step and %d functions were recorded (%d events, %d lost)",
			cycle, entries["sqlite3_step"], len(entries), len(rec.Events), rec.Lost)
	case len(rec.Events) == 0:
		t.Logf("cycle %d: no thread ran a whole unit while traced, no events", cycle)
	}
	if rec.Lost == 0 && graph {
		for fn, n := range exits {
			// A call open at the attach returns into the caller, not
			// through the agent; a call open at the detach has no exit.
			if n > entries[fn] {
				t.Errorf("cycle %d: %s: %d exits, %d entries", cycle, fn, n, entries[fn])
			}
		}
	}
}
