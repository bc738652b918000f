package session

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/livetrace/livetrace/internal/testtarget"
	"golang.org/x/sys/unix"
)

func TestAlignPad(t *testing.T) {
	for _, c := range []struct {
		b    []byte
		want bool
	}{
		// glibc's ld.so after _dl_debug_state's `ret`: GNU as's padding.
		{[]byte{0x66, 0x66, 0x2e, 0x0f, 0x1f, 0x84, 0, 0, 0, 0, 0, 0x0f, 0x1f, 0x40, 0}, true},
		{[]byte{0x90}, true},
		{[]byte{0x66, 0x90, 0xcc, 0xcc}, true},  // lld fills with INT3
		{nil, false},                            // the next function starts right after the `ret`
		{[]byte{0x0f, 0x1f, 0x44, 0}, false},    // a NOP cut short
		{[]byte{0xf3, 0x0f, 0x1e, 0xfa}, false}, // endbr64: a function
		{[]byte{0x90, 0x55, 0x48, 0x89, 0xe5}, false},
	} {
		if got := alignPad(c.b); got != c.want {
			t.Errorf("alignPad(% x) = %v, want %v", c.b, got, c.want)
		}
	}
}

// rbrkCaller calls the loader's r_brk once, when told, as the loader does
// but with an rdi that makes the function after it (_dl_debug_update in
// glibc) fault: a thread that runs on past r_brk's `ret` dies.
const rbrkCaller = `#include <link.h>
#include <stdio.h>
int main(void)
{
	char line[16];
	printf("rbrk %lx\n", (unsigned long)_r_debug.r_brk);
	fflush(stdout);
	if (!fgets(line, sizeof line, stdin))
		return 2;
	__asm__ volatile("movabs $0x4141414141414141, %%rdi\n\tcall *%0"
	                 : : "r"(_r_debug.r_brk)
	                 : "rax", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11", "memory", "cc");
	puts("returned");
	return 0;
}
`

// trapHelperEnv makes the test binary a tracer killed in the middle of a
// trap (TestRbrkDroppedTrap).
const trapHelperEnv = "LIVETRACE_TEST_TRAP_HELPER"

// TestRbrkDroppedTrap: a tracer SIGKILLed while a thread sits in the
// SIGTRAP stop of the INT3 over r_brk's `ret` does not get the signal
// delivered (the kernel drops it) and the thread runs on one past the
// INT3. With the second `ret` in the padding (followLoader), it returns;
// without, it runs into the next function and dies. The tracer here is
// this test binary run again, which never handles the trap.
func TestRbrkDroppedTrap(t *testing.T) {
	if spec := os.Getenv(trapHelperEnv); spec != "" {
		trapHelper(spec)
		return
	}
	testtarget.RequireRoot(t)
	cc, err := exec.LookPath("gcc")
	if err != nil {
		testtarget.SkipOrFatal(t, "gcc is not installed: run `make test`, which installs it")
	}
	dir := t.TempDir()
	src, exe := filepath.Join(dir, "rbrk.c"), filepath.Join(dir, "rbrk")
	if err := os.WriteFile(src, []byte(rbrkCaller), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(cc, "-O1", "-mno-red-zone", "-o", exe, src).CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	for _, pad := range []bool{true, false} {
		t.Run(fmt.Sprintf("pad=%v", pad), func(t *testing.T) {
			tp := testtarget.Start(t, exe)
			l, err := tp.Expect("rbrk ", 10*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			at, err := strconv.ParseUint(strings.TrimPrefix(l, "rbrk "), 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			if pad {
				// followLoader's check, on the loader this machine has.
				b := make([]byte, 16-(at+1)%16)
				if err := readMem(tp.Pid(), at+1, b); err != nil {
					t.Fatal(err)
				}
				if !alignPad(b) {
					t.Fatalf("the bytes after r_brk's ret at %#x are not padding (% x): the loader gets no second ret", at, b)
				}
			}
			helper := exec.Command(os.Args[0], "-test.run=^TestRbrkDroppedTrap$")
			helper.Env = append(os.Environ(), fmt.Sprintf("%s=%d %#x %v", trapHelperEnv, tp.Pid(), at, pad))
			helper.Stderr = os.Stderr
			out, err := helper.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := helper.Start(); err != nil {
				t.Fatal(err)
			}
			defer helper.Process.Kill()
			lines := bufio.NewScanner(out)
			expect := func(want string) {
				t.Helper()
				if !lines.Scan() || lines.Text() != want {
					t.Fatalf("the helper tracer said %q (%v), want %q", lines.Text(), lines.Err(), want)
				}
			}
			expect("armed")
			if err := tp.Send("go"); err != nil {
				t.Fatal(err)
			}
			expect("trapped")
			helper.Process.Kill()
			helper.Wait()
			_, rerr := tp.Expect("returned", 10*time.Second)
			werr := tp.Wait()
			if pad {
				if rerr != nil || werr != nil {
					t.Fatalf("with the second ret, the thread did not return from r_brk: %v, exit %v", rerr, werr)
				}
				return
			}
			// The test's other half: without it, the thread is lost.
			if ee, ok := werr.(*exec.ExitError); !ok || !ee.Sys().(syscall.WaitStatus).Signaled() {
				t.Fatalf("without the second ret the target exited with %v: the test does not show what the padding is for", werr)
			}
		})
	}
}

// readMem reads the memory of pid at addr.
func readMem(pid int, addr uint64, b []byte) error {
	f, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = f.ReadAt(b, int64(addr))
	return err
}

// trapHelper is TestRbrkDroppedTrap's tracer: it seizes pid, writes the
// INT3 over r_brk's `ret` (and, with pad, a `ret` after it), waits for the
// thread's SIGTRAP stop and then for its own SIGKILL.
func trapHelper(spec string) {
	var pid int
	var at uint64
	var pad bool
	if _, err := fmt.Sscanf(spec, "%d %v %v", &pid, &at, &pad); err != nil {
		fmt.Println("bad spec:", err)
		os.Exit(1)
	}
	runtime.LockOSThread()
	fail := func(what string, err error) {
		fmt.Printf("%s: %v\n", what, err)
		os.Exit(1)
	}
	if err := unix.PtraceSeize(pid); err != nil {
		fail("seize", err)
	}
	f, err := os.OpenFile(fmt.Sprintf("/proc/%d/mem", pid), os.O_RDWR, 0)
	if err != nil {
		fail("open mem", err)
	}
	if pad {
		if _, err := f.WriteAt([]byte{opRet}, int64(at+1)); err != nil {
			fail("write the second ret", err)
		}
	}
	if _, err := f.WriteAt([]byte{opInt3}, int64(at)); err != nil {
		fail("write the INT3", err)
	}
	fmt.Println("armed")
	for {
		var ws unix.WaitStatus
		if _, err := unix.Wait4(pid, &ws, unix.WALL, nil); err != nil {
			fail("wait", err)
		}
		if !ws.Stopped() {
			fail("wait", fmt.Errorf("status %#x", ws))
		}
		if ws.StopSignal() == unix.SIGTRAP {
			break
		}
		_ = unix.PtraceCont(pid, int(ws.StopSignal()))
	}
	fmt.Println("trapped")
	time.Sleep(time.Hour)
}
