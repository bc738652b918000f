package proc

import (
	"fmt"
	"os"
	"strconv"
	"unsafe"

	"golang.org/x/sys/unix"
)

// sigPending reports whether sig is pending for thread tid, either for the
// thread (SigPnd) or for the whole process (ShdPnd).
func sigPending(pid, tid int, sig unix.Signal) bool {
	m, err := threadMasks(pid, tid)
	return err == nil && m.pending()&sigBit(sig) != 0
}

// SignalMasks reports, for every thread, whether it blocks sig (SigBlk)
// and whether the process ignores it (SigIgn).
func SignalMasks(pid int, sig unix.Signal) (blocked, ignored bool, err error) {
	tids, err := listTasks(pid)
	if err != nil {
		return false, false, fmt.Errorf("list threads of pid %d: %w", pid, err)
	}
	bit := sigBit(sig)
	for _, tid := range tids {
		m, err := threadMasks(pid, tid)
		if err != nil {
			continue // the thread is gone
		}
		blocked = blocked || m.blk&bit != 0
		ignored = ignored || m.ign&bit != 0
	}
	return blocked, ignored, nil
}

// masks are the signal sets of one thread from /proc/PID/task/TID/status.
type masks struct{ pnd, shdPnd, blk, ign uint64 }

// pending is the set of signals pending for the thread or its process.
func (m masks) pending() uint64 { return m.pnd | m.shdPnd }

func sigBit(sig unix.Signal) uint64 { return 1 << (uint(sig) - 1) }

// threadMasks reads the signal sets of thread tid of process pid.
func threadMasks(pid, tid int) (masks, error) {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/status", pid, tid))
	if err != nil {
		return masks{}, err
	}
	var m masks
	for _, f := range []struct {
		name string
		v    *uint64
	}{{"SigPnd", &m.pnd}, {"ShdPnd", &m.shdPnd}, {"SigBlk", &m.blk}, {"SigIgn", &m.ign}} {
		if *f.v, err = strconv.ParseUint(statusField(status, f.name), 16, 64); err != nil {
			return masks{}, fmt.Errorf("parse %s of thread %d: %w", f.name, tid, err)
		}
	}
	return m, nil
}

var debugStops = os.Getenv("LIVETRACE_DEBUG_PTRACE") != ""

const siKernel = 0x80 // SI_KERNEL: si_code of the SIGTRAP an INT3 raises

type siginfo struct {
	signo, errno, code int32
}

func getSiginfo(tid int) (siginfo, error) {
	var buf [128]byte
	_, _, e := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_GETSIGINFO, uintptr(tid), 0, uintptr(unsafe.Pointer(&buf[0])), 0, 0)
	if e != 0 {
		return siginfo{}, e
	}
	le := func(i int) int32 {
		return int32(uint32(buf[i]) | uint32(buf[i+1])<<8 | uint32(buf[i+2])<<16 | uint32(buf[i+3])<<24)
	}
	return siginfo{signo: le(0), errno: le(4), code: le(8)}, nil
}
