package testtarget

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// Snapshot is what a tracer must leave as it found it in a process: its
// executable file-backed text, its mappings and its open file descriptors.
type Snapshot struct {
	Maps []string // lines of /proc/PID/maps
	Fds  []string // fd -> target, sorted
}

// TakeSnapshot records the mappings and file descriptors of pid.
func TakeSnapshot(tb testing.TB, pid int) Snapshot {
	tb.Helper()
	maps, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		tb.Fatal(err)
	}
	var s Snapshot
	for _, l := range strings.Split(strings.TrimSpace(string(maps)), "\n") {
		// The heap and stacks grow on their own; compare the rest.
		if strings.HasSuffix(l, "[heap]") || strings.HasSuffix(l, "[stack]") {
			continue
		}
		s.Maps = append(s.Maps, l)
	}
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		tb.Fatal(err)
	}
	for _, e := range ents {
		target, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name()))
		s.Fds = append(s.Fds, e.Name()+" -> "+target)
	}
	sort.Strings(s.Fds)
	return s
}

// CheckSame fails tb when pid's mappings or file descriptors differ from
// the snapshot: a tracer left a mapping or an fd behind.
func (s Snapshot) CheckSame(tb testing.TB, pid int) {
	tb.Helper()
	now := TakeSnapshot(tb, pid)
	if d := diffLines(s.Maps, now.Maps); d != "" {
		tb.Errorf("mappings of pid %d changed:\n%s", pid, d)
	}
	if d := diffLines(s.Fds, now.Fds); d != "" {
		tb.Errorf("file descriptors of pid %d changed:\n%s", pid, d)
	}
}

func diffLines(a, b []string) string {
	in := func(xs []string) map[string]bool {
		m := map[string]bool{}
		for _, x := range xs {
			m[x] = true
		}
		return m
	}
	ma, mb := in(a), in(b)
	var out []string
	for _, x := range a {
		if !mb[x] {
			out = append(out, "- "+x)
		}
	}
	for _, x := range b {
		if !ma[x] {
			out = append(out, "+ "+x)
		}
	}
	return strings.Join(out, "\n")
}

// CheckText fails tb unless every executable file-backed mapping of pid
// holds exactly the bytes of its file: the text is as the loader left it.
func CheckText(tb testing.TB, pid int) {
	tb.Helper()
	maps, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		tb.Fatal(err)
	}
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		tb.Fatal(err)
	}
	defer mem.Close()
	for _, l := range strings.Split(strings.TrimSpace(string(maps)), "\n") {
		f := strings.Fields(l)
		if len(f) < 6 || !strings.HasPrefix(f[5], "/") || len(f[1]) < 3 || f[1][2] != 'x' {
			continue
		}
		lo, hi, _ := strings.Cut(f[0], "-")
		start, _ := strconv.ParseUint(lo, 16, 64)
		end, _ := strconv.ParseUint(hi, 16, 64)
		off, _ := strconv.ParseUint(f[2], 16, 64)
		live := make([]byte, end-start)
		if _, err := mem.ReadAt(live, int64(start)); err != nil {
			tb.Fatalf("read text of pid %d at %#x: %v", pid, start, err)
		}
		file, err := os.Open(f[5])
		if err != nil {
			tb.Fatal(err)
		}
		disk := make([]byte, len(live))
		n, _ := file.ReadAt(disk, int64(off))
		file.Close()
		if i := firstDiff(live[:n], disk[:n]); i >= 0 {
			tb.Fatalf("%s: text at %#x is % x in memory, % x in the file", f[5], start+uint64(i), live[i:min(i+5, n)], disk[i:min(i+5, n)])
		}
	}
}

func firstDiff(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

// ThreadPolicies returns the scheduling policy of every thread of process
// pid (field 41 of /proc/PID/task/TID/stat: 0 is SCHED_NORMAL, 1
// SCHED_FIFO), for tests that check who runs real-time.
func ThreadPolicies(tb testing.TB, pid int) map[int]int {
	tb.Helper()
	dir := fmt.Sprintf("/proc/%d/task", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		tb.Fatal(err)
	}
	out := map[int]int{}
	for _, e := range ents {
		tid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name(), "stat"))
		if err != nil {
			continue // gone
		}
		// The command name, in parentheses, may hold spaces.
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		if len(f) < 41-2 {
			tb.Fatalf("%s/%s/stat: too few fields", dir, e.Name())
		}
		pol, _ := strconv.Atoi(f[41-3])
		out[tid] = pol
	}
	return out
}
