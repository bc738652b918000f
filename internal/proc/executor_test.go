package proc

import (
	"os"
	"os/exec"
	"runtime"
	"sync"
	"testing"
)

// TestExecutorThreadWithoutChildren gives every OS thread of the test
// binary a child (a `sleep` forked from it), then starts executors: each
// must run on a thread without children, whose wait4(-1, __WNOTHREAD)
// cannot reap a child that another part of the program forked (see
// executor.loop).
func TestExecutorThreadWithoutChildren(t *testing.T) {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	// Lock more goroutines at once than there are threads: each holds a
	// thread of its own while it forks, so every thread there was gets a
	// child, and so do the ones the runtime starts for the rest.
	n := len(tasks) + 2
	var (
		mu   sync.Mutex
		cmds []*exec.Cmd
		fail error
	)
	t.Cleanup(func() {
		for _, c := range cmds {
			_ = c.Process.Kill()
			_ = c.Wait()
		}
	})
	var forked, unlocked sync.WaitGroup
	release := make(chan struct{})
	forked.Add(n)
	unlocked.Add(n)
	for range n {
		go func() {
			defer unlocked.Done()
			runtime.LockOSThread()
			c := exec.Command("sleep", "30")
			err := c.Start()
			mu.Lock()
			if err != nil {
				fail = err
			} else {
				cmds = append(cmds, c)
			}
			mu.Unlock()
			forked.Done()
			<-release
			runtime.UnlockOSThread()
		}()
	}
	forked.Wait()
	close(release)
	unlocked.Wait()
	if fail != nil {
		t.Fatal(fail)
	}
	for range 4 {
		e := newExecutor(func() {})
		if hasChildren(e.tid) {
			t.Errorf("the executor runs on thread %d, which has children", e.tid)
		}
		e.stop()
	}
}
