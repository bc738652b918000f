package session

import (
	"path/filepath"
	"testing"

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
