package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

const readersSection = "Readers on a large recording (synthetic graph-mode recording shaped like hotleaf, bench/bigrec)"

// readers measures `report` and `export --format perfetto` on a recording
// of 250M events (10M with -quick): wall time, events/s and peak RSS; and
// the size of a perfetto export against the chrome JSON of the same 10M
// events.
func (b *bench) readers() {
	events := 250_000_000
	if b.quick {
		events = 10_000_000
	}
	big := filepath.Join(b.work, "big.data")
	small := filepath.Join(b.work, "small.data")
	defer os.Remove(big)
	defer os.Remove(small)
	for _, r := range []struct {
		path string
		n    int
	}{{big, events}, {small, 10_000_000}} {
		out, err := exec.Command("go", "run", "./bench/bigrec", "-events", fmt.Sprint(r.n), "-mode", "graph", "-o", r.path).CombinedOutput()
		if err != nil {
			b.add(readersSection, "bigrec", -1, "", fmt.Sprintf("%v: %s", err, lastLines(string(out), 3)))
			return
		}
	}
	measure := func(name string, args ...string) {
		cmd := exec.Command(b.livetrace, args...)
		t0 := time.Now()
		out, err := cmd.CombinedOutput()
		wall := time.Since(t0)
		if err != nil {
			b.add(readersSection, name+": events/s", -1, "", fmt.Sprintf("%v: %s", err, lastLines(string(out), 3)))
			return
		}
		ru, _ := cmd.ProcessState.SysUsage().(*syscall.Rusage)
		cpu := time.Duration(0)
		rss := 0.0
		if ru != nil {
			cpu = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
			rss = float64(ru.Maxrss) / 1024 // KiB -> MiB
		}
		b.add(readersSection, name+": events/s", float64(events)/wall.Seconds(), "events/s",
			fmt.Sprintf("%d events in %v wall, %v CPU", events, wall.Round(10*time.Millisecond), cpu.Round(10*time.Millisecond)))
		b.add(readersSection, name+": peak RSS", rss, "MiB", "")
	}
	measure("report", "report", "-i", big)
	pf := filepath.Join(b.work, "big.pftrace")
	measure("export perfetto", "export", "--format", "perfetto", "-i", big, "-o", pf)
	os.Remove(pf)
	spf, sjs := filepath.Join(b.work, "small.pftrace"), filepath.Join(b.work, "small.json")
	defer os.Remove(spf)
	defer os.Remove(sjs)
	for _, e := range [][]string{{"export", "--format", "perfetto", "-i", small, "-o", spf}, {"export", "--format", "chrome", "-i", small, "-o", sjs}} {
		if out, err := exec.Command(b.livetrace, e...).CombinedOutput(); err != nil {
			b.add(readersSection, "perfetto size vs chrome JSON", -1, "", fmt.Sprintf("%v: %s", err, lastLines(string(out), 3)))
			return
		}
	}
	p, err1 := os.Stat(spf)
	j, err2 := os.Stat(sjs)
	if err1 == nil && err2 == nil && j.Size() > 0 {
		b.add(readersSection, "perfetto size vs chrome JSON (10M events)", 100*float64(p.Size())/float64(j.Size()), "%",
			fmt.Sprintf("%d vs %d bytes", p.Size(), j.Size()))
	}
}
