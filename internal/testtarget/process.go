package testtarget

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Process is a running fixture started by [Start]. Its methods are safe for
// concurrent use, but lines are consumed by whichever of ReadLine and
// Expect reads them first.
type Process struct {
	tb    testing.TB
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string // stdout lines; closed at EOF

	stderr LockedBuffer

	killOnce sync.Once
	killed   chan struct{} // closed by Kill: nobody reads lines any more

	waitOnce sync.Once
	waitErr  error
	waitDone chan struct{}
}

// LockedBuffer is a bytes.Buffer safe for concurrent use: a command's
// output that a test reads while the command runs.
type LockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *LockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *LockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// ErrExited is returned by [Process.ReadLine] and [Process.Expect] when the
// process closed its stdout (usually because it exited).
var ErrExited = errors.New("process closed stdout")

// ErrTimeout is returned by [Process.ReadLine] and [Process.Expect] when no
// matching line came in time.
var ErrTimeout = errors.New("timed out waiting for output")

// Start runs the executable path with args, with pipes for stdin and
// stdout, and returns the running [Process]. It registers a tb.Cleanup
// that kills the process and, when the test failed, logs its stderr. The
// process also gets SIGKILL if the test binary dies. Start does not wait
// for "ready": call p.Expect("ready", timeout) for that.
func Start(tb testing.TB, path string, args ...string) *Process {
	tb.Helper()
	p := &Process{tb: tb, lines: make(chan string, 1024), waitDone: make(chan struct{}), killed: make(chan struct{})}
	var stdout *os.File
	for attempt := 0; ; attempt++ {
		p.cmd = exec.Command(path, args...)
		p.cmd.Stderr = &p.stderr
		// Kill the fixture if the test binary dies (a panic or a
		// -timeout) without running its cleanups. Pdeathsig fires when
		// the forking OS thread exits, so never call Start on a
		// goroutine that ends while locked to its thread
		// (runtime.LockOSThread).
		p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		stdin, err := p.cmd.StdinPipe()
		if err != nil {
			tb.Fatalf("start %s: %v", path, err)
		}
		// An os.Pipe rather than StdoutPipe, so that Wait does not close
		// the read end while lines are still buffered in it.
		r, w, err := os.Pipe()
		if err != nil {
			tb.Fatalf("start %s: %v", path, err)
		}
		p.cmd.Stdout = w
		p.stdin = stdin
		err = p.cmd.Start()
		w.Close()
		if err == nil {
			stdout = r
			break
		}
		r.Close()
		stdin.Close()
		// ETXTBSY: a file just written (a patched copy, a fresh build)
		// can still be open for writing in a child that another test
		// forked meanwhile; that child closes it at its exec.
		if errors.Is(err, syscall.ETXTBSY) && attempt < 50 {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		tb.Fatalf("start %s: %v", path, err)
	}
	go func() {
		defer close(p.lines)
		defer stdout.Close()
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64*1024), 64*1024*1024)
		for sc.Scan() {
			select {
			case p.lines <- sc.Text():
			case <-p.killed:
				return
			}
		}
	}()
	tb.Cleanup(func() {
		if !p.kill(30 * time.Second) {
			tb.Errorf("pid %d not reaped 30 s after SIGKILL: a tracer still holds one of its threads (%s)", p.Pid(), taskStates(p.Pid()))
		}
		if tb.Failed() {
			if s := p.stderr.String(); s != "" {
				tb.Logf("stderr of %s (pid %d):\n%s", path, p.Pid(), s)
			}
		}
	})
	return p
}

// Pid returns the process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Stderr returns what the process wrote to stderr so far.
func (p *Process) Stderr() string { return p.stderr.String() }

// Send writes line and a newline to the process's stdin.
func (p *Process) Send(line string) error {
	if _, err := io.WriteString(p.stdin, line+"\n"); err != nil {
		return fmt.Errorf("send %q to pid %d: %w", line, p.Pid(), err)
	}
	return nil
}

// CloseStdin closes the process's stdin; the fixtures then exit 0.
func (p *Process) CloseStdin() error { return p.stdin.Close() }

// ReadLine returns the next line of stdout without its newline. It returns
// an error wrapping [ErrTimeout] when none comes within timeout, and
// [ErrExited] at the end of stdout.
func (p *Process) ReadLine(timeout time.Duration) (string, error) {
	var (
		l  string
		ok bool
	)
	select {
	case l, ok = <-p.lines: // a line already waiting wins over a zero timeout
	default:
		t := time.NewTimer(timeout)
		defer t.Stop()
		select {
		case l, ok = <-p.lines:
		case <-t.C:
			return "", fmt.Errorf("read line from pid %d after %v: %w", p.Pid(), timeout, ErrTimeout)
		}
	}
	if !ok {
		return "", fmt.Errorf("read line from pid %d: %w (stderr: %q)", p.Pid(), ErrExited, p.stderr.String())
	}
	return l, nil
}

// Expect reads lines until one starts with prefix and returns that line.
// Lines that do not match are skipped (and quoted in the error if none
// matches). The timeout covers the whole wait.
func (p *Process) Expect(prefix string, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	var skipped []string
	for {
		left := time.Until(deadline)
		if left <= 0 {
			left = 0
		}
		l, err := p.ReadLine(left + time.Nanosecond)
		if err != nil {
			return "", fmt.Errorf("expect %q (skipped %q): %w", prefix, skipped, err)
		}
		if strings.HasPrefix(l, prefix) {
			return l, nil
		}
		skipped = append(skipped, l)
		if len(skipped) > 20 {
			skipped = skipped[1:]
		}
	}
}

// Wait waits for the process to exit and returns its exit error (nil for
// status 0). It may be called more than once.
func (p *Process) Wait() error {
	p.waitOnce.Do(func() {
		p.waitErr = p.cmd.Wait()
		close(p.waitDone)
	})
	<-p.waitDone
	return p.waitErr
}

// Kill kills the process with SIGKILL and reaps it. It is a no-op when the
// process has already exited.
func (p *Process) Kill() { p.kill(0) }

// kill is Kill, waiting at most timeout (0: for ever) for the reaping; it
// reports whether the process was reaped. A thread of it that a tracer
// holds without reading its exit keeps the process from being reaped.
func (p *Process) kill(timeout time.Duration) bool {
	p.killOnce.Do(func() { close(p.killed) })
	select {
	case <-p.waitDone:
		return true
	default:
	}
	_ = p.cmd.Process.Kill()
	if timeout == 0 {
		_ = p.Wait()
		return true
	}
	go p.Wait()
	select {
	case <-p.waitDone:
		return true
	case <-time.After(timeout):
		return false
	}
}

// WaitSyscall waits until a thread of process pid is blocked in one of
// the system calls nrs, as /proc/PID/task/TID/syscall shows: thread tid,
// or any thread when tid is 0. It fails tb after 10 s.
func WaitSyscall(tb testing.TB, pid, tid int, nrs ...int) {
	tb.Helper()
	blocked := func(tid string) bool {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/syscall", pid, tid))
		f := strings.Fields(string(b))
		for _, nr := range nrs {
			if len(f) > 0 && f[0] == strconv.Itoa(nr) {
				return true
			}
		}
		return false
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if tid != 0 {
			if blocked(strconv.Itoa(tid)) {
				return
			}
			continue
		}
		tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		for _, task := range tasks {
			if blocked(task.Name()) {
				return
			}
		}
	}
	tb.Fatalf("no thread of pid %d (tid %d, 0: any) blocked in system calls %v after 10 s", pid, tid, nrs)
}

// taskStates lists the threads of pid with their state letter, from
// /proc/PID/task/TID/stat.
func taskStates(pid int) string {
	dir := fmt.Sprintf("/proc/%d/task", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err.Error()
	}
	var out []string
	for _, e := range ents {
		b, _ := os.ReadFile(dir + "/" + e.Name() + "/stat")
		state := "?"
		if i := bytes.LastIndexByte(b, ')'); i >= 0 && i+2 < len(b) {
			state = string(b[i+2])
		}
		out = append(out, e.Name()+" "+state)
	}
	return strings.Join(out, ", ")
}

// WaitMainThreadExited waits until the main thread of p has exited while
// other threads run on (pthread_exit in main: the sleeper's "exit-main"),
// which leaves it a zombie in /proc/PID/stat.
func (p *Process) WaitMainThreadExited(tb testing.TB) {
	tb.Helper()
	stat := fmt.Sprintf("/proc/%d/stat", p.Pid())
	for deadline := time.Now().Add(10 * time.Second); ; {
		if b, _ := os.ReadFile(stat); strings.Contains(string(b), ") Z ") {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("the main thread of pid %d did not exit", p.Pid())
		}
		time.Sleep(time.Millisecond)
	}
}

// SharedMemorySize returns the size in bytes of livetrace's shared memory
// (the agent's memfd) mapped in process pid, 0 when none is.
func SharedMemorySize(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return 0
	}
	size := 0
	for _, l := range strings.Split(string(b), "\n") {
		if !strings.Contains(l, "memfd:livetrace") {
			continue
		}
		lo, hi, _ := strings.Cut(strings.Fields(l)[0], "-")
		a, _ := strconv.ParseUint(lo, 16, 64)
		z, _ := strconv.ParseUint(hi, 16, 64)
		size += int(z - a)
	}
	return size
}

// CPUTime returns how long the threads of p have run on a CPU, summed over
// /proc/PID/task/TID/schedstat (nanoseconds, where /proc/PID/stat counts
// clock ticks). Unlike wall time, it does not grow when other processes
// keep the CPUs busy: a test that compares the cost of the same work at
// two moments of a shared machine compares it. Threads that have exited
// no longer count.
func (p *Process) CPUTime() (time.Duration, error) {
	dir := fmt.Sprintf("/proc/%d/task", p.Pid())
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	var sum time.Duration
	for _, e := range ents {
		b, err := os.ReadFile(dir + "/" + e.Name() + "/schedstat")
		if err != nil {
			continue // the thread exited
		}
		f := strings.Fields(string(b))
		if len(f) == 0 {
			return 0, fmt.Errorf("%s/%s/schedstat: %q", dir, e.Name(), b)
		}
		ns, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s/%s/schedstat: %w", dir, e.Name(), err)
		}
		sum += time.Duration(ns)
	}
	return sum, nil
}
