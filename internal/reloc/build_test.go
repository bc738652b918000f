package reloc

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/livetrace/livetrace/internal/testtarget"
)

// buildCached runs `cc flags... src -o out` once per (compiler version,
// flags, source and the files it includes, deps), caching the output file under os.TempDir() the way
// internal/testtarget caches its fixtures, and returns the output path.
func buildCached(tb testing.TB, cc string, flags []string, src, outName string, deps ...string) string {
	tb.Helper()
	path, err := exec.LookPath(cc)
	if err != nil {
		testtarget.SkipOrFatal(tb, "%s is not installed: run `make test`, which installs it (or apt-get install %s)", cc, cc)
	}
	body, err := os.ReadFile(src)
	if err != nil {
		tb.Fatalf("read %s: %v", src, err)
	}
	ver, err := exec.Command(path, "--version").Output()
	if err != nil {
		tb.Fatalf("run %s --version: %v", path, err)
	}
	h := sha256.New()
	fmt.Fprintf(h, "reloc v1\x00%s\x00%s\x00%q\x00%s\x00", path, ver, flags, src)
	h.Write(body)
	for _, d := range deps {
		db, err := os.ReadFile(d)
		if err != nil {
			tb.Fatalf("read %s: %v", d, err)
		}
		fmt.Fprintf(h, "\x00%s\x00", d)
		h.Write(db)
	}
	dir := filepath.Join(os.TempDir(), "livetrace-reloc-"+strconv.Itoa(os.Getuid()), hex.EncodeToString(h.Sum(nil))[:20])
	out := filepath.Join(dir, outName)
	if _, err := os.Stat(out); err == nil {
		return out
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		tb.Fatalf("create cache directory: %v", err)
	}
	tmp := out + ".tmp" + strconv.Itoa(os.Getpid())
	args := append(append([]string{}, flags...), src, "-o", tmp)
	if b, err := exec.Command(path, args...).CombinedOutput(); err != nil {
		tb.Fatalf("%s %q: %v\n%s", cc, args, err, b)
	}
	if err := os.Rename(tmp, out); err != nil {
		tb.Fatalf("move build into cache: %v", err)
	}
	return out
}

// soak reports LIVETRACE_SOAK=1 (`make soak`): run the long versions.
func soak() bool { return os.Getenv("LIVETRACE_SOAK") == "1" }
