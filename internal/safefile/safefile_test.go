package safefile

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/livetrace/livetrace/internal/testtarget"
)

const nobody = 65534

// victim makes a root-only file an attacker would like overwritten.
func victim(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "shadow")
	if err := os.WriteFile(p, []byte("secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// checkVictim fails unless the file still holds what victim put there.
func checkVictim(t *testing.T, p string) {
	t.Helper()
	b, err := os.ReadFile(p)
	fi, serr := os.Stat(p)
	if err != nil || serr != nil || string(b) != "secret\n" || fi.Mode().Perm() != 0o600 {
		t.Fatalf("victim %s changed: %q, %v, %v", p, b, err, fi.Mode())
	}
}

// checkOurs fails unless path is a regular file of mode 0600 holding want.
func checkOurs(t *testing.T, path, want string) {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm() != Mode {
		t.Errorf("%s: mode %v, want a regular file of mode %v", path, fi.Mode(), Mode)
	}
	if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) != os.Getuid() {
		t.Errorf("%s: owned by uid %d, want %d", path, st.Uid, os.Getuid())
	}
	if b, _ := os.ReadFile(path); string(b) != want {
		t.Errorf("%s holds %q, want %q", path, b, want)
	}
}

// checkOnly fails unless dir holds exactly names (no temporary file left).
func checkOnly(t *testing.T, dir string, names ...string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if strings.Join(got, " ") != strings.Join(names, " ") {
		t.Errorf("%s holds %v, want %v", dir, got, names)
	}
}

func write(t *testing.T, path, content string) error {
	t.Helper()
	f, err := Create(path)
	if err != nil {
		return err
	}
	defer f.Abort()
	if _, err := f.WriteString(content); err != nil {
		t.Fatal(err)
	}
	return f.Commit()
}

func TestCreateModeAndReplace(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "out.data")
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	if err := write(t, out, "one"); err != nil {
		t.Fatal(err)
	}
	checkOurs(t, out, "one")
	// An existing regular file is replaced: a hard link to it keeps the
	// old contents, whoever can read that link cannot read the new file.
	if err := os.Chmod(out, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(out, filepath.Join(dir, "keep")); err != nil {
		t.Fatal(err)
	}
	if err := write(t, out, "two"); err != nil {
		t.Fatal(err)
	}
	checkOurs(t, out, "two")
	if b, _ := os.ReadFile(filepath.Join(dir, "keep")); string(b) != "one" {
		t.Errorf("hard link to the old file holds %q, want the old contents", b)
	}
	checkOnly(t, dir, "keep", "out.data")
}

func TestCreateRefusesSymlink(t *testing.T) {
	v := victim(t)
	dir := t.TempDir()
	out := filepath.Join(dir, "livetrace.data")
	if err := os.Symlink(v, out); err != nil {
		t.Fatal(err)
	}
	err := write(t, out, "recording")
	if !errors.Is(err, ErrSymlink) || !strings.Contains(err.Error(), out+": is a symbolic link") {
		t.Fatalf("Create through a symlink: err = %v, want ErrSymlink", err)
	}
	checkVictim(t, v)
	// A dangling link too: following it would create a file where the
	// link's owner chose.
	if err := os.Remove(out); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(dir, "elsewhere"), out); err != nil {
		t.Fatal(err)
	}
	if err := write(t, out, "recording"); !errors.Is(err, ErrSymlink) {
		t.Fatalf("Create through a dangling symlink: err = %v, want ErrSymlink", err)
	}
	checkOnly(t, dir, "livetrace.data")
}

func TestCreateRefusesNonRegular(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]string{dir: "a directory", fifo: "a FIFO", "/dev/null": "a character device"} {
		_, err := Create(path)
		if !errors.Is(err, ErrNotRegular) || !strings.Contains(err.Error(), want) {
			t.Errorf("Create(%s): err = %v, want ErrNotRegular (%s)", path, err, want)
		}
	}
	if fi, err := os.Lstat("/dev/null"); err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		t.Fatalf("/dev/null: %v %v", fi.Mode(), err)
	}
	checkOnly(t, dir, "fifo")
}

func TestAbortRemovesTemp(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "out.json")
	if err := os.WriteFile(out, []byte("previous"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := Create(out)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("half"); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(filepath.Base(f.Name()), "out.json.tmp-") {
		t.Errorf("temporary name %s", f.Name())
	}
	f.Abort()
	f.Abort()
	checkOnly(t, dir, "out.json")
	if b, _ := os.ReadFile(out); string(b) != "previous" {
		t.Errorf("aborted write changed the file: %q", b)
	}
	if err := f.Commit(); err == nil {
		t.Error("Commit after Abort succeeded")
	}
}

// asNobody runs a shell command as the unprivileged attacker.
func asNobody(t *testing.T, dir, script string) {
	t.Helper()
	cmd := exec.Command("/bin/sh", "-ec", script)
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("attacker: %s: %v\n%s", script, err, out)
	}
}

// TestStickyDirAttacker writes into a sticky world-writable directory
// like /tmp, where the attacker (nobody) plants links at the final name
// and at the temporary names, and swaps a link in between Create and
// Commit.
func TestStickyDirAttacker(t *testing.T) {
	testtarget.RequireRoot(t)
	v := victim(t)
	base := t.TempDir()
	dir := filepath.Join(base, "tmp")
	if err := os.Mkdir(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	for p, m := range map[string]os.FileMode{filepath.Dir(base): 0o755, base: 0o755, dir: 0o777 | os.ModeSticky} {
		if err := os.Chmod(p, m); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(dir, "out.data")

	// A link at the final name is refused.
	asNobody(t, dir, "ln -s "+v+" out.data")
	if err := write(t, out, "x"); !errors.Is(err, ErrSymlink) {
		t.Fatalf("link at the final name: err = %v, want ErrSymlink", err)
	}
	checkVictim(t, v)

	// A file of the attacker's at the final name, which it keeps open
	// through a second link: it is replaced, not written into.
	asNobody(t, dir, "rm out.data; : > out.data; chmod 666 out.data; ln out.data keep")
	// The attacker also holds the first temporary names, as links to
	// the victim: O_EXCL skips them without following them.
	n := 0
	defer func(f func() string) { randomName = f }(randomName)
	randomName = func() string { n++; return fmt.Sprintf("guess%d", n) }
	asNobody(t, dir, "for i in 1 2 3; do ln -s "+v+" out.data.tmp-guess$i; done")
	f, err := Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Abort()
	if got := filepath.Base(f.Name()); got != "out.data.tmp-guess4" {
		t.Errorf("temporary file %s, want out.data.tmp-guess4", got)
	}
	if _, err := f.WriteString("recording"); err != nil {
		t.Fatal(err)
	}
	// Between Create and Commit, a link appears at the final name:
	// rename replaces the link itself.
	asNobody(t, dir, "rm out.data; ln -s "+v+" out.data")
	if err := f.Commit(); err != nil {
		t.Fatal(err)
	}
	checkVictim(t, v)
	checkOurs(t, out, "recording")
	if b, err := os.ReadFile(filepath.Join(dir, "keep")); err != nil || len(b) != 0 {
		t.Errorf("the attacker's file got %q (%v), want it left empty", b, err)
	}
	checkOnly(t, dir, "keep", "out.data", "out.data.tmp-guess1", "out.data.tmp-guess2", "out.data.tmp-guess3")
}
