package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/livetrace/livetrace/internal/testtarget"
	"github.com/livetrace/livetrace/internal/tracefile"
)

// BenchmarkAttachLatency measures, for a running process with 10,000
// functions and 4 threads calling them all in a loop, the time from the
// start of `livetrace record -p PID` to the first recorded event
// (attach-ms, CLOCK_MONOTONIC on both sides): with all 10,000 selected, and
// with 100 of them, which must not cost the time of the 10,000. It also
// reports the longest gap a calling thread saw between two calls, beside
// the longest gap over as long a time untraced (baseline-stall-µs): over
// the whole runs (attach, 300 ms of tracing, detach: stall-µs), and split
// by what the tracer was doing during the gap (the stress fixture logs
// every gap of over 1 ms with its time): attaching, from the tracer's exec
// to the end of session.Start (attach-stall-µs), tracing, where the
// consumer takes a CPU the 4 threads want (trace-stall-µs), and detaching,
// from the start of Session.Close until the process is let go
// (detach-stall-µs). A gap counts for each of them it overlaps; what the
// tracer does after, writing the file out, is one more process on the
// machine.
// And the part of attach-ms spent before session.Start began: the tracer's
// own start (startup-ms: exec, the Go runtime, flags, the orphan check).
// LIVETRACE_BENCH_BIN names another livetrace binary to measure, so that
// two builds can be compared in alternating runs.
func BenchmarkAttachLatency(b *testing.B) {
	testtarget.RequireRoot(b)
	bin := os.Getenv("LIVETRACE_BENCH_BIN")
	if bin == "" {
		bin = livetraceBinaryB(b)
	}
	stress := testtarget.Build(b, testtarget.Stress, testtarget.ClangNop5, testtarget.Funcs(10000))
	tp := testtarget.Start(b, stress, "-t", "4")
	if _, err := tp.Expect("ready", 30*time.Second); err != nil {
		b.Fatal(err)
	}
	for _, sel := range []struct{ name, glob string }{{"10k-of-10k", "fn_*"}, {"100-of-10k", "fn_000[0-9][0-9]"}} {
		b.Run(sel.name, func(b *testing.B) {
			if err := testtarget.HammerStress(tp, 10*time.Second); err != nil {
				b.Fatal(err)
			}
			time.Sleep(time.Duration(b.N) * 500 * time.Millisecond)
			baseline, _, err := testtarget.StopStress(tp, 30*time.Second)
			if err != nil {
				b.Fatal(err)
			}
			if err := testtarget.HammerStress(tp, 10*time.Second); err != nil {
				b.Fatal(err)
			}
			var total, worst, startup float64
			var inAttach, inTrace, inDetach time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				out := filepath.Join(b.TempDir(), "rec.data")
				// The gaps so far are the last run's reading.
				if _, _, err := testtarget.StressGaps(tp, 10*time.Second); err != nil {
					b.Fatal(err)
				}
				t0 := monotonic()
				cmd := exec.Command(bin, "record", "-p", strconv.Itoa(tp.Pid()), "-F", sel.glob, "-d", "300ms", "-o", out)
				// For the line that says when session.Start began.
				cmd.Env = append(os.Environ(), "LIVETRACE_DEBUG_TIMING=1")
				o, err := cmd.CombinedOutput()
				if err != nil {
					b.Fatalf("record: %v\n%s", err, o)
				}
				gaps, _, err := testtarget.StressGaps(tp, 10*time.Second)
				if err != nil {
					b.Fatal(err)
				}
				st, ok := stampAt(string(o), "start")
				attached, ok2 := stampAt(string(o), "attached")
				detach, ok3 := stampAt(string(o), "detach")
				detached, ok4 := stampAt(string(o), "detached")
				if !ok || !ok2 || !ok3 || !ok4 {
					b.Fatalf("record -p did not print the \"session: start/attached/detach/detached at\" lines with LIVETRACE_DEBUG_TIMING=1:\n%s", o)
				}
				for _, g := range gaps {
					end := int64(g.End)
					start := end - int64(g.Len)
					over := func(lo, hi int64) bool { return start < hi && end > lo }
					if over(int64(t0), attached) {
						inAttach = max(inAttach, g.Len)
					}
					if over(attached, detach) {
						inTrace = max(inTrace, g.Len)
					}
					if over(detach, detached) {
						inDetach = max(inDetach, g.Len)
					}
				}
				startup += float64(st-int64(t0)) / 1e6
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
			stall, _, err := testtarget.StopStress(tp, 30*time.Second)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(total/float64(b.N), "attach-ms")
			b.ReportMetric(worst, "max-attach-ms")
			b.ReportMetric(startup/float64(b.N), "startup-ms")
			b.ReportMetric(float64(stall.Microseconds()), "stall-µs")
			b.ReportMetric(float64(inAttach.Microseconds()), "attach-stall-µs")
			b.ReportMetric(float64(inTrace.Microseconds()), "trace-stall-µs")
			b.ReportMetric(float64(inDetach.Microseconds()), "detach-stall-µs")
			b.ReportMetric(float64(baseline.Microseconds()), "baseline-stall-µs")
			b.ReportMetric(0, "ns/op")
		})
	}
	testtarget.CheckText(b, tp.Pid())
}

// stampAt returns the CLOCK_MONOTONIC time of event (start: session.Start
// began; attached: it returned; detach: Session.Close began; detached: it
// let the process go), from the
// stderr of a record run with LIVETRACE_DEBUG_TIMING=1.
func stampAt(stderr, event string) (int64, bool) {
	for _, l := range strings.Split(stderr, "\n") {
		if rest, ok := strings.CutPrefix(l, "session: "+event+" at CLOCK_MONOTONIC "); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				ns, err := strconv.ParseInt(f[0], 10, 64)
				return ns, err == nil
			}
		}
	}
	return 0, false
}

func monotonic() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Sec)*1e9 + uint64(ts.Nsec)
}
