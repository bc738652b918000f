// Package hugemem backs the tracer's fresh memory with transparent huge
// pages where the kernel allows it.
//
// The first touch of each fresh 4 KiB page is a page fault, and on some
// virtual machines a costly one: on the 2-vCPU PVM guests this project is
// measured on, 10-28 µs a page on a freshly booted machine
// (docs/DESIGN-NOTES.md, "Fresh memory"), so that 12 MB of new arrays took
// 35 ms, against under 1 ms in 2 MiB pages (one fault each). With THP in
// "madvise" mode, the usual default, only ranges marked MADV_HUGEPAGE get
// huge pages, and the Go runtime marks none of its heap.
//
// A range gets a huge page at its first touch only if no 4 KiB page of its
// 2 MiB has been mapped since the kernel last freed its page table: so the
// advice goes on memory the heap has just mapped, before it is touched.
package hugemem

import (
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
	"unsafe"
)

// Size is the size of a huge page on x86-64.
const Size = 2 << 20

// unlimited is RLIM_INFINITY.
const unlimited = ^uint64(0)

// madvHugepage is MADV_HUGEPAGE (Linux 2.6.38).
const madvHugepage = 14

// Advise asks for huge pages for the whole 2 MiB pages inside the n bytes
// at p. It helps only memory not touched yet: call it right after the
// allocation. It reports whether the kernel took the advice: a kernel
// without THP, or with THP set to "never", refuses it (EINVAL), which
// changes nothing else.
func Advise(p unsafe.Pointer, n uintptr) bool {
	beg := (uintptr(p) + Size - 1) &^ (Size - 1)
	end := (uintptr(p) + n) &^ (Size - 1)
	if beg >= end {
		return false
	}
	_, _, errno := syscall.Syscall(syscall.SYS_MADVISE, beg, end-beg, madvHugepage)
	return errno == 0
}

// MakeFlat is make([]T, n) for an element type without pointers, laid
// out in whole huge pages when it takes at least a quarter of one: the
// array is allocated with up to two huge pages more, starts at the first
// 2 MiB boundary inside (or within an element past it, for an element
// size that does not divide the distance), and the huge pages from there
// to the boundary after its last byte are advised. So an array of 800 KiB costs one fault instead
// of 200, and one of 3.3 MiB two instead of 845 (Make advises only the
// huge pages wholly inside it, and nothing under 4 MiB). The head before
// the boundary and the tail after the array are never touched, so they
// cost address space and, for the tail, the rest of its huge page; the
// collector never reads them either, since T has no pointers (with
// pointers it would scan the head, page by page: use Make).
func MakeFlat[T any](n int) []T {
	var z T
	esz := unsafe.Sizeof(z)
	size := uintptr(n) * esz
	if size < Size/4 || esz == 0 {
		return make([]T, n)
	}
	// Room for the array from the first boundary on, rounded up to
	// whole huge pages, and for an element's misalignment.
	m := int((((size+Size-1)&^(Size-1))+2*Size)/esz) + 1
	s := make([]T, m)
	p := unsafe.Pointer(unsafe.SliceData(s))
	start := uintptr(p)
	beg := (start + Size - 1) &^ (Size - 1)
	k := (beg - start + esz - 1) / esz // the first element at or past it
	end := (start + (k+uintptr(n))*esz + Size - 1) &^ (Size - 1)
	Advise(unsafe.Add(p, beg-start), end-beg)
	return s[k : k+uintptr(n) : k+uintptr(n)]
}

// Make is make([]T, n), advised (Advise) when it spans at least two huge
// pages. An array that large is a span of its own, taken from memory the
// heap has just mapped when it has no free run of that size.
func Make[T any](n int) []T {
	s := make([]T, n)
	var z T
	if size := uintptr(n) * unsafe.Sizeof(z); size >= 2*Size {
		Advise(unsafe.Pointer(unsafe.SliceData(s)), size)
	}
	return s
}

// Reserve grows the Go heap by n bytes of address space advised for huge
// pages, and frees it at once: the allocations that follow land in it,
// lowest addresses first, until it is used up, and each 2 MiB of it costs
// one fault instead of 512. Nothing of it is touched here, so it costs no
// memory until used. It runs a collection to free the block: call it at
// the start of the program, while the heap is small and a collection
// cheap. It reports whether the advice was taken; when it was not, it
// does not collect.
//
// The collection is the only one, and runs with one P. With two, the
// allocation started a cycle of its own and each of the two waited at its
// stops of the world for the other P's thread, woken on the other vCPU:
// the program's first collection took 8-14 ms of wall time on these VMs
// for under 1 ms of work (gctrace), 0.3-2 ms with one P
// (docs/DESIGN-NOTES.md, "Fresh memory").
//
// Under a limit of address space or of data (RLIMIT_AS, RLIMIT_DATA), or
// with the kernel's strict overcommit accounting (vm.overcommit_memory 2,
// which charges the whole block when the heap maps it), it does nothing:
// a block of n bytes more could push a program the user keeps near its
// limit over it, and the runtime dies when an allocation fails.
func Reserve(n int) bool {
	for _, res := range []int{syscall.RLIMIT_AS, syscall.RLIMIT_DATA} {
		var lim syscall.Rlimit
		if err := syscall.Getrlimit(res, &lim); err != nil || lim.Cur != unlimited {
			return false
		}
	}
	if strictOvercommit() {
		return false
	}
	defer restoreProcs(runtime.GOMAXPROCS(1))
	gc := debug.SetGCPercent(-1)
	b := make([]byte, n)
	ok := Advise(unsafe.Pointer(unsafe.SliceData(b)), uintptr(n))
	b = nil
	debug.SetGCPercent(gc)
	if !ok {
		// No THP: the block is plain fresh memory, which the next
		// collection frees; one now would gain nothing.
		return false
	}
	runtime.GC()
	return true
}

// restoreProcs puts back GOMAXPROCS as it was before Reserve set it to 1:
// prev if the environment set it, else the runtime's default, whose
// automatic updates a call of GOMAXPROCS would have turned off.
func restoreProcs(prev int) {
	if os.Getenv("GOMAXPROCS") != "" {
		runtime.GOMAXPROCS(prev)
		return
	}
	runtime.SetDefaultGOMAXPROCS()
}

// overcommitFile is the kernel's overcommit mode; a test points it at a
// file of its own.
var overcommitFile = "/proc/sys/vm/overcommit_memory"

// strictOvercommit reports whether the kernel counts every private
// writable mapping against a commit limit (mode 2), or whether the mode
// cannot be read: then a large mapping may fail where the program's own
// ones would not.
func strictOvercommit() bool {
	b, err := os.ReadFile(overcommitFile)
	if err != nil {
		return true
	}
	return strings.TrimSpace(string(b)) == "2"
}
