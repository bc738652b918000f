// Command ltbench measures livetrace against uftrace and bpftrace on this
// machine, side by side in one run, and prints one table (and writes it as
// JSON). `make bench` runs it; see README.md, Benchmarks.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/livetrace/livetrace/internal/testtarget"
	"github.com/livetrace/livetrace/internal/tracefile"
)

// Result is one measured figure.
type Result struct {
	Section string  `json:"section"`
	Name    string  `json:"name"`
	Value   float64 `json:"value"`
	Unit    string  `json:"unit"`
	Note    string  `json:"note,omitempty"`
}

// Goal is one target, checked against the results.
type Goal struct {
	Goal   string `json:"goal"`
	Actual string `json:"actual"`
	Met    bool   `json:"met"`
}

type bench struct {
	livetrace string
	work      string
	quick     bool
	results   []Result
	goals     []Goal
	bins      map[string]string
	log       io.Writer
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "ltbench: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	b := &bench{bins: map[string]string{}, log: os.Stderr}
	out := flag.String("o", "bench/results.json", "write the results as JSON to `FILE`")
	flag.StringVar(&b.livetrace, "livetrace", "bin/livetrace", "the livetrace `BINARY`")
	flag.BoolVar(&b.quick, "quick", false, "fewer iterations (for a smoke test)")
	merge := flag.Bool("merge", false, "keep the results of FILE (-o) from sections this run does not measure (with -only)")
	only := flag.String("only", "", "run only these comma-separated `PARTS` (calls, pair, throughput, live, batch, attach, libc, traceable, readers, args)")
	flag.Parse()
	if os.Geteuid() != 0 {
		return errors.New("run as root: livetrace, uftrace and bpftrace need it")
	}
	abs, err := filepath.Abs(b.livetrace)
	if err != nil {
		return err
	}
	b.livetrace = abs
	b.work, err = os.MkdirTemp("", "ltbench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(b.work)
	if err := b.build(); err != nil {
		return err
	}
	parts := []struct {
		name string
		run  func()
	}{
		{"calls", b.callOverhead},
		{"pair", b.relocPair},
		{"throughput", b.throughput},
		{"live", b.liveLatency},
		{"batch", func() {
			b.goTestBench("Patch batch (100k sites, 2 calling threads)", "./internal/textpoke", "BenchmarkBatch100k", "3x")
			b.goTestBench("Patch batch, the longest gap around each batch (100k sites, 2 calling threads, live)", "./internal/textpoke", "BenchmarkBatchStall", "16x")
		}},
		{"attach", func() {
			b.goTestBench("Attach latency (10k sites, 4 busy threads)", "./cmd/livetrace", "BenchmarkAttachLatency", "5x")
		}},
		{"libc", func() {
			b.goTestBench("Patch batch, every traceable function of libc.so.6 (relocating sites, live, 4 threads calling libc)", "./internal/session", "BenchmarkRelocLibcPatch", "5x")
		}},
		{"traceable", b.traceable},
		{"readers", b.readers},
		{"args", func() {
			b.goTestBench("Argument capture (the agent alone, a call through a NOP5 site; ns per call)", "./internal/agent", "BenchmarkAgentCall", "1x")
		}},
	}
	want := map[string]bool{}
	for _, p := range strings.Split(*only, ",") {
		if p = strings.TrimSpace(p); p != "" {
			want[p] = true
		}
	}
	unknown := map[string]bool{}
	for p := range want {
		unknown[p] = true
	}
	for _, p := range parts {
		delete(unknown, p.name)
	}
	if len(unknown) > 0 {
		return fmt.Errorf("-only: unknown part %v; the parts are calls, pair, throughput, live, batch, attach, libc, traceable, readers, args", unknown)
	}
	for _, p := range parts {
		if len(want) == 0 || want[p.name] {
			p.run()
		}
	}
	if *merge {
		if err := b.mergeFrom(*out); err != nil {
			return err
		}
	}
	b.checkGoals()
	b.print(os.Stdout)
	return b.write(*out)
}

// mergeFrom puts before this run's results those of the results file at
// path whose sections this run did not measure.
func (b *bench) mergeFrom(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("-merge: %w", err)
	}
	var old struct {
		Results []Result `json:"results"`
	}
	if err := json.Unmarshal(data, &old); err != nil {
		return fmt.Errorf("-merge: %s: %w", path, err)
	}
	fresh := map[string]bool{}
	for _, r := range b.results {
		fresh[r.Section] = true
	}
	var kept []Result
	for _, r := range old.Results {
		if !fresh[r.Section] {
			kept = append(kept, r)
		}
	}
	b.results = append(kept, b.results...)
	return nil
}

func (b *bench) add(section, name string, v float64, unit, note string) {
	b.results = append(b.results, Result{section, name, v, unit, note})
	fmt.Fprintf(b.log, "ltbench: %s / %s = %.3f %s %s\n", section, name, v, unit, note)
}

func (b *bench) get(name string) (float64, bool) {
	for _, r := range b.results {
		if r.Name == name {
			return r.Value, true
		}
	}
	return 0, false
}

// build compiles hotleaf.c in every variant the comparisons need.
func (b *bench) build() error {
	src := filepath.Join("bench", "c", "hotleaf.c")
	clang := os.Getenv("LIVETRACE_CLANG")
	if clang == "" {
		clang = "clang-16"
	}
	variants := map[string][]string{
		"sites":       {clang, "-O2", "-g", "-fpatchable-function-entry=5", "-fPIE", "-pie"},
		"nosites":     {clang, "-O2", "-g", "-fPIE", "-pie"},
		"nosites-gcc": {"gcc", "-O2", "-g", "-fPIE", "-pie"},
		"pg":          {"gcc", "-O2", "-g", "-pg", "-fPIE", "-pie"},
	}
	for name, cc := range variants {
		out := filepath.Join(b.work, "hotleaf-"+name)
		args := append(append([]string{}, cc[1:]...), "-pthread", "-o", out, src)
		if o, err := exec.Command(cc[0], args...).CombinedOutput(); err != nil {
			return fmt.Errorf("build hotleaf (%s): %v\n%s", name, err, o)
		}
		b.bins[name] = out
	}
	return nil
}

// target is a running hotleaf.
type target struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Scanner
}

func startTarget(argv []string, wrap ...string) (*target, error) {
	all := append(append([]string{}, wrap...), argv...)
	cmd := exec.Command(all[0], all[1:]...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	t := &target{cmd: cmd, stdin: stdin, out: bufio.NewScanner(stdout)}
	if _, err := t.expect("ready"); err != nil {
		t.kill()
		return nil, err
	}
	return t, nil
}

func (t *target) expect(prefix string) (string, error) {
	for t.out.Scan() {
		if l := t.out.Text(); strings.HasPrefix(l, prefix) {
			return l, nil
		}
	}
	return "", fmt.Errorf("%s: no %q line", t.cmd.Path, prefix)
}

// run starts the timed run and returns the value of the result line.
func (t *target) run(prefix string) (float64, error) {
	if _, err := io.WriteString(t.stdin, "go\n"); err != nil {
		return 0, err
	}
	l, err := t.expect(prefix)
	if err != nil {
		return 0, err
	}
	return strconv.ParseFloat(strings.Fields(l)[1], 64)
}

// runFields starts the timed run and returns the first n values of the
// result line.
func (t *target) runFields(prefix string, n int) ([]float64, error) {
	if _, err := io.WriteString(t.stdin, "go\n"); err != nil {
		return nil, err
	}
	l, err := t.expect(prefix)
	if err != nil {
		return nil, err
	}
	f := strings.Fields(l)
	if len(f) < n+1 {
		return nil, fmt.Errorf("%s: %q has fewer than %d values", t.cmd.Path, l, n)
	}
	v := make([]float64, n)
	for i := range v {
		if v[i], err = strconv.ParseFloat(f[i+1], 64); err != nil {
			return nil, fmt.Errorf("%s: %q: %v", t.cmd.Path, l, err)
		}
	}
	return v, nil
}

func (t *target) kill() {
	t.stdin.Close()
	done := make(chan struct{})
	go func() { t.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.cmd.Process.Kill()
		<-done
	}
}

// tracer is a running livetrace record or bpftrace.
type tracer struct {
	cmd    *exec.Cmd
	stderr *lineBuf
	peakKB int
}

// lineBuf collects a tracer's output lines (ch, filled by one reader
// goroutine) and everything read so far (all, only touched by the owner).
type lineBuf struct {
	ch  chan string
	all strings.Builder
}

// startTracer starts argv and waits until its stderr (or stdout) shows
// ready.
func startTracer(ready string, argv ...string) (*tracer, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	pr, pw := io.Pipe()
	cmd.Stderr = pw
	cmd.Stdout = pw
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	tr := &tracer{cmd: cmd, stderr: &lineBuf{ch: make(chan string, 1000)}}
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			select {
			case tr.stderr.ch <- sc.Text():
			default:
			}
		}
	}()
	deadline := time.After(60 * time.Second)
	for {
		select {
		case l := <-tr.stderr.ch:
			tr.stderr.all.WriteString(l + "\n")
			if strings.Contains(l, ready) {
				return tr, nil
			}
		case <-deadline:
			cmd.Process.Kill()
			return nil, fmt.Errorf("%s did not say %q:\n%s", argv[0], ready, tr.stderr.all.String())
		}
	}
}

// stop sends SIGINT and waits; it records the tracer's peak RSS.
func (tr *tracer) stop() string {
	tr.peakKB = vmHWM(tr.cmd.Process.Pid)
	tr.cmd.Process.Signal(syscall.SIGINT)
	done := make(chan struct{})
	go func() { tr.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		tr.cmd.Process.Kill()
		<-done
	}
	time.Sleep(50 * time.Millisecond)
	for {
		select {
		case l := <-tr.stderr.ch:
			tr.stderr.all.WriteString(l + "\n")
		default:
			return tr.stderr.all.String()
		}
	}
}

func vmHWM(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	m := regexp.MustCompile(`VmHWM:\s+(\d+) kB`).FindSubmatch(b)
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n
}

// measure runs hotleaf `calls n` (or rdtsc) under the given tracer setup.
func (b *bench) measure(bin, mode string, n int, setup func(pid int) (*tracer, error), wrap ...string) (float64, *tracer, error) {
	t, err := startTarget([]string{bin, mode, strconv.Itoa(n)}, wrap...)
	if err != nil {
		return 0, nil, err
	}
	defer t.kill()
	var tr *tracer
	if setup != nil {
		if tr, err = setup(t.cmd.Process.Pid); err != nil {
			return 0, nil, err
		}
	}
	prefix := "ns_per_call"
	if mode == "rdtsc" {
		prefix = "rdtsc_ns"
	}
	v, err := t.run(prefix)
	if tr != nil {
		tr.stop()
	}
	return v, tr, err
}

// best returns the lowest of k measurements (the least disturbed one on a
// shared machine).
func (b *bench) best(k int, f func() (float64, error)) (float64, error) {
	best := 0.0
	for i := 0; i < k; i++ {
		v, err := f()
		if err != nil {
			return 0, err
		}
		if i == 0 || v < best {
			best = v
		}
	}
	return best, nil
}

func (b *bench) callOverhead() {
	const sec = "Cost per call of a hot leaf function"
	n := 200_000_000
	nt := 20_000_000
	nbpf := 300_000
	if b.quick {
		n, nt, nbpf = 20_000_000, 2_000_000, 50_000
	}
	k := 3
	try := func(name, note string, f func() (float64, error)) (float64, bool) {
		v, err := b.best(k, f)
		if err != nil {
			b.add(sec, name, -1, "ns", "failed: "+err.Error())
			return 0, false
		}
		b.add(sec, name, v, "ns", note)
		return v, true
	}
	try("rdtsc (floor of one timestamp)", "", func() (float64, error) {
		v, _, err := b.measure(b.bins["sites"], "rdtsc", n, nil)
		return v, err
	})
	base, _ := try("call, build without sites", "clang-16 -O2", func() (float64, error) {
		v, _, err := b.measure(b.bins["nosites"], "calls", n, nil)
		return v, err
	})
	nop, _ := try("call, NOP5 site (not traced)", "clang-16 -O2 -fpatchable-function-entry=5", func() (float64, error) {
		v, _, err := b.measure(b.bins["sites"], "calls", n, nil)
		return v, err
	})
	b.add(sec, "disabled site cost", nop-base, "ns", "NOP5 build minus no-site build")
	lt := func(extra ...string) func() (float64, error) {
		return func() (float64, error) {
			v, _, err := b.measure(b.bins["sites"], "calls", nt, func(pid int) (*tracer, error) {
				args := append([]string{b.livetrace, "record", "-f", "-p", strconv.Itoa(pid), "-F", "leaf", "-o", filepath.Join(b.work, "lt.data")}, extra...)
				return startTracer("livetrace: tracing", args...)
			})
			return v, err
		}
	}
	if v, ok := try("livetrace entry", "record -F leaf", lt()); ok {
		b.add(sec, "livetrace entry overhead", v-nop, "ns", "minus the untraced NOP5 call")
	}
	if v, ok := try("livetrace graph", "record --graph -F leaf", lt("--graph")); ok {
		b.add(sec, "livetrace graph overhead", v-nop, "ns", "minus the untraced NOP5 call")
	}
	if _, err := exec.LookPath("uftrace"); err == nil {
		if v, ok := try("uftrace record (-pg build)", "uftrace record (entry+exit)", func() (float64, error) {
			v, _, err := b.measure(b.bins["pg"], "calls", nt, nil, "uftrace", "record", "-d", filepath.Join(b.work, "uftrace.data"))
			return v, err
		}); ok {
			b.add(sec, "uftrace overhead", v-base, "ns", "minus the no-site call")
		}
	} else {
		b.add(sec, "uftrace record (-pg build)", -1, "ns", "uftrace not installed")
	}
	if _, err := exec.LookPath("bpftrace"); err == nil {
		ensureTracefs()
		bpf := func(prog string) func() (float64, error) {
			return func() (float64, error) {
				v, _, err := b.measure(b.bins["nosites"], "calls", nbpf, func(pid int) (*tracer, error) {
					tr, err := startTracer("Attaching", "bpftrace", "-e", strings.ReplaceAll(prog, "BIN", b.bins["nosites"]))
					// bpftrace says "Attaching N probes..." before it
					// attaches them.
					time.Sleep(2 * time.Second)
					return tr, err
				})
				return v, err
			}
		}
		if v, ok := try("bpftrace uprobe", "uprobe:leaf { @n = count() }", bpf(`uprobe:BIN:leaf { @n = count(); }`)); ok {
			b.add(sec, "bpftrace uprobe overhead", v-base, "ns", "minus the no-site call")
		}
		if v, ok := try("bpftrace uprobe+uretprobe", "entry and exit probes", bpf(`uprobe:BIN:leaf { @n = count(); } uretprobe:BIN:leaf { @m = count(); }`)); ok {
			b.add(sec, "bpftrace uprobe+uretprobe overhead", v-base, "ns", "minus the no-site call")
		}
	} else {
		b.add(sec, "bpftrace uprobe", -1, "ns", "bpftrace not installed")
	}
}

// relocPair compares a relocating site with a NOP5 site in one process,
// under the same load: hotleaf `pair` (build without sites) calls
// leaf_nop, which has a 5-byte NOP of its own, and leaf_reloc, its copy
// without one, which livetrace traces by relocating its first instruction
// (internal/reloc), in turns, block by block. Each figure is the best of
// k runs; the overheads subtract the same functions untraced.
func (b *bench) relocPair() {
	b.relocPairOf("nosites", "", true)
	// gcc's -fipa-ra lets callers keep registers across a call, so a
	// relocated site of a gcc build saves and restores every register
	// (internal/session/keepregs.go). In this build leaf_nop's NOP comes
	// from the patchable_function_entry attribute alone, which does not
	// turn -fipa-ra off as the flag does: its caller keeps its loop
	// counter in rcx across the call (docs/DESIGN-NOTES.md, "Callers that
	// keep registers across a call").
	b.relocPairOf("nosites-gcc", "gcc build (keep stubs), ", true)
}

// relocPairOf runs the pair figures on hotleaf build bin, naming them
// with prefix; in graph mode too if graph.
func (b *bench) relocPairOf(bin, prefix string, graph bool) {
	n, k := 20_000_000, 3
	if b.quick {
		n = 2_000_000
	}
	const sec = "Relocating site vs NOP5 site, one process (hotleaf pair: leaf_nop, leaf_reloc)"
	var lost, recorded uint64
	run := func(traced bool, extra ...string) func() ([]float64, error) {
		return func() ([]float64, error) {
			t, err := startTarget([]string{b.bins[bin], "pair", strconv.Itoa(n)})
			if err != nil {
				return nil, err
			}
			defer t.kill()
			var tr *tracer
			if traced {
				args := append([]string{b.livetrace, "record", "-f", "-p", strconv.Itoa(t.cmd.Process.Pid), "-F", "leaf_nop", "-F", "leaf_reloc", "-o", filepath.Join(b.work, "pair.data")}, extra...)
				if tr, err = startTracer("livetrace: tracing", args...); err != nil {
					return nil, err
				}
			}
			v, err := t.runFields("pair_ns", 2)
			if tr != nil {
				summary := tr.stop()
				meta, nev, merr := tracefile.ReadMeta(filepath.Join(b.work, "pair.data"))
				if merr != nil && err == nil {
					err = fmt.Errorf("%v\n%s", merr, summary)
				}
				if merr == nil {
					lost += meta.Lost
					recorded += uint64(nev)
				}
			}
			return v, err
		}
	}
	best := func(f func() ([]float64, error)) ([]float64, error) {
		var bv []float64
		for i := 0; i < k; i++ {
			v, err := f()
			if err != nil {
				return nil, err
			}
			if bv == nil {
				bv = v
			}
			for j := range v {
				bv[j] = min(bv[j], v[j])
			}
		}
		return bv, nil
	}
	base, err := best(run(false))
	if err != nil {
		b.add(sec, prefix+"untraced", -1, "ns", "failed: "+err.Error())
		return
	}
	b.add(sec, prefix+"untraced: NOP5 site", base[0], "ns", "leaf_nop, not traced")
	b.add(sec, prefix+"untraced: no site", base[1], "ns", "leaf_reloc, not traced")
	for _, m := range []struct{ name, note string }{{"entry", ""}, {"graph", "--graph"}} {
		if m.note != "" && !graph {
			continue
		}
		var extra []string
		if m.note != "" {
			extra = append(extra, m.note)
		}
		lost, recorded = 0, 0
		v, err := best(run(true, extra...))
		if err != nil {
			b.add(sec, prefix+m.name, -1, "ns", "failed: "+err.Error())
			continue
		}
		cmd := strings.Join(append(append([]string{"record"}, extra...), "-F leaf_nop -F leaf_reloc"), " ")
		cmd += fmt.Sprintf(" (%d runs: %d events recorded, %d lost)", k, recorded, lost)
		on, or := v[0]-base[0], v[1]-base[1]
		b.add(sec, prefix+m.name+": NOP5 site overhead", on, "ns", cmd+"; minus untraced")
		b.add(sec, prefix+m.name+": relocating site overhead", or, "ns", cmd+"; minus untraced")
		b.add(sec, prefix+m.name+": relocating minus NOP5 site", or-on, "ns", "")
	}
}

// ensureTracefs mounts tracefs for bpftrace when it is missing.
func ensureTracefs() {
	if _, err := os.Stat("/sys/kernel/tracing/uprobe_events"); err == nil {
		return
	}
	_ = exec.Command("mount", "-t", "tracefs", "nodev", "/sys/kernel/tracing").Run()
}

func (b *bench) throughput() {
	const sec = "Consumer throughput and memory"
	secs := "5"
	if b.quick {
		secs = "1"
	}
	type run struct {
		threads string
		graph   bool
		extra   []string // record flags
		name    string   // "" for the plain full-speed run
	}
	var runs []run
	for _, graph := range []bool{false, true} {
		for _, threads := range []string{"1", "2"} {
			runs = append(runs, run{threads: threads, graph: graph})
		}
		runs = append(runs, run{threads: "1", graph: graph, extra: []string{"--no-spool"}, name: "no spool"})
	}
	for _, threads := range []string{"1", "2"} {
		runs = append(runs, run{threads: threads, extra: []string{"--buffer-chunks", "4"}, name: "overwhelmed"})
	}
	for _, r := range runs {
		mode := "entry"
		if r.graph {
			mode = "graph"
		}
		label := fmt.Sprintf("%s, %s thread(s)", mode, r.threads)
		if r.name != "" {
			label = fmt.Sprintf("%s (%s), %s thread(s)", mode, r.name, r.threads)
		}
		name := "events/s, " + label
		data := filepath.Join(b.work, "tp.data")
		t, err := startTarget([]string{b.bins["sites"], "spin", secs, r.threads})
		if err != nil {
			b.add(sec, name, -1, "events/s", err.Error())
			continue
		}
		args := append([]string{b.livetrace, "record", "-f", "-p", strconv.Itoa(t.cmd.Process.Pid), "-F", "leaf", "-o", data}, r.extra...)
		if r.graph {
			args = append(args, "--graph")
		}
		tr, err := startTracer("livetrace: tracing", args...)
		if err != nil {
			t.kill()
			b.add(sec, name, -1, "events/s", err.Error())
			continue
		}
		shm := testtarget.SharedMemorySize(t.cmd.Process.Pid) / 1024
		calls, err := t.run("calls")
		summary := tr.stop()
		t.kill()
		if err != nil {
			b.add(sec, name, -1, "events/s", err.Error())
			continue
		}
		// Only the metadata: a 5 s recording at full speed holds a
		// quarter of a billion events.
		meta, nev, err := tracefile.ReadMeta(data)
		if err != nil {
			b.add(sec, name, -1, "events/s", err.Error()+"\n"+summary)
			continue
		}
		d, _ := strconv.ParseFloat(secs, 64)
		b.add(sec, name, float64(nev)/d, "events/s", fmt.Sprintf("%.0f calls, %d recorded, %d lost", calls, nev, meta.Lost))
		switch {
		case r.name == "overwhelmed":
			accounted := float64(nev) + float64(meta.Lost)
			b.add(sec, "overwhelmed: recorded+lost vs calls, "+r.threads+" thread(s)", accounted/calls, "ratio", "1.0 = every call accounted for")
			continue
		case r.name == "" && !r.graph:
			// The names the goals and the README's table use.
			b.add(sec, "lost, "+r.threads+" thread(s) at full speed", float64(meta.Lost), "events", "")
		default:
			b.add(sec, "lost, "+label, float64(meta.Lost), "events", "")
		}
		if ps := tr.cmd.ProcessState; ps != nil && nev > 0 {
			if ru, ok := ps.SysUsage().(*syscall.Rusage); ok {
				cpu := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
				b.add(sec, "tracer CPU per million events, "+label, cpu.Seconds()*1e3/(float64(nev)/1e6), "ms",
					fmt.Sprintf("%v user+sys for %d events, attach and encoding included", cpu.Round(time.Millisecond), nev))
			}
		}
		if r.threads == "1" && r.name == "" && !r.graph {
			b.add(sec, "tracer peak RSS", float64(tr.peakKB)/1024, "MiB", "VmHWM of livetrace record")
			b.add(sec, "shared memory in the target", float64(shm)/1024, "MiB", "the agent's memfd mapping")
		}
	}
}

var benchLine = regexp.MustCompile(`^(Benchmark\S+)\s+\d+\s+(.*)$`)

// goTestBench runs one Go benchmark and records its custom metrics.
func (b *bench) goTestBench(section, pkg, name, benchtime string) {
	if b.quick {
		benchtime = "1x"
	}
	cmd := exec.Command("go", "test", "-run", "^$", "-bench", "^"+name+"$", "-benchtime", benchtime, "-timeout", "30m", pkg)
	cmd.Env = append(os.Environ(), "LIVETRACE_REQUIRE_ALL=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		b.add(section, name, -1, "", fmt.Sprintf("failed: %v: %s", err, lastLines(string(out), 5)))
		return
	}
	for _, l := range strings.Split(string(out), "\n") {
		m := benchLine.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		sub := strings.TrimPrefix(m[1], name)
		sub = strings.TrimSuffix(strings.TrimPrefix(sub, "/"), fmt.Sprintf("-%d", runtime.GOMAXPROCS(0)))
		f := strings.Fields(m[2])
		for i := 0; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil || f[i+1] == "ns/op" {
				continue
			}
			label := f[i+1]
			if sub != "" {
				label = sub + ": " + label
			}
			b.add(section, label, v, "", "")
		}
	}
}

// traceableFigure is one binary's figure as internal/reloc's
// TestTraceable writes it (LIVETRACE_TRACEABLE_JSON).
type traceableFigure struct {
	Name       string         `json:"name"`
	Candidates int            `json:"candidates"`
	Eligible   int            `json:"eligible"`
	Accepted   int            `json:"accepted"`
	Refused    map[string]int `json:"refused"`
	Ineligible map[string]int `json:"ineligible"`
	// TablesChecked: refused for a possible jump table, accepted with
	// reloc.Options.ReadOnly (position-dependent executables).
	TablesChecked int `json:"tables_checked"`
}

const traceableSection = "Functions traceable without a compiler NOP (relocating sites; % of those with 5 bytes before the first branch target)"

// traceable runs internal/reloc's TestTraceable, which measures with
// livetrace's own analysis the fraction of functions it can trace by
// relocation in the no-flag fixtures and in stock binaries, and records
// one figure per binary with its refusals by reason.
func (b *bench) traceable() {
	out := filepath.Join(b.work, "traceable.json")
	cmd := exec.Command("go", "test", "-count=1", "-run", "^TestTraceable$", "./internal/reloc")
	cmd.Env = append(os.Environ(), "LIVETRACE_REQUIRE_ALL=1", "LIVETRACE_TRACEABLE_JSON="+out)
	if o, err := cmd.CombinedOutput(); err != nil {
		b.add(traceableSection, "TestTraceable", -1, "%", fmt.Sprintf("failed: %v: %s", err, lastLines(string(o), 5)))
		return
	}
	data, err := os.ReadFile(out)
	var figs []traceableFigure
	if err == nil {
		err = json.Unmarshal(data, &figs)
	}
	if err != nil {
		b.add(traceableSection, "TestTraceable", -1, "%", fmt.Sprintf("failed: read %s: %v", out, err))
		return
	}
	fixtures := traceableFigure{Name: "no-flag fixtures, all", Refused: map[string]int{}, Ineligible: map[string]int{}}
	for _, f := range figs {
		if strings.Contains(f.Name, " -O2") {
			fixtures.Candidates += f.Candidates
			fixtures.Eligible += f.Eligible
			fixtures.Accepted += f.Accepted
			for r, n := range f.Refused {
				fixtures.Refused[r] += n
			}
			for r, n := range f.Ineligible {
				fixtures.Ineligible[r] += n
			}
		}
	}
	for _, f := range append(figs, fixtures) {
		pct := 0.0
		if f.Eligible > 0 {
			pct = 100 * float64(f.Accepted) / float64(f.Eligible)
		}
		note := fmt.Sprintf("%d of %d eligible (%d functions)", f.Accepted, f.Eligible, f.Candidates)
		if len(f.Refused) > 0 {
			note += "; refused: " + countList(f.Refused)
		}
		if len(f.Ineligible) > 0 {
			note += "; not eligible: " + countList(f.Ineligible)
		}
		b.add(traceableSection, f.Name, pct, "%", note)
		if f.TablesChecked > 0 && f.Eligible > 0 {
			n := f.Accepted + f.TablesChecked
			b.add(traceableSection, f.Name+", absolute jump tables checked", 100*float64(n)/float64(f.Eligible), "%",
				fmt.Sprintf("%d of %d: reloc.Options.ReadOnly, which livetrace does not pass yet", n, f.Eligible))
		}
	}
}

// countList prints a count per reason, largest first.
func countList(m map[string]int) string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Slice(ks, func(i, j int) bool { return m[ks[i]] > m[ks[j]] || m[ks[i]] == m[ks[j]] && ks[i] < ks[j] })
	var parts []string
	for _, k := range ks {
		parts = append(parts, fmt.Sprintf("%d %s", m[k], k))
	}
	return strings.Join(parts, ", ")
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, " | ")
}

func (b *bench) checkGoals() {
	g := func(goal string, met bool, actual string) {
		b.goals = append(b.goals, Goal{goal, actual, met})
	}
	rd, _ := b.get("rdtsc (floor of one timestamp)")
	if v, ok := b.get("livetrace graph overhead"); ok {
		g("graph-mode overhead <= 2 x (two rdtsc)", v <= 4*rd, fmt.Sprintf("%.1f ns vs %.1f ns", v, 4*rd))
	}
	if v, ok := b.get("livetrace entry overhead"); ok {
		g("entry-only overhead <= 2 x (one rdtsc)", v <= 2*rd, fmt.Sprintf("%.1f ns vs %.1f ns", v, 2*rd))
	}
	lg, ok1 := b.get("livetrace graph overhead")
	if uf, ok := b.get("uftrace overhead"); ok && ok1 && lg > 0 {
		g("uftrace >= 3x slower than livetrace graph mode", uf >= 3*lg, fmt.Sprintf("%.1fx", uf/lg))
	}
	le, ok2 := b.get("livetrace entry overhead")
	if bp, ok := b.get("bpftrace uprobe overhead"); ok && ok2 && le > 0 {
		g("bpftrace uprobe >= 50x slower than livetrace entry", bp >= 50*le, fmt.Sprintf("%.0fx", bp/le))
	}
	if bp, ok := b.get("bpftrace uprobe+uretprobe overhead"); ok && ok1 && lg > 0 {
		g("bpftrace uprobe+uretprobe >= 50x slower than livetrace graph", bp >= 50*lg, fmt.Sprintf("%.0fx", bp/lg))
	}
	for _, m := range []string{"entry", "graph"} {
		if v, ok := b.get(m + ": relocating minus NOP5 site"); ok {
			on, _ := b.get(m + ": NOP5 site overhead")
			or, _ := b.get(m + ": relocating site overhead")
			g(fmt.Sprintf("relocating site within 1 ns of a NOP5 site (%s)", m), v <= 1, fmt.Sprintf("%+.2f ns (%.1f vs %.1f ns)", v, or, on))
		}
	}
	for _, r := range b.results {
		if r.Section == traceableSection && r.Value >= 0 && !strings.Contains(r.Name, "jump tables checked") && (r.Name == "no-flag fixtures, all" || strings.HasPrefix(r.Name, "libc.so") || strings.HasPrefix(r.Name, "libsqlite3") || strings.HasPrefix(r.Name, "python3")) {
			g(fmt.Sprintf(">= 95%% of eligible functions traceable: %s", r.Name), r.Value >= 95, fmt.Sprintf("%.1f%%", r.Value))
		}
	}
	for _, r := range []string{"10 calls/s", "10M calls/s"} {
		if v, ok := b.get("p99 latency, " + r); ok && v >= 0 {
			mx, _ := b.get("max latency, " + r)
			g("livetrace live shows a call within 100 ms at "+r+" (p99)", v <= 100, fmt.Sprintf("p99 %.1f ms, max %.1f ms", v, mx))
		}
	}
	if v, ok := b.get("disabled site cost"); ok {
		g("disabled site within 0.5 ns of no site", v <= 0.5, fmt.Sprintf("%.2f ns", v))
	}
	stall := map[string]float64{}
	for _, r := range b.results {
		stall[r.Name] = r.Value
	}
	for _, r := range b.results {
		if strings.HasSuffix(r.Name, "attach-ms") && !strings.Contains(r.Name, "max-") {
			g("attach to first event <= 50 ms ("+strings.TrimSuffix(r.Name, ": attach-ms")+")", r.Value <= 50, fmt.Sprintf("%.1f ms", r.Value))
		}
		if sel, ok := strings.CutSuffix(r.Name, ": attach-stall-µs"); ok {
			// The gaps that ended while the tracer attached or
			// detached; those of the tracing in between are the
			// consumer's CPU, another figure.
			base := stall[sel+": baseline-stall-µs"]
			det := stall[sel+": detach-stall-µs"]
			v := max(r.Value, det)
			g("attach and detach stall <= 1 ms beyond baseline ("+sel+")", v-base <= 1000, fmt.Sprintf("%.0f and %.0f µs vs %.0f µs", r.Value, det, base))
		}
	}
	if v, ok := b.get("report: peak RSS"); ok && v > 0 {
		g("report of 250M events in <= 200 MiB", v <= 200, fmt.Sprintf("%.0f MiB", v))
	}
	for _, name := range []string{"report", "export perfetto"} {
		if v, ok := b.get(name + ": events/s"); ok && v > 0 {
			g(name+" >= 20M events/s", v >= 20e6, fmt.Sprintf("%.1fM events/s", v/1e6))
		}
		if v, ok := b.get(name + ": peak RSS"); ok && v > 0 && name != "report" {
			g(name+" of 250M events in <= 200 MiB", v <= 200, fmt.Sprintf("%.0f MiB", v))
		}
	}
	for _, m := range []string{"entry", "graph"} {
		tr, ok := b.get(m + ": traced-ns/call")
		if !ok {
			continue
		}
		if v, ok := b.get(m + ": cap_ints-ns/call"); ok {
			g(fmt.Sprintf("2 integer arguments captured for <= +3 ns (%s)", m), v-tr <= 3, fmt.Sprintf("%+.1f ns (%.1f vs %.1f ns)", v-tr, v, tr))
		}
		if v, ok := b.get(m + ": cap_str-ns/call"); ok {
			g(fmt.Sprintf("1 short string captured for <= +15 ns (%s)", m), v-tr <= 15, fmt.Sprintf("%+.1f ns (%.1f vs %.1f ns)", v-tr, v, tr))
		}
		if v, ok := b.get(m + ": cap_stack_str-ns/call"); ok {
			g(fmt.Sprintf("1 short string in the caller's frame captured for <= +15 ns (%s)", m), v-tr <= 15, fmt.Sprintf("%+.1f ns (%.1f vs %.1f ns)", v-tr, v, tr))
		}
	}
	for _, name := range []string{"lost, 1 thread(s) at full speed", "lost, 2 thread(s) at full speed", "lost, graph, 1 thread(s)", "lost, graph, 2 thread(s)"} {
		if v, ok := b.get(name); ok {
			g("zero loss at full speed: "+strings.TrimPrefix(name, "lost, "), v == 0, fmt.Sprintf("%.0f lost", v))
		}
	}
	for _, r := range b.results {
		if r.Name == "live: ms/batch" {
			g("100k sites enabled in <= 20 ms (live)", r.Value <= 20, fmt.Sprintf("%.1f ms", r.Value))
		}
		if r.Name == "live: max-stall-µs" {
			base := stall["live: baseline-stall-µs"]
			g("calling threads stall <= 1 ms beyond baseline during a batch (live)", r.Value-base <= 1000, fmt.Sprintf("%.0f µs vs %.0f µs", r.Value, base))
		}
		if r.Name == "live: syncs/batch" {
			g("3 syncs per batch (live)", r.Value == 3, fmt.Sprintf("%.0f", r.Value))
		}
	}
}

func (b *bench) print(w io.Writer) {
	host, _ := os.Hostname()
	cpu := "?"
	if c, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		if m := regexp.MustCompile(`model name\s*:\s*(.*)`).FindSubmatch(c); m != nil {
			cpu = string(m[1])
		}
	}
	fmt.Fprintf(w, "livetrace benchmarks — %s, %d CPUs (%s), %s\n\n", host, runtime.NumCPU(), cpu, time.Now().Format(time.RFC3339))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	section := ""
	for _, r := range b.results {
		if r.Section != section {
			section = r.Section
			fmt.Fprintf(tw, "\n%s\n", section)
		}
		v := fmt.Sprintf("%.3f", r.Value)
		if r.Value < 0 && (strings.HasPrefix(r.Note, "failed") || strings.Contains(r.Note, "not installed")) {
			v = "n/a"
		} else if r.Value >= 1000 {
			v = fmt.Sprintf("%.0f", r.Value)
		}
		fmt.Fprintf(tw, "  %s\t%s %s\t%s\n", r.Name, v, r.Unit, r.Note)
	}
	tw.Flush()
	fmt.Fprintf(w, "\nGoals\n")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, g := range b.goals {
		mark := "MISSED"
		if g.Met {
			mark = "met"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", g.Goal, g.Actual, mark)
	}
	tw.Flush()
}

func (b *bench) write(path string) error {
	data, err := json.MarshalIndent(map[string]any{
		"machine": map[string]any{"cpus": runtime.NumCPU(), "kernel": kernel()},
		"time":    time.Now().Format(time.RFC3339),
		"results": b.results,
		"goals":   b.goals,
	}, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(data, '\n'), 0o644)
}

func kernel() string {
	var u syscall.Utsname
	if syscall.Uname(&u) != nil {
		return "?"
	}
	var s []byte
	for _, c := range u.Release {
		if c == 0 {
			break
		}
		s = append(s, byte(c))
	}
	return string(s)
}
