package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const liveSection = "Live output latency (livetrace live: from the call to the line read on its stdout)"

// liveLatency measures how long a call takes to show in `livetrace live`:
// bench/c/latprobe.c passes each call its own CLOCK_MONOTONIC time, live
// prints it (-A probe@arg1/u), and the reader subtracts it from the time
// it reads the line.
func (b *bench) liveLatency() {
	bin := filepath.Join(b.work, "latprobe")
	clang := "clang-16"
	if c := os.Getenv("LIVETRACE_CLANG"); c != "" {
		clang = c
	}
	if out, err := exec.Command(clang, "-O2", "-g", "-fpatchable-function-entry=5", "-o", bin, filepath.Join("bench", "c", "latprobe.c")).CombinedOutput(); err != nil {
		b.add(liveSection, "build latprobe", -1, "", fmt.Sprintf("%v\n%s", err, out))
		return
	}
	secs := "3"
	if b.quick {
		secs = "1"
	}
	for _, rate := range []struct {
		calls float64
		label string
	}{{10, "10 calls/s"}, {10e6, "10M calls/s"}} {
		lat, lines, calls, err := b.liveRun(bin, rate.calls, secs)
		if err != nil {
			b.add(liveSection, "latency, "+rate.label, -1, "ms", err.Error())
			continue
		}
		if len(lat) == 0 {
			b.add(liveSection, "latency, "+rate.label, -1, "ms", fmt.Sprintf("no probe line read (%.0f calls)", calls))
			continue
		}
		slices.Sort(lat)
		pct := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))]) / 1e6 }
		note := fmt.Sprintf("%.0f calls, %d lines read", calls, lines)
		if len(lat) != lines {
			note += fmt.Sprintf(", latency of every %dth", lines/len(lat))
		}
		b.add(liveSection, "p50 latency, "+rate.label, pct(0.5), "ms", note)
		b.add(liveSection, "p99 latency, "+rate.label, pct(0.99), "ms", "")
		b.add(liveSection, "max latency, "+rate.label, pct(1), "ms", "")
	}
}

func monoNS() int64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

// liveRun runs latprobe at rate calls a second under livetrace live and
// returns the latencies (ns) of the lines read (a sample at most 100,000
// long), the number of probe lines and of calls.
func (b *bench) liveRun(bin string, rate float64, secs string) (lat []int64, lines int, calls float64, err error) {
	t, err := startTarget([]string{bin, strconv.FormatFloat(rate, 'f', -1, 64), secs})
	if err != nil {
		return nil, 0, 0, err
	}
	defer t.kill()
	cmd := exec.Command(b.livetrace, "live", "-p", strconv.Itoa(t.cmd.Process.Pid), "-F", "probe", "-A", "probe@arg1/u")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, 0, 0, err
	}
	if err := cmd.Start(); err != nil {
		return nil, 0, 0, err
	}
	ready := make(chan struct{})
	var mu sync.Mutex
	every := 1
	if rate > 1e5 {
		every = 1000
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		r := bufio.NewReaderSize(out, 1<<20)
		key := []byte("probe(")
		once := false
		for {
			l, err := r.ReadSlice('\n')
			if len(l) > 0 {
				now := monoNS()
				if !once && bytes.HasPrefix(l, []byte("# tracer")) {
					once = true
					close(ready)
				}
				if i := bytes.Index(l, key); i >= 0 {
					rest := l[i+len(key):]
					if j := bytes.IndexByte(rest, ')'); j > 0 {
						if v, err := strconv.ParseInt(string(rest[:j]), 10, 64); err == nil {
							mu.Lock()
							if lines%every == 0 && len(lat) < 100000 {
								lat = append(lat, now-v)
							}
							lines++
							mu.Unlock()
						}
					}
				}
			}
			if err == io.EOF {
				return
			}
			if err != nil && err != bufio.ErrBufferFull {
				return
			}
		}
	}()
	select {
	case <-ready:
	case <-done:
		cmd.Wait()
		return nil, 0, 0, fmt.Errorf("livetrace live ended before its header: %s", strings.TrimSpace(stderr.String()))
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		cmd.Wait()
		return nil, 0, 0, fmt.Errorf("livetrace live printed no header in 60 s: %s", strings.TrimSpace(stderr.String()))
	}
	calls, err = t.run("calls")
	// Let the last lines through (live shows a call within 100 ms).
	time.Sleep(300 * time.Millisecond)
	cmd.Process.Signal(syscall.SIGINT)
	<-done
	if werr := cmd.Wait(); werr != nil && err == nil {
		err = fmt.Errorf("livetrace live: %v: %s", werr, strings.TrimSpace(stderr.String()))
	}
	mu.Lock()
	defer mu.Unlock()
	return lat, lines, calls, err
}
