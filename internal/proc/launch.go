package proc

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"

	"golang.org/x/sys/unix"
)

// Launch starts argv[0] with the tracer's standard input, output and error,
// lets the dynamic loader map every shared library, and stops the program
// at its ELF entry point, before any of its own code runs. It returns the
// process seized like one attached with [Attach]; the caller patches it and
// then calls [Process.Release] to let it run.
//
// How: the program is started with PTRACE_TRACEME from the ptrace thread
// and stops at its exec. An INT3 at AT_ENTRY (from /proc/PID/auxv) stops
// it again once ld.so is done. Since PTRACE_INTERRUPT and group-stop
// reporting need PTRACE_SEIZE, the entry is then made a `jmp .` (eb fe),
// the process is detached, spins there, and is seized at once. Release
// puts the two bytes back while the thread is stopped.
func Launch(argv []string) (*Process, error) {
	if len(argv) == 0 {
		return nil, errors.New("launch: no command given")
	}
	path, err := exec.LookPath(argv[0])
	if err != nil {
		return nil, fmt.Errorf("launch %s: %w", argv[0], err)
	}
	// The command must not inherit a real-time policy (nice.go).
	EndEarlyBoost()
	p := &Process{
		threads:  map[int]*thread{},
		children: map[int]int{},
		exitedCh: make(chan struct{}),
	}
	p.ex = newExecutor(p.idle)
	var lerr error
	p.ex.run(func() { lerr = p.launch(path, argv) })
	if lerr != nil {
		p.ex.run(func() {
			if p.pid > 0 {
				_ = unix.Kill(p.pid, unix.SIGKILL)
				var ws unix.WaitStatus
				_, _ = unix.Wait4(p.pid, &ws, unix.WALL, nil)
			}
		})
		p.ex.stop()
		if p.mem != nil {
			p.mem.Close()
		}
		return nil, lerr
	}
	return p, nil
}

func (p *Process) launch(path string, argv []string) error {
	attr := &os.ProcAttr{
		Files: []*os.File{os.Stdin, os.Stdout, os.Stderr},
		Sys:   &syscall.SysProcAttr{Ptrace: true},
	}
	// The fork happens on this thread, the ptrace thread: the child's
	// PTRACE_TRACEME makes this thread its tracer.
	child, err := os.StartProcess(path, argv, attr)
	if err != nil {
		return fmt.Errorf("launch %s: %w", path, err)
	}
	p.pid = child.Pid
	// Stop 1: SIGTRAP after a successful execve.
	if err := waitStop(p.pid, unix.SIGTRAP); err != nil {
		return fmt.Errorf("launch %s: %w", path, err)
	}
	if p.mem, err = OpenMem(p.pid); err != nil {
		return err
	}
	entry, err := auxEntry(p.pid)
	if err != nil {
		return fmt.Errorf("launch %s: %w", path, err)
	}
	var orig [2]byte
	if err := p.mem.Read(entry, orig[:]); err != nil {
		return err
	}
	p.entry, p.entryOrig = entry, orig
	if err := p.mem.Write(entry, []byte{0xcc}); err != nil {
		return err
	}
	if err := unix.PtraceCont(p.pid, 0); err != nil {
		return fmt.Errorf("launch %s: %w", path, err)
	}
	// Stop 2: the INT3 at the entry point; every library is mapped.
	if err := waitStop(p.pid, unix.SIGTRAP); err != nil {
		return fmt.Errorf("launch %s: the program did not reach its entry point: %w", path, err)
	}
	var regs unix.PtraceRegs
	if err := unix.PtraceGetRegs(p.pid, &regs); err != nil {
		return err
	}
	if regs.Rip != entry+1 {
		return fmt.Errorf("launch %s: stopped at %#x, not at the entry point %#x", path, regs.Rip, entry)
	}
	regs.Rip = entry
	if err := unix.PtraceSetRegs(p.pid, &regs); err != nil {
		return err
	}
	// Park the thread on `jmp .` and trade TRACEME for SEIZE.
	if err := p.mem.Write(entry, []byte{0xeb, 0xfe}); err != nil {
		return err
	}
	if err := unix.PtraceDetach(p.pid); err != nil {
		return fmt.Errorf("launch %s: %w", path, err)
	}
	p.comm = commOf(p.pid)
	p.parked = true
	return p.seizeAll()
}

// waitStop waits for pid to stop with sig.
func waitStop(pid int, sig unix.Signal) error {
	var ws unix.WaitStatus
	for {
		_, err := unix.Wait4(pid, &ws, unix.WALL, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		switch {
		case ws.Exited():
			return fmt.Errorf("it exited with status %d", ws.ExitStatus())
		case ws.Signaled():
			return fmt.Errorf("it was killed by %s (%v)", unix.SignalName(ws.Signal()), ws.Signal())
		case ws.Stopped() && ws.StopSignal() == sig:
			return nil
		case ws.Stopped():
			// Another signal on the way: deliver it and keep waiting.
			if err := unix.PtraceCont(pid, int(ws.StopSignal())); err != nil {
				return err
			}
		}
	}
}

// auxEntry reads AT_ENTRY from /proc/PID/auxv.
func auxEntry(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/auxv", pid))
	if err != nil {
		return 0, err
	}
	const atEntry = 9
	for i := 0; i+16 <= len(b); i += 16 {
		if binary.LittleEndian.Uint64(b[i:]) == atEntry {
			return binary.LittleEndian.Uint64(b[i+8:]), nil
		}
	}
	return 0, errors.New("no AT_ENTRY in the auxiliary vector")
}

// Release lets a process started by [Launch] run its own code: it stops
// the parked thread, puts back the two bytes of the entry point, and
// resumes it. It does nothing for an attached process.
func (p *Process) Release() error {
	return p.doErr(func() error {
		if !p.parked {
			return nil
		}
		if err := p.stopAll(); err != nil {
			return err
		}
		err := p.mem.Write(p.entry, p.entryOrig[:])
		// The single thread is stopped; when it runs again it decodes the
		// original instruction.
		p.parked = false
		p.resumeAll()
		return err
	})
}

// Launched reports whether the process was started by [Launch], and so is a
// child of the tracer.
func (p *Process) Launched() bool { return p.entry != 0 }
