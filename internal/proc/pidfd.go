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

// Seccomp actions (include/uapi/linux/seccomp.h).
const (
	SeccompRetKillProcess = 0x80000000
	SeccompRetKillThread  = 0x00000000
	SeccompRetTrap        = 0x00030000
	SeccompRetErrno       = 0x00050000
	SeccompRetUserNotif   = 0x7fc00000
	SeccompRetTrace       = 0x7ff00000
	SeccompRetLog         = 0x7ffc0000
	SeccompRetAllow       = 0x7fff0000
	seccompRetActionFull  = 0xffff0000
	auditArchX8664        = 0xc000003e // AUDIT_ARCH_X86_64
)

// SeccompAllows reports whether a system call passes: its action is
// ALLOW or LOG.
func SeccompAllows(action uint32) bool {
	a := action & seccompRetActionFull
	return a == SeccompRetAllow || a == SeccompRetLog
}

// SeccompActionName names the action of a seccomp return value.
func SeccompActionName(action uint32) string {
	switch action & seccompRetActionFull {
	case SeccompRetKillProcess:
		return "kill the process"
	case SeccompRetKillThread:
		return "kill the thread"
	case SeccompRetTrap:
		return "send SIGSYS"
	case SeccompRetErrno:
		return fmt.Sprintf("fail with errno %d", action&0xffff)
	case SeccompRetUserNotif:
		return "ask a supervisor"
	case SeccompRetTrace:
		return "ask a seccomp tracer"
	case SeccompRetLog:
		return "log"
	case SeccompRetAllow:
		return "allow"
	}
	return fmt.Sprintf("action %#x", action)
}

// SeccompAction runs the filters (as SeccompFilters returns them) on
// system call nr with args, made from an x86-64 thread at instruction
// pointer ip, and returns the action the kernel would take: the one of
// highest precedence among the filters' results (kernel/seccomp.c,
// seccomp_run_filters). A program that does something the kernel's
// checker would have refused gives SECCOMP_RET_KILL_PROCESS.
func SeccompAction(filters [][]unix.SockFilter, nr uint64, args [6]uint64, ip uint64) uint32 {
	// struct seccomp_data, in 32-bit words as BPF_LD|BPF_W|BPF_ABS reads
	// them: nr, arch, instruction_pointer, args[6] (little-endian halves).
	var data [16]uint32
	data[0], data[1] = uint32(nr), auditArchX8664
	data[2], data[3] = uint32(ip), uint32(ip>>32)
	for i, a := range args {
		data[4+2*i], data[5+2*i] = uint32(a), uint32(a>>32)
	}
	best := uint32(SeccompRetAllow)
	for _, prog := range filters {
		ret := runSeccompBPF(prog, &data)
		if int32(ret&seccompRetActionFull) < int32(best&seccompRetActionFull) {
			best = ret
		}
	}
	return best
}

// runSeccompBPF interprets a classic BPF program the way seccomp does: the
// instructions kernel/seccomp.c (seccomp_check_filter) admits, on a
// struct seccomp_data. Jumps only go forward, so it ends.
func runSeccompBPF(prog []unix.SockFilter, data *[16]uint32) uint32 {
	const bad = SeccompRetKillProcess
	var a, x uint32
	var mem [16]uint32
	for pc := 0; pc < len(prog); pc++ {
		ins := prog[pc]
		k := ins.K
		switch ins.Code {
		case unix.BPF_LD | unix.BPF_W | unix.BPF_ABS:
			if k%4 != 0 || k >= 64 {
				return bad
			}
			a = data[k/4]
		case unix.BPF_LD | unix.BPF_W | unix.BPF_LEN:
			a = 64
		case unix.BPF_LDX | unix.BPF_W | unix.BPF_LEN:
			x = 64
		case unix.BPF_LD | unix.BPF_IMM:
			a = k
		case unix.BPF_LDX | unix.BPF_IMM:
			x = k
		case unix.BPF_LD | unix.BPF_MEM:
			if k >= 16 {
				return bad
			}
			a = mem[k]
		case unix.BPF_LDX | unix.BPF_MEM:
			if k >= 16 {
				return bad
			}
			x = mem[k]
		case unix.BPF_ST:
			if k >= 16 {
				return bad
			}
			mem[k] = a
		case unix.BPF_STX:
			if k >= 16 {
				return bad
			}
			mem[k] = x
		case unix.BPF_MISC | unix.BPF_TAX:
			x = a
		case unix.BPF_MISC | unix.BPF_TXA:
			a = x
		case unix.BPF_RET | unix.BPF_K:
			return k
		case unix.BPF_RET | unix.BPF_A:
			return a
		case unix.BPF_ALU | unix.BPF_NEG:
			a = -a
		default:
			switch ins.Code & 0x07 {
			case unix.BPF_ALU:
				v := k
				if ins.Code&unix.BPF_X != 0 {
					v = x
				}
				switch ins.Code & 0xf0 {
				case unix.BPF_ADD:
					a += v
				case unix.BPF_SUB:
					a -= v
				case unix.BPF_MUL:
					a *= v
				case unix.BPF_DIV:
					if v == 0 {
						return 0 // the interpreter's division by zero: return 0
					}
					a /= v
				case unix.BPF_MOD:
					if v == 0 {
						return 0
					}
					a %= v
				case unix.BPF_OR:
					a |= v
				case unix.BPF_AND:
					a &= v
				case unix.BPF_XOR:
					a ^= v
				case unix.BPF_LSH:
					a <<= v & 31
				case unix.BPF_RSH:
					a >>= v & 31
				default:
					return bad
				}
			case unix.BPF_JMP:
				if ins.Code&0xf0 == unix.BPF_JA {
					pc += int(k)
					continue
				}
				v := k
				if ins.Code&unix.BPF_X != 0 {
					v = x
				}
				var cond bool
				switch ins.Code & 0xf0 {
				case unix.BPF_JEQ:
					cond = a == v
				case unix.BPF_JGT:
					cond = a > v
				case unix.BPF_JGE:
					cond = a >= v
				case unix.BPF_JSET:
					cond = a&v != 0
				default:
					return bad
				}
				if cond {
					pc += int(ins.Jt)
				} else {
					pc += int(ins.Jf)
				}
			default:
				return bad
			}
		}
	}
	return bad // fell off the end: the checker refuses such a program
}
