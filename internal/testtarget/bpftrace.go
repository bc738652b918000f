package testtarget

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Bpftrace is a running `bpftrace` that counts the calls of one function
// with a uprobe and prints the count every 100 ms. It is safe for
// concurrent use.
type Bpftrace struct {
	cmd  *exec.Cmd
	pid  int
	addr uint64
	mu   sync.Mutex
	out  bytes.Buffer
	done chan struct{}
}

// Write collects bpftrace's output.
func (b *Bpftrace) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.out.Write(p)
}

// Output returns what bpftrace printed so far.
func (b *Bpftrace) Output() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.out.String()
}

// StartBpftrace puts a uprobe on function fn of the executable bin and
// waits until it is in the text of process pid: site addr no longer holds
// before. bpftrace is stopped at cleanup.
func StartBpftrace(t *testing.T, bin, fn string, pid int, addr uint64, before []byte) *Bpftrace {
	t.Helper()
	path, err := exec.LookPath("bpftrace")
	if err != nil {
		SkipOrFatal(t, "bpftrace is not installed: run `make test`, which installs it (or apt-get install bpftrace)")
	}
	prog := fmt.Sprintf("uprobe:%s:%s { @c = count(); } interval:ms:100 { print(@c); }", bin, fn)
	b := &Bpftrace{pid: pid, addr: addr, done: make(chan struct{})}
	b.cmd = exec.Command(path, "-e", prog)
	b.cmd.Stdout, b.cmd.Stderr = b, b
	if err := b.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { b.cmd.Wait(); close(b.done) }()
	t.Cleanup(func() { b.Stop(t) })
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(b.Output(), "Attaching") || bytes.Equal(b.Site(t), before) {
		select {
		case <-b.done:
			t.Fatalf("bpftrace exited: %s", b.Output())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("bpftrace did not attach to %s within 15 s; site holds % x; output:\n%s", fn, b.Site(t), b.Output())
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // let it settle
	return b
}

// Site returns the 5 bytes at the probed site.
func (b *Bpftrace) Site(t *testing.T) []byte {
	t.Helper()
	m, err := os.Open(fmt.Sprintf("/proc/%d/mem", b.pid))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	got := make([]byte, 5)
	if _, err := m.ReadAt(got, int64(b.addr)); err != nil {
		t.Fatal(err)
	}
	return got
}

// Count returns the last count bpftrace printed (0 before any hit).
func (b *Bpftrace) Count(t *testing.T) uint64 {
	t.Helper()
	out := b.Output()
	i := strings.LastIndex(out, "@c: ")
	if i < 0 {
		return 0
	}
	line, _, _ := strings.Cut(out[i+4:], "\n")
	n, err := strconv.ParseUint(strings.TrimSpace(line), 10, 64)
	if err != nil {
		t.Fatalf("bpftrace printed %q", out[i:])
	}
	return n
}

// WaitCount waits up to 5 s for the count to reach want and returns it.
func (b *Bpftrace) WaitCount(t *testing.T, want uint64) uint64 {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		n := b.Count(t)
		if n >= want || time.Now().After(deadline) {
			return n
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop ends bpftrace, which removes its uprobe, and waits for it.
func (b *Bpftrace) Stop(t *testing.T) {
	select {
	case <-b.done:
		return
	default:
	}
	b.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-b.done:
	case <-time.After(10 * time.Second):
		b.cmd.Process.Kill()
		<-b.done
		t.Errorf("bpftrace did not exit on SIGINT")
	}
}
