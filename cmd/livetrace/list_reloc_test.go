package main

import (
	"strings"
	"testing"

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
