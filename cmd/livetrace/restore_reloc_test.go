package main

import (
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/livetrace/livetrace/internal/testtarget"
)

// TestRestoreReloc kills record with SIGKILL while it traces functions
// built without a NOP (relocated regions: `jmp stub` over several bytes),
// then runs livetrace restore: every region gets its original bytes back,
// and the program counts right.
func TestRestoreReloc(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := livetraceBinary(t)
	exe := testtarget.Build(t, testtarget.Workload, testtarget.ClangNop5, testtarget.NoSites())
	tp := testtarget.Start(t, exe, "-t", "2")
	if _, err := tp.Expect("ready", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	pid := strconv.Itoa(tp.Pid())
	if _, err := testtarget.RunWorkload(tp, 1, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	cmd, _, _ := startTracing(t, bin, "record", "-p", pid, "-F", "work_*", "-F", "lib_add", "-o", filepath.Join(t.TempDir(), "rec.data"))
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	// The regions still jump to their stubs: the program runs through them.
	counts, err := testtarget.RunWorkload(tp, 10, 30*time.Second)
	if err != nil || counts["work_leaf"] != 10*2*3 {
		t.Fatalf("orphaned: %v %v", counts, err)
	}
	out, _, err := runCLIBin(bin, "restore", "-p", pid)
	if err != nil || !strings.Contains(out, "restored ") {
		t.Fatalf("restore: %v\n%s", err, out)
	}
	t.Log(strings.TrimSpace(out))
	testtarget.CheckText(t, tp.Pid())
	counts, err = testtarget.RunWorkload(tp, 10, 30*time.Second)
	if err != nil || counts["work_leaf"] != 10*2*3 {
		t.Fatalf("after restore: %v %v", counts, err)
	}
}
