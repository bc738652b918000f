package session

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/livetrace/livetrace/internal/proc"
	"github.com/livetrace/livetrace/internal/report"
	"github.com/livetrace/livetrace/internal/testtarget"
	"github.com/livetrace/livetrace/internal/textpoke"
	"github.com/livetrace/livetrace/internal/tracefile"
)

func startWorkload(t *testing.T, form testtarget.Form, opts ...testtarget.Option) *testtarget.Process {
	t.Helper()
	bin := testtarget.Build(t, "workload", form, opts...)
	tp := testtarget.Start(t, bin, "-t", "4")
	if _, err := tp.Expect("ready", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	return tp
}

// workloadRun makes the workload run n iterations and returns its counts.
func workloadRun(t *testing.T, tp *testtarget.Process, n int) map[string]uint64 {
	t.Helper()
	counts, err := testtarget.RunWorkload(tp, n, 30*time.Second)
	check(t, err)
	return counts
}

// spawn makes the workload start n new threads that run the pattern once,
// and returns their counts.
func spawn(t *testing.T, tp *testtarget.Process, n int) map[string]uint64 {
	t.Helper()
	counts, err := testtarget.SpawnWorkload(tp, n, 30*time.Second)
	check(t, err)
	return counts
}

func check(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// closeAtEnd waits until the target is gone (exit or exec), closes the
// session and reads its recording.
func closeAtEnd(t *testing.T, s *Session, out string) *tracefile.Recording {
	t.Helper()
	select {
	case <-s.Exited():
	case <-time.After(10 * time.Second):
		t.Fatal("the end of the target was not noticed")
	}
	if err := s.Close(); err != nil {
		t.Fatalf("close after the target ended: %v", err)
	}
	rec, err := tracefile.Read(out)
	check(t, err)
	return rec
}

// closeRead closes the session and reads its recording.
func closeRead(t *testing.T, s *Session, out string) *tracefile.Recording {
	t.Helper()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	rec, err := tracefile.Read(out)
	check(t, err)
	return rec
}

// alive fails the test if the target died.
func alive(t *testing.T, tp *testtarget.Process) {
	t.Helper()
	if err := tp.Send("run 0"); err == nil {
		if _, err := tp.Expect("done", 5*time.Second); err == nil {
			return
		}
	}
	t.Fatalf("the target died: %v; stderr: %s", tp.Wait(), tp.Stderr())
}

func countEntries(rec *tracefile.Recording) map[string]uint64 {
	return countKind(rec, tracefile.KindEntry)
}

// countExits counts the recorded exits (graph mode) of each function.
func countExits(rec *tracefile.Recording) map[string]uint64 {
	return countKind(rec, tracefile.KindExit)
}

func countKind(rec *tracefile.Recording, kind tracefile.Kind) map[string]uint64 {
	got := map[string]uint64{}
	for _, ev := range rec.Events {
		if ev.Kind == kind {
			got[rec.Funcs[ev.Func].Name]++
		}
	}
	return got
}

// TestExactCounts attaches to a running multi-threaded program, lets it
// run a known workload (including a function in a shared library and
// threads created after the attach), and compares the recorded calls with
// the program's own counts, in every site form, with and without ENDBR64.
// After Close the text, the mappings and the fds are as before.
func TestExactCounts(t *testing.T) {
	testtarget.RequireRoot(t)
	for _, form := range testtarget.Forms {
		for _, variant := range []string{"", "-cet", "-nospool"} {
			cet, noSpool := variant == "-cet", variant == "-nospool"
			if noSpool && form != testtarget.ClangNop5 {
				continue // converting at once, as without a spool: one form is enough
			}
			name := string(form) + variant
			var opts []testtarget.Option
			if cet {
				opts = append(opts, testtarget.CFProtection())
			}
			t.Run(name, func(t *testing.T) {
				tp := startWorkload(t, form, opts...)
				// Warm up: resolve PLT entries, and let glibc cache the
				// stacks of the threads spawned below.
				workloadRun(t, tp, 1)
				spawn(t, tp, 3)
				before := testtarget.TakeSnapshot(t, tp.Pid())
				out := filepath.Join(t.TempDir(), "rec.data")
				s, err := Start(tp.Pid(), Options{Funcs: []string{"work_*", "lib_*"}, Output: out, NoSpool: noSpool})
				if err != nil {
					t.Fatal(err)
				}
				want := spawn(t, tp, 3)
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
					if got[fn] != n {
						t.Errorf("%s: recorded %d calls, the program counted %d", fn, got[fn], n)
					}
				}
				if rec.Lost != 0 {
					t.Errorf("%d events lost", rec.Lost)
				}
				if len(rec.Threads) < 7 {
					t.Errorf("%d threads recorded, want the 4 workers and 3 spawned", len(rec.Threads))
				}
				testtarget.CheckText(t, tp.Pid())
				before.CheckSame(t, tp.Pid())
				// The program still works, and counts nothing extra.
				if again := workloadRun(t, tp, 2); again["work_leaf"] != 2*4*3 {
					t.Errorf("after detach: %v", again)
				}
			})
		}
	}
}

// TestTargetExits checks that a target that exits while being recorded
// leaves a complete, valid recording.
func TestTargetExits(t *testing.T) {
	testtarget.RequireRoot(t)
	tp := startWorkload(t, testtarget.ClangNop5)
	out := filepath.Join(t.TempDir(), "rec.data")
	s, err := Start(tp.Pid(), Options{Output: out})
	if err != nil {
		t.Fatal(err)
	}
	want := workloadRun(t, tp, 20)
	if err := tp.Send("quit"); err != nil {
		t.Fatal(err)
	}
	rec := closeAtEnd(t, s, out)
	got := countEntries(rec)
	for fn, n := range want {
		if got[fn] != n {
			t.Errorf("%s: recorded %d calls, the program counted %d", fn, got[fn], n)
		}
	}
}

// startHammering starts the stress fixture with 400 functions and 4
// threads, notes the checksum of an untraced pass, and makes the threads
// call every function in a loop.
func startHammering(t *testing.T, form testtarget.Form) (*testtarget.Process, uint64) {
	t.Helper()
	tp := testtarget.Start(t, testtarget.Build(t, testtarget.Stress, form, testtarget.Funcs(400)), "-t", "4")
	if _, err := tp.Expect("ready", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	want, _, err := testtarget.RunStress(tp, 1, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := testtarget.HammerStress(tp, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	return tp, want
}

// stopHammering stops the threads and checks that their results are those
// of the untraced pass.
func stopHammering(t *testing.T, tp *testtarget.Process, want uint64) {
	t.Helper()
	_, got, err := testtarget.StopStress(tp, 30*time.Second)
	if err != nil {
		t.Fatalf("%v (the target died? stderr %q)", err, tp.Stderr())
	}
	if got != want {
		t.Fatalf("checksum %d after tracing, %d before", got, want)
	}
}

// TestRepeatedCycles attaches, records and detaches again and again while
// 4 threads hammer 400 functions, in every form: the program must never
// crash, its results must not change, and its text must stay pristine.
func TestRepeatedCycles(t *testing.T) {
	testtarget.RequireRoot(t)
	cycles := 6
	if testing.Short() {
		cycles = 2
	}
	if os.Getenv("LIVETRACE_SOAK") != "" {
		cycles = 200
	}
	for _, form := range testtarget.Forms {
		t.Run(string(form), func(t *testing.T) {
			tp, want := startHammering(t, form)
			before := testtarget.TakeSnapshot(t, tp.Pid())
			for i := 0; i < cycles; i++ {
				out := filepath.Join(t.TempDir(), "rec.data")
				s, err := Start(tp.Pid(), Options{Funcs: []string{"fn_*"}, Output: out})
				if err != nil {
					t.Fatalf("cycle %d: %v", i, err)
				}
				time.Sleep(100 * time.Millisecond)
				if _, err := s.Poll(); err != nil {
					t.Fatal(err)
				}
				if err := s.Close(); err != nil {
					t.Fatalf("cycle %d: %v", i, err)
				}
				if sum := s.Summary(); sum.Events == 0 {
					t.Fatalf("cycle %d: no events", i)
				}
				testtarget.CheckText(t, tp.Pid())
			}
			before.CheckSame(t, tp.Pid())
			stopHammering(t, tp, want)
		})
	}
}

func TestBadInput(t *testing.T) {
	testtarget.RequireRoot(t)
	tp := startWorkload(t, testtarget.ClangNop5)
	out := filepath.Join(t.TempDir(), "rec.data")

	_, err := Start(tp.Pid(), Options{Funcs: []string{"no_such_function*"}, Output: out})
	var nm *NoMatchError
	if !errors.As(err, &nm) || len(nm.Names) == 0 {
		t.Errorf("no match: %v", err)
	}

	// Another tracer holds the process.
	p, err := proc.Attach(tp.Pid())
	if err != nil {
		t.Fatal(err)
	}
	_, err = Start(tp.Pid(), Options{Output: out})
	p.Detach()
	if !errors.Is(err, proc.ErrAlreadyTraced) {
		t.Errorf("already traced: %v", err)
	}

	// A program without sites.
	plain := testtarget.Start(t, testtarget.Build(t, "simple", testtarget.ClangNop5, testtarget.NoSites()), "loop")
	if _, err := plain.Expect("ready", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := Start(plain.Pid(), Options{Output: out}); err == nil || !strings.Contains(err.Error(), "-fpatchable-function-entry") {
		t.Errorf("no sites: %v", err)
	}
	// The workload is unharmed.
	if got := workloadRun(t, tp, 1); got["work_leaf"] == 0 {
		t.Errorf("workload after bad inputs: %v", got)
	}
}

// TestGraphMode records entries and exits: every call's exit is recorded
// at the depth of its entry, counts are exact, and detaching while threads
// are inside traced functions (hijacked returns outstanding) leaves the
// program correct.
// TestGraphShadowStack: graph mode refuses a process whose threads run
// with a CET shadow stack, played here (this machine may have none): its
// first traced return would die of SIGSEGV. Entry mode traces it.
func TestGraphShadowStack(t *testing.T) {
	testtarget.RequireRoot(t)
	reads := 0
	trapStatus = func(pid int) (proc.TrapStatus, error) {
		reads++
		ts, err := proc.ReadTrapStatus(pid)
		ts.ShadowStack = true
		return ts, err
	}
	defer func() { trapStatus = proc.ReadTrapStatus }()
	tp := startWorkload(t, testtarget.ClangNop5)
	_, err := Start(tp.Pid(), Options{Funcs: []string{"work_*"}, Output: filepath.Join(t.TempDir(), "rec.data"), Graph: true})
	if !errors.Is(err, ErrUnwindUnsafe) || !strings.Contains(err.Error(), "shadow stack") {
		t.Fatalf("graph mode: %v, want ErrUnwindUnsafe naming the shadow stack", err)
	}
	alive(t, tp)
	testtarget.CheckText(t, tp.Pid())
	// Entry mode: no SIGTRAP handler, no loader breakpoint (each would
	// emulate a CALL or a RET the shadow stack has no copy of), and the
	// calls are recorded. The engine takes the session's reading of the
	// threads' status, one pass over them (each read of a thread's status
	// costs up to 0.25 ms beside busy threads), and so patches in stop
	// mode.
	out := filepath.Join(t.TempDir(), "rec.data")
	reads = 0
	s, err := Start(tp.Pid(), Options{Funcs: []string{"work_*"}, Output: out})
	if err != nil {
		t.Fatal(err)
	}
	if reads != 1 {
		t.Errorf("the threads' status was read %d times by the attach, want once", reads)
	}
	if mode, why := s.Mode(); mode != textpoke.ModeStop || !strings.Contains(why, "shadow stack") {
		t.Errorf("the engine patches in %v (%s), want stop mode for the shadow stack", mode, why)
	}
	if s.inj.backstop {
		t.Error("the SIGTRAP backstop is in")
	}
	if why := s.loader.why; !strings.Contains(why, "shadow stack") {
		t.Errorf("the loader is followed (or not, for %q)", why)
	}
	want := workloadRun(t, tp, 5)
	got := countEntries(closeRead(t, s, out))
	for fn, n := range want {
		if strings.HasPrefix(fn, "work_") && got[fn] != n {
			t.Errorf("%s: recorded %d calls, the program counted %d", fn, got[fn], n)
		}
	}
	alive(t, tp)
	testtarget.CheckText(t, tp.Pid())
}

func TestGraphMode(t *testing.T) {
	testtarget.RequireRoot(t)
	for _, form := range testtarget.Forms {
		t.Run(string(form), func(t *testing.T) {
			tp := startWorkload(t, form)
			workloadRun(t, tp, 1)
			out := filepath.Join(t.TempDir(), "rec.data")
			s, err := Start(tp.Pid(), Options{Funcs: []string{"work_*", "lib_*"}, Output: out, Graph: true})
			if err != nil {
				t.Fatal(err)
			}
			want := workloadRun(t, tp, 30)
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
				if got[fn] != n {
					t.Errorf("%s: recorded %d calls, the program counted %d", fn, got[fn], n)
				}
			}
			// Per thread, exits pair with entries like parentheses.
			stacks := map[uint32][]uint32{}
			for _, ev := range rec.Events {
				st := stacks[ev.TID]
				switch ev.Kind {
				case tracefile.KindEntry:
					if int(ev.Depth) != len(st)%256 {
						t.Fatalf("tid %d: entry of %s at depth %d, stack %d", ev.TID, rec.Funcs[ev.Func].Name, ev.Depth, len(st))
					}
					stacks[ev.TID] = append(st, ev.Func)
				case tracefile.KindExit:
					if len(st) == 0 || st[len(st)-1] != ev.Func {
						t.Fatalf("tid %d: exit of %s does not match the open calls", ev.TID, rec.Funcs[ev.Func].Name)
					}
					stacks[ev.TID] = st[:len(st)-1]
				}
			}
			for tid, st := range stacks {
				if len(st) != 0 {
					t.Errorf("tid %d: %d calls never returned", tid, len(st))
				}
			}
			testtarget.CheckText(t, tp.Pid())
		})
	}
}

// TestGraphDetachUnderLoad detaches in graph mode while 4 threads are deep
// inside traced functions: every hijacked return address must be put back,
// and the program's results must not change.
func TestGraphDetachUnderLoad(t *testing.T) {
	testtarget.RequireRoot(t)
	for _, form := range testtarget.Forms {
		t.Run(string(form), func(t *testing.T) {
			tp, want := startHammering(t, form)
			before := testtarget.TakeSnapshot(t, tp.Pid())
			restored := 0
			for i := 0; i < 4; i++ {
				s, err := Start(tp.Pid(), Options{Funcs: []string{"fn_*"}, Output: filepath.Join(t.TempDir(), "rec.data"), Graph: true, Chunks: 16})
				if err != nil {
					t.Fatal(err)
				}
				time.Sleep(50 * time.Millisecond)
				s.Poll()
				if err := s.Close(); err != nil {
					t.Fatal(err)
				}
				restored += s.restoredReturns
				testtarget.CheckText(t, tp.Pid())
			}
			before.CheckSame(t, tp.Pid())
			stopHammering(t, tp, want)
			t.Logf("%d hijacked return addresses restored at detach", restored)
		})
	}
}

// TestGraphDurations records a traced function that sleeps a known time,
// nested in a traced caller, and checks the times the report computes.
func TestGraphDurations(t *testing.T) {
	testtarget.RequireRoot(t)
	tp := testtarget.Start(t, testtarget.Build(t, testtarget.Sleeper, testtarget.ClangNop5))
	if _, err := tp.Expect("ready", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "rec.data")
	s, err := Start(tp.Pid(), Options{Funcs: []string{"sleeper_*", "run_job"}, Output: out, Graph: true})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if err := tp.Send("sleep 10"); err != nil {
			t.Fatal(err)
		}
		if _, err := tp.Expect("slept", 5*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	// run_job prints before it returns: give the last one time to.
	time.Sleep(200 * time.Millisecond)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	rec, err := tracefile.Read(out)
	if err != nil {
		t.Fatal(err)
	}
	stats, err := report.Stats(rec, report.Filter{}, "")
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]report.FuncStats{}
	for _, st := range stats {
		byName[st.Function] = st
	}
	sl, job := byName["sleeper_nanosleep"], byName["run_job"]
	if sl.Calls != 3 {
		t.Fatalf("sleeper_nanosleep: %d calls, want 3 (stats %+v)", sl.Calls, stats)
	}
	ms := time.Millisecond.Nanoseconds()
	// The upper bound leaves room for a loaded machine's scheduling.
	if sl.Min < 10*ms || sl.Max > 250*ms || sl.Total < 30*ms {
		t.Errorf("sleeper_nanosleep: min %v max %v total %v; each call sleeps 10 ms",
			time.Duration(sl.Min), time.Duration(sl.Max), time.Duration(sl.Total))
	}
	if sl.Self != sl.Total {
		t.Errorf("sleeper_nanosleep calls nothing traced: self %d != total %d", sl.Self, sl.Total)
	}
	// run_job calls sleeper_nanosleep: its total covers the sleep, its
	// self time does not.
	if job.Calls != 3 || job.Total < sl.Total || job.Self > job.Total-sl.Total+ms {
		t.Errorf("run_job: calls %d total %v self %v; child total %v", job.Calls,
			time.Duration(job.Total), time.Duration(job.Self), time.Duration(sl.Total))
	}
}

// TestForkAndThreadExit forks inside a traced frame and calls pthread_exit
// two traced frames deep, in entry and graph mode: the child must run
// correctly on original text and record nothing, and the exiting thread
// must exit as without tracing.
func TestForkAndThreadExit(t *testing.T) {
	testtarget.RequireRoot(t)
	for _, graph := range []bool{false, true} {
		t.Run(map[bool]string{false: "entry", true: "graph"}[graph], func(t *testing.T) {
			tp := startWorkload(t, testtarget.ClangNop5)
			out := filepath.Join(t.TempDir(), "rec.data")
			s, err := Start(tp.Pid(), Options{Funcs: []string{"work_*"}, Output: out, Graph: graph})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			for _, c := range []struct{ cmd, want string }{
				{"fork", "forked 0"}, {"exit", "exited 42"}, {"fork", "forked 0"}, {"exit", "exited 42"},
			} {
				if err := tp.Send(c.cmd); err != nil {
					t.Fatal(err)
				}
				line, err := tp.Expect(strings.Fields(c.want)[0], 10*time.Second)
				if err != nil {
					t.Fatalf("%s: %v (stderr %q)", c.cmd, err, tp.Stderr())
				}
				if line != c.want {
					t.Fatalf("%s: %q, want %q", c.cmd, line, c.want)
				}
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
			// Two forks in the parent; the children's 2 x 10 patterns
			// must not show up (a child's work_pattern calls would).
			if got["work_fork"] != 2 || got["work_exit_thread"] != 2 || got["work_exit_inner"] != 2 {
				t.Errorf("counts %v", got)
			}
			if got["work_pattern"] != 0 {
				t.Errorf("the forked children recorded %d work_pattern calls into the parent's buffer", got["work_pattern"])
			}
			testtarget.CheckText(t, tp.Pid())
		})
	}
}

// TestTargetExecs checks that a target calling execve while it is recorded
// ends the recording cleanly: the new image was never patched, and the
// recording holds the calls made before.
func TestTargetExecs(t *testing.T) {
	testtarget.RequireRoot(t)
	for _, graph := range []bool{false, true} {
		tp := startWorkload(t, testtarget.ClangNop5)
		out := filepath.Join(t.TempDir(), "rec.data")
		s, err := Start(tp.Pid(), Options{Funcs: []string{"work_*"}, Output: out, Graph: graph})
		if err != nil {
			t.Fatal(err)
		}
		want := workloadRun(t, tp, 10)
		if err := tp.Send("exec"); err != nil {
			t.Fatal(err)
		}
		if _, err := tp.Expect("execing", 10*time.Second); err != nil {
			t.Fatal(err)
		}
		rec := closeAtEnd(t, s, out)
		if got := countEntries(rec); got["work_leaf"] != want["work_leaf"] {
			t.Errorf("graph %v: recorded %d work_leaf calls, the program counted %d", graph, got["work_leaf"], want["work_leaf"])
		}
		// The new image runs on, untraced and unharmed.
		comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", tp.Pid()))
		if err != nil || strings.TrimSpace(string(comm)) != "sleep" {
			t.Errorf("after exec: comm %q, %v", comm, err)
		}
		if tr := tracerPid(tp.Pid()); tr != "0" {
			t.Errorf("after exec: TracerPid %s, want 0", tr)
		}
	}
}

func tracerPid(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "TracerPid:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return "?"
}

// TestMainThreadExits: the main thread calls pthread_exit while traced, and
// the process runs on with a zombie thread-group leader, whose
// /proc/PID/maps is empty from then on. Close hung: proc waited for that
// thread to stop, which it never does again. Close must finish, the
// process must answer, its text hold its own bytes and the agent be gone.
func TestMainThreadExits(t *testing.T) {
	testtarget.RequireRoot(t)
	exe := testtarget.Build(t, testtarget.Sleeper, testtarget.ClangNop5)
	for _, graph := range []bool{false, true} {
		t.Run(fmt.Sprintf("graph=%v", graph), func(t *testing.T) {
			tp := testtarget.Start(t, exe, "commands-thread")
			if _, err := tp.Expect("ready", 10*time.Second); err != nil {
				t.Fatal(err)
			}
			// A traced call: start_job runs a thread that sleeps in
			// sleeper_nanosleep.
			work := func() {
				t.Helper()
				if err := tp.Send("sleep 1"); err != nil {
					t.Fatal(err)
				}
				if _, err := tp.Expect("slept", 10*time.Second); err != nil {
					t.Fatal(err)
				}
			}
			out := filepath.Join(t.TempDir(), "rec.data")
			s, err := Start(tp.Pid(), Options{Funcs: []string{"start_job", "run_job", "sleeper_*"}, Output: out, Graph: graph})
			if err != nil {
				t.Fatal(err)
			}
			work()
			if err := tp.Send("exit-main"); err != nil {
				t.Fatal(err)
			}
			if _, err := tp.Expect("exiting main", 10*time.Second); err != nil {
				t.Fatal(err)
			}
			tp.WaitMainThreadExited(t)
			pid := strconv.Itoa(tp.Pid())
			work()
			done := make(chan error, 1)
			go func() { done <- s.Close() }()
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("close: %v", err)
				}
			case <-time.After(60 * time.Second):
				t.Fatal("Close hangs")
			}
			work()
			// The process is read through the thread that runs on: the
			// one that reads the commands, once the sleeping jobs'
			// threads are gone.
			tid := 0
			for deadline := time.Now().Add(10 * time.Second); tid == 0; {
				ents, err := os.ReadDir("/proc/" + pid + "/task")
				if err != nil {
					t.Fatal(err)
				}
				if len(ents) == 2 {
					for _, e := range ents {
						if n, _ := strconv.Atoi(e.Name()); n != tp.Pid() {
							tid = n
						}
					}
				}
				if tid == 0 && time.Now().After(deadline) {
					t.Fatalf("threads of pid %s: %v, want the main thread and the one that reads commands", pid, ents)
				}
				time.Sleep(time.Millisecond)
			}
			testtarget.CheckText(t, tid)
			maps, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", tid))
			if err != nil {
				t.Fatal(err)
			}
			a := s.inj.addrs
			for _, l := range strings.Split(string(maps), "\n") {
				lo, hi, ok := strings.Cut(strings.Fields(l + " x")[0], "-")
				if !ok {
					continue
				}
				start, _ := strconv.ParseUint(lo, 16, 64)
				end, _ := strconv.ParseUint(hi, 16, 64)
				if start <= a.Base && a.Base < end || strings.Contains(l, "memfd:livetrace") {
					t.Errorf("the agent is still mapped: %s", l)
				}
			}
			rec, err := tracefile.Read(out)
			if err != nil {
				t.Fatal(err)
			}
			if n := countEntries(rec)["sleeper_nanosleep"]; n != 2 {
				t.Errorf("%d calls of sleeper_nanosleep recorded, want 2", n)
			}
		})
	}
}
