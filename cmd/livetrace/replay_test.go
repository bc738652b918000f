package main

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"
	"github.com/google/pprof/profile"

	"github.com/livetrace/livetrace/internal/tracefile"
	"github.com/livetrace/livetrace/internal/tracefile/tracefiletest"
)

// updateGoldens rewrites the golden files of the readers' tests:
// go test ./cmd/livetrace -run 'Golden' -update
var updateGoldens = flag.Bool("update", false, "rewrite the golden files in testdata/")

// scenarioFile writes the shared test scenario of mode to a file and
// returns its path.
func scenarioFile(t *testing.T, mode tracefile.Mode) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), mode.String()+".data")
	if err := tracefiletest.Scenario(mode).WriteFile(path); err != nil {
		t.Fatal(err)
	}
	return path
}

// runCLI runs livetrace with args and returns stdout, stderr and the error.
func runCLI(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	var out, errb bytes.Buffer
	err := run(args, &out, &errb)
	return out.String(), errb.String(), err
}

// checkGolden compares got with testdata/name, or rewrites it with -update.
func checkGolden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *updateGoldens {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden: %v (run go test ./cmd/livetrace -update to create it)", err)
	}
	if diff := cmp.Diff(string(want), got); diff != "" {
		t.Errorf("%s differs (-want +got); if the change is right, run go test ./cmd/livetrace -update:\n%s", path, diff)
	}
}

func TestReadersGolden(t *testing.T) {
	graph := scenarioFile(t, tracefile.ModeGraph)
	entry := scenarioFile(t, tracefile.ModeEntry)
	for _, tc := range []struct {
		golden string
		args   []string
	}{
		{"replay-graph.golden", []string{"replay", "-i", graph}},
		{"replay-graph-filtered.golden", []string{"replay", "-i", graph, "-D", "2", "-t", "20us", "--tid", "100,102"}},
		{"replay-entry.golden", []string{"replay", "-i", entry}},
		{"replay-entry-tid.golden", []string{"replay", "-i", entry, "--tid", "101"}},
		{"report-graph.golden", []string{"report", "-i", graph}},
		{"report-graph-self.golden", []string{"report", "-i", graph, "--sort", "self", "-D", "2"}},
		{"report-entry.golden", []string{"report", "-i", entry}},
		{"folded-graph.golden", []string{"export", "-i", graph, "--format", "folded", "-o", "-"}},
		{"folded-entry.golden", []string{"export", "-i", entry, "--format", "folded", "-o", "-"}},
		{"info-graph.golden", []string{"info", "-i", graph}},
	} {
		t.Run(strings.TrimSuffix(tc.golden, ".golden"), func(t *testing.T) {
			out, stderr, err := runCLI(t, tc.args...)
			if err != nil {
				t.Fatalf("livetrace %s: %v\n%s", strings.Join(tc.args, " "), err, stderr)
			}
			checkGolden(t, tc.golden, out)
		})
	}
}

func TestReplayErrors(t *testing.T) {
	entry := scenarioFile(t, tracefile.ModeEntry)
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.data")
	os.WriteFile(garbage, []byte("this is not a recording\n"), 0o644)
	empty := filepath.Join(dir, "empty.data")
	os.WriteFile(empty, nil, 0o644)
	// Opening a FIFO for reading waits for a writer, unless O_NONBLOCK.
	fifo := filepath.Join(dir, "fifo.data")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"replay", "-i", filepath.Join(dir, "livetrace.data")}, "open " + filepath.Join(dir, "livetrace.data") + ": no such file: record one with `livetrace record -p PID`"},
		{[]string{"replay", "-i", garbage}, "read " + garbage + ": not a livetrace recording"},
		{[]string{"replay", "-i", entry, "-t", "1us"}, "need a graph-mode recording"},
		{[]string{"replay", "-i", entry, "-D", "-1"}, "parse -D -1: give a depth of 1 or more"},
		{[]string{"replay", "-i", entry, "--tid", "0"}, "parse --tid 0"},
		{[]string{"replay", "-i", entry, "-t", "soon"}, "invalid argument"},
		{[]string{"replay", "extra"}, "open extra: no such file"},
		{[]string{"replay", entry, "extra"}, "give one recording, not 2"},
		{[]string{"replay", "-i", entry, garbage}, "not both"},
		{[]string{"replay", "-i", dir}, "open " + dir + ": not a regular file: give the path of a recording"},
		{[]string{"info", "-i", fifo}, "open " + fifo + ": not a regular file"},
		{[]string{"report", "-i", "/dev/zero"}, "open /dev/zero: not a regular file"},
		{[]string{"info", "-i", empty}, "0 bytes, shorter than the file header; it holds no intact metadata"},
	} {
		_, _, err := runCLI(t, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("livetrace %s: err = %v, want %q", strings.Join(tc.args, " "), err, tc.want)
		}
	}
}

// TestDefaultInput checks that the readers read livetrace.data in the
// current directory by default.
func TestDefaultInput(t *testing.T) {
	graph := scenarioFile(t, tracefile.ModeGraph)
	data, err := os.ReadFile(graph)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	t.Chdir(dir)
	if _, _, err := runCLI(t, "info"); err == nil || err.Error() != "open livetrace.data: no such file: record one with `livetrace record -p PID`" {
		t.Errorf("info without livetrace.data: %v", err)
	}
	if err := os.WriteFile("livetrace.data", data, 0o644); err != nil {
		t.Fatal(err)
	}
	out, _, err := runCLI(t, "info")
	if err != nil || !strings.Contains(out, "pid 4242 (demo)") {
		t.Errorf("info: %v\n%s", err, out)
	}
}

// TestDamagedFiles checks that every reader gives a one-line error for
// truncated and corrupt recordings, and that --recover reads what it can.
func TestDamagedFiles(t *testing.T) {
	graph := scenarioFile(t, tracefile.ModeGraph)
	data, err := os.ReadFile(graph)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	truncated := filepath.Join(dir, "truncated.data")
	os.WriteFile(truncated, data[:len(data)/2], 0o644)
	corrupt := filepath.Join(dir, "corrupt.data")
	bad := bytes.Clone(data)
	bad[len(bad)/2] ^= 0x40
	os.WriteFile(corrupt, bad, 0o644)
	for _, cmd := range [][]string{{"replay"}, {"report"}, {"info"}, {"export", "--format", "chrome", "-o", "-"}} {
		for _, tc := range []struct{ file, want string }{
			{truncated, "truncated recording"},
			{corrupt, "corrupt recording"},
		} {
			args := append(append([]string{}, cmd...), "-i", tc.file)
			out, _, err := runCLI(t, args...)
			if err == nil {
				t.Errorf("livetrace %s: no error", strings.Join(args, " "))
				continue
			}
			if msg := err.Error(); !strings.Contains(msg, tc.want) || strings.Contains(msg, "\n") {
				t.Errorf("livetrace %s: err = %q, want one line with %q", strings.Join(args, " "), msg, tc.want)
			}
			if out != "" {
				t.Errorf("livetrace %s: printed %q before failing", strings.Join(args, " "), out)
			}
		}
	}
	_, _, err = runCLI(t, "info", "-i", truncated)
	if err == nil || !strings.Contains(err.Error(), "--recover cannot read it either") {
		t.Errorf("truncated: %v, want to hear that --recover cannot help", err)
	}
	// The scenario has no checkpoint, and half the file holds no metadata:
	// nothing to recover.
	if _, _, err := runCLI(t, "info", "--recover", "-i", truncated); err == nil || !strings.Contains(err.Error(), "no intact metadata checkpoint") {
		t.Errorf("recover without checkpoint: %v", err)
	}
	// With a checkpoint, --recover reads the complete blocks.
	b := tracefiletest.Scenario(tracefile.ModeGraph)
	rec := b.Recording()
	var buf bytes.Buffer
	w, _ := tracefile.NewWriter(&buf)
	w.Checkpoint(rec.Meta)
	w.WriteEvents(rec.Events[:20])
	w.Flush()
	w.WriteEvents(rec.Events[20:])
	cut := filepath.Join(dir, "cut.data")
	os.WriteFile(cut, buf.Bytes(), 0o644) // Close never ran
	if _, _, err := runCLI(t, "info", "-i", cut); err == nil || !strings.Contains(err.Error(), "rerun with --recover to read its complete blocks (20 events)") {
		t.Errorf("truncated with a checkpoint: %v, want a hint about --recover", err)
	}
	out, _, err := runCLI(t, "info", "--recover", "-i", cut)
	if err != nil || !strings.Contains(out, "recovered:") || !strings.Contains(out, "events:                  20\n") {
		t.Errorf("info --recover: %v\n%s", err, out)
	}
}

// hostile is a name a traced process could give a thread or a symbol: it
// clears the screen, returns the cursor, rings the bell, and reverses the
// text that follows (U+202E) so that "exe.txt" shows as "txt.exe".
const hostile = "evil\x1b[2J\r\a\u202eexe.txt\x7f\u0085\\"

// hostileFile writes a recording whose names are all hostile.
func hostileFile(t *testing.T, mode tracefile.Mode) string {
	t.Helper()
	b := tracefiletest.New(mode)
	m := b.Meta()
	m.Comm = hostile
	m.Cmdline = []string{"/bin/" + hostile, "-x" + hostile}
	m.Exe = "/bin/" + hostile
	m.Filters.Patterns = []string{hostile + "*"}
	m.Modules[1].Path = "/lib/" + hostile
	m.Modules[1].BuildID = hostile
	th := b.Thread(100, "th-"+hostile, 0)
	th.Enter("libfn-" + hostile).Advance(100).Exit()
	th.Enter("fn-"+hostile).Advance(2000).Call("leaf\x1b]0;pwned\a", 1000).Advance(500).Exit()
	// A Cyrillic name of 29 bytes: replay cuts it to 16 bytes, at a
	// character boundary.
	b.Thread(101, "поток-обработки", 100).Call("work", 100)
	path := filepath.Join(t.TempDir(), mode.String()+".data")
	if err := b.WriteFile(path); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestHostileNamesGolden checks that names from the recording reach the
// terminal escaped, in every text output, and that the JSON and HTML
// outputs carry no raw control or bidi character either.
func TestHostileNamesGolden(t *testing.T) {
	graph := hostileFile(t, tracefile.ModeGraph)
	entry := hostileFile(t, tracefile.ModeEntry)
	for _, tc := range []struct {
		golden string
		args   []string
	}{
		{"hostile-info.golden", []string{"info", "-i", graph}},
		{"hostile-replay-graph.golden", []string{"replay", "-i", graph}},
		{"hostile-replay-entry.golden", []string{"replay", "-i", entry}},
		{"hostile-report.golden", []string{"report", "-i", graph}},
		{"hostile-folded.golden", []string{"export", "-i", graph, "--format", "folded", "-o", "-"}},
		{"", []string{"report", "--json", "-i", graph}},
		{"", []string{"export", "-i", graph, "--format", "chrome", "-o", "-"}},
		{"", []string{"export", "-i", entry, "--format", "chrome", "-o", "-"}},
		{"", []string{"export", "-i", graph, "--format", "flamegraph", "-o", "-"}},
	} {
		out, stderr, err := runCLI(t, tc.args...)
		if err != nil {
			t.Fatalf("livetrace %s: %v\n%s", strings.Join(tc.args, " "), err, stderr)
		}
		for i, r := range out {
			if r < 0x20 && r != '\n' && r != '\t' || r == 0x7f || r >= 0x80 && r < 0xa0 || r == '\u202e' || r == '\ufffd' {
				t.Errorf("livetrace %s: raw %U at byte %d: %q", strings.Join(tc.args, " "), r, i, out[max(0, i-20):min(len(out), i+20)])
				break
			}
		}
		// JSON doubles the backslashes of the escapes.
		if !strings.Contains(out, `\x1b[2J\r\x07\u202eexe.txt\x7f\u0085`) && !strings.Contains(out, `\\x1b[2J\\r\\x07\\u202eexe.txt\\x7f\\u0085`) {
			t.Errorf("livetrace %s: the escaped name is missing:\n%s", strings.Join(tc.args, " "), out)
		}
		if !utf8.ValidString(out) {
			t.Errorf("livetrace %s: output is not valid UTF-8", strings.Join(tc.args, " "))
		}
		if tc.golden != "" {
			checkGolden(t, tc.golden, out)
		}
	}
	// pprof is binary, but go tool pprof prints its names.
	prof := filepath.Join(t.TempDir(), "prof.pb.gz")
	if _, _, err := runCLI(t, "export", "-i", graph, "--format", "pprof", "-o", prof); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(prof)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p, err := profile.Parse(f)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, fn := range p.Function {
		names = append(names, fn.Name, fn.SystemName, fn.Filename)
	}
	for _, m := range p.Mapping {
		names = append(names, m.File, m.BuildID)
	}
	names = append(names, p.Comments...)
	for _, n := range names {
		if strings.ContainsAny(n, "\x1b\r\a\u202e") {
			t.Errorf("pprof holds the raw name %q", n)
		}
	}
}

// TestSinceUntil checks that --since and --until print the lines of the
// full replay in that time range (entry mode: one line per event), and
// reject bad ranges.
func TestSinceUntil(t *testing.T) {
	entry := scenarioFile(t, tracefile.ModeEntry)
	full, _, err := runCLI(t, "replay", "-i", entry)
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, l := range strings.Split(full, "\n") {
		if strings.HasPrefix(l, "#") || l == "" {
			continue
		}
		// "... [---]       0.000025: ..." : seconds since the first event.
		f := strings.Fields(l[strings.Index(l, "]")+1:])
		us := strings.TrimSuffix(strings.Replace(f[0], ".", "", 1), ":")
		if us >= "0000100" && us < "0000900" {
			want = append(want, l)
		}
	}
	if len(want) == 0 {
		t.Fatal("no event in the range: pick another")
	}
	got, _, err := runCLI(t, "replay", "-i", entry, "--since", "100us", "--until", "900us")
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range strings.Split(got, "\n") {
		if !strings.HasPrefix(l, "#") && l != "" {
			lines = append(lines, l)
		}
	}
	if diff := cmp.Diff(want, lines); diff != "" {
		t.Errorf("--since 100us --until 900us (-want +got):\n%s", diff)
	}
	for _, args := range [][]string{{"--since", "2s", "--until", "1s"}, {"--since", "-1s"}} {
		_, _, err := runCLI(t, append([]string{"report", "-i", entry}, args...)...)
		if err == nil || !strings.Contains(err.Error(), "--since") {
			t.Errorf("%v: err = %v", args, err)
		}
	}
}
