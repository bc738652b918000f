package main

import (
	"bytes"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/livetrace/livetrace/internal/tracefile"
)

// monoNow is CLOCK_MONOTONIC in ns, the clock the recording's timestamps
// convert to.
func monoNow() int64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

// slowWriter is a terminal that takes perByte for each byte.
type slowWriter struct {
	mu      sync.Mutex
	b       bytes.Buffer
	perByte time.Duration
}

func (w *slowWriter) Write(p []byte) (int, error) {
	time.Sleep(time.Duration(len(p)) * w.perByte)
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

// TestLiveSkipsWhenBehind feeds live's printer far more events than its
// output takes: the poll loop's side must never wait for the output, the
// printer must skip what is too old and say so, and every event must be
// either printed or counted as skipped.
func TestLiveSkipsWhenBehind(t *testing.T) {
	w := &slowWriter{perByte: 2 * time.Microsecond} // about 8,000 lines a second
	l := &liveOutput{o: &recordOptions{stdout: w}}
	// Clock{} converts one TSC tick to one ns of CLOCK_MONOTONIC from 0:
	// an event's TSC is its monotonic time.
	meta := tracefile.Meta{Mode: tracefile.ModeEntry, PID: 1, Comm: "t",
		Funcs: []tracefile.Func{{Name: "f", Module: -1, Addr: 0x1000, Site: 0x1000}}}
	l.begin(meta)
	stop := make(chan struct{})
	ticked := make(chan struct{})
	go func() {
		defer close(ticked)
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
				l.tick()
			}
		}
	}()
	const batches, per = 300, 1000
	var inEvents time.Duration
	evs := make([]tracefile.Event, per)
	for b := 0; b < batches; b++ {
		now := uint64(monoNow())
		for i := range evs {
			evs[i] = tracefile.Event{TSC: now + uint64(i), TID: uint32(100 + b%2), Kind: tracefile.KindEntry}
		}
		t0 := time.Now()
		l.events(evs, "t")
		inEvents += time.Since(t0)
		// The session reuses its slice: live must have copied it.
		for i := range evs {
			evs[i] = tracefile.Event{}
		}
		time.Sleep(time.Millisecond)
	}
	close(stop)
	<-ticked
	l.finish()

	out := w.b.String()
	printed := strings.Count(out, ": f <- ")
	var skipped int
	for _, m := range regexp.MustCompile(`(?m)^# (\d+) events? of thread (\d+) skipped: the output cannot keep up`).FindAllStringSubmatch(out, -1) {
		n, _ := strconv.Atoi(m[1])
		skipped += n
	}
	if printed+skipped != batches*per {
		t.Errorf("%d events printed and %d skipped, want %d in all", printed, skipped, batches*per)
	}
	if skipped == 0 {
		t.Errorf("nothing skipped although the output takes %v a byte", w.perByte)
	}
	if strings.Contains(out, " 0.000000: f <- ") {
		t.Errorf("zeroed events printed: the batch was not copied")
	}
	// The poll loop only copies: 300 batches in well under the time
	// one batch takes to print (about 0.12 s).
	if inEvents > time.Second {
		t.Errorf("the poll loop spent %v handing over %d batches: it waits for the output", inEvents, batches)
	}
	t.Logf("%d printed, %d skipped; poll side %v", printed, skipped, inEvents)
}

// TestLiveBacklog checks the printer's estimate of how long what waits
// would take to print: none before it has printed for 10 ms, then at its
// recent pace, which follows an output that slows down.
func TestLiveBacklog(t *testing.T) {
	var l liveOutput
	l.busy.add(1000, 5*time.Millisecond)
	if got := l.backlog(1e6); got != 0 {
		t.Errorf("backlog after 5 ms of printing: %v, want 0 (not measured yet)", got)
	}
	l.busy.add(1000, 5*time.Millisecond) // 2000 events in 10 ms
	if got, want := l.backlog(3000), 15*time.Millisecond; got != want {
		t.Errorf("backlog of 3000 events at 200 a ms: %v, want %v", got, want)
	}
	// The output gets ten times slower: within a few hundred ms of
	// printing, the estimate is near the new pace (20 events a ms).
	for range 40 {
		l.busy.add(200, 10*time.Millisecond)
	}
	if got := l.backlog(3000); got < 140*time.Millisecond || got > 160*time.Millisecond {
		t.Errorf("backlog of 3000 events after the output slowed to 20 a ms: %v, want about 150 ms", got)
	}
}
