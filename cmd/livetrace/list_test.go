package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/livetrace/livetrace/internal/elfsite"
	"github.com/livetrace/livetrace/internal/testtarget"
)

// runList runs `livetrace list args...` and returns stdout, stderr and the
// error.
func runList(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	var out, errb bytes.Buffer
	err := run(append([]string{"list"}, args...), &out, &errb)
	return out.String(), errb.String(), err
}

func TestListFileTable(t *testing.T) {
	exe := testtarget.Build(t, testtarget.Simple, testtarget.ClangNop5)
	spec, err := elfsite.Open(exe)
	if err != nil {
		t.Fatal(err)
	}
	out, errOut, err := runList(t, exe)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if f := strings.Fields(lines[0]); !cmp.Equal(f, []string{"FUNCTION", "MODULE", "ADDRESS", "FORM"}) {
		t.Errorf("header %q", lines[0])
	}
	if len(lines) != 1+len(spec.Sites) {
		t.Fatalf("%d table lines, want %d:\n%s", len(lines), 1+len(spec.Sites), out)
	}
	for i, st := range spec.Sites {
		want := []string{spec.SiteName(st), filepath.Base(exe), fmt.Sprintf("0x%x", st.Addr), "nop5"}
		if got := strings.Fields(lines[1+i]); !cmp.Equal(got, want) {
			t.Errorf("line %d: %q, want %q", 1+i, got, want)
		}
	}
	if want := fmt.Sprintf("%d sites in 1 module\n", len(spec.Sites)); errOut != want {
		t.Errorf("stderr %q, want %q", errOut, want)
	}
}

// decodeJSON parses list --json output.
func decodeJSON(t *testing.T, out string) []map[string]any {
	t.Helper()
	var rows []map[string]any
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("output is not a JSON array: %v\n%s", err, out)
	}
	return rows
}

func keys(m map[string]any) []string {
	var k []string
	for key := range m {
		k = append(k, key)
	}
	sort.Strings(k)
	return k
}

func TestListFileJSON(t *testing.T) {
	for _, form := range testtarget.Forms {
		t.Run(string(form), func(t *testing.T) {
			exe := testtarget.Build(t, testtarget.CXX, form)
			spec, err := elfsite.Open(exe)
			if err != nil {
				t.Fatal(err)
			}
			out, _, err := runList(t, "--json", exe)
			if err != nil {
				t.Fatal(err)
			}
			rows := decodeJSON(t, out)
			if len(rows) != len(spec.Sites) {
				t.Fatalf("%d JSON rows, %d sites", len(rows), len(spec.Sites))
			}
			wantForm := map[testtarget.Form]string{testtarget.ClangNop5: "nop5", testtarget.GccMcount: "nop5", testtarget.GccSled: "sled"}[form]
			wantKeys := []string{"address", "bytes", "endbr", "form", "function", "module", "size", "symbol", "symbol_address"}
			for i, st := range spec.Sites {
				r := rows[i]
				f := spec.Funcs[st.Func]
				if diff := cmp.Diff(wantKeys, keys(r)); diff != "" {
					t.Fatalf("row %d keys (-want +got):\n%s", i, diff)
				}
				want := map[string]any{
					"function":       spec.SiteName(st),
					"symbol":         f.Raw,
					"module":         exe,
					"address":        fmt.Sprintf("0x%x", st.Addr),
					"symbol_address": fmt.Sprintf("0x%x", f.Addr),
					"size":           float64(f.Size),
					"form":           wantForm,
					"endbr":          false,
					"bytes":          fmt.Sprintf("%x", st.Bytes),
				}
				if diff := cmp.Diff(want, r); diff != "" {
					t.Errorf("row %d (-want +got):\n%s", i, diff)
				}
			}
			// Demangled names, and globs that match them or the mangled names.
			out, _, err = runList(t, "--json", exe, "shapes::geo::*", "_ZN6shapes7Counter3addEl")
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, r := range decodeJSON(t, out) {
				names = append(names, r["function"].(string))
			}
			if want := []string{"shapes::Counter::add", "shapes::geo::area", "shapes::geo::perimeter"}; !sameSet(names, want) {
				t.Errorf("filtered names %q, want %q", names, want)
			}
		})
	}
}

func sameSet(a, b []string) bool {
	a, b = append([]string(nil), a...), append([]string(nil), b...)
	sort.Strings(a)
	sort.Strings(b)
	return cmp.Equal(a, b)
}

func TestListGlobs(t *testing.T) {
	exe := testtarget.Build(t, testtarget.Simple, testtarget.ClangNop5)
	out, _, err := runList(t, exe, "main")
	if err != nil {
		t.Fatal(err)
	}
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 2 || !strings.HasPrefix(lines[1], "main ") {
		t.Errorf("list FILE main:\n%s", out)
	}
	_, _, err = runList(t, exe, "mian")
	if err == nil || !strings.Contains(err.Error(), `match "mian": no function`) || !strings.Contains(err.Error(), "closest names: main") {
		t.Errorf("misspelled glob: %v", err)
	}
	_, _, err = runList(t, exe, "[")
	if err == nil || !strings.Contains(err.Error(), "syntax error in pattern") {
		t.Errorf("bad glob: %v", err)
	}
	if got := closest("fn_0001", []string{"fn_00010", "fn_00011", "main", "fn_00010", "zzz"}, 5); !cmp.Equal(got, []string{"fn_00010", "fn_00011"}) {
		t.Errorf("closest = %q", got)
	}
	if d := editDistance("kitten", "sitting"); d != 3 {
		t.Errorf("editDistance = %d", d)
	}
}

func TestListErrors(t *testing.T) {
	dir := t.TempDir()
	text := filepath.Join(dir, "notes.txt")
	if err := os.WriteFile(text, []byte("hello\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	elf32 := filepath.Join(dir, "elf32")
	h := make([]byte, 64)
	copy(h, "\x7fELF\x01\x01\x01")
	if err := os.WriteFile(elf32, h, 0o644); err != nil {
		t.Fatal(err)
	}
	nosites := testtarget.Build(t, testtarget.Simple, testtarget.ClangNop5, testtarget.NoSites())
	exe := testtarget.Build(t, testtarget.Simple, testtarget.ClangNop5)
	for _, c := range []struct {
		args []string
		want string
	}{
		{nil, "give a FILE or -p PID"},
		{[]string{"-p", "1", exe}, "give either -p PID or FILE, not both"},
		{[]string{"-p", "0"}, "a pid is a positive number"},
		{[]string{"-p", "x"}, "invalid argument"},
		{[]string{filepath.Join(dir, "missing")}, "no such file or directory"},
		{[]string{text}, "not an ELF file"},
		{[]string{dir}, "not an ELF file"},
		{[]string{elf32}, "only x86-64 ELF files are supported, this one is 32-bit"},
		{[]string{nosites}, "no patchable sites in " + nosites + ": build it with clang -fpatchable-function-entry=5 (see docs/BUILDING.md)"},
		{[]string{"-p", "1073741824"}, "no process with pid 1073741824"},
	} {
		out, _, err := runList(t, c.args...)
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("list %q: error %v, want one line containing %q", c.args, err, c.want)
		}
		if out != "" {
			t.Errorf("list %q: printed %q on error", c.args, out)
		}
	}
}

func TestListKernelThread(t *testing.T) {
	// Pid 2 is kthreadd, unless we run in a pid namespace.
	if comm, _ := os.ReadFile("/proc/2/comm"); string(comm) != "kthreadd\n" {
		t.Log("pid 2 is not kthreadd here (pid namespace?): nothing to check")
		return
	}
	_, _, err := runList(t, "-p", "2")
	if want := "pid 2 is a kernel thread: it has no user-space code to trace"; err == nil || err.Error() != want {
		t.Errorf("list -p 2: %v, want %q", err, want)
	}
}

func TestListStripped(t *testing.T) {
	strip, err := exec.LookPath("strip")
	if err != nil {
		testtarget.SkipOrFatal(t, "strip is not installed")
	}
	exe := testtarget.Build(t, testtarget.Simple, testtarget.GccMcount)
	cp := filepath.Join(t.TempDir(), "stripped")
	if b, err := exec.Command(strip, "-o", cp, exe).CombinedOutput(); err != nil {
		t.Fatalf("strip: %v\n%s", err, b)
	}
	out, errOut, err := runList(t, "--json", cp)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(errOut, "warning: "+cp+" is stripped") {
		t.Errorf("no stripped warning in %q", errOut)
	}
	for _, r := range decodeJSON(t, out) {
		if r["function"] != r["address"] {
			t.Errorf("site of a stripped ET_EXEC named %v, want its address %v", r["function"], r["address"])
		}
	}
	// An address works as a glob.
	first := decodeJSON(t, out)[0]["address"].(string)
	if out, _, err := runList(t, cp, first); err != nil || !strings.Contains(out, first) {
		t.Errorf("list %s %s: %v\n%s", cp, first, err, out)
	}
}

// TestListStrippedNoFunctions: --all of a stripped PIE built without NOPs,
// which names no function, says why nothing can be traced and what to do.
func TestListStrippedNoFunctions(t *testing.T) {
	exe := buildStrippedPIE(t, "static int f(int x) { return x * 3; }\nint main(int c, char **v) { (void)v; return f(c); }\n")
	t.Setenv("LIVETRACE_DEBUG_DIR", "-")
	_, _, err := runList(t, "--all", exe)
	if err == nil {
		t.Fatal("list --all of a stripped file without functions succeeded")
	}
	for _, want := range []string{"no patchable sites in " + exe, "stripped and names none", "-dbgsym", "LIVETRACE_DEBUG_DIR"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}

func startFixture(t *testing.T, name string, form testtarget.Form, args ...string) (*testtarget.Process, string) {
	t.Helper()
	testtarget.RequireRoot(t)
	exe := testtarget.Build(t, name, form)
	p := testtarget.Start(t, exe, args...)
	t.Cleanup(p.Kill)
	if _, err := p.Expect("ready", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	return p, exe
}

func TestListPid(t *testing.T) {
	p, exe := startFixture(t, testtarget.UseLib, testtarget.ClangNop5)
	pid := fmt.Sprint(p.Pid())
	mods, err := elfsite.LiveModules(p.Pid())
	if err != nil {
		t.Fatal(err)
	}
	runtime := map[string]string{} // address -> module path
	for _, m := range mods {
		for _, st := range m.Spec.Sites {
			runtime[fmt.Sprintf("0x%x", m.Runtime(st.Addr))] = m.Path
		}
	}
	out, errOut, err := runList(t, "--json", "-p", pid)
	if err != nil {
		t.Fatal(err)
	}
	rows := decodeJSON(t, out)
	if len(rows) != len(runtime) {
		t.Errorf("%d rows, %d live sites", len(rows), len(runtime))
	}
	seen := map[string]bool{}
	for _, r := range rows {
		if r["state"] != "nop" || r["form"] != "nop5" {
			t.Errorf("row %v: want state nop, form nop5", r)
		}
		if mod := runtime[r["address"].(string)]; mod != r["module"] {
			t.Errorf("row %v: module %q by address", r, mod)
		}
		seen[filepath.Base(r["module"].(string))] = true
	}
	if !seen[filepath.Base(exe)] || !seen[testtarget.LibName] {
		t.Errorf("modules %v, want %s and %s", seen, filepath.Base(exe), testtarget.LibName)
	}
	if !strings.HasPrefix(errOut, fmt.Sprintf("%d sites in 2 modules", len(rows))) {
		t.Errorf("stderr %q", errOut)
	}
	out, _, err = runList(t, "-p", pid, "lib_*")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if f := strings.Fields(lines[0]); !cmp.Equal(f, []string{"FUNCTION", "MODULE", "ADDRESS", "FORM", "STATE"}) {
		t.Errorf("header %q", lines[0])
	}
	for _, l := range lines[1:] {
		if f := strings.Fields(l); len(f) != 5 || !strings.HasPrefix(f[0], "lib_") || f[1] != testtarget.LibName || f[4] != "nop" {
			t.Errorf("line %q", l)
		}
	}
}

func TestListPidNoSites(t *testing.T) {
	testtarget.RequireRoot(t)
	exe := testtarget.Build(t, testtarget.Simple, testtarget.ClangNop5, testtarget.NoSites())
	p := testtarget.Start(t, exe, "loop")
	t.Cleanup(p.Kill)
	if _, err := p.Expect("ready", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	_, _, err := runList(t, "-p", fmt.Sprint(p.Pid()))
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("no patchable sites in pid %d", p.Pid())) || !strings.Contains(err.Error(), "list --all") {
		t.Errorf("list -p (no sites): %v", err)
	}
}

// TestListPermission runs list -p as user nobody against a root process:
// the error must say which privilege is missing.
func TestListPermission(t *testing.T) {
	if os.Getenv("LIVETRACE_LIST_HELPER") == "1" {
		return
	}
	p, _ := startFixture(t, testtarget.Simple, testtarget.ClangNop5, "loop")
	// Copy the test binary where user nobody can run it.
	dir, err := os.MkdirTemp("", "livetrace-list-perm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "list.test")
	if err := copyFile(self, bin); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-test.run=^TestListPermissionHelper$", "-test.v")
	cmd.Env = append(os.Environ(), "LIVETRACE_LIST_HELPER=1", fmt.Sprintf("LIVETRACE_LIST_PID=%d", p.Pid()))
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helper: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "HELPER-ERR: inspect pid") || !strings.Contains(string(out), "CAP_SYS_PTRACE") {
		t.Errorf("helper output:\n%s", out)
	}
}

// TestListPermissionHelper is the unprivileged half of TestListPermission.
func TestListPermissionHelper(t *testing.T) {
	if os.Getenv("LIVETRACE_LIST_HELPER") != "1" {
		return
	}
	var out, errb bytes.Buffer
	err := run([]string{"list", "-p", os.Getenv("LIVETRACE_LIST_PID")}, &out, &errb)
	fmt.Printf("HELPER-ERR: %v\n", err)
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// buildStrippedPIE builds the C program src by gcc -O2 -s -pie, without
// NOPs: a stripped PIE that exports no function (as Debian's memcached).
func buildStrippedPIE(t *testing.T, src string, flags ...string) string {
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		testtarget.SkipOrFatal(t, "gcc is not installed")
	}
	dir := t.TempDir()
	c, exe := filepath.Join(dir, "prog.c"), filepath.Join(dir, "prog")
	if err := os.WriteFile(c, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, err := exec.Command(gcc, append([]string{"-O2", "-s", "-pie", "-fPIE", "-o", exe, c}, flags...)...).CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, b)
	}
	return exe
}
