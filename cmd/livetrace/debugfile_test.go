package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/livetrace/livetrace/internal/elfsite"
	"github.com/livetrace/livetrace/internal/testtarget"
)

// staticFixture is a program whose traced functions are static: "run N"
// calls static_pair N times, which calls static_fn twice, and answers
// "done N".
const staticFixture = `
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
static volatile long sink;
__attribute__((noinline, used)) static long static_fn(long x) { sink += x; return sink * 3 + x; }
__attribute__((noinline, used)) static long static_pair(long x) { return static_fn(x) + static_fn(x + 1); }
int main(void) {
	char line[64];
	printf("ready\n");
	fflush(stdout);
	while (fgets(line, sizeof line, stdin)) {
		if (strncmp(line, "run ", 4) == 0) {
			long n = atol(line + 4);
			for (long i = 0; i < n; i++)
				static_pair(i);
			printf("done %ld\n", n);
			fflush(stdout);
		}
	}
	return 0;
}
`

// strippedWithDebugFile builds staticFixture with gcc (no tracing flags),
// strips it, and puts its debug file (objcopy --only-keep-debug) in a new
// debug directory under its build ID. It returns the stripped program, the
// directory and the debug file's path.
func strippedWithDebugFile(t *testing.T) (bin, dir, debug string) {
	t.Helper()
	for _, tool := range []string{"gcc", "objcopy", "strip"} {
		if _, err := exec.LookPath(tool); err != nil {
			testtarget.SkipOrFatal(t, "%s is not installed: run `make deps-test` (gcc, binutils)", tool)
		}
	}
	tmp := t.TempDir()
	src := filepath.Join(tmp, "static.c")
	if err := os.WriteFile(src, []byte(staticFixture), 0o644); err != nil {
		t.Fatal(err)
	}
	full := filepath.Join(tmp, "static.full")
	bin = filepath.Join(tmp, "static")
	dbg := filepath.Join(tmp, "static.debug")
	for _, args := range [][]string{
		{"gcc", "-O0", "-g", "-Wl,--build-id=sha1", "-o", full, src},
		{"objcopy", "--only-keep-debug", full, dbg},
		{"strip", "--strip-all", "-o", bin, full},
	} {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	t.Setenv(elfsite.DebugDirEnv, "-")
	spec, err := elfsite.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	dir = t.TempDir()
	debug = elfsite.DebugFilePath(dir, spec.BuildID)
	if debug == "" {
		t.Fatalf("%s has no build ID", bin)
	}
	if err := os.MkdirAll(filepath.Dir(debug), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(dbg, debug); err != nil {
		t.Fatal(err)
	}
	return bin, dir, debug
}

// TestDebugFileListRecord: the static functions of a stripped program are
// listed, with the debug file named, and traced with exact counts once
// LIVETRACE_DEBUG_DIR points at a debug directory holding its debug file;
// without it, they are not found.
func TestDebugFileListRecord(t *testing.T) {
	bin, dir, debug := strippedWithDebugFile(t)

	// Without it, the stripped program has no function to trace.
	if stdout, _, err := runCLI(t, "list", "--all", bin, "static_fn"); err == nil || strings.Contains(stdout, "static_fn") {
		t.Fatalf("list without the debug file: %v\n%s\nwant no static_fn", err, stdout)
	}
	t.Setenv(elfsite.DebugDirEnv, dir)
	stdout, stderr, err := runCLI(t, "list", "--all", "--json", bin, "static_*")
	if err != nil {
		t.Fatal(err)
	}
	rows := decodeJSON(t, stdout)
	if len(rows) != 2 {
		t.Fatalf("list found %d static_* functions, want 2:\n%s", len(rows), stdout)
	}
	for _, r := range rows {
		if r["form"] != "reloc" || r["symbol_file"] != debug {
			t.Errorf("%v: want form reloc, symbol_file %s", r, debug)
		}
	}
	if !strings.Contains(stderr, "named from its debug file "+debug) {
		t.Errorf("list does not name the debug file on stderr: %q", stderr)
	}
	stdout, _, err = runCLI(t, "list", "--all", bin, "static_fn")
	if err != nil || !strings.Contains(stdout, "static_fn") {
		t.Errorf("list table: %v\n%s", err, stdout)
	}

	testtarget.RequireRoot(t)
	tp := testtarget.Start(t, bin)
	if _, err := tp.Expect("ready", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	pid := strconv.Itoa(tp.Pid())
	stdout, _, err = runCLI(t, "list", "--all", "--json", "-p", pid, "static_fn")
	if err != nil {
		t.Fatal(err)
	}
	if rows := decodeJSON(t, stdout); len(rows) != 1 || rows[0]["symbol_file"] != debug || rows[0]["state"] != "orig" {
		t.Errorf("list -p: %s", stdout)
	}
	out := filepath.Join(t.TempDir(), "static.data")
	cmd, stderrR, said := startTracing(t, livetraceBinary(t), "record", "-p", pid, "-F", "static_fn", "-F", "static_pair", "-o", out)
	if !strings.Contains(said, "tracing 2 functions") {
		t.Errorf("record says %q, want 2 functions", said)
	}
	const n = 1000
	if err := tp.Send("run " + strconv.Itoa(n)); err != nil {
		t.Fatal(err)
	}
	if _, err := tp.Expect("done "+strconv.Itoa(n), 30*time.Second); err != nil {
		t.Fatal(err)
	}
	stopRecord(t, cmd, said, stderrR)
	calls := reportCalls(t, out)
	if calls["static_fn"] != 2*n || calls["static_pair"] != n {
		t.Errorf("recorded static_fn %d, static_pair %d calls; the program made %d and %d", calls["static_fn"], calls["static_pair"], 2*n, n)
	}
	testtarget.CheckText(t, tp.Pid())
}

// TestDebugFileLibc: with Debian's libc6-dbg, list names libc's internal
// functions (_int_malloc is static) from the debug file, in a running
// process too, and record traces one exactly: glibc 2.36 sorts with a
// merge sort, whose static msort_with_tmp.part.0 runs 7 times for each
// qsort of 8 elements (8, 4, 4, 2, 2, 2, 2; arrays of 1 are not sorted).
func TestDebugFileLibc(t *testing.T) {
	t.Setenv(elfsite.DebugDirEnv, "")
	libc := "/lib/x86_64-linux-gnu/libc.so.6"
	spec, err := elfsite.Open(libc)
	if err != nil {
		testtarget.SkipOrFatal(t, "open %s: %v", libc, err)
	}
	if spec.SymbolFile == "" {
		testtarget.SkipOrFatal(t, "no debug file for %s under %s: run `make deps-test`, which installs libc6-dbg (%v)", libc, elfsite.DefaultDebugDir, spec.SymbolFileErr)
	}
	stdout, _, err := runCLI(t, "list", "--all", "--json", libc, "_int_malloc")
	if err != nil {
		t.Fatal(err)
	}
	if rows := decodeJSON(t, stdout); len(rows) != 1 || rows[0]["form"] != "reloc" || rows[0]["symbol_file"] != spec.SymbolFile {
		t.Errorf("list %s _int_malloc: %s", libc, stdout)
	}
	testtarget.RequireRoot(t)
	tp := testtarget.Start(t, testtarget.Build(t, testtarget.LibcCalls, testtarget.ClangNop5, testtarget.NoSites()), "-t", "2")
	if _, err := tp.Expect("ready", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := testtarget.RunWorkload(tp, 1, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	pid := strconv.Itoa(tp.Pid())
	stdout, _, err = runCLI(t, "list", "--all", "--json", "-p", pid, "_int_malloc", "_int_free", "msort_with_tmp*")
	if err != nil {
		t.Fatal(err)
	}
	if rows := decodeJSON(t, stdout); len(rows) != 3 {
		t.Errorf("list -p _int_malloc _int_free msort_with_tmp*: %s", stdout)
	}
	out := filepath.Join(t.TempDir(), "msort.data")
	cmd, stderrR, said := startTracing(t, livetraceBinary(t), "record", "-p", pid, "-m", "libc.so.6", "-F", "msort_with_tmp.part.0", "-F", "qsort", "-o", out)
	if !strings.Contains(said, "tracing 2 functions") {
		t.Errorf("record says %q, want 2 functions", said)
	}
	want, err := testtarget.RunWorkload(tp, 300, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	stopRecord(t, cmd, said, stderrR)
	calls := reportCalls(t, out)
	if calls["qsort"] != want["qsort"] || calls["msort_with_tmp.part.0"] != 7*want["qsort"] || want["qsort"] == 0 {
		t.Errorf("recorded qsort %d, msort_with_tmp.part.0 %d calls; the program called qsort %d times (so %d)",
			calls["qsort"], calls["msort_with_tmp.part.0"], want["qsort"], 7*want["qsort"])
	}
	testtarget.CheckText(t, tp.Pid())
}
