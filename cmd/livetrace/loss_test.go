package main

import (
	"bytes"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/livetrace/livetrace/internal/session"
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

// TestBufferDefaults: record sizes the shared buffer by the CPUs the target
// may run on (session.DefaultChunks), live and top keep it at
// session.ChunksPerCPU, whatever the CPUs, since for them it is a queue
// whose length is the time it takes to show a call; --buffer-chunks
// overrides both. The size is read off the agent's memfd mapping in the
// target while the tracer is attached.
func TestBufferDefaults(t *testing.T) {
	testtarget.RequireRoot(t)
	tp := testtarget.Start(t, testtarget.Build(t, testtarget.Simple, testtarget.ClangNop5), "loop")
	if _, err := tp.Expect("ready", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	var cpus unix.CPUSet
	if err := unix.SchedGetaffinity(tp.Pid(), &cpus); err != nil {
		t.Fatal(err)
	}
	lt := livetraceBinary(t)
	const chunk = 64 << 10
	for _, c := range []struct {
		args []string
		want int // bytes of event buffer
	}{
		{[]string{"record", "-o", filepath.Join(t.TempDir(), "rec.data")}, session.DefaultChunks(cpus.Count()) * chunk},
		{[]string{"live"}, session.ChunksPerCPU * chunk},
		{[]string{"top"}, session.ChunksPerCPU * chunk},
		{[]string{"live", "--buffer-chunks", "64"}, 64 * chunk},
	} {
		args := append(c.args, "-p", strconv.Itoa(tp.Pid()), "-F", "simple_*", "-d", "1s")
		var done func() error
		if args[0] == "top" { // it needs a terminal
			startTmux(t, 120, 40, lt+" "+strings.Join(args, " ")+"; sleep 60")
			done = func() error {
				for end := time.Now().Add(20 * time.Second); testtarget.SharedMemorySize(tp.Pid()) != 0; time.Sleep(10 * time.Millisecond) {
					if time.Now().After(end) {
						return errors.New("still attached after 20 s")
					}
				}
				return nil
			}
		} else {
			cmd := exec.Command(lt, args...)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			done = func() error {
				if err := cmd.Wait(); err != nil {
					return fmt.Errorf("%w\n%s", err, stderr.String())
				}
				return nil
			}
		}
		size := 0
		for end := time.Now().Add(10 * time.Second); size == 0 && time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
			size = testtarget.SharedMemorySize(tp.Pid())
		}
		if err := done(); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		// The mapping also holds the agent's header, thread slots and
		// site table: a few MiB at most.
		if size < c.want || size > c.want+4<<20 {
			t.Errorf("%v: shared memory of %d bytes, want %d bytes of buffer and at most 4 MiB more (%d CPUs)", args, size, c.want, cpus.Count())
		}
	}
}
