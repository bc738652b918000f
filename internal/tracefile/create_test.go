package tracefile_test

import (
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/livetrace/livetrace/internal/safefile"
	"github.com/livetrace/livetrace/internal/tracefile"
	"github.com/livetrace/livetrace/internal/tracefile/tracefiletest"
)

// dirNames lists the names in dir.
func dirNames(t *testing.T, dir string) string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return strings.Join(names, " ")
}

// TestCreateSymlink plants livetrace.data as a link to a root-only file:
// Create must refuse it and leave the file alone.
func TestCreateSymlink(t *testing.T) {
	victim := filepath.Join(t.TempDir(), "shadow")
	if err := os.WriteFile(victim, []byte("secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "livetrace.data")
	if err := os.Symlink(victim, path); err != nil {
		t.Fatal(err)
	}
	err := tracefiletest.Scenario(tracefile.ModeGraph).WriteFile(path)
	if !errors.Is(err, safefile.ErrSymlink) || !strings.Contains(err.Error(), "symbolic link") {
		t.Errorf("recording to a symlink: err = %v, want a refusal that names the link", err)
	}
	if b, err := os.ReadFile(victim); err != nil || string(b) != "secret\n" {
		t.Errorf("the link's target was changed: %q, %v", b, err)
	}
	if got := dirNames(t, dir); got != "livetrace.data" {
		t.Errorf("directory holds %s", got)
	}
}

// TestCreateMode checks that a recording is readable by its owner only
// and that no temporary file is left.
func TestCreateMode(t *testing.T) {
	defer syscall.Umask(syscall.Umask(0))
	dir := t.TempDir()
	path := filepath.Join(dir, "livetrace.data")
	if err := os.WriteFile(path, []byte("an older recording"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := tracefiletest.Scenario(tracefile.ModeEntry).WriteFile(path); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode() != 0o600 {
		t.Errorf("recording has mode %v, want -rw-------", fi.Mode())
	}
	if _, err := tracefile.Read(path); err != nil {
		t.Error(err)
	}
	if got := dirNames(t, dir); got != "livetrace.data" {
		t.Errorf("directory holds %s", got)
	}
}

// TestCreateWriteError fills the file size limit while recording: Close
// fails, but what was recorded is at the final name (readable with
// Recover) and no temporary file is left.
func TestCreateWriteError(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "livetrace.data")
	w, err := tracefile.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if tmp := w.TempName(); filepath.Dir(tmp) != dir || !strings.HasPrefix(filepath.Base(tmp), "livetrace.data.tmp-") {
		t.Errorf("TempName = %s", tmp)
	}
	meta := tracefile.Meta{Mode: tracefile.ModeEntry, PID: 1, Clock: tracefile.Clock{TSCHz: 1e9},
		Funcs: []tracefile.Func{{Name: "f", Module: -1, Addr: 0x1000}}}
	if err := w.Checkpoint(meta); err != nil {
		t.Fatal(err)
	}
	// The Go runtime ignores SIGXFSZ: a write past the limit fails
	// with EFBIG.
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_FSIZE, &lim); err != nil {
		t.Fatal(err)
	}
	small := lim
	small.Cur = 256 << 10
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &small); err != nil {
		t.Fatal(err)
	}
	defer syscall.Setrlimit(syscall.RLIMIT_FSIZE, &lim)
	r := rand.New(rand.NewPCG(1, 2))
	evs := make([]tracefile.Event, 4096)
	var werr error
	for i := 0; i < 200 && werr == nil; i++ {
		for j := range evs {
			evs[j] = tracefile.Event{TSC: r.Uint64(), TID: r.Uint32(), Kind: tracefile.KindEntry, Caller: r.Uint64()}
		}
		if werr = w.WriteEvents(evs); werr == nil {
			werr = w.Flush()
		}
	}
	cerr := w.Close(meta)
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &lim); err != nil {
		t.Fatal(err)
	}
	if werr == nil || !errors.Is(cerr, syscall.EFBIG) {
		t.Fatalf("writing past the size limit: write %v, close %v; want EFBIG", werr, cerr)
	}
	if got := dirNames(t, dir); got != "livetrace.data" {
		t.Errorf("directory holds %s, want the recording only", got)
	}
	if _, err := tracefile.Read(path); !errors.Is(err, tracefile.ErrTruncated) {
		t.Errorf("Read = %v, want ErrTruncated", err)
	}
	rec, err := tracefile.Recover(path)
	if err != nil || len(rec.Events) == 0 {
		t.Fatalf("Recover: %v", err)
	}
}

// TestReadNotRegular checks that the readers refuse a directory, a device
// and a FIFO at once: opening a FIFO must not wait for a writer.
func TestReadNotRegular(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{dir, fifo, "/dev/zero"} {
		_, err1 := tracefile.Read(path)
		_, err2 := tracefile.Recover(path)
		_, _, err3 := tracefile.ReadMeta(path)
		for _, err := range []error{err1, err2, err3} {
			if !errors.Is(err, tracefile.ErrNotRegular) || err.Error() != "open "+path+": "+tracefile.ErrNotRegular.Error() {
				t.Errorf("read %s: err = %v, want ErrNotRegular", path, err)
			}
		}
	}
}

// TestCreateKilled leaves a recording unclosed, as a killed tracer does:
// what was flushed is in the temporary file, and Recover reads it.
func TestCreateKilled(t *testing.T) {
	dir := t.TempDir()
	w, err := tracefile.Create(filepath.Join(dir, "livetrace.data"))
	if err != nil {
		t.Fatal(err)
	}
	rec := tracefiletest.Scenario(tracefile.ModeGraph).Recording()
	defer w.Close(rec.Meta) // the descriptor, once the test has looked
	if err := w.Checkpoint(rec.Meta); err != nil {
		t.Fatal(err)
	}
	if err := w.WriteEvents(rec.Events[:10]); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if got := dirNames(t, dir); got != filepath.Base(w.TempName()) {
		t.Errorf("directory holds %s, want only %s", got, filepath.Base(w.TempName()))
	}
	got, err := tracefile.Recover(w.TempName())
	if err != nil || len(got.Events) != 10 {
		t.Fatalf("Recover(%s): %v", w.TempName(), err)
	}
}
