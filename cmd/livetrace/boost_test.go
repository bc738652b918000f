package main

import (
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/livetrace/livetrace/internal/testtarget"
)

// checkNotRealTime fails the test if a thread of process pid has a
// real-time scheduling policy.
func checkNotRealTime(t *testing.T, who string, pid int) {
	t.Helper()
	for tid, pol := range testtarget.ThreadPolicies(t, pid) {
		if pol != 0 {
			t.Errorf("%s (pid %d): thread %d has scheduling policy %d, want 0 (SCHED_NORMAL)", who, pid, tid, pol)
		}
	}
}

// TestAttachBoostEnds attaches to a process whose threads keep both CPUs
// busy: record -p runs real-time from its start through the patch batch
// (internal/proc/nice.go), and must be back to the normal policy, every
// thread of it, once it traces; so must the target, whose policy it never
// touches. It fails if the early boost of main's init is not taken over
// and ended by session.Start.
func TestAttachBoostEnds(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := livetraceBinary(t)
	stress := testtarget.Build(t, testtarget.Stress, testtarget.ClangNop5, testtarget.Funcs(2000))
	tp := startHammering(t, stress) // 2 threads: both CPUs busy
	for _, args := range [][]string{{"-F", "fn_*"}, {"-F", "fn_000[0-9][0-9]"}, {"--graph", "-F", "fn_001*"}} {
		out := filepath.Join(t.TempDir(), "rec.data")
		cmd, _, said := startTracing(t, bin, append([]string{"record", "-p", strconv.Itoa(tp.Pid()), "-d", "400ms", "-o", out}, args...)...)
		// The consumer runs meanwhile, and the runtime starts threads.
		time.Sleep(200 * time.Millisecond)
		checkNotRealTime(t, "record "+strings.Join(args, " "), cmd.Process.Pid)
		checkNotRealTime(t, "the target", tp.Pid())
		if err := waitTimeout(cmd, closedChan, 30*time.Second); err != nil {
			t.Fatalf("record %s: %v\n%s", strings.Join(args, " "), err, said)
		}
	}
	if _, _, err := testtarget.StopStress(tp, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	testtarget.CheckText(t, tp.Pid())
}
