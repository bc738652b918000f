package proc

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/livetrace/livetrace/internal/testtarget"
)

// TestDetachReapsExitingThread detaches while a thread that reported its
// exit (PTRACE_EVENT_EXIT, resumed to die) has not had its exit status
// read yet: a job thread of the sleeper ends as the detach comes. Left
// unread, that thread stays a zombie traced by us for as long as this
// process lives, and the target, once killed, is never reaped by its
// parent (a fresh-clone test run hung 17 minutes in exactly that wait).
func TestDetachReapsExitingThread(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := testtarget.Build(t, testtarget.Sleeper, testtarget.ClangNop5)
	tp := startAs(t, nil, bin)
	tp.expect(t, "ready", 10*time.Second)
	p, err := Attach(tp.pid())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Detach()
	tp.send(t, "sleep 200")
	job := 0
	var prepErr error
	p.do(func() {
		// The main thread creates the job's thread, then is held
		// stopped, so that only the job's stops are read below.
		main := p.threads[p.pid]
		if prepErr = p.waitFor(func() bool { return len(p.threads) == 2 }, 10*time.Second); prepErr != nil {
			return
		}
		p.interrupt(main)
		if prepErr = p.waitFor(func() bool { return main.state == stopped }, 10*time.Second); prepErr != nil {
			return
		}
		// Read one stop at a time until the job reports its exit
		// (handle resumes it), then detach before anything reads
		// its exit status.
		for deadline := time.Now().Add(10 * time.Second); job == 0; {
			for tid, th := range p.threads {
				if tid != p.pid && th.exiting {
					job = tid
				}
			}
			if job == 0 && !p.reapOne(-1) {
				if time.Now().After(deadline) {
					prepErr = ErrTimeout
					return
				}
				time.Sleep(100 * time.Microsecond)
			}
		}
		p.detachAll()
	})
	if prepErr != nil {
		t.Fatalf("waiting for the job thread to exit: %v", prepErr)
	}
	p.ex.stop()
	task := filepath.Join("/proc", strconv.Itoa(tp.pid()), "task", strconv.Itoa(job))
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(task); os.IsNotExist(err) {
			break
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(filepath.Join(task, "stat"))
			t.Fatalf("thread %d of pid %d still listed 5 s after the detach: %s", job, tp.pid(), b)
		}
	}
	_ = tp.cmd.Process.Kill()
	if err := tp.wait(10 * time.Second); err != nil && err.Error() != "signal: killed" {
		t.Fatalf("the target, killed after the detach, was not reaped: %v", err)
	}
}
