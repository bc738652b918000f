package proc

import (
	"debug/elf"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/livetrace/livetrace/internal/testtarget"
	"golang.org/x/sys/unix"
)

// TestManyThreadsTrapping holds threads for remote syscalls, in batches
// and alone, and stops and resumes the whole process, while thousands of
// threads hit an INT3 at the entry of the function they call (as they do
// during a patch batch). With unbounded reaping and a remote-thread choice
// that read a /proc file per thread on every hold, 2000 threads at 50 Hz
// kept the batch stuck after "hold" for over 30 s. Every operation must
// now end in bounded time. LIVETRACE_SOAK=1 runs 2000 threads at 50 Hz;
// the default is 2000 threads at 10 Hz, which a shared machine bears (at
// 50 Hz on 2 busy cores, attach and detach alone take tens of seconds:
// single PTRACE_SEIZE and PTRACE_DETACH calls stall for up to seconds).
func TestManyThreadsTrapping(t *testing.T) {
	testtarget.RequireRoot(t)
	threads, hz, rounds := 2000, 10, 20
	if os.Getenv("LIVETRACE_SOAK") != "" {
		hz, rounds = 50, 100
	}
	bin := testtarget.Build(t, testtarget.Signals, testtarget.ClangNop5)
	site := symbolOffset(t, bin, "sig_tick")
	tp := startAs(t, nil, bin, "-t", "1", "-many", fmt.Sprint(threads), "-manyhz", fmt.Sprint(hz))
	tp.expect(t, "ready", 120*time.Second)
	base := loadBase(t, tp.pid(), bin)
	site += base

	// As record does: the tracer competes for the CPUs with thousands
	// of threads.
	defer BoostAll(-10)()
	t0 := time.Now()
	p, err := Attach(tp.pid())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Detach()
	t.Logf("attach to %d threads: %v", len(p.Threads()), time.Since(t0))

	// An INT3 on the site: the handler skips the NOP5 it stands for.
	var traps atomic.Int64
	p.SetTrapHandler(func(tid int, regs *unix.PtraceRegs, claim func() error) bool {
		if regs.Rip-1 != site || claim() != nil {
			return false
		}
		regs.Rip = site + 5
		traps.Add(1)
		return true
	})
	var orig [1]byte
	if err := p.ReadMem(site, orig[:]); err != nil {
		t.Fatal(err)
	}
	if err := p.WriteMem(site, []byte{0xcc}); err != nil {
		t.Fatal(err)
	}
	worst := time.Duration(0)
	start := time.Now()
	var dBatch, dHold, dStop time.Duration
	defer func() { t.Logf("batches %v, holds %v, stop/resume %v", dBatch, dHold, dStop) }()
	for i := 0; i < rounds; i++ {
		t1 := time.Now()
		err := p.Batch(func(b *Batch) error {
			r, err := b.HoldRemote()
			if err != nil {
				return fmt.Errorf("hold: %w", err)
			}
			for j := 0; j < 3; j++ {
				b.Pump()
				if ret, err := r.Syscall(SysGetpid); err != nil || int(ret) != tp.pid() {
					r.Release()
					return fmt.Errorf("getpid = %d, %v", int64(ret), err)
				}
			}
			return r.Release()
		})
		if err != nil {
			t.Fatalf("round %d: batch: %v", i, err)
		}
		dBatch += time.Since(t1)
		th := time.Now()
		r, err := p.HoldRemote()
		if err != nil {
			t.Fatalf("round %d: hold: %v", i, err)
		}
		if _, err := r.Syscall(SysGetpid); err != nil {
			t.Fatalf("round %d: getpid: %v", i, err)
		}
		if err := r.Release(); err != nil {
			t.Fatal(err)
		}
		dHold += time.Since(th)
		ts := time.Now()
		if i%5 == 4 {
			if err := p.StopAll(); err != nil {
				t.Fatalf("round %d: stop: %v", i, err)
			}
			if err := p.ResumeAll(); err != nil {
				t.Fatalf("round %d: resume: %v", i, err)
			}
		}
		dStop += time.Since(ts)
		worst = max(worst, time.Since(t1))
		if time.Since(start) > 60*time.Second {
			t.Fatalf("%d rounds took %v", i+1, time.Since(start))
		}
	}
	t.Logf("%d rounds in %v (worst %v), %d INT3 hits handled", rounds, time.Since(start), worst, traps.Load())
	if err := p.StopAll(); err != nil {
		t.Fatal(err)
	}
	if err := p.WriteMem(site, orig[:]); err != nil {
		t.Fatal(err)
	}
	t2 := time.Now()
	if err := p.Detach(); err != nil {
		t.Fatal(err)
	}
	t.Logf("detach: %v", time.Since(t2))
	if worst > 30*time.Second {
		t.Errorf("a round took %v", worst)
	}
	tp.send(t, "run 10")
	tp.expect(t, "done", 60*time.Second)
}

// symbolOffset returns the address of symbol name in the ELF file bin.
func symbolOffset(t *testing.T, bin, name string) uint64 {
	t.Helper()
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	syms, err := f.Symbols()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range syms {
		if s.Name == name {
			return s.Value
		}
	}
	t.Fatalf("no symbol %s in %s", name, bin)
	return 0
}

// loadBase returns where the PIE bin (run under any path with the same
// base name) is loaded in pid.
func loadBase(t *testing.T, pid int, bin string) uint64 {
	t.Helper()
	maps, err := ReadMaps(pid)
	if err != nil {
		t.Fatal(err)
	}
	name := bin[strings.LastIndexByte(bin, '/'):]
	for _, m := range maps {
		if strings.HasSuffix(m.Path, name) && m.Offset == 0 {
			return m.Start
		}
	}
	t.Fatalf("%s is not mapped in pid %d", name, pid)
	return 0
}
