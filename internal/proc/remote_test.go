package proc

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/livetrace/livetrace/internal/testtarget"
	"golang.org/x/sys/unix"
)

// TestRemoteSyscallInBlockedThreads borrows each thread of a process while
// it is blocked in nanosleep, futex, epoll_wait or read, runs system calls
// on it, and checks that the application sees nothing: the sleep lasts as
// long, the read returns the data, and no EINTR appears.
func TestRemoteSyscallInBlockedThreads(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := testtarget.Build(t, "sleeper", testtarget.ClangNop5)
	for _, tc := range []struct {
		cmd, reply string
		wantRet    string
		wantErrno  string
	}{
		{"sleep", "slept", "0", "0"},
		{"futex", "futex", "-1", "110"},
		{"epoll", "epoll", "0", "0"},
	} {
		t.Run(tc.cmd, func(t *testing.T) {
			tp := testtarget.Start(t, bin)
			if _, err := tp.Expect("ready", 5*time.Second); err != nil {
				t.Fatal(err)
			}
			const ms = 400
			if err := tp.Send(fmt.Sprintf("%s %d", tc.cmd, ms)); err != nil {
				t.Fatal(err)
			}
			time.Sleep(100 * time.Millisecond) // let the worker block
			p, err := Attach(tp.Pid())
			if err != nil {
				t.Fatal(err)
			}
			defer p.Detach()
			tids := p.Threads()
			if len(tids) < 2 {
				t.Fatalf("threads = %v, want main and a worker", tids)
			}
			// Borrow every thread, the blocked worker and the main
			// thread blocked in read, for a few syscalls each.
			for _, tid := range tids {
				r, err := p.holdRemote(tid)
				if err != nil {
					t.Fatalf("hold thread %d: %v", tid, err)
				}
				for i := 0; i < 3; i++ {
					ret, err := r.Syscall(SysGetpid)
					if err != nil {
						t.Fatal(err)
					}
					if int(ret) != tp.Pid() {
						t.Fatalf("remote getpid = %d, want %d", int64(ret), tp.Pid())
					}
				}
				if err := r.Release(); err != nil {
					t.Fatal(err)
				}
			}
			if err := p.Detach(); err != nil {
				t.Fatal(err)
			}
			line, err := tp.Expect(tc.reply, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			f := strings.Fields(line)
			if len(f) != 4 {
				t.Fatalf("reply %q", line)
			}
			elapsed, _ := strconv.Atoi(f[1])
			if f[2] != tc.wantRet || f[3] != tc.wantErrno {
				t.Errorf("%s: ret %s errno %s, want %s %s (4 = EINTR)", line, f[2], f[3], tc.wantRet, tc.wantErrno)
			}
			if elapsed < ms || elapsed > ms+300 {
				t.Errorf("%s: elapsed %d ms, want about %d", line, elapsed, ms)
			}
			if err := tp.Send("echo hello world"); err != nil {
				t.Fatal(err)
			}
			if line, err := tp.Expect("echo", 5*time.Second); err != nil || line != "echo hello world" {
				t.Fatalf("echo: %q, %v", line, err)
			}
			if err := tp.Send("stats"); err != nil {
				t.Fatal(err)
			}
			if line, err := tp.Expect("stats", 5*time.Second); err != nil || line != "stats read_eintr 0" {
				t.Fatalf("stats: %q, %v", line, err)
			}
		})
	}
}

func TestAttachErrors(t *testing.T) {
	testtarget.RequireRoot(t)
	if _, err := Attach(1 << 30); err == nil || !strings.Contains(err.Error(), "no process") {
		t.Errorf("missing pid: %v", err)
	}
	if _, err := Attach(2); err == nil || !strings.Contains(err.Error(), "kernel thread") {
		t.Errorf("kthreadd: %v", err)
	}
}

// TestJobControl checks that SIGSTOP and SIGCONT behave as without a
// tracer while we are attached.
func TestJobControl(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := testtarget.Build(t, "sleeper", testtarget.ClangNop5)
	tp := testtarget.Start(t, bin)
	if _, err := tp.Expect("ready", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	p, err := Attach(tp.Pid())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Detach()
	if err := unix.Kill(tp.Pid(), unix.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	waitState(t, tp.Pid(), "t") // "t (tracing stop)": group-stopped, LISTENing
	if err := tp.Send("echo while stopped"); err != nil {
		t.Fatal(err)
	}
	if line, err := tp.ReadLine(300 * time.Millisecond); err == nil {
		t.Fatalf("stopped process answered %q", line)
	}
	if err := unix.Kill(tp.Pid(), unix.SIGCONT); err != nil {
		t.Fatal(err)
	}
	if line, err := tp.Expect("echo", 5*time.Second); err != nil || line != "echo while stopped" {
		t.Fatalf("after SIGCONT: %q, %v", line, err)
	}
	if err := p.Detach(); err != nil {
		t.Fatal(err)
	}
	if err := tp.Send("echo after detach"); err != nil {
		t.Fatal(err)
	}
	if line, err := tp.Expect("echo", 5*time.Second); err != nil || line != "echo after detach" {
		t.Fatalf("after detach: %q, %v", line, err)
	}
}

func waitState(t *testing.T, pid int, want string) {
	t.Helper()
	for i := 0; i < 200; i++ {
		st, _ := readState(pid)
		if strings.HasPrefix(st, want) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	st, _ := readState(pid)
	t.Fatalf("pid %d state %q, want %s", pid, st, want)
}

func readState(pid int) (string, error) {
	b, err := readFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return "", err
	}
	return statusField(b, "State"), nil
}
