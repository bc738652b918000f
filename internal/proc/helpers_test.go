package proc

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// target is a fixture started by startAs, possibly as another user.
type target struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
	done  chan struct{}
	err   error // exit error, valid once done is closed
}

// nobody is the unprivileged user that plays the attacker: livetrace runs
// as root, the target it traces does not.
var nobody = &syscall.Credential{Uid: 65534, Gid: 65534}

// startAs runs the fixture bin with args, as cred (nil: as us). A copy of
// bin in a world-readable directory is run, since the fixture cache is
// private to root.
func startAs(t *testing.T, cred *syscall.Credential, bin string, args ...string) *target {
	t.Helper()
	dir, err := os.MkdirTemp("", "lt-proc-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(dir, filepath.Base(bin))
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(exe, b, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGKILL}
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		err = cmd.Start()
		if err == nil || !strings.Contains(err.Error(), "text file busy") || i > 50 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	tp := &target{cmd: cmd, stdin: stdin, lines: make(chan string, 1024), done: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			tp.lines <- sc.Text()
		}
		close(tp.lines)
		tp.err = cmd.Wait()
		close(tp.done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		select {
		case <-tp.done:
		case <-time.After(5 * time.Second):
		}
	})
	return tp
}

func (tp *target) pid() int { return tp.cmd.Process.Pid }

func (tp *target) send(t *testing.T, line string) {
	t.Helper()
	if _, err := io.WriteString(tp.stdin, line+"\n"); err != nil {
		t.Fatalf("send %q: %v", line, err)
	}
}

// expect returns the next line that starts with prefix.
func (tp *target) expect(t *testing.T, prefix string, timeout time.Duration) string {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case l, ok := <-tp.lines:
			if !ok {
				t.Fatalf("target closed stdout while we waited for %q (exit: %v)", prefix, tp.wait(time.Second))
			}
			if strings.HasPrefix(l, prefix) {
				return l
			}
		case <-deadline:
			t.Fatalf("no %q from the target in %v", prefix, timeout)
		}
	}
}

// wait waits for the target to exit and returns its exit error.
func (tp *target) wait(timeout time.Duration) error {
	select {
	case <-tp.done:
		return tp.err
	case <-time.After(timeout):
		return fmt.Errorf("still running after %v", timeout)
	}
}

// stats parses a "stats k=v k=v ..." line.
func stats(t *testing.T, line string) map[string]uint64 {
	t.Helper()
	m := map[string]uint64{}
	for _, f := range strings.Fields(line)[1:] {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			t.Fatalf("bad stats field %q in %q", f, line)
		}
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("bad stats field %q in %q", f, line)
		}
		m[k] = n
	}
	return m
}
