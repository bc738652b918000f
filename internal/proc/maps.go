package proc

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Limits on /proc/PID/maps, which the target controls in part (file names).
const (
	maxMapsSize    = 256 << 20 // bytes read from /proc/PID/maps
	maxMapsLines   = 1 << 20   // mappings (the kernel default vm.max_map_count is 65530)
	maxMapsLineLen = 8192      // PATH_MAX (4096) plus the fixed fields, doubled
)

// Mapping is one line of /proc/PID/maps.
type Mapping struct {
	Start, End uint64 // [Start, End) in the target's address space
	Offset     uint64 // file offset of Start
	Perms      string // "r-xp" and the like
	Dev        string // "fd:01"
	Inode      uint64
	Path       string // file path, "[heap]", "[vdso]"..., or "" for anonymous memory; a deleted file ends in " (deleted)"
}

// Exec reports whether the mapping is executable.
func (m Mapping) Exec() bool { return len(m.Perms) >= 3 && m.Perms[2] == 'x' }

// FileBacked reports whether the mapping maps a file (rather than anonymous
// memory or a kernel-provided region such as [vdso]).
func (m Mapping) FileBacked() bool { return m.Inode != 0 && strings.HasPrefix(m.Path, "/") }

// Deleted reports whether the mapped file was deleted or replaced since it
// was mapped.
func (m Mapping) Deleted() bool { return strings.HasSuffix(m.Path, " (deleted)") }

// ParseMaps parses the text of /proc/PID/maps. The text is untrusted: line
// count and length are capped, and malformed lines are errors, never panics.
func ParseMaps(data []byte) ([]Mapping, error) {
	var out []Mapping
	for n := 1; len(data) > 0; n++ {
		if n > maxMapsLines {
			return nil, fmt.Errorf("parse maps: more than %d lines", maxMapsLines)
		}
		line := data
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i], data[i+1:]
		} else {
			data = nil
		}
		if len(line) > maxMapsLineLen {
			return nil, fmt.Errorf("parse maps: line %d is longer than %d bytes", n, maxMapsLineLen)
		}
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		m, err := parseMapsLine(string(line))
		if err != nil {
			return nil, fmt.Errorf("parse maps line %d %q: %w", n, line, err)
		}
		out = append(out, m)
	}
	return out, nil
}

// parseMapsLine parses one line, in the format of show_map_vma() in
// fs/proc/task_mmu.c:
//
//	start-end perms offset major:minor inode [padding] path
//
// The path is everything after the padding; it may contain spaces.
func parseMapsLine(line string) (Mapping, error) {
	var m Mapping
	rest := line
	field := func() string {
		rest = strings.TrimLeft(rest, " ")
		i := strings.IndexByte(rest, ' ')
		if i < 0 {
			f := rest
			rest = ""
			return f
		}
		f := rest[:i]
		rest = rest[i+1:]
		return f
	}
	rng, perms, off, dev, inode := field(), field(), field(), field(), field()
	start, end, ok := strings.Cut(rng, "-")
	if !ok {
		return m, errors.New("no address range")
	}
	var err error
	if m.Start, err = strconv.ParseUint(start, 16, 64); err != nil {
		return m, fmt.Errorf("bad start address: %w", err)
	}
	if m.End, err = strconv.ParseUint(end, 16, 64); err != nil {
		return m, fmt.Errorf("bad end address: %w", err)
	}
	if m.End < m.Start {
		return m, errors.New("end address before start")
	}
	if len(perms) != 4 {
		return m, fmt.Errorf("bad permissions %q", perms)
	}
	m.Perms = perms
	if m.Offset, err = strconv.ParseUint(off, 16, 64); err != nil {
		return m, fmt.Errorf("bad offset: %w", err)
	}
	if maj, minor, ok := strings.Cut(dev, ":"); !ok || maj == "" || minor == "" {
		return m, fmt.Errorf("bad device %q", dev)
	}
	m.Dev = dev
	if m.Inode, err = strconv.ParseUint(inode, 10, 64); err != nil {
		return m, fmt.Errorf("bad inode: %w", err)
	}
	m.Path = strings.TrimLeft(rest, " ")
	return m, nil
}

// ReadMaps reads and parses /proc/PID/maps. It returns an error wrapping
// [ErrNoProcess], [ErrPermission] or [ErrKernelThread], with a message that
// says what to do, when the process is missing, not accessible, or a kernel
// thread.
func ReadMaps(pid int) ([]Mapping, error) {
	if pid <= 0 {
		return nil, newPidError(ErrNoProcess, "no process with pid %d", pid)
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return nil, ProcError(pid, err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxMapsSize+1))
	if err != nil {
		return nil, ProcError(pid, err)
	}
	if len(data) > maxMapsSize {
		return nil, fmt.Errorf("read maps of pid %d: more than %d bytes", pid, maxMapsSize)
	}
	maps, err := ParseMaps(data)
	if err != nil {
		return nil, fmt.Errorf("read maps of pid %d: %w", pid, err)
	}
	if len(maps) == 0 {
		return nil, emptyMapsError(pid)
	}
	return maps, nil
}

// pfKthread is PF_KTHREAD from include/linux/sched.h, the flag that marks
// kernel threads in the flags field of /proc/PID/stat.
const pfKthread = 0x00200000

// emptyMapsError explains why a process has no mappings: a kernel thread,
// a zombie, or one that is exiting.
func emptyMapsError(pid int) error {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ProcError(pid, err)
	}
	state, flags, ok := parseStat(stat)
	switch {
	case ok && flags&pfKthread != 0:
		return newPidError(ErrKernelThread, "pid %d is a kernel thread: it has no user-space code to trace", pid)
	case ok && (state == 'Z' || state == 'X'):
		if n := otherThreads(pid); n > 0 {
			return &pidError{sentinel: ErrLeaderExited, msg: fmt.Sprintf("pid %d's main thread has exited (pthread_exit) while %d other thread(s) run on: "+
				"the kernel leaves /proc/%d/maps and mem empty for such a process, and livetrace, which reads them, does not support it; "+
				"restart the program to trace it", pid, n, pid)}
		}
		return newPidError(ErrNoProcess, "pid %d has exited (it is a zombie waiting for its parent)", pid)
	}
	return newPidError(ErrNoProcess, "pid %d has no memory mappings: it is exiting", pid)
}

// otherThreads counts the threads of process pid, other than its main
// thread, that have not exited.
func otherThreads(pid int) int {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range ents {
		tid, err := strconv.Atoi(e.Name())
		if err != nil || tid == pid {
			continue
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/stat", pid, tid))
		if err != nil {
			continue
		}
		if state, _, ok := parseStat(stat); ok && state != 'Z' && state != 'X' {
			n++
		}
	}
	return n
}

// parseStat returns the state and flags fields of /proc/PID/stat. The
// command name (field 2) is in parentheses and may itself hold spaces and
// parentheses, so fields are counted from the last ')'.
func parseStat(stat []byte) (state byte, flags uint64, ok bool) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, 0, false
	}
	// Fields after the comm: state(3) ppid(4) pgrp(5) session(6) tty_nr(7)
	// tpgid(8) flags(9).
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 7 || len(f[0]) != 1 {
		return 0, 0, false
	}
	flags, err := strconv.ParseUint(f[6], 10, 64)
	if err != nil {
		return 0, 0, false
	}
	return f[0][0], flags, true
}

// ProcError turns an error from reading /proc/PID/... into one that says
// what went wrong for the user: a missing process (ENOENT, ESRCH) wraps
// [ErrNoProcess] ("no process with pid 1234"), EACCES and EPERM wrap
// [ErrPermission] and say which privilege is needed. Other errors are
// wrapped unchanged.
func ProcError(pid int, err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ESRCH):
		return newPidError(ErrNoProcess, "no process with pid %d", pid)
	case errors.Is(err, fs.ErrPermission), errors.Is(err, syscall.EPERM):
		return newPidError(ErrPermission, "inspect pid %d: permission denied: run livetrace as root or with CAP_SYS_PTRACE, "+
			"and check /proc/sys/kernel/yama/ptrace_scope (at 0 or 1 you may inspect your own processes)", pid)
	}
	return fmt.Errorf("read /proc/%d: %w", pid, err)
}

// pidError is an error about one process whose message is complete on its
// own, and which wraps one of the sentinel errors above.
type pidError struct {
	sentinel error
	msg      string
}

func newPidError(sentinel error, format string, pid int) error {
	return &pidError{sentinel: sentinel, msg: fmt.Sprintf(format, pid)}
}

func (e *pidError) Error() string { return e.msg }
func (e *pidError) Unwrap() error { return e.sentinel }

// Exiting reports whether process pid has exited or is exiting (its memory
// is gone, or it is a zombie), waiting up to wait for it to show: a
// process killed while its tracer works on it fails the tracer's next
// request (ESRCH) a moment before /proc shows it exiting. A process whose
// main thread alone has exited is not exiting.
func Exiting(pid int, wait time.Duration) bool {
	deadline := time.Now().Add(wait)
	for {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
		switch {
		case err != nil && errors.Is(ProcError(pid, err), ErrNoProcess):
			return true
		case err == nil && len(b) == 0 && errors.Is(emptyMapsError(pid), ErrNoProcess):
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// ExitedDuring reports whether err, returned by a request about process
// pid, came from its exit (waiting up to wait for /proc to show it, as
// [Exiting] does): a process that exits meanwhile has nothing left to
// undo or to look into.
func ExitedDuring(pid int, err error, wait time.Duration) bool {
	return err != nil && (errors.Is(err, ErrNoProcess) || errors.Is(err, ErrExited) || Exiting(pid, wait))
}
