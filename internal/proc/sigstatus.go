package proc

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// sigPending reports whether sig is pending for thread tid, either for the
// thread (SigPnd) or for the whole process (ShdPnd).
func sigPending(pid, tid int, sig unix.Signal) bool {
	m, err := threadMasks(pid, tid)
	return err == nil && m.pending()&sigBit(sig) != 0
}

// sigDeliverable reports whether sig is pending for thread tid (or its
// process) and not blocked by the thread: resumed, it would dequeue it.
func sigDeliverable(pid, tid int, sig unix.Signal) bool {
	m, err := threadMasks(pid, tid)
	return err == nil && m.pending()&^m.blk&sigBit(sig) != 0
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
	return parseMasks(status, tid)
}

// parseMasks reads the signal sets of thread tid from its status.
func parseMasks(status []byte, tid int) (masks, error) {
	var m masks
	var err error
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

var (
	debugStops  = os.Getenv("LIVETRACE_DEBUG_PTRACE") != ""
	debugTiming = os.Getenv("LIVETRACE_DEBUG_TIMING") != ""
)

const (
	siKernel    = 0x80 // SI_KERNEL: si_code of the SIGTRAP an INT3 raises
	siQueue     = -1   // SI_QUEUE: si_code of sigqueue(3)
	sysSeccomp  = 1    // SYS_SECCOMP: si_code of a SIGSYS from a seccomp filter
	siginfoSize = 128
	// execStopCode is the si_code of the PTRACE_EVENT_EXEC stop.
	execStopCode = int32(unix.SIGTRAP) | unix.PTRACE_EVENT_EXEC<<8
)

// siginfo is the start of a siginfo_t.
type siginfo struct {
	signo, errno, code int32
}

func (h *heldSignal) le32(i int) int32 {
	return int32(uint32(h[i]) | uint32(h[i+1])<<8 | uint32(h[i+2])<<16 | uint32(h[i+3])<<24)
}

func (h *heldSignal) head() siginfo {
	return siginfo{signo: h.le32(0), errno: h.le32(4), code: h.le32(8)}
}

// value returns si_pid and si_value of a SI_QUEUE siginfo (x86-64 layout:
// the union starts at byte 16; si_pid, si_uid, then si_value at 24).
func (h *heldSignal) value() (pid int32, v uint64) {
	return h.le32(16), uint64(uint32(h.le32(24))) | uint64(uint32(h.le32(28)))<<32
}

func getSiginfoRaw(tid int) (heldSignal, error) {
	var buf heldSignal
	_, _, e := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_GETSIGINFO, uintptr(tid), 0, uintptr(unsafe.Pointer(&buf[0])), 0, 0)
	if e != 0 {
		return buf, e
	}
	return buf, nil
}

func setSiginfo(tid int, info *heldSignal) error {
	_, _, e := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_SETSIGINFO, uintptr(tid), 0, uintptr(unsafe.Pointer(&info[0])), 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

func getSiginfo(tid int) (siginfo, error) {
	buf, err := getSiginfoRaw(tid)
	if err != nil {
		return siginfo{}, err
	}
	return buf.head(), nil
}

// queueCookie queues signal sig to thread tid of process pid with
// rt_tgsigqueueinfo, as SI_QUEUE from the tracer with cookie as si_value:
// the kernel lets another process queue only negative si_codes, so the
// original siginfo is put back by PTRACE_SETSIGINFO when the thread
// dequeues it (see Process.restoreQueued).
func queueCookie(pid, tid int, sig int32, cookie uint64) error {
	var info heldSignal
	put := func(i int, v uint32) {
		info[i], info[i+1], info[i+2], info[i+3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
	}
	put(0, uint32(sig))
	put(8, uint32(0xffffffff)) // SI_QUEUE, -1
	put(16, uint32(os.Getpid()))
	put(20, uint32(os.Getuid()))
	put(24, uint32(cookie))
	put(28, uint32(cookie>>32))
	_, _, e := unix.Syscall6(unix.SYS_RT_TGSIGQUEUEINFO, uintptr(pid), uintptr(tid), uintptr(sig), uintptr(unsafe.Pointer(&info[0])), 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

// inExecStop reports whether thread tid is in a PTRACE_EVENT_EXEC stop.
func inExecStop(tid int) bool {
	si, err := getSiginfo(tid)
	return err == nil && si.signo == int32(unix.SIGTRAP) && si.code == execStopCode
}

// TrapStatus is what the status of a process's threads says about the
// INT3s and return addresses livetrace may leave for them.
type TrapStatus struct {
	// Blocked: a thread blocks SIGTRAP (SigBlk); Ignored: the process
	// ignores it (SigIgn). A forced SIGTRAP would then reset its handler
	// and kill the process (see textpoke.New).
	Blocked, Ignored bool
	// ShadowStack: a thread runs with a CET user shadow stack (Linux 6.6
	// and later, with CONFIG_X86_USER_SHADOW_STACK; a glibc built for it
	// turns it on at start-up). The CPU then checks every ret against the
	// address the matching call stored on the shadow stack, and kills a
	// mismatch with SIGSEGV: a return address the tracer replaces (graph
	// mode) or pushes or pops itself without a call or a ret (the trap
	// handler's emulation of a CALL, or of the loader breakpoint's RET)
	// would crash the process.
	ShadowStack bool
	// SeccompStrict: a thread is in seccomp strict mode (Seccomp: 1),
	// where any system call but read, write, _exit and sigreturn kills
	// it. SeccompFilter: a thread has a seccomp filter (Seccomp: 2).
	SeccompStrict, SeccompFilter bool
}

// ReadTrapStatus reads the status of every thread of process pid once.
// Beside busy threads on a VM each read costs 0.1-0.25 ms: callers that
// need it twice in a row pass it on (textpoke.Options.TrapStatus).
func ReadTrapStatus(pid int) (TrapStatus, error) {
	var ts TrapStatus
	tids, err := listTasks(pid)
	if err != nil {
		return ts, fmt.Errorf("list threads of pid %d: %w", pid, err)
	}
	bit := sigBit(unix.SIGTRAP)
	for _, tid := range tids {
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/status", pid, tid))
		if err != nil {
			continue // the thread is gone
		}
		m, err := parseMasks(status, tid)
		if err != nil {
			return ts, err
		}
		ts.Blocked = ts.Blocked || m.blk&bit != 0
		ts.Ignored = ts.Ignored || m.ign&bit != 0
		ts.ShadowStack = ts.ShadowStack || hasShadowStack(status)
		switch statusField(status, "Seccomp") {
		case "1":
			ts.SeccompStrict = true
		case "2":
			ts.SeccompFilter = true
		}
	}
	return ts, nil
}

// hasShadowStack reports whether a thread's status (/proc/PID/task/TID/
// status) lists "shstk" among its x86_Thread_features: the kernel's
// arch_proc_pid_thread_features prints the features turned on, and
// x86_Thread_features_locked those that can no longer change.
func hasShadowStack(status []byte) bool {
	for _, f := range strings.Fields(statusField(status, "x86_Thread_features")) {
		if f == "shstk" {
			return true
		}
	}
	return false
}
