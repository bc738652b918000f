package report_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/livetrace/livetrace/internal/report"
	"github.com/livetrace/livetrace/internal/tracefile"
	"github.com/livetrace/livetrace/internal/tracefile/tracefiletest"
)

// TestWriteback writes a file through the writeback with a small window
// and checks that it wrote back and dropped all but the last windows, and
// that the file holds what was written; a writer that is not a regular
// file gets none.
func TestWriteback(t *testing.T) {
	defer report.SetWritebackWindow(64 << 10)()
	data := make([]byte, 1<<20+12345)
	for i := range data {
		data[i] = byte(i * 7)
	}
	path := filepath.Join(t.TempDir(), "out")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(data[:100]); err != nil { // the writeback starts at the offset
		t.Fatal(err)
	}
	dropped, err := report.WritebackProgress(f, data[100:], 3000)
	if err != nil {
		t.Fatal(err)
	}
	// Windows of 64 KiB from offset 100: all whose writeback started,
	// but the last 8, are dropped.
	if want := int64(100 + ((len(data)-100)/(64<<10)-8)*(64<<10)); dropped != want {
		t.Errorf("dropped up to %d, want %d", dropped, want)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("the file does not hold what was written")
	}
	var buf bytes.Buffer
	if dropped, err := report.WritebackProgress(&buf, data, 3000); err != nil || dropped != -1 {
		t.Errorf("writeback of a bytes.Buffer: %d, %v; want none", dropped, err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	if dropped, err := report.WritebackProgress(w, nil, 1); err != nil || dropped != -1 {
		t.Errorf("writeback of a pipe: %d, %v; want none", dropped, err)
	}
}

// TestExportPerfettoFile exports to a file, with the writeback's window
// small enough to drop much of it from the cache, and checks the file
// against the export to memory.
func TestExportPerfettoFile(t *testing.T) {
	defer report.SetWritebackWindow(64 << 10)()
	b := tracefiletest.New(tracefile.ModeGraph)
	th := b.Thread(11, "a", 1000)
	for i := 0; i < 100000; i++ {
		th.Call("f", 2).Advance(1)
	}
	rec := b.Recording()
	var want bytes.Buffer
	if err := report.ExportPerfettoStream(&want, rec.Stream(tracefile.StreamOptions{}), report.Filter{}); err != nil {
		t.Fatal(err)
	}
	if want.Len() < 1<<20 {
		t.Fatalf("export of %d events is %d bytes: too small for several windows", len(rec.Events), want.Len())
	}
	path := filepath.Join(t.TempDir(), "out.pftrace")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := report.ExportPerfettoStream(f, rec.Stream(tracefile.StreamOptions{}), report.Filter{}); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want.Bytes()) {
		t.Fatalf("the file (%d bytes) differs from the export to memory (%d bytes)", len(got), want.Len())
	}
}
