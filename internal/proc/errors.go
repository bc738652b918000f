package proc

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

var (
	// ErrNoProcess means the PID does not exist (any more).
	ErrNoProcess = errors.New("no such process")
	// ErrPermission means the kernel refused to let us trace or read the
	// process.
	ErrPermission = errors.New("permission denied")
	// ErrAlreadyTraced means another tracer (gdb, strace, ...) is attached.
	ErrAlreadyTraced = errors.New("process is already traced")
	// ErrKernelThread means the PID is a kernel thread, with no user space.
	ErrKernelThread = errors.New("kernel thread")
	// ErrLeaderExited means the process's main thread has exited
	// (pthread_exit) while other threads run on: the kernel leaves its
	// /proc/PID/maps and mem empty, and it cannot be traced.
	ErrLeaderExited = errors.New("main thread exited")
	// ErrExited means the target process exited while we were attached.
	ErrExited = errors.New("target process exited")
	// ErrExec means the target called execve while we were attached: its
	// old image, and everything we put into it, is gone.
	ErrExec = errors.New("target process called exec")
	// ErrDetached means the Process was used after Detach.
	ErrDetached = errors.New("process already detached")
	// ErrTimeout means a thread did not reach the expected stop in time.
	ErrTimeout = errors.New("timed out waiting for the target")
)

// checkPID gives a clear, user-facing error when pid cannot be traced: it
// does not exist, it is a thread rather than a process, or it is a kernel
// thread.
func checkPID(pid int) error {
	if pid <= 0 {
		return newPidError(ErrNoProcess, "no process with pid %d", pid)
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return ProcError(pid, err)
	}
	if tgid := statusField(status, "Tgid"); tgid != "" && tgid != strconv.Itoa(pid) {
		return fmt.Errorf("pid %d is a thread of process %s: trace the process with -p %s", pid, tgid, tgid)
	}
	_, err = ReadMaps(pid) // explains kernel threads, zombies and permissions
	return err
}

// statusField returns the value of "Name:" in a /proc/PID/status file.
func statusField(status []byte, name string) string {
	for _, line := range strings.Split(string(status), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if ok && k == name {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// tracerOf returns the PID tracing pid, or 0.
func tracerOf(pid int) int {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(statusField(status, "TracerPid"))
	return n
}

// commOf returns the command name of pid, or "?".
func commOf(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(b))
}

// ErrSeccomp means the process's seccomp policy refuses a system call the
// tracer must make inside it: one thread borrowed in strict mode would die
// of it (proc), or a filter would refuse or kill it (session).
var ErrSeccomp = errors.New("refused by the process's seccomp filter")
