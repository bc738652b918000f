package hugemem

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
	"testing"
	"unsafe"
)

// thpMode is the kernel's THP setting for anonymous memory: "always",
// "madvise" or "never" ("" when the kernel has no THP).
func thpMode(t *testing.T) string {
	b, err := os.ReadFile("/sys/kernel/mm/transparent_hugepage/enabled")
	if err != nil {
		return ""
	}
	s := string(b)
	i, j := strings.IndexByte(s, '['), strings.IndexByte(s, ']')
	if i < 0 || j < i {
		t.Fatalf("cannot read the THP setting %q", s)
	}
	return s[i+1 : j]
}

// eligible reads THPeligible of the mapping that holds addr, from
// /proc/self/smaps.
func eligible(t *testing.T, addr uintptr) bool {
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		var lo, hi uintptr
		if n, _ := fmt.Sscanf(line, "%x-%x", &lo, &hi); n == 2 {
			in = lo <= addr && addr < hi
			continue
		}
		if in && strings.HasPrefix(line, "THPeligible:") {
			return strings.TrimSpace(strings.TrimPrefix(line, "THPeligible:")) == "1"
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	t.Fatalf("no mapping with THPeligible holds %#x", addr)
	return false
}

// hugeStart returns the first 2 MiB boundary inside s.
func hugeStart[T any](s []T) uintptr {
	return (uintptr(unsafe.Pointer(unsafe.SliceData(s))) + Size - 1) &^ (Size - 1)
}

func TestMake(t *testing.T) {
	mode := thpMode(t)
	t.Logf("THP: %q", mode)
	big := Make[uint64](3 * Size / 8) // 6 MiB: at least two whole huge pages
	switch mode {
	case "madvise":
		if !eligible(t, hugeStart(big)) {
			t.Errorf("a %d-byte array from Make is not eligible for huge pages", 3*Size)
		}
	case "always":
		// Eligible either way: only check that nothing broke.
	default:
		if Advise(unsafe.Pointer(&big[0]), 3*Size) {
			t.Errorf("THP is %q, but the advice was taken", mode)
		}
	}
	for i := range big {
		big[i] = uint64(i)
	}
	for i := range big {
		if big[i] != uint64(i) {
			t.Fatalf("big[%d] = %d", i, big[i])
		}
	}
}

func TestReserve(t *testing.T) {
	mode := thpMode(t)
	// Reserve's collection must be the only one: with the pacer's
	// collections on, as here, the 32 MiB allocation would start one by
	// itself. Off after it, so that none frees the array below.
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	procs := runtime.GOMAXPROCS(0)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	ok := Reserve(32 << 20)
	runtime.ReadMemStats(&after)
	debug.SetGCPercent(-1)
	if want := mode == "madvise" || mode == "always"; ok != want {
		t.Fatalf("THP %q: Reserve reported %v", mode, ok)
	}
	if got := runtime.GOMAXPROCS(0); got != procs {
		t.Errorf("GOMAXPROCS %d after Reserve, %d before", got, procs)
	}
	if n := after.NumGC - before.NumGC; ok && n != 1 {
		t.Errorf("Reserve ran %d collections, want 1", n)
	}
	// An array allocated after it lands in the reserved space: a plain
	// make, not Make, is eligible for huge pages.
	a := make([]byte, 8<<20)
	if mode == "madvise" && !eligible(t, hugeStart(a)) {
		t.Errorf("an array allocated after Reserve is not eligible for huge pages")
	}
	for i := range a {
		a[i] = byte(i)
	}
	runtime.KeepAlive(a)
}

// TestReserveLimited: under a limit of address space or data, Reserve
// takes nothing (a 64 MiB block more made record die at its start where
// it ran before, under "ulimit -v 800000").
func TestReserveLimited(t *testing.T) {
	for _, res := range []int{syscall.RLIMIT_AS, syscall.RLIMIT_DATA} {
		var old syscall.Rlimit
		if err := syscall.Getrlimit(res, &old); err != nil {
			t.Fatal(err)
		}
		// Far above what the test uses, but a limit.
		lim := syscall.Rlimit{Cur: 1 << 42, Max: old.Max}
		if err := syscall.Setrlimit(res, &lim); err != nil {
			t.Fatal(err)
		}
		ok := Reserve(32 << 20)
		if err := syscall.Setrlimit(res, &old); err != nil {
			t.Fatal(err)
		}
		if ok {
			t.Errorf("limit %d: Reserve took the advice", res)
		}
	}
}

func TestReserveStrictOvercommit(t *testing.T) {
	old := overcommitFile
	defer func() { overcommitFile = old }()
	dir := t.TempDir()
	for _, c := range []struct {
		name, content string
		strict        bool
	}{
		{"heuristic", "0\n", false},
		{"always", "1\n", false},
		{"strict", "2\n", true},
		{"unreadable", "", true},
	} {
		overcommitFile = filepath.Join(dir, c.name)
		if c.content != "" {
			if err := os.WriteFile(overcommitFile, []byte(c.content), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		if got := strictOvercommit(); got != c.strict {
			t.Errorf("%s: strictOvercommit() = %v, want %v", c.name, got, c.strict)
		}
		if c.strict && Reserve(32<<20) {
			t.Errorf("%s: Reserve took the advice", c.name)
		}
	}
}
