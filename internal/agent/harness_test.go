package agent

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/livetrace/livetrace/internal/proc"
	"github.com/livetrace/livetrace/internal/testtarget"
	"golang.org/x/sys/unix"
)

func clangPath() string {
	if c := os.Getenv("LIVETRACE_CLANG"); c != "" {
		return c
	}
	return "clang-16"
}

var (
	harnessOnce sync.Once
	harnessBin  string
	harnessErr  error
	harnessDir  string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if harnessDir != "" {
		os.RemoveAll(harnessDir)
	}
	os.Exit(code)
}

// buildHarness compiles testdata/harness.c and testdata/workload.c once.
func buildHarness(t testing.TB) string {
	t.Helper()
	clang, err := exec.LookPath(clangPath())
	if err != nil {
		testtarget.SkipOrFatal(t, "%s not found: install clang-16 (make deps-test) to run the agent harness", clangPath())
	}
	harnessOnce.Do(func() {
		harnessDir, harnessErr = os.MkdirTemp("", "livetrace-agent-harness-")
		if harnessErr != nil {
			return
		}
		layout := fmt.Sprintf("#define L_CODE_SIZE %d\n#define L_CTL_OFF %d\n#define L_CTL_SIZE %d\n#define L_PRIV_OFF %d\n#define L_PRIV_SIZE %d\n#define L_SHARED_OFF %d\n"+
			"#define L_SIGTRAP_OFF %d\n#define L_RESTORER_OFF %d\n#define L_OLD_SIGTRAP_OFF %d\n#define L_SHARED_READY_OFF %d\n",
			CodeSize, CtlOff, CtlSize, PrivOff, PrivSize, SharedOff, SigtrapOff, RestorerOff, PrivOff+PrivOldSigtrapOff, PrivOff+PrivSharedReadyOff)
		if harnessErr = os.WriteFile(filepath.Join(harnessDir, "layout.h"), []byte(layout), 0o644); harnessErr != nil {
			return
		}
		if harnessErr = os.WriteFile(filepath.Join(harnessDir, "agent.bin"), Blob, 0o644); harnessErr != nil {
			return
		}
		td, _ := filepath.Abs("testdata")
		steps := [][]string{
			{"-O2", "-g", "-pthread", "-fpatchable-function-entry=5", "-c", filepath.Join(td, "workload.c"), "-o", "workload.o"},
			{"-O2", "-g", "-pthread", "-I.", "-c", filepath.Join(td, "harness.c"), "-o", "harness.o"},
			{"-pthread", "-o", "harness", "harness.o", "workload.o"},
		}
		for _, s := range steps {
			cmd := exec.Command(clang, s...)
			cmd.Dir = harnessDir
			if out, err := cmd.CombinedOutput(); err != nil {
				harnessErr = fmt.Errorf("%s %s: %v\n%s", clang, strings.Join(s, " "), err, out)
				return
			}
		}
		harnessBin = filepath.Join(harnessDir, "harness")
	})
	if harnessErr != nil {
		t.Fatalf("build harness: %v", harnessErr)
	}
	return harnessBin
}

type harnessSite struct {
	addr uint64
	name string
}

// harnessGOT is a function pointer through which the workload calls sym.
type harnessGOT struct {
	sym  string
	addr uint64
}

// run is one harness process traced by the test, which plays the tracer.
type run struct {
	t       testing.TB
	sites   []harnessSite
	counts  map[uint32]map[string]uint64 // ground truth: tid -> function -> calls
	results map[string][]int64
	child   []uint32
	recs    map[uint32][]Record // tid -> records in delivery order
	lost    map[uint32]uint64
	ctrs    Counters
	delay   time.Duration
}

func (r *run) siteName(idx uint32) string {
	if int(idx) < len(r.sites) {
		return r.sites[idx].name
	}
	return fmt.Sprintf("site%d", idx)
}

type collectFunc = func(tid, lost uint32, recs []Record)

type runOpts struct {
	test         string
	iters        int
	ctl          Ctl
	chunks       int
	chunkRecords int
	pollEvery    time.Duration
	trapSites    map[string]bool   // sites left as INT3 + new tail, as mid-batch
	noHooks      bool              // leave the workload's GOT slots alone
	specs        map[string]uint32 // site name -> Site.Spec (what the agent captures there)
	wantSignal   syscall.Signal    // the harness must die of this signal
	// held runs when the harness says HELD (a thread is about to block in
	// traced frames); the harness continues when it returns.
	held func(pm *os.File, a Addrs, withConsumer func(func(c *Consumer, collect collectFunc)))
}

func runHarness(t testing.TB, o runOpts) *run {
	t.Helper()
	bin := buildHarness(t)
	cmd := exec.Command(bin, filepath.Join(harnessDir, "agent.bin"), o.test, strconv.Itoa(o.iters))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	defer func() {
		if !killed {
			cmd.Process.Kill()
			cmd.Wait()
		}
	}()
	sc := bufio.NewScanner(stdout)
	next := func() []string {
		if !sc.Scan() {
			t.Fatalf("harness output ended early: %v", sc.Err())
		}
		return strings.Fields(sc.Text())
	}
	hex := func(s string) uint64 {
		v, err := strconv.ParseUint(strings.TrimPrefix(s, "0x"), 16, 64)
		if err != nil {
			t.Fatalf("parse %q: %v", s, err)
		}
		return v
	}
	f := next()
	if len(f) != 3 || f[0] != "READY" {
		t.Fatalf("harness said %q, want READY", f)
	}
	base, stubs := hex(f[1]), hex(f[2])
	var gots []harnessGOT
	r := &run{t: t, counts: map[uint32]map[string]uint64{}, results: map[string][]int64{},
		recs: map[uint32][]Record{}, lost: map[uint32]uint64{}}
	for {
		f = next()
		if f[0] == "END" {
			break
		}
		if f[0] == "GOT" {
			gots = append(gots, harnessGOT{f[1], hex(f[2])})
			continue
		}
		r.sites = append(r.sites, harnessSite{hex(f[1]), f[2]})
	}
	sort.Slice(r.sites, func(i, j int) bool { return r.sites[i].addr < r.sites[j].addr })
	addrs := AddrsAt(base)

	// Stubs: one per site, then a springboard to lt_entry.
	n := len(r.sites)
	board := stubs + uint64(n)*StubSize
	code := make([]byte, 0, (n+1)*StubSize)
	cfg := Config{Chunks: o.chunks, ChunkRecords: o.chunkRecords, StringMax: 32}
	for i, s := range r.sites {
		sa := stubs + uint64(i)*StubSize
		idx := StubIndex(uint32(i), o.specs[s.name])
		b, err := StubCode(idx, sa, addrs.Entry)
		if errors.Is(err, ErrOutOfReach) {
			b, err = StubCode(idx, sa, board)
		}
		if err != nil {
			t.Fatal(err)
		}
		code = append(code, b[:]...)
		cfg.Sites = append(cfg.Sites, Site{Addr: s.addr, Target: sa, Spec: o.specs[s.name]})
	}
	sb := Springboard(addrs.Entry)
	code = append(code, sb[:]...)

	size := SharedSize(cfg)
	if size == 0 {
		t.Fatalf("bad config %+v", cfg)
	}
	fmt.Fprintf(stdin, "SHARED %d\n", size)
	f = next()
	if len(f) != 2 || f[0] != "MEMFD" {
		t.Fatalf("harness said %q, want MEMFD", f)
	}
	fdf, err := os.OpenFile(fmt.Sprintf("/proc/%d/fd/%s", cmd.Process.Pid, f[1]), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	mem, err := unix.Mmap(int(fdf.Fd()), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	fdf.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	if err := InitShared(mem, cfg); err != nil {
		t.Fatal(err)
	}
	cons, err := NewConsumer(mem)
	if err != nil {
		t.Fatal(err)
	}

	pm, err := os.OpenFile(fmt.Sprintf("/proc/%d/mem", cmd.Process.Pid), os.O_RDWR, 0)
	if err != nil {
		testtarget.SkipOrFatal(t, "open /proc/PID/mem of the harness: %v", err)
	}
	defer pm.Close()
	if _, err := pm.WriteAt(code, int64(stubs)); err != nil {
		t.Fatalf("write stubs: %v", err)
	}
	for i, s := range r.sites {
		old := make([]byte, 5)
		if _, err := pm.ReadAt(old, int64(s.addr)); err != nil {
			t.Fatal(err)
		}
		if string(old) != "\x0f\x1f\x44\x00\x08" {
			t.Fatalf("site %s at %#x holds % x, want a NOP5", s.name, s.addr, old)
		}
		call := []byte{0xe8, 0, 0, 0, 0}
		rel := int64(cfg.Sites[i].Target - (s.addr + 5))
		if rel != int64(int32(rel)) {
			t.Fatalf("stub out of reach of site %#x", s.addr)
		}
		putU32(call[1:], uint32(int32(rel)))
		if o.trapSites[s.name] {
			call[0] = 0xcc
		}
		if _, err := pm.WriteAt(call, int64(s.addr)); err != nil {
			t.Fatalf("patch site: %v", err)
		}
	}
	// Hook the workload's GOT slots as the tracer hooks real ones: the
	// real function's address into the agent first, then the hook.
	for _, g := range gots {
		if o.noHooks {
			break
		}
		var h *RuntimeHook
		for _, x := range addrs.RuntimeHooks() {
			if x.Sym == g.sym {
				h = &x
			}
		}
		if h == nil {
			t.Fatalf("the agent has no hook for %s", g.sym)
		}
		word := make([]byte, 8)
		if _, err := pm.ReadAt(word, int64(g.addr)); err != nil {
			t.Fatal(err)
		}
		if _, err := pm.WriteAt(word, int64(h.Real)); err != nil {
			t.Fatal(err)
		}
		if _, err := pm.WriteAt(binary.LittleEndian.AppendUint64(nil, h.Hook), int64(g.addr)); err != nil {
			t.Fatal(err)
		}
	}
	// The code table, as a session writes it: graph mode hijacks only
	// the return addresses in it.
	maps, err := proc.ReadMaps(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	var spans []Span
	for _, m := range maps {
		if m.Exec() && m.FileBacked() {
			spans = append(spans, Span{Lo: m.Start, Hi: m.End})
		}
	}
	var table CodeTable
	if err := table.Write(func(addr uint64, b []byte) error { _, err := pm.WriteAt(b, int64(addr)); return err }, addrs, spans); err != nil {
		t.Fatal(err)
	}
	if _, err := pm.WriteAt(o.ctl.Encode(), int64(addrs.Ctl)); err != nil {
		t.Fatalf("write ctl: %v", err)
	}

	// Consume concurrently, as the tracer does.
	stop := make(chan struct{})
	done := make(chan struct{})
	reqs := make(chan func(*Consumer))
	collect := func(tid, lost uint32, recs []Record) {
		r.recs[tid] = append(r.recs[tid], recs...)
		r.lost[tid] += uint64(lost)
	}
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case f := <-reqs:
				f(cons)
			default:
			}
			if _, err := cons.Poll(collect); err != nil {
				t.Error(err)
				return
			}
			time.Sleep(o.pollEvery)
		}
	}()
	// Stop the poller before the shared memory is unmapped, also when the
	// test fails early.
	var stopOnce sync.Once
	stopPoll := func() { stopOnce.Do(func() { close(stop); <-done }) }
	defer stopPoll()
	fmt.Fprintf(stdin, "RUN\n")
	for {
		f = next()
		if f[0] == "DONE" {
			break
		}
		switch f[0] {
		case "COUNT":
			tid, _ := strconv.ParseUint(f[1], 10, 32)
			v, _ := strconv.ParseUint(f[3], 10, 64)
			if r.counts[uint32(tid)] == nil {
				r.counts[uint32(tid)] = map[string]uint64{}
			}
			r.counts[uint32(tid)][f[2]] = v
		case "RESULT":
			v, _ := strconv.ParseInt(f[2], 10, 64)
			r.results[f[1]] = append(r.results[f[1]], v)
		case "HELD":
			time.Sleep(50 * time.Millisecond) // let the thread reach the bottom
			if o.held != nil {
				o.held(pm, addrs, func(f func(*Consumer, collectFunc)) {
					done := make(chan struct{})
					reqs <- func(c *Consumer) { f(c, collect); close(done) }
					<-done
				})
			}
			fmt.Fprintf(stdin, "RELEASE\n")
		case "CHILDTID":
			v, _ := strconv.ParseUint(f[1], 10, 32)
			r.child = append(r.child, uint32(v))
		default:
			t.Fatalf("harness said %q", f)
		}
	}
	stdin.Close()
	io.Copy(io.Discard, stdout)
	killed = true
	err = cmd.Wait()
	if o.wantSignal != 0 {
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != o.wantSignal {
			t.Fatalf("harness ended with %v, want death by %v", err, o.wantSignal)
		}
	} else if err != nil {
		t.Fatalf("harness: %v", err)
	}
	stopPoll()
	if _, err := cons.Drain(collect); err != nil {
		t.Fatal(err)
	}
	r.ctrs = cons.Counters()
	return r
}

func putU32(b []byte, v uint32) {
	b[0], b[1], b[2], b[3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
}

// entryCounts counts entry records per tid and function.
func (r *run) entryCounts() map[uint32]map[string]uint64 {
	m := map[uint32]map[string]uint64{}
	for tid, recs := range r.recs {
		for _, rec := range recs {
			if rec.Kind != KindEntry {
				continue
			}
			if m[tid] == nil {
				m[tid] = map[string]uint64{}
			}
			m[tid][r.siteName(rec.Site)]++
		}
	}
	return m
}

func (r *run) checkExactCounts() {
	r.t.Helper()
	got := r.entryCounts()
	for tid, want := range r.counts {
		for name, n := range want {
			if got[tid][name] != n {
				r.t.Errorf("tid %d %s: %d entry records, %d calls", tid, name, got[tid][name], n)
			}
		}
		for name, n := range got[tid] {
			if want[name] == 0 {
				r.t.Errorf("tid %d %s: %d entry records, no calls", tid, name, n)
			}
		}
	}
	for tid := range got {
		if r.counts[tid] == nil {
			r.t.Errorf("records from tid %d, which made no traced calls", tid)
		}
	}
}

func (r *run) checkTimestamps() {
	r.t.Helper()
	for tid, recs := range r.recs {
		for i := 1; i < len(recs); i++ {
			if recs[i].TSC < recs[i-1].TSC {
				r.t.Errorf("tid %d: record %d tsc %d < previous %d", tid, i, recs[i].TSC, recs[i-1].TSC)
				break
			}
		}
	}
}

// checkGraph replays each thread's records against a stack. With
// allowStale, frames abandoned by longjmp (entries never exited) are
// dropped when a shallower record shows up; it returns how many.
func (r *run) checkGraph(allowStale bool) (stale int) {
	r.t.Helper()
	for tid, recs := range r.recs {
		var stack []uint32
		for i, rec := range recs {
			d := int(rec.Depth)
			switch rec.Kind {
			case KindEntry:
				if len(stack)%256 != d {
					if !allowStale || len(stack) < d {
						r.t.Errorf("tid %d rec %d: entry %s at depth %d, stack holds %d", tid, i, r.siteName(rec.Site), d, len(stack))
						return
					}
					stale += len(stack) - d
					stack = stack[:d]
				}
				stack = append(stack, rec.Site)
			case KindExit:
				if len(stack) == 0 {
					r.t.Errorf("tid %d rec %d: exit %s with empty stack", tid, i, r.siteName(rec.Site))
					return
				}
				if (len(stack)-1)%256 != d {
					if !allowStale || len(stack)-1 < d {
						r.t.Errorf("tid %d rec %d: exit %s at depth %d, stack holds %d", tid, i, r.siteName(rec.Site), d, len(stack))
						return
					}
					stale += len(stack) - 1 - d
					stack = stack[:d+1]
				}
				if top := stack[len(stack)-1]; top != rec.Site {
					r.t.Errorf("tid %d rec %d: exit %s, innermost frame is %s", tid, i, r.siteName(rec.Site), r.siteName(top))
					return
				}
				stack = stack[:len(stack)-1]
			default:
				r.t.Errorf("tid %d rec %d: kind %d", tid, i, rec.Kind)
				return
			}
		}
		if len(stack) != 0 {
			r.t.Errorf("tid %d: %d frames never exited", tid, len(stack))
		}
	}
	return stale
}

// checkMatched checks that every entry record has exactly one exit record
// of the same function at the same depth, later in its thread, and no
// exit is without its entry. Unlike checkGraph it does not require the
// calls to nest: frames of several stacks (ucontext) interleave.
func (r *run) checkMatched() {
	r.t.Helper()
	for tid, recs := range r.recs {
		open := map[uint8][]uint32{}
		for i, rec := range recs {
			switch rec.Kind {
			case KindEntry:
				if len(open[rec.Depth]) != 0 {
					r.t.Errorf("tid %d rec %d: entry %s at depth %d while %s is open there", tid, i, r.siteName(rec.Site), rec.Depth, r.siteName(open[rec.Depth][0]))
					return
				}
				open[rec.Depth] = append(open[rec.Depth], rec.Site)
			case KindExit:
				o := open[rec.Depth]
				if len(o) == 0 || o[len(o)-1] != rec.Site {
					r.t.Errorf("tid %d rec %d: exit %s at depth %d, open there: %v", tid, i, r.siteName(rec.Site), rec.Depth, o)
					return
				}
				open[rec.Depth] = o[:len(o)-1]
			}
		}
		for d, o := range open {
			if len(o) != 0 {
				r.t.Errorf("tid %d: %s at depth %d never exited", tid, r.siteName(o[0]), d)
			}
		}
	}
}

func (r *run) result(key string) []int64 { return r.results[key] }

func (r *run) noLoss() {
	r.t.Helper()
	c := r.ctrs
	if c.Lost != 0 || c.TableFull != 0 || c.Reentered != 0 || c.Corrupt != 0 {
		r.t.Errorf("unexpected drops: %+v", c)
	}
}
