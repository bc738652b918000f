package proc

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TakeFd returns a duplicate of file descriptor fd of process pid, taken
// with pidfd_getfd(2) (Linux 5.6). Unlike opening /proc/PID/fd/N, which
// reopens whatever file the target has put at that number by path (and
// as root: an O_PATH fd of a file the target may not read or write would
// be opened read-write), the duplicate is the open file description the
// target holds, with the target's own access mode. The caller checks what
// it is before trusting it.
func TakeFd(pid, fd int) (*os.File, error) {
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("take fd %d of pid %d: pidfd_open: %w (livetrace needs Linux 5.6 or later)", fd, pid, err)
	}
	defer unix.Close(pidfd)
	nfd, err := unix.PidfdGetfd(pidfd, fd, 0)
	if err != nil {
		return nil, fmt.Errorf("take fd %d of pid %d: pidfd_getfd: %w (livetrace needs Linux 5.6 or later)", fd, pid, err)
	}
	return os.NewFile(uintptr(nfd), "/proc/"+strconv.Itoa(pid)+"/fd/"+strconv.Itoa(fd)), nil
}

// ErrSeccompUnreadable means the seccomp filter of a thread could not be
// read (PTRACE_SECCOMP_GET_FILTER needs CAP_SYS_ADMIN and a kernel built
// with CONFIG_CHECKPOINT_RESTORE).
var ErrSeccompUnreadable = errors.New("cannot read the seccomp filter")

// SeccompFilters returns the classic BPF programs of the seccomp filters
// that apply to thread tid, newest first, read with
// PTRACE_SECCOMP_GET_FILTER. The thread must be stopped (see StopAll). A
// thread without a filter gives none.
func (p *Process) SeccompFilters(tid int) ([][]unix.SockFilter, error) {
	var out [][]unix.SockFilter
	err := p.doErr(func() error {
		for i := 0; i < 64; i++ { // the kernel allows at most MAX_INSNS_PER_PATH in all
			n, err := seccompGetFilter(tid, i, nil)
			if errors.Is(err, unix.ENOENT) {
				return nil // no filter with that index: the chain ends
			}
			if errors.Is(err, unix.EINVAL) && i == 0 {
				return nil // no filter at all (seccomp mode 0)
			}
			if err != nil {
				return fmt.Errorf("%w of thread %d: %v", ErrSeccompUnreadable, tid, err)
			}
			if n == 0 || n > 4096 { // BPF_MAXINSNS
				return fmt.Errorf("%w of thread %d: filter %d has %d instructions", ErrSeccompUnreadable, tid, i, n)
			}
			prog := make([]unix.SockFilter, n)
			if _, err := seccompGetFilter(tid, i, prog); err != nil {
				return fmt.Errorf("%w of thread %d: %v", ErrSeccompUnreadable, tid, err)
			}
			out = append(out, prog)
		}
		return fmt.Errorf("%w of thread %d: more than 64 filters", ErrSeccompUnreadable, tid)
	})
	return out, err
}

// seccompGetFilter is ptrace(PTRACE_SECCOMP_GET_FILTER, tid, index, buf);
// with buf nil it returns the filter's length in instructions
// (kernel/seccomp.c, seccomp_get_filter).
func seccompGetFilter(tid, index int, buf []unix.SockFilter) (int, error) {
	var ptr unsafe.Pointer
	if len(buf) > 0 {
		ptr = unsafe.Pointer(&buf[0])
	}
	n, _, errno := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_SECCOMP_GET_FILTER, uintptr(tid), uintptr(index), uintptr(ptr), 0, 0)
	runtime.KeepAlive(buf)
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}
