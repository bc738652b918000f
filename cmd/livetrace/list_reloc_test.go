package main

import (
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/livetrace/livetrace/internal/testtarget"
)

// TestListAllReloc lists a program built without tracing flags: its
// functions are form reloc, and a function that cannot be traced names
// its reason.
func TestListAllReloc(t *testing.T) {
	exe := testtarget.Build(t, testtarget.Workload, testtarget.ClangNop5, testtarget.NoSites())
	if _, _, err := runList(t, exe); err == nil || !strings.Contains(err.Error(), "no patchable sites") {
		t.Fatalf("list without --all: %v, want no patchable sites", err)
	}
	out, _, err := runList(t, "--all", exe)
	if err != nil {
		t.Fatal(err)
	}
	forms := map[string]string{}
	for _, l := range strings.Split(out, "\n")[1:] {
		if f := strings.Fields(l); len(f) >= 4 {
			forms[f[0]] = f[3]
			if f[3] == "none" && !strings.Contains(l, "not traceable: ") {
				t.Errorf("refused without a reason: %q", l)
			}
		}
	}
	for _, fn := range []string{"work_leaf", "work_nested"} {
		if forms[fn] != "reloc" {
			t.Errorf("%s: form %q, want reloc\n%s", fn, forms[fn], out)
		}
	}
	if !strings.Contains(out, "none") {
		t.Errorf("no function refused (crt stubs such as _start are):\n%s", out)
	}
}

// TestListAllRelocLive lists a running program built without flags with
// -p --all: its functions are form reloc, state orig (not traced).
func TestListAllRelocLive(t *testing.T) {
	testtarget.RequireRoot(t)
	tp := testtarget.Start(t, testtarget.Build(t, testtarget.Workload, testtarget.ClangNop5, testtarget.NoSites()), "-t", "1")
	if _, err := tp.Expect("ready", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	out, _, err := runList(t, "--all", "-p", strconv.Itoa(tp.Pid()), "work_leaf", "raise")
	if err != nil {
		t.Fatal(err)
	}
	var leaf, raise string
	for _, l := range strings.Split(out, "\n") {
		switch f := strings.Fields(l); {
		case len(f) >= 5 && f[0] == "work_leaf":
			leaf = f[3] + " " + f[4]
		case len(f) >= 5 && f[0] == "raise":
			raise = l
		}
	}
	if leaf != "reloc orig" {
		t.Errorf("work_leaf: %q, want form reloc, state orig\n%s", leaf, out)
	}
	if !strings.Contains(raise, "none") || !strings.Contains(raise, "not traceable: displaced call") {
		t.Errorf("raise (libc): %q, want none with its reason\n%s", raise, out)
	}
	// -m keeps libc's raise and drops the program's work_leaf, as
	// record's -m would; a module nothing matches is an error.
	out, _, err = runList(t, "--all", "--json", "-p", strconv.Itoa(tp.Pid()), "-m", "libc.so.6")
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, r := range decodeJSON(t, out) {
		names[r["function"].(string)] = true
		if m := r["module"].(string); !strings.HasSuffix(m, "/libc.so.6") {
			t.Errorf("list -m libc.so.6 lists %s of %s", r["function"], m)
			break
		}
	}
	if !names["raise"] || names["work_leaf"] {
		t.Errorf("list -m libc.so.6: raise %v, work_leaf %v; want raise alone", names["raise"], names["work_leaf"])
	}
	if _, _, err := runList(t, "--all", "-p", strconv.Itoa(tp.Pid()), "-m", "nosuch.so"); err == nil || !strings.Contains(err.Error(), "no module of pid "+strconv.Itoa(tp.Pid())+" matches -m nosuch.so") {
		t.Errorf("list -m nosuch.so: %v, want no module matches", err)
	}
	// strlen, an IFUNC of libc: the implementation this process calls.
	out, _, err = runList(t, "--all", "--json", "-p", strconv.Itoa(tp.Pid()), "strlen")
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, r := range decodeJSON(t, out) {
		if why, _ := r["refused"].(string); strings.HasSuffix(r["module"].(string), "/libc.so.6") && strings.HasPrefix(why, "an IFUNC resolver") {
			found = true
			if !regexp.MustCompile(`the process calls __strlen_\w+, which record -F strlen traces$`).MatchString(why) {
				t.Errorf("libc's strlen: %q, want the implementation the process calls", why)
			}
		}
	}
	if !found {
		t.Errorf("no IFUNC row for libc's strlen:\n%s", out)
	}
}
