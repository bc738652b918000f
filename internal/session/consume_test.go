package session

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/livetrace/livetrace/internal/testtarget"
	"github.com/livetrace/livetrace/internal/tracefile"
)

// TestPartialChunksPrompt: a thread that calls a few traced functions and
// then idles never fills its chunk, yet its events must reach the tracer
// (and the status line) within drainEvery, not at detach.
func TestPartialChunksPrompt(t *testing.T) {
	testtarget.RequireRoot(t)
	tp := startWorkload(t, testtarget.ClangNop5)
	workloadRun(t, tp, 1)
	out := filepath.Join(t.TempDir(), "rec.data")
	s, err := Start(tp.Pid(), Options{Funcs: []string{"work_*"}, Output: out})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	want := uint64(0)
	for _, n := range workloadRun(t, tp, 1) {
		want += n
	}
	start := time.Now()
	for time.Since(start) < 5*time.Second {
		if _, err := s.Poll(); err != nil {
			t.Fatal(err)
		}
		if s.Summary().Events >= want {
			break
		}
		time.Sleep(time.Millisecond)
	}
	took := time.Since(start)
	if got := s.Summary().Events; got < want {
		t.Fatalf("after %v the tracer has %d events of the %d calls made", took, got, want)
	}
	t.Logf("%d events arrived %v after the calls", want, took.Round(time.Millisecond))
}

// TestPoller: a Poller takes the events as they come without the caller
// polling, and stops cleanly before Close; the recording has every call.
func TestPoller(t *testing.T) {
	testtarget.RequireRoot(t)
	tp := startWorkload(t, testtarget.ClangNop5)
	workloadRun(t, tp, 1)
	out := filepath.Join(t.TempDir(), "rec.data")
	s, err := Start(tp.Pid(), Options{Funcs: []string{"work_*", "lib_*"}, Output: out})
	if err != nil {
		t.Fatal(err)
	}
	p := s.StartPoller(time.Millisecond, -5)
	want := map[string]uint64{}
	total := uint64(0)
	for fn, n := range workloadRun(t, tp, 20) {
		want[fn] += n
		total += n
	}
	start := time.Now()
	for s.Summary().Events < total && time.Since(start) < 5*time.Second {
		time.Sleep(time.Millisecond)
	}
	if got := s.Summary().Events; got < total {
		t.Errorf("after %v the poller took %d events of the %d calls made", time.Since(start).Round(time.Millisecond), got, total)
	}
	if err := p.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := p.Stop(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.Err():
		t.Fatalf("poller error: %v", err)
	default:
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	rec, err := tracefile.Read(out)
	if err != nil {
		t.Fatal(err)
	}
	got := countEntries(rec)
	for fn, n := range want {
		if got[fn] != n {
			t.Errorf("%s: recorded %d calls, the program counted %d", fn, got[fn], n)
		}
	}
}
