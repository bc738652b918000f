package proc

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/livetrace/livetrace/internal/testtarget"
	"golang.org/x/sys/unix"
)

// signalCases are the signal storms of the signals fixture that the tests
// run remote syscalls, stop mode and single steps under.
var signalCases = []struct {
	name string
	args []string
}{
	// ITIMER_REAL every 50 µs and ITIMER_PROF every 100 µs killed the
	// target, and ITIMER_PROF at 1 ms made remote syscalls time out, when
	// signals of a borrowed thread were delivered on the tracer's
	// registers.
	{"alrm-50us", []string{"-t", "2", "-alrm", "50"}},
	{"prof-100us", []string{"-t", "2", "-prof", "100"}},
	{"prof-1ms-norestart", []string{"-t", "2", "-prof", "1000", "-alrm", "1000", "-norestart"}},
	{"rt-storm-altstack-blocked", []string{"-t", "2", "-rt", "-rtus", "100", "-altstack", "-blocked", "-prof", "1000"}},
}

// TestRemoteSyscallsUnderSignals borrows threads of a target that is
// flooded with signals, over and over, for remote syscalls (alone and in
// a batch), and stops and resumes it, while its workers spin through
// traced functions and its checker threads sleep. The remote syscalls
// must return the right value, the target must live on with the same
// results, its handlers must all have run on the right stack, and the
// checkers (nanosleep, futex, epoll_wait, read) must see no EINTR and no
// short sleep.
func TestRemoteSyscallsUnderSignals(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := testtarget.Build(t, testtarget.Signals, testtarget.ClangNop5)
	rounds := 150
	if os.Getenv("LIVETRACE_SOAK") != "" {
		rounds = 3000
	}
	var total SignalStats
	for _, tc := range signalCases {
		t.Run(tc.name, func(t *testing.T) {
			tp := startAs(t, nil, bin, tc.args...)
			tp.expect(t, "ready", 10*time.Second)
			tp.send(t, "run 2000")
			want := tp.expect(t, "done", 30*time.Second)
			tp.send(t, "hammer")
			tp.expect(t, "hammering", 10*time.Second)

			p, err := Attach(tp.pid())
			if err != nil {
				t.Fatal(err)
			}
			defer p.Detach()
			// Borrow every thread in turn: the main thread blocked in
			// read and the spinning workers take the process-wide
			// signals, the storm threads their realtime signals.
			tids := p.Threads()
			for i := 0; i < rounds; i++ {
				r, err := p.holdRemote(tids[i%len(tids)])
				if err != nil {
					t.Fatalf("round %d: hold: %v", i, err)
				}
				for j := 0; j < 3; j++ {
					ret, err := r.Syscall(SysGetpid)
					if err != nil {
						t.Fatalf("round %d: remote getpid on thread %d: %v", i, r.Tid(), err)
					}
					if int(ret) != tp.pid() {
						t.Fatalf("round %d: remote getpid = %d, want %d", i, int64(ret), tp.pid())
					}
				}
				if err := r.Release(); err != nil {
					t.Fatalf("round %d: release: %v", i, err)
				}
				switch i % 10 {
				case 3:
					err := p.Batch(func(b *Batch) error {
						r, err := b.HoldRemote()
						if err != nil {
							return err
						}
						if ret, err := r.Syscall(SysGetpid); err != nil || int(ret) != tp.pid() {
							r.Release()
							t.Errorf("round %d: batch getpid = %d, %v", i, int64(ret), err)
							return err
						}
						return r.Release()
					})
					if err != nil {
						t.Fatalf("round %d: batch: %v", i, err)
					}
				case 7:
					if err := p.StopAll(); err != nil {
						t.Fatalf("round %d: stop: %v", i, err)
					}
					if _, err := p.StoppedIPs(); err != nil {
						t.Fatalf("round %d: ips: %v", i, err)
					}
					if err := p.ResumeAll(); err != nil {
						t.Fatalf("round %d: resume: %v", i, err)
					}
				}
			}
			st := p.SignalStats()
			if err := p.Detach(); err != nil {
				t.Fatal(err)
			}
			t.Logf("%d rounds: signals delivered %d, held for borrowed threads %d (requeued %d, siginfo restored %d, dropped %d)",
				rounds, st.Delivered, st.Held, st.Requeued, st.Restored, st.Dropped)
			total.Delivered += st.Delivered
			total.Held += st.Held
			total.Requeued += st.Requeued
			if st.Dropped != 0 {
				t.Errorf("%d held signals dropped", st.Dropped)
			}
			tp.send(t, "stop")
			tp.expect(t, "stopped", 30*time.Second)
			tp.send(t, "run 2000")
			if got := tp.expect(t, "done", 30*time.Second); got != want {
				t.Errorf("after tracing: %q, want %q", got, want)
			}
			checkSignalStats(t, tp, tc.args)
		})
	}
	t.Logf("all storms: signals delivered %d, held %d, requeued %d", total.Delivered, total.Held, total.Requeued)
}

// checkSignalStats asks the signals fixture for its counters and checks
// that no checker saw an EINTR or a short wait, and that handlers ran.
func checkSignalStats(t *testing.T, tp *target, args []string) {
	t.Helper()
	tp.send(t, "stats")
	m := stats(t, tp.expect(t, "stats", 10*time.Second))
	for _, k := range []string{"sleep", "futex", "epoll"} {
		if m[k] == 0 {
			t.Errorf("checker %s never ran: %v", k, m)
		}
		if m[k+"_eintr"] != 0 || m[k+"_short"] != 0 {
			t.Errorf("checker %s: %d EINTR, %d short waits, want none", k, m[k+"_eintr"], m[k+"_short"])
		}
	}
	if m["read_eintr"] != 0 {
		t.Errorf("checker read: %d EINTR", m["read_eintr"])
	}
	if m["offstack"] != 0 {
		t.Errorf("%d handlers ran off the alternate stack", m["offstack"])
	}
	joined := strings.Join(args, " ")
	if strings.Contains(joined, "-prof") && m["prof"] == 0 {
		t.Error("no SIGPROF handled")
	}
	if strings.Contains(joined, "-alrm") && m["alrm"] == 0 {
		t.Error("no SIGALRM handled")
	}
	if strings.Contains(joined, "-rt") && m["rt"] == 0 {
		t.Error("no realtime signal handled")
	}
	t.Logf("target: %v", m)
}

// TestSingleStepUnderSignals single-steps a spinning thread, with every
// other thread stopped, while timers fire: the process-wide signals can
// only go to the stepping thread. A signal delivered then would run its
// handler instead of the step (and leave a signal frame that returns into
// the range being stepped out of); it must be held and delivered after,
// so every step lands on the next instruction.
func TestSingleStepUnderSignals(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := testtarget.Build(t, testtarget.Signals, testtarget.ClangNop5)
	tp := startAs(t, nil, bin, "-t", "2", "-alrm", "200", "-prof", "1000", "-altstack")
	tp.expect(t, "ready", 10*time.Second)
	tp.send(t, "run 1000")
	want := tp.expect(t, "done", 30*time.Second)
	tp.send(t, "hammer")
	tp.expect(t, "hammering", 10*time.Second)
	p, err := Attach(tp.pid())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Detach()
	base := loadBase(t, tp.pid(), bin)
	onSignal := base + symbolOffset(t, bin, "on_signal")
	handlerFn := base + symbolOffset(t, bin, "sig_handler_fn")
	inHandler := func(pc uint64) bool {
		return pc >= onSignal && pc < onSignal+0x100 || pc >= handlerFn && pc < handlerFn+0x20
	}
	steps, held := 0, 0
	for round := 0; round < 30; round++ {
		if err := p.StopAll(); err != nil {
			t.Fatal(err)
		}
		ips, err := p.StoppedIPs()
		if err != nil {
			t.Fatal(err)
		}
		// The workers spin in user space ("-1": stopped outside any
		// syscall): step each of them a few times.
		for tid, ip := range ips {
			b, _ := readFile("/proc/" + itoa(tp.pid()) + "/task/" + itoa(tid) + "/syscall")
			if !strings.HasPrefix(string(b), "-1 ") {
				continue
			}
			for k := 0; k < 5; k++ {
				// A rep-prefixed string instruction (memset, memcpy)
				// single-steps one iteration at a time on the same
				// rip: not what this test is about.
				var op [1]byte
				if p.ReadMem(ip, op[:]) == nil && (op[0] == 0xf3 || op[0] == 0xf2) {
					break
				}
				// Nor a thread stopped on the instruction after a
				// `syscall` (a checker back from its read, which the
				// storm interrupts and the kernel restarts): a step
				// there runs the system call again, and ends on the
				// same rip (1 run in 10 met one).
				var prev [2]byte
				if p.ReadMem(ip-2, prev[:]) == nil && prev == [2]byte{0x0f, 0x05} {
					break
				}
				before := p.SignalStats().Held
				if err := p.SingleStepOut(tid, ip, ip+1, 3); err != nil {
					t.Fatalf("round %d: step thread %d at %#x: %v", round, tid, ip, err)
				}
				now, err := p.StoppedIPs()
				if err != nil {
					t.Fatal(err)
				}
				// One instruction on, never into a signal handler.
				if now[tid] == ip || !inHandler(ip) && inHandler(now[tid]) {
					var code [4]byte
					_ = p.ReadMem(ip, code[:])
					t.Fatalf("round %d: thread %d stepped from %#x (% x) to %#x (handler at %#x)", round, tid, ip, code, now[tid], onSignal)
				}
				held += p.SignalStats().Held - before
				ip = now[tid]
				steps++
			}
		}
		if err := p.ResumeAll(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond) // longer than the epoll checker's timeout, which each stop restarts
	}
	if err := p.Detach(); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d single steps, %d signals held meanwhile", steps, held)
	if steps == 0 {
		t.Fatal("no thread was running in user space to step")
	}
	tp.send(t, "stop")
	tp.expect(t, "stopped", 30*time.Second)
	tp.send(t, "run 1000")
	if got := tp.expect(t, "done", 30*time.Second); got != want {
		t.Errorf("after tracing: %q, want %q", got, want)
	}
	checkSignalStats(t, tp, []string{"-alrm", "-prof"})
}

func itoa(n int) string { return strconv.Itoa(n) }

// TestRemoteSyscallSeccompTrap runs a remote syscall that the target's
// seccomp filter traps (SECCOMP_RET_TRAP): the SIGSYS it raises is the
// tracer's, not the application's: its
// handler must never see a call the program did not make.
func TestRemoteSyscallSeccompTrap(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := testtarget.Build(t, testtarget.Signals, testtarget.ClangNop5)
	tp := startAs(t, nobody, bin, "-t", "1", "-seccomp")
	tp.expect(t, "ready", 10*time.Second)
	p, err := Attach(tp.pid())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Detach()
	for i := 0; i < 5; i++ {
		r, err := p.HoldRemote()
		if err != nil {
			t.Fatal(err)
		}
		// A trapped call returns its own number (the kernel rolls rax
		// back to orig_rax): Syscall looks for the SIGSYS only then.
		ret, err := r.Syscall(unix.SYS_GETPPID)
		if err != nil {
			t.Fatal(err)
		}
		if ret != unix.SYS_GETPPID {
			t.Errorf("a trapped getppid returned %d, want its number %d", int64(ret), unix.SYS_GETPPID)
		}
		if err := r.Release(); err != nil {
			t.Fatal(err)
		}
	}
	st := p.SignalStats()
	if err := p.Detach(); err != nil {
		t.Fatal(err)
	}
	tp.send(t, "stats")
	if m := stats(t, tp.expect(t, "stats", 10*time.Second)); m["sigsys"] != 0 {
		t.Errorf("the application's SIGSYS handler ran %d times for the tracer's calls", m["sigsys"])
	}
	if st.Ours != 5 {
		t.Errorf("%d SIGSYS of ours suppressed, want 5", st.Ours)
	}
}
