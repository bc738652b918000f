package main

import (
	"encoding/json"
	"os"
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

// TestRestoreFiveByteRegion: a relocated region whose instructions add up
// to 5 bytes, as long as a NOP site (the keepregs fixture's kr_five: lea,
// nop). With its tracer killed, a thread that meets an INT3 over the
// region's jmp, as a batch cut short leaves it, is sent on by the agent's
// SIGTRAP backstop: it must jump to the stub, not call it (a call would
// run the rest of kr_five twice, a wrong result). Then restore must take
// the region for one and put its bytes back.
func TestRestoreFiveByteRegion(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := livetraceBinary(t)
	exe := testtarget.Build(t, testtarget.KeepRegs, testtarget.ClangNop5, testtarget.NoSites(), testtarget.PIE(false))
	// The region's first byte (its lea stays in place: the region is
	// the nop and the add, 5 bytes again).
	out, _, err := runCLIBin(bin, "list", "--all", "--json", exe)
	if err != nil {
		t.Fatal(err)
	}
	var rows []struct{ Function, Address, Bytes string }
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatal(err)
	}
	var addr uint64
	for _, r := range rows {
		if r.Function == "kr_five" {
			addr, _ = strconv.ParseUint(strings.TrimPrefix(r.Address, "0x"), 16, 64)
			if len(r.Bytes) != len("48 8d 47 01 90") && len(r.Bytes) != len("488d470190") {
				t.Fatalf("kr_five's region is % q, want 5 bytes", r.Bytes)
			}
		}
	}
	if addr == 0 {
		t.Fatalf("kr_five not listed:\n%s", out)
	}
	tp := testtarget.Start(t, exe)
	if _, err := tp.Expect("ready", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	pid := strconv.Itoa(tp.Pid())
	run := func(when string) {
		t.Helper()
		if err := tp.Send("run 1000"); err != nil {
			t.Fatal(err)
		}
		l, err := tp.Expect("done", 30*time.Second)
		if err != nil {
			t.Fatalf("%s: the program did not answer (killed?): %v", when, err)
		}
		if l != "done 1000 bad 0 wrong 0" {
			t.Fatalf("%s: %q, want done 1000 bad 0 wrong 0", when, l)
		}
	}
	run("untraced")
	before := testtarget.TakeSnapshot(t, tp.Pid())

	cmd, _, _ := startTracing(t, bin, "record", "-p", pid, "-F", "kr_five", "-o", filepath.Join(t.TempDir(), "rec.data"))
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	mem, err := os.OpenFile("/proc/"+pid+"/mem", os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	b := make([]byte, 5)
	if _, err := mem.ReadAt(b, int64(addr)); err != nil || b[0] != 0xe9 {
		t.Fatalf("kr_five holds % x (%v), want the tracer's jmp", b, err)
	}
	if _, err := mem.WriteAt([]byte{0xcc}, int64(addr)); err != nil {
		t.Fatal(err)
	}
	run("with an INT3 over the jmp, the tracer dead")

	out, _, err = runCLIBin(bin, "restore", "-p", pid)
	if err != nil || !strings.Contains(out, "restored ") {
		t.Fatalf("restore: %v\n%s", err, out)
	}
	testtarget.CheckText(t, tp.Pid())
	before.CheckSame(t, tp.Pid())
	run("after restore")
}
