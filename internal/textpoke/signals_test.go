package textpoke

import (
	"bytes"
	"fmt"
	"math/rand"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/livetrace/livetrace/internal/elfsite"
	"github.com/livetrace/livetrace/internal/proc"
	"github.com/livetrace/livetrace/internal/testtarget"
)

// signalStorm are the arguments of the signals fixture for the engine and
// session tests: ITIMER_PROF at 1 kHz, SIGALRM every 2 ms without
// SA_RESTART, a realtime-signal storm between two threads, handlers on a
// sigaltstack; the main thread sits in read and the checkers in nanosleep,
// futex, epoll_wait and read. With -blocked, one worker blocks every signal,
// SIGTRAP too, which makes the engine choose stop mode.
var signalStorm = []string{"-t", "4", "-prof", "1000", "-alrm", "2000", "-norestart", "-rt", "-rtus", "500", "-altstack"}

// TestStressSignals runs the patch batch, live and in stop mode, over and
// over on every site of the signals fixture while its workers call them in
// a loop and signals rain on every thread, in every site form. Each batch
// flips the sites between two NOP5 encodings, so the program's behaviour
// never changes; what is tested is that the INT3 window, the remote
// membarrier calls, quiesce and the final restore survive the signals. The
// results must equal an untraced run, the checkers must see no EINTR and
// no short wait, and the text must end byte-identical to the file.
func TestStressSignals(t *testing.T) {
	testtarget.RequireRoot(t)
	rounds := 60
	if testing.Short() {
		rounds = 20
	}
	if os.Getenv("LIVETRACE_SOAK") != "" {
		rounds = 2000
	}
	var total proc.SignalStats
	for _, form := range testtarget.Forms {
		for _, blocked := range []bool{false, true} {
			name, args, mode := string(form)+"/live", signalStorm, ModeLive
			if blocked {
				name, args, mode = string(form)+"/stop-blocked", append(append([]string{}, signalStorm...), "-blocked"), ModeStop
			}
			t.Run(name, func(t *testing.T) {
				st := stressSignalsForm(t, form, args, mode, rounds)
				total.Delivered += st.Delivered
				total.Held += st.Held
			})
		}
	}
	t.Logf("signals during batches, all forms: %d delivered to the application, %d held for borrowed threads", total.Delivered, total.Held)
}

func stressSignalsForm(t *testing.T, form testtarget.Form, args []string, mode Mode, rounds int) proc.SignalStats {
	bin := testtarget.Build(t, testtarget.Signals, form)
	tp := testtarget.Start(t, bin, args...)
	if _, err := tp.Expect("ready", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	want := sigRun(t, tp, 3000)
	sites, orig := signalSites(t, tp.Pid(), bin)
	send(t, tp, "hammer", "hammering")

	p, err := proc.Attach(tp.Pid())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Detach() })
	e, err := New(p, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if e.Mode() != mode {
		t.Fatalf("mode %v (%s), want %v", e.Mode(), e.Reason(), mode)
	}
	cur := make([][]byte, len(sites))
	copy(cur, orig)
	if form == testtarget.GccSled {
		if _, err := e.ConvertSleds(sites); err != nil {
			t.Fatal(err)
		}
		for i := range cur {
			cur[i] = NOP5
		}
	}
	rng := rand.New(rand.NewSource(int64(len(form))))
	var during proc.SignalStats
	var batches Stats
	for r := 0; r < rounds; r++ {
		var ps []Patch
		for i := range sites {
			if rng.Intn(2) == 0 {
				continue
			}
			next := bytes.Clone(cur[i])
			next[4] ^= 0x08 // the other NOP5 encoding
			ps = append(ps, Patch{Addr: sites[i], Old: cur[i], New: next})
			cur[i] = next
		}
		before := p.SignalStats()
		var st Stats
		if r%7 == 6 || mode == ModeStop {
			st, err = e.ApplyStop(ps)
		} else {
			st, err = e.Apply(ps)
		}
		if err != nil {
			t.Fatalf("round %d: %v", r, err)
		}
		after := p.SignalStats()
		during.Delivered += after.Delivered - before.Delivered
		during.Held += after.Held - before.Held
		batches.Traps += st.Traps
		batches.Syncs += st.Syncs
	}
	if _, err := e.RestoreAll(); err != nil {
		t.Fatal(err)
	}
	total := p.SignalStats()
	if err := p.Detach(); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d batches: %d INT3 hits emulated, %d membarrier syncs; signals during batches: %d delivered, %d held for the borrowed thread; whole attach: %+v",
		rounds, batches.Traps, batches.Syncs, during.Delivered, during.Held, total)
	if total.Dropped != 0 {
		t.Errorf("%d held signals dropped", total.Dropped)
	}
	send(t, tp, "stop", "stopped")
	if got := sigRun(t, tp, 3000); got != want {
		t.Errorf("after tracing: %s, want %s", got, want)
	}
	testtarget.CheckText(t, tp.Pid())
	checkSignalStats(t, tp)
	return during
}

func send(t *testing.T, tp *testtarget.Process, cmd, reply string) {
	t.Helper()
	if err := tp.Send(cmd); err != nil {
		t.Fatal(err)
	}
	if _, err := tp.Expect(reply, 60*time.Second); err != nil {
		t.Fatalf("%s: %v (stderr %q)", cmd, err, tp.Stderr())
	}
}

func sigRun(t *testing.T, tp *testtarget.Process, n int) string {
	t.Helper()
	if err := tp.Send(fmt.Sprintf("run %d", n)); err != nil {
		t.Fatal(err)
	}
	l, err := tp.Expect("done", 60*time.Second)
	if err != nil {
		t.Fatalf("run: %v (stderr %q)", err, tp.Stderr())
	}
	return l
}

// signalSites returns the runtime addresses and file bytes of the sites of
// the sig_* functions of the signals fixture bin running as pid.
func signalSites(t *testing.T, pid int, bin string) ([]uint64, [][]byte) {
	t.Helper()
	mods, err := elfsite.LiveModules(pid)
	if err != nil {
		t.Fatal(err)
	}
	var sites []uint64
	var orig [][]byte
	for _, m := range mods {
		if m.Spec.Path == "" || !strings.HasSuffix(strings.TrimSuffix(m.Path, " (deleted)"), bin[strings.LastIndexByte(bin, '/'):]) {
			continue
		}
		for _, s := range m.Spec.Sites {
			if s.Func < 0 || !strings.HasPrefix(m.Spec.Funcs[s.Func].Name, "sig_") {
				continue
			}
			sites = append(sites, m.Runtime(s.Addr))
			orig = append(orig, bytes.Clone(s.Bytes[:]))
		}
	}
	if len(sites) < 5 {
		t.Fatalf("found %d sig_* sites, want 5", len(sites))
	}
	return sites, orig
}

// checkSignalStats checks the counters of the signals fixture: no EINTR
// and no short wait in the checkers, handlers on the alternate stack, and
// every kind of signal handled.
func checkSignalStats(t *testing.T, tp *testtarget.Process) {
	t.Helper()
	if err := tp.Send("stats"); err != nil {
		t.Fatal(err)
	}
	l, err := tp.Expect("stats", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]uint64{}
	for _, f := range strings.Fields(l)[1:] {
		k, v, _ := strings.Cut(f, "=")
		m[k], _ = strconv.ParseUint(v, 10, 64)
	}
	for _, k := range []string{"sleep", "futex", "epoll", "read"} {
		if m[k] == 0 {
			t.Errorf("checker %s never ran", k)
		}
		if m[k+"_eintr"] != 0 || m[k+"_short"] != 0 {
			t.Errorf("checker %s: %d EINTR, %d short waits, want none", k, m[k+"_eintr"], m[k+"_short"])
		}
	}
	if m["offstack"] != 0 {
		t.Errorf("%d handlers ran off the alternate stack", m["offstack"])
	}
	for _, k := range []string{"prof", "alrm", "rt"} {
		if m[k] == 0 {
			t.Errorf("no %s signal handled", k)
		}
	}
	t.Logf("target: prof %d alrm %d rt %d (sent %d), main EINTR (no SA_RESTART) %d", m["prof"], m["alrm"], m["rt"], m["rt_sent"], m["main_eintr"])
}
