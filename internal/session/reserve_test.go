package session

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/livetrace/livetrace/internal/testtarget"
)

// dieAtEnv makes the test binary a tracer that SIGKILLs itself at a stage
// of the shared memory's setup (TestRestoreSharedReserved).
const dieAtEnv = "LIVETRACE_TEST_DIE_AT"

// TestRestoreSharedReserved: a tracer killed after its first mmap reserved
// the shared memory's range, before the memfd was mapped over it, leaves
// an anonymous mapping there that the owner record lists as the shared
// memory. restore must take it for the reservation and remove it with the
// rest of the agent, and the target runs on as before.
func TestRestoreSharedReserved(t *testing.T) {
	if spec := os.Getenv(dieAtEnv); spec != "" {
		f := strings.Fields(spec)
		pid, _ := strconv.Atoi(f[0])
		testHookShared = func(stage string, fd int) {
			if stage == f[1] {
				_ = unix.Kill(os.Getpid(), unix.SIGKILL)
				time.Sleep(time.Hour)
			}
		}
		_, err := Start(pid, Options{Funcs: []string{"simple_*"}, Output: f[2], Chunks: 4})
		t.Fatalf("the tracer reached the end of Start (%v): it should have died at %s", err, f[1])
	}
	testtarget.RequireRoot(t)
	tp := testtarget.Start(t, testtarget.Build(t, testtarget.Simple, testtarget.ClangNop5), "loop")
	if _, err := tp.Expect("ready", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	before := testtarget.TakeSnapshot(t, tp.Pid())
	helper := exec.Command(os.Args[0], "-test.run=^TestRestoreSharedReserved$")
	helper.Env = append(os.Environ(), dieAtEnv+"="+strconv.Itoa(tp.Pid())+" taken "+filepath.Join(t.TempDir(), "rec.data"))
	out, _ := helper.CombinedOutput()
	if ws, ok := helper.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("the tracer did not die at the shared memory: %v\n%s", helper.ProcessState, out)
	}
	o, err := FindOrphan(tp.Pid())
	if err != nil || o == nil || o.Owner.SharedSize == 0 {
		t.Fatalf("orphan after the tracer died: %+v, %v; want one that names its shared memory", o, err)
	}
	res, err := Restore(tp.Pid())
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	t.Logf("restore: %+v", *res)
	if o, err := FindOrphan(tp.Pid()); err != nil || o != nil {
		t.Fatalf("an agent is left after restore: %+v, %v", o, err)
	}
	testtarget.CheckText(t, tp.Pid())
	before.CheckSame(t, tp.Pid())
}
