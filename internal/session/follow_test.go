package session

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/livetrace/livetrace/internal/proc"
	"github.com/livetrace/livetrace/internal/testtarget"
	"github.com/livetrace/livetrace/internal/tracefile"
)

// TestFollow drives a Session with Follow through every kind of child of
// the follow fixture (fork, double fork, fork+exec, vfork+exec,
// posix_spawn, exec from a thread, a fork inside a traced frame) in entry
// and graph mode, and checks the calls of each pid exactly. Run it with
// -race: the ptrace thread, the setup goroutines and Close share the
// session's follow state.
func TestFollow(t *testing.T) {
	testtarget.RequireRoot(t)
	exe := testtarget.Build(t, testtarget.Follow, testtarget.ClangNop5)
	for _, graph := range []bool{false, true} {
		t.Run(map[bool]string{false: "entry", true: "graph"}[graph], func(t *testing.T) {
			tp := testtarget.Start(t, exe)
			if _, err := tp.Expect("ready", 10*time.Second); err != nil {
				t.Fatal(err)
			}
			out := filepath.Join(t.TempDir(), "rec.data")
			s, err := Start(tp.Pid(), Options{Funcs: []string{"fl_*"}, Output: out, Graph: graph, Follow: true})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			want := map[int]int{} // pid -> fl_leaf calls
			for _, c := range []struct {
				cmd, reply string
				n, field   int // the reply field that is the working pid
			}{
				{"fork", "forked", 11, 0}, {"daemon", "daemon", 12, 1}, {"forkexec", "forkexeced", 13, 0},
				{"vforkexec", "vforked", 14, 0}, {"spawn", "spawned", 15, 0}, {"threadexec", "threadexeced", 16, 0},
				{"forkin", "forkedin", 17, 0},
			} {
				if err := tp.Send(fmt.Sprintf("%s %d", c.cmd, c.n)); err != nil {
					t.Fatal(err)
				}
				line, err := tp.Expect(c.reply+" ", 20*time.Second)
				if err != nil {
					t.Fatalf("%s: %v", c.cmd, err)
				}
				f := strings.Fields(line)
				pid, _ := strconv.Atoi(f[1+c.field])
				if st := f[len(f)-1]; c.cmd != "daemon" && st != "0" {
					t.Fatalf("%s: %q", c.cmd, line)
				}
				want[pid] = c.n
			}
			if got := len(s.Followed()); got < 8 {
				t.Errorf("%d children followed, want at least 8 (the daemon's two)", got)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			rec, err := tracefile.Read(out)
			if err != nil {
				t.Fatal(err)
			}
			pids := rec.ThreadPIDs()
			leafs := map[int]int{}
			parents := 0
			for _, ev := range rec.Events {
				if ev.Kind != tracefile.KindEntry {
					continue
				}
				switch rec.Funcs[ev.Func].Name {
				case "fl_leaf":
					leafs[pids[ev.TID]]++
				case "fl_parent":
					parents++
				}
			}
			for pid, n := range want {
				if leafs[pid] != n {
					t.Errorf("pid %d: %d calls of fl_leaf, want %d", pid, leafs[pid], n)
				}
			}
			if len(leafs) != len(want) || parents != 7 {
				t.Errorf("fl_leaf by pid %v, want %v; %d calls of fl_parent, want 7", leafs, want, parents)
			}
		})
	}
}

// TestAllEndedRace: a child followed while allEnded looks keeps the
// session going. A daemon's middle child forks and exits at once: between
// allEnded's list of processes and its questions, the grandchild can be
// followed (so proc no longer counts it as pending) and its parent exit,
// and every process on the list has ended. CI once saw record end 27 ms
// in, with the grandchild asleep and none of its calls recorded.
func TestAllEndedRace(t *testing.T) {
	testtarget.RequireRoot(t)
	attach := func(tp *testtarget.Process) *proc.Process {
		p, err := proc.Attach(tp.Pid())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Detach() })
		return p
	}
	short := testtarget.Start(t, "/bin/sleep", "0.1")
	gone := attach(short)
	live := attach(testtarget.Start(t, "/bin/sleep", "30"))
	select {
	case <-gone.Exited():
	case <-time.After(10 * time.Second):
		t.Fatal("sleep 0.1 did not end")
	}
	s := &Session{p: gone}
	testAllEndedLook = func() {
		s.mu.Lock()
		s.fl.members = append(s.fl.members, &member{p: live})
		s.mu.Unlock()
		testAllEndedLook = nil
	}
	t.Cleanup(func() { testAllEndedLook = nil })
	if s.allEnded() {
		t.Fatal("allEnded with a child followed while it looked")
	}
	if s.allEnded() {
		t.Fatal("allEnded with a followed child running")
	}
}
