package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/livetrace/livetrace/internal/elfsite"
	"github.com/livetrace/livetrace/internal/testtarget"
)

// stockFuncs are the API functions of libsqlite3 that bpftrace counts for
// [TestStockSQLite]: the shell calls each of them during a round, and
// each is a relocating site (sqlite3_complete is not: a jump table).
var stockFuncs = []string{
	"sqlite3_prepare_v2", "sqlite3_step", "sqlite3_finalize", "sqlite3_column_count",
	"sqlite3_column_text", "sqlite3_column_type", "sqlite3_mutex_enter", "sqlite3_free",
}

// sqliteRound is a deterministic script for the sqlite3 shell on a table
// t(id INTEGER PRIMARY KEY, v TEXT) that the round leaves empty: the
// statements, one a line, and the lines the shell must answer, in order.
func sqliteRound(rows int) (stmts, answers []string) {
	for i := 1; i <= rows; i++ {
		stmts = append(stmts, fmt.Sprintf("INSERT INTO t(v) VALUES('row-%d');", i))
	}
	sum := rows * (rows + 1) / 2
	stmts = append(stmts,
		"SELECT count(*), sum(id) FROM t;",
		"UPDATE t SET v = upper(v) WHERE id % 3 = 0;",
		"SELECT count(*) FROM t WHERE v GLOB 'ROW-*';",
		"SELECT group_concat(id) FROM t WHERE id % 25 = 0;",
		"DELETE FROM t WHERE id > 10;",
		"SELECT count(*), max(v) FROM t;",
		"DELETE FROM t;",
		"SELECT 'end of round';",
	)
	var quarter []string
	for i := 25; i <= rows; i += 25 {
		quarter = append(quarter, strconv.Itoa(i))
	}
	answers = []string{
		fmt.Sprintf("%d|%d", rows, sum),
		strconv.Itoa(rows / 3),
		strings.Join(quarter, ","),
		"10|row-8",
		"end of round",
	}
	return stmts, answers
}

// startShell starts the stock sqlite3 shell on a new scratch database,
// reading statements from a pipe (so it stays alive between them), and
// creates the table of [sqliteRound].
func startShell(t *testing.T, sqlite3 string) *testtarget.Process {
	t.Helper()
	db := filepath.Join(t.TempDir(), "scratch.db")
	tp := testtarget.Start(t, sqlite3, "-init", "/dev/null", "-batch", db)
	for _, s := range []string{"CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);", "SELECT 'ready';"} {
		if err := tp.Send(s); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := tp.Expect("ready", 20*time.Second); err != nil {
		t.Fatalf("sqlite3 shell: %v\n%s", err, tp.Stderr())
	}
	return tp
}

// runRound sends one round of statements to the shell and checks every
// answer.
func runRound(t *testing.T, tp *testtarget.Process, rows int) {
	t.Helper()
	stmts, answers := sqliteRound(rows)
	for _, s := range stmts {
		if err := tp.Send(s); err != nil {
			t.Fatal(err)
		}
	}
	for _, want := range answers {
		got, err := tp.ReadLine(60 * time.Second)
		if err != nil {
			t.Fatalf("sqlite3 shell, waiting for %q: %v\nstderr: %s", want, err, tp.Stderr())
		}
		if got != want {
			t.Fatalf("sqlite3 shell answered %q, want %q\nstderr: %s", got, want, tp.Stderr())
		}
	}
	if s := tp.Stderr(); s != "" {
		t.Fatalf("sqlite3 shell wrote to stderr: %s", s)
	}
}

// moduleFuncs returns the module of process pid whose file name matches
// glob, and the runtime addresses of its functions whose name matches
// fglob.
func moduleFuncs(t *testing.T, pid int, glob, fglob string) (*elfsite.Module, map[string]uint64) {
	t.Helper()
	mods, err := elfsite.LiveModules(pid)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range mods {
		if ok, _ := filepath.Match(glob, m.Name()); !ok {
			continue
		}
		addrs := map[string]uint64{}
		for _, f := range m.Spec.Funcs {
			if ok, _ := filepath.Match(fglob, f.Name); ok && f.Global {
				addrs[f.Name] = m.Runtime(f.Addr)
			}
		}
		return m, addrs
	}
	t.Fatalf("pid %d maps no module %s", pid, glob)
	return nil, nil
}

// bpftraceCounts counts, with bpftrace uprobes (independent of livetrace),
// the calls that process pid makes to the functions of the library at lib
// named by addrs (name to runtime address) while run runs, and returns
// them by function name. bpftrace takes about 0.1 s per uprobe to attach
// and as much to detach.
func bpftraceCounts(t *testing.T, pid int, lib string, addrs map[string]uint64, run func()) map[string]uint64 {
	t.Helper()
	path, err := exec.LookPath("bpftrace")
	if err != nil {
		testtarget.SkipOrFatal(t, "bpftrace is not installed: run `make test`, which installs it (or apt-get install bpftrace)")
	}
	var probes []string
	for fn := range addrs {
		probes = append(probes, "uprobe:"+lib+":"+fn)
	}
	sort.Strings(probes)
	prog := fmt.Sprintf("%s /pid == %d/ { @c[probe] = count(); }", strings.Join(probes, ","), pid)
	var mu sync.Mutex
	var out bytes.Buffer
	cmd := exec.Command(path, "-e", prog)
	w := writerFunc(func(p []byte) (int, error) { mu.Lock(); defer mu.Unlock(); return out.Write(p) })
	cmd.Stdout, cmd.Stderr = w, w
	output := func() string { mu.Lock(); defer mu.Unlock(); return out.String() }
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	defer func() {
		cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-done:
		case <-time.After(120 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	}()
	// Attached when every function holds the uprobe's INT3.
	names := make([]string, 0, len(addrs))
	list := make([]uint64, 0, len(addrs))
	for n, a := range addrs {
		names, list = append(names, n), append(list, a)
	}
	deadline := time.Now().Add(120 * time.Second)
	for {
		live, err := elfsite.ReadSiteBytes(pid, list)
		if err != nil {
			t.Fatal(err)
		}
		missing := ""
		for i, b := range live {
			if b[0] != 0xcc {
				missing = names[i]
				break
			}
		}
		if missing == "" {
			break
		}
		select {
		case <-done:
			t.Fatalf("bpftrace exited: %s", output())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("bpftrace did not put its uprobe on %s within 120 s; output:\n%s", missing, output())
		}
		time.Sleep(50 * time.Millisecond)
	}
	run()
	cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-done:
	case <-time.After(120 * time.Second):
		t.Fatalf("bpftrace did not exit on SIGINT; output:\n%s", output())
	}
	counts := map[string]uint64{}
	re := regexp.MustCompile(`@c\[uprobe:[^\]]*:([A-Za-z0-9_]+)\]: (\d+)`)
	for _, m := range re.FindAllStringSubmatch(output(), -1) {
		n, _ := strconv.ParseUint(m[2], 10, 64)
		counts[m[1]] = n
	}
	return counts
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// reportCalls returns the calls per function of the recording out.
func reportCalls(t *testing.T, out string) map[string]uint64 {
	t.Helper()
	stdout, _, err := runCLI(t, "report", "--json", "-i", out)
	if err != nil {
		t.Fatal(err)
	}
	var rows []struct {
		Function string `json:"function"`
		Calls    uint64 `json:"calls"`
	}
	if err := json.Unmarshal([]byte(stdout), &rows); err != nil {
		t.Fatal(err)
	}
	calls := map[string]uint64{}
	for _, r := range rows {
		calls[r.Function] += r.Calls
	}
	return calls
}

// stopRecord ends a record started by startTracing with SIGINT.
func stopRecord(t *testing.T, cmd *exec.Cmd, said string, stderr interface{ Read([]byte) (int, error) }) {
	t.Helper()
	_ = cmd.Process.Signal(syscall.SIGINT)
	rest := make([]byte, 1<<16)
	n, _ := stderr.Read(rest)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("record: %v\n%s%s", err, said, rest[:n])
	}
}

// TestStockSQLite traces the sqlite3_* API of Debian's stock libsqlite3-0
// in Debian's stock sqlite3 shell, live: `record -p PID -m 'libsqlite3.so*'
// -F 'sqlite3_*'` over a round of statements must count every traced
// function exactly as bpftrace's uprobes count the same round in another
// shell; the shell answers right throughout and its text is byte-identical
// afterwards. Then `-m libc.so.6 -F malloc` on the same shell.
//
// bpftrace counts a few API functions; with LIVETRACE_SOAK=1 it counts
// every exported sqlite3_* function (about 280 uprobes, a minute to attach
// and detach), and every count of the recording is compared.
func TestStockSQLite(t *testing.T) {
	testtarget.RequireRoot(t)
	sqlite3, err := exec.LookPath("sqlite3")
	if err != nil {
		testtarget.SkipOrFatal(t, "the sqlite3 shell is not installed: run `make deps-test` (apt-get install sqlite3)")
	}
	bin := livetraceBinary(t)
	const rows = 100

	// Ground truth: bpftrace on a shell of its own, over its second round
	// (the first allocates caches that later rounds reuse), as record
	// below.
	ref := startShell(t, sqlite3)
	runRound(t, ref, rows)
	lib, addrs := moduleFuncs(t, ref.Pid(), "libsqlite3.so*", "sqlite3_*")
	if len(addrs) < 200 {
		t.Fatalf("%s exports %d sqlite3_* functions, want the whole API", lib.Path, len(addrs))
	}
	if os.Getenv("LIVETRACE_SOAK") == "" {
		few := map[string]uint64{}
		for _, fn := range stockFuncs {
			a, ok := addrs[fn]
			if !ok {
				t.Fatalf("%s does not export %s", lib.Path, fn)
			}
			few[fn] = a
		}
		addrs = few
	}
	want := bpftraceCounts(t, ref.Pid(), lib.Path, addrs, func() { runRound(t, ref, rows) })
	for _, fn := range stockFuncs {
		if want[fn] == 0 {
			t.Fatalf("bpftrace counted no call of %s: %v", fn, want)
		}
	}
	testtarget.CheckText(t, ref.Pid())
	runRound(t, ref, rows)

	tp := startShell(t, sqlite3)
	pid := strconv.Itoa(tp.Pid())
	runRound(t, tp, rows)
	out := filepath.Join(t.TempDir(), "sqlite.data")
	cmd, stderr, said := startTracing(t, bin, "record", "-p", pid, "-m", "libsqlite3.so*", "-F", "sqlite3_*", "-o", out)
	m := regexp.MustCompile(`tracing (\d+) functions`).FindStringSubmatch(said)
	if m == nil {
		t.Fatalf("record says %q", said)
	}
	runRound(t, tp, rows)
	stopRecord(t, cmd, said, stderr)
	testtarget.CheckText(t, tp.Pid())
	runRound(t, tp, rows)

	// The functions record traced: the relocating sites of the library.
	listOut, _, err := runCLI(t, "list", "--all", "--json", "-p", pid, "sqlite3_*")
	if err != nil {
		t.Fatal(err)
	}
	traced := map[string]bool{}
	for _, r := range decodeJSON(t, listOut) {
		if r["form"] == "reloc" && strings.Contains(r["module"].(string), "libsqlite3") {
			traced[r["function"].(string)] = true
		}
	}
	if n, _ := strconv.Atoi(m[1]); n != len(traced) {
		t.Errorf("record traced %d functions, list shows %d relocating sites", n, len(traced))
	}
	got := reportCalls(t, out)
	for _, fn := range stockFuncs {
		if !traced[fn] {
			t.Errorf("%s was not traced", fn)
		}
	}
	same := 0
	for fn := range traced {
		if _, counted := addrs[fn]; !counted {
			continue
		}
		if got[fn] != want[fn] {
			t.Errorf("%s: livetrace counted %d calls, bpftrace %d", fn, got[fn], want[fn])
		} else if want[fn] > 0 {
			same++
		}
	}
	for fn, n := range got {
		if !traced[fn] {
			t.Errorf("%s: %d calls recorded, but it is not a traced function", fn, n)
		}
	}
	t.Logf("%d functions traced, %d of the %d bpftrace counted were called the same number of times: prepare_v2 %d, step %d, finalize %d",
		len(traced), same, len(addrs), got["sqlite3_prepare_v2"], got["sqlite3_step"], got["sqlite3_finalize"])

	// malloc of the stock libc in the same shell.
	out = filepath.Join(t.TempDir(), "malloc.data")
	cmd, stderr, said = startTracing(t, bin, "record", "-p", pid, "-m", "libc.so.6", "-F", "malloc", "-o", out)
	if !strings.Contains(said, "tracing 1 function") {
		t.Errorf("record says %q, want 1 function", said)
	}
	runRound(t, tp, rows)
	stopRecord(t, cmd, said, stderr)
	if n := reportCalls(t, out)["malloc"]; n == 0 {
		t.Error("malloc: no call recorded while the shell ran a round")
	}
	testtarget.CheckText(t, tp.Pid())
	runRound(t, tp, rows)
}
