package session

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/livetrace/livetrace/internal/testtarget"
)

func TestDefaultChunks(t *testing.T) {
	for cpus, want := range map[int]int{0: 256, 1: 256, 2: 512, 3: 768, 4: 1024, 64: 1024} {
		if got := DefaultChunks(cpus); got != want {
			t.Errorf("DefaultChunks(%d) = %d, want %d", cpus, got, want)
		}
	}
}

// TestDefaultBufferByCPUs: without Options.Chunks, the shared buffer has
// ChunksPerCPU chunks for each CPU the target may run on, as its affinity
// mask says (taskset, a container's cpuset), not for each CPU online.
func TestDefaultBufferByCPUs(t *testing.T) {
	testtarget.RequireRoot(t)
	exe := testtarget.Build(t, testtarget.Simple, testtarget.ClangNop5)
	var all unix.CPUSet
	check(t, unix.SchedGetaffinity(0, &all))
	first := 0
	for !all.IsSet(first) {
		first++
	}
	for _, pinned := range []bool{true, false} {
		tp := startLoop(t, exe)
		want := DefaultChunks(all.Count())
		if pinned {
			var one unix.CPUSet
			one.Set(first)
			check(t, unix.SchedSetaffinity(tp.Pid(), &one))
			want = ChunksPerCPU
		}
		s, err := Start(tp.Pid(), Options{Funcs: []string{"simple_*"}, Output: filepath.Join(t.TempDir(), "rec.data")})
		check(t, err)
		if got := s.BufferChunks(); got != want {
			t.Errorf("pinned to one CPU %v: %d chunks, want %d (%d CPUs here)", pinned, got, want, all.Count())
		}
		check(t, s.Close())
	}
}

// TestSharedBroughtUpToDate: soon after the attach the tracer's mapping of
// the shared buffer holds every page (the fill's MADV_POPULATE_WRITE),
// whether or not a record reached them: a page only fallocated is not up
// to date, and the agent's first touch of it would fault once a page
// instead of once in 16 (startFill).
func TestSharedBroughtUpToDate(t *testing.T) {
	testtarget.RequireRoot(t)
	tp := startWorkload(t, testtarget.ClangNop5)
	s, err := Start(tp.Pid(), Options{Funcs: []string{"work_*"}, Output: filepath.Join(t.TempDir(), "rec.data"), Chunks: 64})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	addr := uint64(uintptr(unsafe.Pointer(unsafe.SliceData(s.inj.shared))))
	size := uint64(len(s.inj.shared))
	var rss uint64
	for start := time.Now(); time.Since(start) < 10*time.Second; time.Sleep(20 * time.Millisecond) {
		if rss = mappingRss(t, addr); rss >= size {
			return
		}
	}
	t.Errorf("the tracer's mapping of the shared buffer holds %d of %d bytes 10 s after the attach (an idle target)", rss, size)
}

// mappingRss returns the Rss of this process's mapping that starts at
// addr, from /proc/self/smaps.
func mappingRss(t *testing.T, addr uint64) uint64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	in := false
	for _, l := range strings.Split(string(b), "\n") {
		var lo, hi uint64
		if n, _ := fmt.Sscanf(l, "%x-%x", &lo, &hi); n == 2 && strings.Contains(l, " ") {
			in = lo == addr
			continue
		}
		if kb, ok := strings.CutPrefix(l, "Rss:"); ok && in {
			v, err := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(kb), "kB")), 10, 64)
			if err != nil {
				t.Fatalf("smaps: %q: %v", l, err)
			}
			return v << 10
		}
	}
	t.Fatalf("no mapping of this process starts at %#x", addr)
	return 0
}
