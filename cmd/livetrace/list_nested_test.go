package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/livetrace/livetrace/internal/testtarget"
)

// TestListGraphUnsafe: list says, per function, why --graph will not trace
// it (a gcc nested function: the return address is not at [rsp]), in the
// table and in JSON; other functions get no note.
func TestListGraphUnsafe(t *testing.T) {
	exe := testtarget.Build(t, testtarget.Nested, testtarget.GccMcount)
	var out, errb bytes.Buffer
	if err := run([]string{"list", exe}, &out, &errb); err != nil {
		t.Fatalf("list: %v\n%s", err, errb.String())
	}
	lines := strings.Split(out.String(), "\n")
	if !strings.HasSuffix(lines[0], "NOTE") {
		t.Errorf("header %q has no NOTE column", lines[0])
	}
	for _, l := range lines[1:] {
		note := strings.Contains(l, "not traced with --graph: return address not at [rsp]: push %r10")
		if strings.HasPrefix(l, "nested_add") != note {
			t.Errorf("line %q: note %v", l, note)
		}
	}
	out.Reset()
	if err := run([]string{"list", "--json", exe}, &out, &errb); err != nil {
		t.Fatalf("list --json: %v", err)
	}
	var rows []map[string]any
	if err := json.Unmarshal(out.Bytes(), &rows); err != nil {
		t.Fatal(err)
	}
	for _, r := range rows {
		why, _ := r["graph_unsafe"].(string)
		if strings.HasPrefix(r["function"].(string), "nested_add") != strings.Contains(why, "nested function") {
			t.Errorf("row %v", r)
		}
	}
}
