package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/livetrace/livetrace/internal/testtarget"
)

// tmuxSession runs a command in a detached tmux session of its own server.
type tmuxSession struct {
	t      *testing.T
	socket string
}

func startTmux(t *testing.T, w, h int, command string) *tmuxSession {
	t.Helper()
	if _, err := exec.LookPath("tmux"); err != nil {
		testtarget.SkipOrFatal(t, "tmux is not installed (make deps-test installs it)")
	}
	ts := &tmuxSession{t: t, socket: fmt.Sprintf("livetrace-test-%d-%d", os.Getpid(), time.Now().UnixNano())}
	if out, err := ts.cmd("new-session", "-d", "-x", strconv.Itoa(w), "-y", strconv.Itoa(h), "-s", "t", command).CombinedOutput(); err != nil {
		t.Fatalf("tmux new-session: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = ts.cmd("kill-server").Run() })
	return ts
}

func (ts *tmuxSession) cmd(args ...string) *exec.Cmd {
	return exec.Command("tmux", append([]string{"-L", ts.socket}, args...)...)
}

func (ts *tmuxSession) keys(keys ...string) {
	ts.t.Helper()
	if out, err := ts.cmd(append([]string{"send-keys", "-t", "t"}, keys...)...).CombinedOutput(); err != nil {
		ts.t.Fatalf("tmux send-keys %q: %v: %s", keys, err, out)
	}
}

func (ts *tmuxSession) screen() string {
	out, _ := ts.cmd("capture-pane", "-p", "-t", "t").Output()
	return string(out)
}

// waitScreen waits until the screen shows every one of want.
func (ts *tmuxSession) waitScreen(what string, want ...string) string {
	ts.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		s := ts.screen()
		ok := true
		for _, w := range want {
			ok = ok && strings.Contains(s, w)
		}
		if ok {
			return s
		}
		if time.Now().After(deadline) {
			ts.t.Fatalf("%s: the screen never showed %q:\n%s", what, want, s)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// topRow returns the fields of the row of function fn on screen.
func topRow(screen, fn string) []string {
	for _, l := range strings.Split(screen, "\n") {
		f := strings.Fields(l)
		if len(f) >= 8 && f[len(f)-1] == fn {
			return f
		}
	}
	return nil
}

// TestTopTmux runs livetrace top in tmux against a program that keeps
// calling its functions: the screen shows calls per second, times and
// percentiles per function; keys sort, enable a glob typed in (a function
// not selected at the start), disable the function under the cursor; ctl
// sees the same session; q detaches and leaves the text as it was.
func TestTopTmux(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := livetraceBinary(t)
	tp, pid := startCtlWorkload(t)
	before := testtarget.TakeSnapshot(t, tp.Pid())
	var stop chan struct{} = make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // calls all along
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := testtarget.RunWorkload(tp, 200, 30*time.Second); err != nil {
				t.Error(err)
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	defer func() { close(stop); wg.Wait() }()

	dir := t.TempDir()
	errFile, rcFile := filepath.Join(dir, "stderr"), filepath.Join(dir, "rc")
	ts := startTmux(t, 150, 20, fmt.Sprintf("%s top -p %s -F work_leaf -F work_nested 2>%s; echo $? >%s", bin, pid, errFile, rcFile))
	scr := ts.waitScreen("start", "livetrace top  pid "+pid, "2 functions traced", "work_leaf", "work_nested", "CALLS/S*")
	// Wait for a refresh with calls in it.
	deadline := time.Now().Add(10 * time.Second)
	for {
		r := topRow(scr, "work_leaf")
		if r != nil && r[0] != "0" && r[1] != "0" && r[3] != "-" && r[5] != "-" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no calls shown for work_leaf:\n%s", scr)
		}
		time.Sleep(200 * time.Millisecond)
		scr = ts.screen()
	}
	if r := topRow(scr, "work_leaf"); r[6] != "on" {
		t.Errorf("work_leaf row %q: want on", r)
	}

	ts.keys("e")
	ts.waitScreen("prompt", "enable GLOB: _")
	ts.keys("-l", "lib_a*")
	ts.keys("Enter")
	scr = ts.waitScreen("enable", "enabled 1 function", "lib_add", "3 functions traced")
	if st := mustCtl(t, "-p", pid, "status"); !strings.Contains(st, "3 functions traced") || !strings.Contains(st, "lib_add") {
		t.Errorf("ctl status while top runs:\n%s", st)
	}
	ts.keys("s")
	ts.waitScreen("sort", "sort: CALLS ", "CALLS*")
	// Sort by name: lib_add first, under the cursor.
	for range numCols - 2 {
		ts.keys("s")
	}
	scr = ts.waitScreen("sort by name", "sort: FUNCTION", "FUNCTION*")
	ts.keys("Space")
	scr = ts.waitScreen("disable", "disabled 1 function", "2 functions traced")
	if r := topRow(scr, "lib_add"); r == nil || r[6] != "off" {
		t.Errorf("lib_add row %q after space: want off\n%s", r, scr)
	}
	if st := mustCtl(t, "-p", pid, "status"); !strings.Contains(st, "1 function disabled:\n  lib_add") {
		t.Errorf("ctl status after space:\n%s", st)
	}
	t.Logf("screen:\n%s", scr)

	ts.keys("q")
	deadline = time.Now().Add(20 * time.Second)
	for {
		if b, err := os.ReadFile(rcFile); err == nil && len(b) > 0 {
			if strings.TrimSpace(string(b)) != "0" {
				e, _ := os.ReadFile(errFile)
				t.Fatalf("top exited with %s:\n%s", b, e)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("top did not quit on q:\n%s", ts.screen())
		}
		time.Sleep(100 * time.Millisecond)
	}
	e, _ := os.ReadFile(errFile)
	if !strings.Contains(string(e), "events, 0 lost") {
		t.Errorf("top's summary:\n%s", e)
	}
	close(stop)
	wg.Wait()
	stop = make(chan struct{}) // for the deferred close
	before.CheckSame(t, tp.Pid())
	if _, err := testtarget.RunWorkload(tp, 1, 10*time.Second); err != nil {
		t.Fatalf("the target after top: %v", err)
	}
}
