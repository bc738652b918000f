package earlyprio

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"unsafe"

	"github.com/livetrace/livetrace/internal/testtarget"
)

// TestMain, with EARLYPRIO_CHILD set, is the child of TestInit: it reports
// what init did, from the policy its main thread has now and from Take.
func TestMain(m *testing.M) {
	if os.Getenv("EARLYPRIO_CHILD") != "" {
		var now Attr
		if _, _, e := syscall.RawSyscall6(sysSchedGetattr, uintptr(syscall.Gettid()), uintptr(unsafe.Pointer(&now)), unsafe.Sizeof(now), 0, 0, 0); e != 0 {
			fmt.Println("sched_getattr:", e)
			os.Exit(1)
		}
		tid, old, ok := Take()
		_, _, again := Take()
		fmt.Printf("taken=%v main=%v policy=%d old=%d again=%v\n", ok, tid == os.Getpid(), now.Policy, old.Policy, again)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestInit runs this test binary as `record -p PID` and as other
// command lines: only the first is boosted, on its main thread, before
// main runs, and Take hands the boost over once.
func TestInit(t *testing.T) {
	testtarget.RequireRoot(t) // to set a real-time policy
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"record", "-p", "1"}, "taken=true main=true policy=1 old=0 again=false"},
		{[]string{"record", "--pid=1", "-F", "x"}, "taken=true main=true policy=1 old=0 again=false"},
		{[]string{"record", "--", "/bin/true", "-p", "1"}, "taken=false main=false policy=0 old=0 again=false"},
		{[]string{"report", "-p", "1"}, "taken=false main=false policy=0 old=0 again=false"},
		{nil, "taken=false main=false policy=0 old=0 again=false"},
	} {
		cmd := exec.Command(os.Args[0], c.args...)
		cmd.Env = append(os.Environ(), "EARLYPRIO_CHILD=1")
		out, err := cmd.CombinedOutput()
		if got := strings.TrimSpace(string(out)); err != nil || got != c.want {
			t.Errorf("%q: %s (%v), want %s", c.args, got, err, c.want)
		}
	}
}

func TestAttachesToPID(t *testing.T) {
	for _, c := range []struct {
		args string
		want bool
	}{
		{"-p 1", true},
		{"-p1 -F f", true},
		{"--pid 1", true},
		{"--pid=1", true},
		{"-F f -o x", false},
		{"-- prog -p 1", false},
		{"-p 1 -- prog", false},
		{"", false},
	} {
		if got := AttachesToPID(strings.Fields(c.args)); got != c.want {
			t.Errorf("AttachesToPID(%q) = %v, want %v", c.args, got, c.want)
		}
	}
}
