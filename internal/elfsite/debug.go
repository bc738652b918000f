package elfsite

import (
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Separate debug files.
//
// Distributions strip their binaries and ship the symbols in separate
// debug files (Debian's libc6-dbg and *-dbgsym packages), found by the GNU
// build ID: <dir>/.build-id/xx/yyyy.debug, where xx is the first byte of
// the ID in hex and yyyy the rest, under the debug directory
// /usr/lib/debug. Such a file (objcopy --only-keep-debug) has the section
// headers and the .symtab of the binary at the same link-time addresses,
// without the code.
//
// When a file has no .symtab but a build ID, Parse reads the function
// symbols from the debug file with the same build ID instead of .dynsym,
// so that the static functions of a stripped program or library can be
// listed and traced; [Spec.SymbolFile] names it. A debug file that cannot
// be used (malformed, not the same build ID, no .symtab) is skipped, and
// [Spec.SymbolFileErr] says why.

// DebugDirEnv names the environment variable that replaces the debug
// directories searched: a colon-separated list, like gdb's
// debug-file-directory. Empty or unset means [DefaultDebugDir]; "-" turns
// the search off.
const DebugDirEnv = "LIVETRACE_DEBUG_DIR"

// DefaultDebugDir is where distributions install separate debug files.
const DefaultDebugDir = "/usr/lib/debug"

// maxDebugFile caps the size of a debug file read (the biggest ones, of
// browsers, are a few GiB; only .symtab and .strtab are read, within the
// caps of symbols.go).
const maxDebugFile = 16 << 30

// DebugDirs returns the debug directories searched by Parse, from
// [DebugDirEnv] or [DefaultDebugDir].
func DebugDirs() []string {
	v := os.Getenv(DebugDirEnv)
	if v == "" {
		return []string{DefaultDebugDir}
	}
	if v == "-" {
		return nil
	}
	var dirs []string
	for _, d := range strings.Split(v, ":") {
		if d != "" {
			dirs = append(dirs, d)
		}
	}
	return dirs
}

// DebugFilePath returns the path of the debug file of build ID id (hex)
// under the debug directory dir, or "" when id is too short to name one.
func DebugFilePath(dir, id string) string {
	if len(id) < 4 || len(id)%2 != 0 || strings.Trim(id, "0123456789abcdef") != "" {
		return ""
	}
	return filepath.Join(dir, ".build-id", id[:2], id[2:]+".debug")
}

// debugSymbols replaces the .dynsym functions of a file without .symtab by
// the .symtab functions of its debug file, when one is found.
func (p *parser) debugSymbols() {
	id := p.spec.BuildID
	for _, dir := range DebugDirs() {
		path := DebugFilePath(dir, id)
		if path == "" {
			return
		}
		f, err := openDebugFile(path)
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
			continue
		}
		if err != nil {
			p.spec.SymbolFileErr = fmt.Errorf("debug file %s of %s skipped: %w", path, p.spec.Path, err)
			return
		}
		funcs, err := parseDebugSymbols(f, path, id, p.spec.Type, p.mangled)
		f.Close()
		if err != nil {
			p.spec.SymbolFileErr = fmt.Errorf("debug file of %s skipped (symbols are read from .dynsym): %w", p.spec.Path, err)
			return
		}
		p.spec.Funcs, p.spec.Stripped, p.spec.SymbolFile = funcs, false, path
		return
	}
}

// openDebugFile opens the debug file at path read-only. The debug
// directory is the administrator's, not the target's, and symlinks in it
// are followed (Fedora's .build-id entries are symlinks), but the file is
// first opened with O_PATH, which neither blocks nor has side effects on
// any file type, and must be a regular file before it is opened for
// reading: a FIFO or a device there cannot hang or disturb livetrace.
func openDebugFile(path string) (*os.File, error) {
	fd, err := unix.Open(path, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, fmt.Errorf("it is %s, not a regular file", fileType(st.Mode))
	}
	if st.Size > maxDebugFile {
		return nil, fmt.Errorf("it holds %d bytes, more than the %d livetrace reads", st.Size, int64(maxDebugFile))
	}
	rfd, err := unix.Open(fmt.Sprintf("/proc/self/fd/%d", fd), unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(rfd), path), nil
}

// parseDebugFile returns the function symbols of the .symtab of the debug
// file r, which must be an x86-64 ELF file of type typ with the build ID
// id (any, when id is "": for the fuzz test). It reads r with the caps of Parse; panics in debug/elf become errors
// wrapping [ErrMalformed].
func parseDebugFile(r io.ReaderAt, path, id string, typ elf.Type) (funcs []Func, err error) {
	return parseDebugSymbols(r, path, id, typ, false)
}

// parseDebugSymbols is parseDebugFile, keeping C++ and Rust names mangled
// when mangled is set (a module read for its symbols only: Spec.Name).
func parseDebugSymbols(r io.ReaderAt, path, id string, typ elf.Type, mangled bool) (funcs []Func, err error) {
	defer func() {
		if !recoverPanics {
			return
		}
		if p := recover(); p != nil {
			funcs, err = nil, fmt.Errorf("read %s: %w: %v", path, ErrMalformed, p)
		}
	}()
	f, size, err := openELF(r, path, "")
	if err != nil {
		return nil, err
	}
	if f.Type != typ {
		return nil, fmt.Errorf("read %s: it is of type %s, the binary of type %s", path, f.Type, typ)
	}
	if len(f.Sections) > maxSections {
		return nil, fmt.Errorf("read %s: %w: too many section headers", path, ErrMalformed)
	}
	q := &parser{f: f, r: r, size: size, spec: &Spec{Path: path, Type: f.Type}, mangled: mangled}
	if got := q.buildID(); id != "" && got != id {
		if got == "" {
			got = "none"
		}
		return nil, fmt.Errorf("read %s: its build ID is %s, not the binary's %s: the debug file is of another build (reinstall the matching debug package)", path, got, id)
	}
	if err := q.symbols(); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if q.spec.Stripped {
		return nil, fmt.Errorf("read %s: it has no .symtab", path)
	}
	if len(q.spec.Funcs) == 0 {
		return nil, fmt.Errorf("read %s: its .symtab holds no function symbol", path)
	}
	return q.spec.Funcs, nil
}
