// Package earlyprio raises the priority of `livetrace record -p` from the
// first package initializations on, before the runtime's and the other
// packages' initialization is done.
//
// Beside a target whose threads keep the CPUs busy, every millisecond of
// CPU the tracer's own start needs waits for a CPU behind them: the
// package initializations (about 5 ms of CPU here, most of it first
// touches of memory) took 3 times as long at nice 0 as on an idle machine.
// proc.BoostEarly, in main's init, runs after all of them; this package
// imports nothing but syscall, so it is initialized among the first, and
// boosts the main thread, on which the initializations run. BoostEarly
// takes that boost over (Take), so that it ends with the rest. See
// internal/proc/nice.go for why real-time, and for how long.
package earlyprio

import (
	"syscall"
	"unsafe"
)

// Attr is the kernel's struct sched_attr (sched_setattr(2)).
type Attr struct {
	Size     uint32
	Policy   uint32
	Flags    uint64
	Nice     int32
	Priority uint32
	Runtime  uint64
	Deadline uint64
	Period   uint64
	UtilMin  uint32
	UtilMax  uint32
}

const (
	// x86-64 system call numbers (the syscall package lacks them).
	sysSchedSetattr = 314
	sysSchedGetattr = 315

	schedNormal = 0
	schedFIFO   = 1
	schedBatch  = 3
)

var (
	boosted bool
	tid     int
	old     Attr
)

func init() {
	args := cmdline()
	if len(args) < 2 || args[1] != "record" || !AttachesToPID(args[2:]) {
		return
	}
	tid = syscall.Gettid()
	old, boosted = boost(tid, -10)
}

// boost sets thread t to SCHED_FIFO at the lowest priority, or where that
// is not allowed to nice n, as proc's boostTask does, and returns its old
// attributes. A thread already under another policy (the user's choice)
// is left alone.
func boost(t, n int) (Attr, bool) {
	var a Attr
	if _, _, e := syscall.RawSyscall6(sysSchedGetattr, uintptr(t), uintptr(unsafe.Pointer(&a)), unsafe.Sizeof(a), 0, 0, 0); e != 0 {
		return a, false
	}
	if a.Policy != schedNormal && a.Policy != schedBatch {
		return a, false
	}
	rt := Attr{Size: uint32(unsafe.Sizeof(a)), Policy: schedFIFO, Priority: 1}
	if _, _, e := syscall.RawSyscall(sysSchedSetattr, uintptr(t), uintptr(unsafe.Pointer(&rt)), 0); e == 0 {
		return a, true
	}
	if syscall.Setpriority(syscall.PRIO_PROCESS, t, n) == nil {
		return a, true
	}
	return a, false
}

// Take returns the thread this package boosted and its attributes before
// the boost, once: the caller now owns the boost and puts them back.
func Take() (thread int, attr Attr, ok bool) {
	if !boosted {
		return 0, Attr{}, false
	}
	boosted = false
	return tid, old, true
}

// AttachesToPID reports whether record's arguments name a process to
// attach to (-p, --pid) and no command to start: a boosted tracer must
// not start a program, which would inherit its real-time policy.
func AttachesToPID(args []string) bool {
	pid := false
	for _, a := range args {
		switch {
		case a == "--":
			return false
		case a == "-p" || a == "--pid" || hasPrefix(a, "-p") || hasPrefix(a, "--pid="):
			pid = true
		}
	}
	return pid
}

func hasPrefix(s, p string) bool { return len(s) >= len(p) && s[:len(p)] == p }

// cmdline returns the program's arguments from /proc/self/cmdline (os.Args
// is set by package os, which is initialized after this one), or nil.
func cmdline() []string {
	fd, err := syscall.Open("/proc/self/cmdline", syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil
	}
	defer syscall.Close(fd)
	var b []byte
	buf := make([]byte, 4096)
	for {
		n, err := syscall.Read(fd, buf)
		if err == syscall.EINTR {
			continue
		}
		if err != nil || n <= 0 {
			break
		}
		b = append(b, buf[:n]...)
		if len(b) > 1<<20 {
			break
		}
	}
	var args []string
	for len(b) > 0 {
		i := 0
		for i < len(b) && b[i] != 0 {
			i++
		}
		args = append(args, string(b[:i]))
		if i == len(b) {
			break
		}
		b = b[i+1:]
	}
	return args
}
