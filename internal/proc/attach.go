package proc

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"

	"golang.org/x/sys/unix"
)

// Attach seizes every thread of process pid with PTRACE_SEIZE, without
// stopping any of them, and opens its memory. It rescans /proc/PID/task until
// no new thread shows up, so that threads created during the attach are not
// missed (PTRACE_O_TRACECLONE catches every thread created after a seize).
func Attach(pid int) (*Process, error) {
	if err := checkPID(pid); err != nil {
		return nil, err
	}
	p := &Process{
		pid:      pid,
		comm:     commOf(pid),
		threads:  map[int]*thread{},
		children: map[int]int{},
		exitedCh: make(chan struct{}),
	}
	mem, err := OpenMem(pid)
	if err != nil {
		return nil, err
	}
	p.mem = mem
	p.ex = newExecutor(p.idle)
	var aerr error
	p.ex.run(func() { aerr = p.seizeAll() })
	if aerr != nil {
		p.ex.run(func() { p.detachAll() })
		p.ex.stop()
		p.mem.Close()
		return nil, aerr
	}
	return p, nil
}

func (p *Process) seizeAll() error {
	for round := 0; ; round++ {
		tids, err := listTasks(p.pid)
		if err != nil {
			if len(p.threads) == 0 {
				return fmt.Errorf("no process with pid %d: %w", p.pid, ErrNoProcess)
			}
			return err
		}
		added := 0
		for _, tid := range tids {
			if p.threads[tid] != nil {
				continue
			}
			err := seize(tid)
			switch {
			case err == nil:
				p.newThread(tid)
				added++
			case errors.Is(err, unix.ESRCH):
				// The thread exited between readdir and seize.
			case errors.Is(err, unix.EPERM):
				if t := tracerOf(p.pid); t != 0 && len(p.threads) == 0 {
					return fmt.Errorf("attach to pid %d: it is already traced by pid %d (%s); detach the other tracer (gdb, strace, ...) first: %w",
						p.pid, t, commOf(t), ErrAlreadyTraced)
				}
				return fmt.Errorf("attach to pid %d: %w: run as root or with CAP_SYS_PTRACE (and check /proc/sys/kernel/yama/ptrace_scope)", p.pid, ErrPermission)
			default:
				return fmt.Errorf("seize thread %d of pid %d: %w", tid, p.pid, err)
			}
		}
		if len(p.threads) == 0 {
			return fmt.Errorf("no process with pid %d: %w", p.pid, ErrNoProcess)
		}
		if added == 0 {
			return nil
		}
		if round > 1000 {
			return fmt.Errorf("attach to pid %d: its thread list never settled", p.pid)
		}
	}
}

func seize(tid int) error {
	_, _, e := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_SEIZE, uintptr(tid), 0, ptraceOptions, 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

// listTasks returns the thread IDs in /proc/PID/task.
func listTasks(pid int) ([]int, error) {
	d, err := os.Open(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return nil, err
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return nil, err
	}
	tids := make([]int, 0, len(names))
	for _, n := range names {
		if tid, err := strconv.Atoi(n); err == nil {
			tids = append(tids, tid)
		}
	}
	sort.Ints(tids)
	return tids, nil
}
