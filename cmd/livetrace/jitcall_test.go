package main

import (
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/livetrace/livetrace/internal/testtarget"
)

// TestRecordGraphJITCaller records the jitcall fixture in graph mode: its
// traced function, called from code the program wrote into anonymous
// memory, must see its own return address (graph mode leaves such calls
// alone), and record, info and replay must say how many calls that was.
func TestRecordGraphJITCaller(t *testing.T) {
	testtarget.RequireRoot(t)
	tp := testtarget.Start(t, testtarget.Build(t, testtarget.JITCall, testtarget.ClangNop5))
	if _, err := tp.Expect("ready", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "rec.data")
	line := ""
	stderr := recordDuring(t, []string{"-p", strconv.Itoa(tp.Pid()), "--graph", "-F", "jit_*", "-d", "1500ms", "-o", out}, func() {
		line = sendExpect(t, tp, "run 300", "done ")
	})
	if !strings.Contains(line, " jit=300 bad=0") {
		t.Errorf("the program saw %q, want jit=300 bad=0 (bad: its return address replaced)", line)
	}
	if !strings.Contains(stderr, "livetrace: 300 calls from JIT-compiled code not traced") {
		t.Errorf("record does not count the calls from JIT code:\n%s", stderr)
	}
	info, _, err := runCLI(t, "info", "-i", out)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(info, "calls from JIT code:     300 ") {
		t.Errorf("info does not count the calls from JIT code:\n%s", info)
	}
	replay, _, err := runCLI(t, "replay", "-i", out)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(replay, "# 300 calls from JIT-compiled code not traced") {
		t.Errorf("replay does not say so:\n%.500s", replay)
	}
	testtarget.CheckText(t, tp.Pid())
}
