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

// TestMakeFlat: an array of 800 KiB, and one of 33-byte elements over
// 3 MiB (the trap table's), start at or just past a huge page boundary,
// lie in advised memory from there to their end, hold zeros and take
// writes; a small one is a plain array.
func TestMakeFlat(t *testing.T) {
	mode := thpMode(t)
	check := func(name string, p uintptr, size uintptr, elem uintptr) {
		t.Helper()
		if off := p % Size; off >= elem {
			t.Errorf("%s starts %d bytes past a huge page boundary, want under %d", name, off, elem)
		}
		if mode == "madvise" {
			for a := p &^ (Size - 1); a < p+size; a += Size {
				if !eligible(t, a) {
					t.Errorf("%s: the huge page at %#x is not eligible", name, a)
				}
			}
		}
	}
	a := MakeFlat[uint64](100000)
	if len(a) != 100000 || cap(a) != 100000 {
		t.Fatalf("len %d cap %d", len(a), cap(a))
	}
	check("[]uint64", uintptr(unsafe.Pointer(&a[0])), 800000, 8)
	type site struct {
		n uint8
		b [32]byte
	}
	b := MakeFlat[site](100000)
	if len(b) != 100000 || cap(b) != 100000 {
		t.Fatalf("len %d cap %d", len(b), cap(b))
	}
	check("[]site", uintptr(unsafe.Pointer(&b[0])), 3300000, 33)
	for i := range a {
		if a[i] != 0 {
			t.Fatalf("a[%d] = %d", i, a[i])
		}
		a[i] = uint64(i)
	}
	for i := range b {
		if b[i].n != 0 || b[i].b[31] != 0 {
			t.Fatalf("b[%d] = %v", i, b[i])
		}
		b[i].n, b[i].b[31] = uint8(i), uint8(i>>8)
	}
	for i := range a {
		if a[i] != uint64(i) || b[i].n != uint8(i) || b[i].b[31] != uint8(i>>8) {
			t.Fatalf("element %d: %d, %v", i, a[i], b[i])
		}
	}
	if s := MakeFlat[uint64](1000); len(s) != 1000 || cap(s) != 1000 {
		t.Fatalf("small: len %d cap %d", len(s), cap(s))
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
