package main

import (
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/livetrace/livetrace/internal/testtarget"
)

// TestLossWarning records 4 threads calling traced functions as fast as
// they can into a one-chunk buffer, which cannot keep up: record must say
// once that events are being lost and what to do, and `info` must
// attribute the loss to the threads, adding up to the total.
func TestLossWarning(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := testtarget.Build(t, "stress", testtarget.ClangNop5, testtarget.Funcs(50))
	tp := testtarget.Start(t, bin, "-t", "4")
	if _, err := tp.Expect("ready", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := testtarget.HammerStress(tp, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	defer testtarget.StopStress(tp, 30*time.Second)
	lt := livetraceBinary(t)
	out := filepath.Join(t.TempDir(), "loss.data")
	_, stderr, err := runCLIBin(lt, "record", "-p", strconv.Itoa(tp.Pid()), "-F", "fn_*", "--buffer-chunks", "1", "-d", "1s", "-o", out)
	if err != nil {
		t.Fatalf("record: %v\n%s", err, stderr)
	}
	if n := strings.Count(stderr, "events are being lost"); n != 1 {
		t.Fatalf("the loss warning appears %d times, want once:\n%s", n, stderr)
	}
	if !strings.Contains(stderr, "--buffer-chunks 4") || !strings.Contains(stderr, "livetrace info") {
		t.Errorf("the warning does not say what to do:\n%s", stderr)
	}
	m := regexp.MustCompile(`(\d+) events, (\d+) lost`).FindStringSubmatch(stderr)
	if m == nil {
		t.Fatalf("no summary:\n%s", stderr)
	}
	total, _ := strconv.ParseUint(m[2], 10, 64)
	info, ierr, err := runCLIBin(lt, "info", "-i", out)
	if err != nil {
		t.Fatalf("info: %v\n%s", err, ierr)
	}
	// threads: TID NAME EVENTS LOST
	var perThread, lossy uint64
	inThreads := false
	for _, l := range strings.Split(info, "\n") {
		if strings.HasPrefix(l, "threads:") {
			inThreads = true
			continue
		}
		f := strings.Fields(l)
		if !inThreads || len(f) < 4 || f[0] == "TID" {
			continue
		}
		n, err := strconv.ParseUint(f[len(f)-1], 10, 64)
		if err != nil {
			continue
		}
		perThread += n
		if n > 0 {
			lossy++
		}
	}
	if total == 0 || lossy == 0 || perThread > total || perThread < total*9/10 {
		t.Fatalf("record says %d lost; info attributes %d to %d threads:\n%s", total, perThread, lossy, info)
	}
}
