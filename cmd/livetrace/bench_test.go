package main

import (
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/livetrace/livetrace/internal/testtarget"
	"github.com/livetrace/livetrace/internal/tracefile"
)

// BenchmarkAttachLatency measures, for a running process with 10,000
// selected sites and 4 threads calling them, the time from the start of
// `livetrace record -p PID` to the first recorded event (attach-ms), using
// CLOCK_MONOTONIC on both sides.
func BenchmarkAttachLatency(b *testing.B) {
	testtarget.RequireRoot(b)
	bin := livetraceBinaryB(b)
	stress := testtarget.Build(b, testtarget.Stress, testtarget.ClangNop5, testtarget.Funcs(10000))
	tp := testtarget.Start(b, stress, "-t", "4")
	if _, err := tp.Expect("ready", 30*time.Second); err != nil {
		b.Fatal(err)
	}
	if err := tp.Send("hammer"); err != nil {
		b.Fatal(err)
	}
	if _, err := tp.Expect("hammering", 10*time.Second); err != nil {
		b.Fatal(err)
	}
	var total, worst float64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		out := filepath.Join(b.TempDir(), "rec.data")
		t0 := monotonic()
		cmd := exec.Command(bin, "record", "-p", strconv.Itoa(tp.Pid()), "-F", "fn_*", "-d", "300ms", "-o", out)
		if o, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("record: %v\n%s", err, o)
		}
		rec, err := tracefile.Read(out)
		if err != nil {
			b.Fatal(err)
		}
		if len(rec.Events) == 0 {
			b.Fatal("no events")
		}
		first := rec.Clock.Nanos(rec.Events[0].TSC)
		ms := float64(first-int64(t0)) / 1e6
		total += ms
		worst = max(worst, ms)
	}
	b.StopTimer()
	b.ReportMetric(total/float64(b.N), "attach-ms")
	b.ReportMetric(worst, "max-attach-ms")
	b.ReportMetric(0, "ns/op")
	testtarget.CheckText(b, tp.Pid())
}

func monotonic() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Sec)*1e9 + uint64(ts.Nsec)
}
