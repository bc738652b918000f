package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/google/pprof/profile"

	"github.com/livetrace/livetrace/internal/tracefile"
)

func TestExportDefaultFiles(t *testing.T) {
	graph := scenarioFile(t, tracefile.ModeGraph)
	t.Chdir(t.TempDir())
	for _, tc := range []struct{ format, file string }{
		{"chrome", "livetrace.json"},
		{"folded", "livetrace.folded"},
		{"pprof", "livetrace.pb.gz"},
		{"flamegraph", "livetrace.html"},
		{"perfetto", "livetrace.perfetto-trace"},
	} {
		_, stderr, err := runCLI(t, "export", "-i", graph, "--format", tc.format)
		if err != nil {
			t.Fatalf("export %s: %v", tc.format, err)
		}
		if fi, err := os.Stat(tc.file); err != nil || fi.Size() == 0 {
			t.Errorf("export %s: %s: %v", tc.format, tc.file, err)
		}
		if !strings.Contains(stderr, "wrote "+tc.file) {
			t.Errorf("export %s: stderr %q", tc.format, stderr)
		}
	}
	// No temporary files left behind.
	ents, _ := os.ReadDir(".")
	if len(ents) != 5 {
		t.Errorf("directory holds %d files, want 5", len(ents))
	}
}

func TestExportChromeCLI(t *testing.T) {
	out, _, err := runCLI(t, "export", "-i", scenarioFile(t, tracefile.ModeGraph), "--format", "chrome", "-o", "-", "--tid", "101")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		TraceEvents []map[string]any `json:"traceEvents"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatal(err)
	}
	x := 0
	for _, ev := range doc.TraceEvents {
		for _, k := range []string{"ph", "ts", "pid", "tid"} {
			if _, ok := ev[k]; !ok {
				t.Errorf("event lacks %s: %v", k, ev)
			}
		}
		if ev["ph"] == "X" {
			x++
			if ev["tid"] != 101.0 {
				t.Errorf("--tid 101 exported %v", ev)
			}
			if _, ok := ev["dur"]; !ok {
				t.Errorf("X event without dur: %v", ev)
			}
		}
	}
	if x != 11 { // worker, 3 x (process, libhash_update, push_back), idle
		t.Errorf("%d X events, want 11", x)
	}
}

func TestExportPprofCLI(t *testing.T) {
	out := filepath.Join(t.TempDir(), "prof.pb.gz")
	if _, _, err := runCLI(t, "export", "-i", scenarioFile(t, tracefile.ModeGraph), "-f", "pprof", "-o", out); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p, err := profile.Parse(f)
	if err != nil {
		t.Fatal(err)
	}
	var calls, ns int64
	for _, s := range p.Sample {
		calls += s.Value[0]
		ns += s.Value[1]
	}
	// 28 calls shown (see the report golden); time = all threads' top-level
	// calls.
	if calls != 28 || ns <= 0 {
		t.Errorf("pprof: %d calls, %d ns", calls, ns)
	}
	if len(p.Mapping) != 2 || p.Mapping[1].File != "/usr/lib/libhash.so" {
		t.Errorf("mappings: %v", p.Mapping)
	}
}

func TestExportFlameGraphCLI(t *testing.T) {
	out, _, err := runCLI(t, "export", "-i", scenarioFile(t, tracefile.ModeGraph), "--format", "flamegraph", "-o", "-")
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"http://", "https://", " src=", " href="} {
		if strings.Contains(out, bad) {
			t.Errorf("flame graph is not self-contained: %q", bad)
		}
	}
	for _, name := range []string{"run", "write_output", "fib", "libhash_update"} {
		if !strings.Contains(out, ">"+name+"<") && !strings.Contains(out, `data-n="`+name+`"`) {
			t.Errorf("flame graph lacks %s", name)
		}
	}
}

func TestExportErrors(t *testing.T) {
	graph := scenarioFile(t, tracefile.ModeGraph)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"export", "-i", graph}, "give --format chrome, perfetto, folded, pprof or flamegraph"},
		{[]string{"export", "-i", graph, "--format", "svg"}, `unknown format "svg"`},
		{[]string{"export", "-i", graph, "--format", "chrome", "-o", "/nonexistent/dir/x.json"}, "create /nonexistent/dir/x.json"},
		{[]string{"report", "-i", graph, "--sort", "speed"}, `unknown column "speed"`},
	} {
		_, _, err := runCLI(t, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("livetrace %s: err = %v, want %q", strings.Join(tc.args, " "), err, tc.want)
		}
	}
}

func TestReportJSONCLI(t *testing.T) {
	out, _, err := runCLI(t, "report", "--json", "-i", scenarioFile(t, tracefile.ModeGraph))
	if err != nil {
		t.Fatal(err)
	}
	var rows []struct {
		Function *string `json:"function"`
		Module   *string `json:"module"`
		Calls    *uint64 `json:"calls"`
		Total    *int64  `json:"total_ns"`
		Self     *int64  `json:"self_ns"`
		Avg      *int64  `json:"avg_ns"`
		Min      *int64  `json:"min_ns"`
		Max      *int64  `json:"max_ns"`
	}
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatal(err)
	}
	if len(rows) != 10 {
		t.Errorf("%d rows, want 10", len(rows))
	}
	for _, r := range rows {
		if r.Function == nil || r.Module == nil || r.Calls == nil || r.Total == nil || r.Self == nil || r.Avg == nil || r.Min == nil || r.Max == nil {
			t.Fatalf("row lacks a field: %s", out)
		}
		if *r.Min > *r.Avg || *r.Avg > *r.Max || *r.Self > *r.Total+*r.Max*int64(*r.Calls) {
			t.Errorf("%s: inconsistent %+v", *r.Function, r)
		}
	}
	if *rows[0].Function != "run" || *rows[0].Total != 2560007 {
		t.Errorf("first row %s total %d, want run 2560007", *rows[0].Function, *rows[0].Total)
	}
}

// TestExportOutputSafety plants each default output name as a link to a
// root-only file, then checks the mode of what export writes and that a
// failed write leaves neither a temporary file nor a changed output.
func TestExportOutputSafety(t *testing.T) {
	graph := scenarioFile(t, tracefile.ModeGraph)
	bin := livetraceBinary(t)
	victim := filepath.Join(t.TempDir(), "shadow")
	if err := os.WriteFile(victim, []byte("secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	defer syscall.Umask(syscall.Umask(0))
	dir := t.TempDir()
	t.Chdir(dir)
	for _, tc := range []struct{ format, file string }{
		{"chrome", "livetrace.json"},
		{"folded", "livetrace.folded"},
		{"pprof", "livetrace.pb.gz"},
		{"flamegraph", "livetrace.html"},
		{"perfetto", "livetrace.perfetto-trace"},
	} {
		if err := os.Symlink(victim, tc.file); err != nil {
			t.Fatal(err)
		}
		_, _, err := runCLI(t, "export", "-i", graph, "--format", tc.format)
		if err == nil || !strings.Contains(err.Error(), tc.file+": is a symbolic link") {
			t.Errorf("export %s to a symlink: err = %v, want a refusal", tc.format, err)
		}
		if b, _ := os.ReadFile(victim); string(b) != "secret\n" {
			t.Fatalf("export %s wrote through the link: the target holds %.40q", tc.format, b)
		}
		if err := os.Remove(tc.file); err != nil {
			t.Fatal(err)
		}

		if _, _, err := runCLI(t, "export", "-i", graph, "--format", tc.format); err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(tc.file)
		if err != nil || fi.Mode() != 0o600 {
			t.Errorf("export %s: mode %v (%v), want -rw-------", tc.format, fi.Mode(), err)
		}
		before, _ := os.ReadFile(tc.file)

		// A write past RLIMIT_FSIZE fails with EFBIG (the Go runtime
		// ignores SIGXFSZ). The limit is the child's only: lowered in
		// the test's own process it also failed the writes of go
		// test's log of the files the test opens.
		_, stderr, err := runCLIBin("sh", "-c", `ulimit -f 0 && exec "$0" "$@"`, bin, "export", "-i", graph, "--format", tc.format)
		if err == nil || !strings.Contains(stderr, "file too large") || strings.Contains(stderr, "goroutine ") {
			t.Errorf("export %s past the size limit: %v, stderr %q; want a failure naming EFBIG", tc.format, err, stderr)
		}
		if after, _ := os.ReadFile(tc.file); string(after) != string(before) {
			t.Errorf("export %s: a failed export changed %s", tc.format, tc.file)
		}
	}
	ents, _ := os.ReadDir(".")
	if len(ents) != 5 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("directory holds %v, want the 5 exports only", names)
	}
}

// TestExportPerfettoCLI checks that export --format perfetto writes a
// Trace message (a run of packets, field 1) and that --since/--until
// narrow it.
func TestExportPerfettoCLI(t *testing.T) {
	graph := scenarioFile(t, tracefile.ModeGraph)
	dir := t.TempDir()
	full, part := filepath.Join(dir, "full.pftrace"), filepath.Join(dir, "part.pftrace")
	if _, _, err := runCLI(t, "export", "-i", graph, "--format", "perfetto", "-o", full); err != nil {
		t.Fatal(err)
	}
	if _, _, err := runCLI(t, "export", "-i", graph, "--format", "perfetto", "-o", part, "--since", "1ms", "--until", "2ms"); err != nil {
		t.Fatal(err)
	}
	a, err := os.ReadFile(full)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(part)
	if err != nil {
		t.Fatal(err)
	}
	if len(a) == 0 || a[0] != 0x0a || len(b) == 0 || b[0] != 0x0a {
		t.Fatalf("not a Trace message: % x / % x", a[:min(len(a), 8)], b[:min(len(b), 8)])
	}
	if len(b) >= len(a) {
		t.Errorf("a 1 ms slice is %d bytes, the whole trace %d", len(b), len(a))
	}
}
