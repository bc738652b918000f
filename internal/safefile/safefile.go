// Package safefile creates output files (recordings, exports) without
// trusting what is already at their path or in their directory.
//
// livetrace runs as root, often in a directory that someone else can
// write to (the target's working directory, /tmp). Opening the output
// with O_CREAT|O_TRUNC would follow a symbolic link planted at its name
// and overwrite whatever the link points to, or truncate a file that the
// planter can read. So a [File] is written under a new random name in the
// same directory, created with O_CREAT|O_EXCL|O_NOFOLLOW and mode 0600
// (O_EXCL never follows a link and never opens an existing file), and
// [File.Commit] renames it over the final name. rename(2) replaces the
// directory entry itself: a link, or another name for an existing file,
// that appears at the final name after [Create] is replaced, never
// written through.
//
// [Create] refuses a final name that already is a symbolic link or not a
// regular file (a device such as /dev/null, a FIFO, a directory), with an
// error that says so: renaming over a link would silently break a link
// the user made on purpose, and renaming over a device as root would
// replace the device node. An existing regular file is replaced, as perf
// and ftrace users expect of -o; the new file is ours with mode 0600, and
// other hard links to the old one keep the old contents.
//
// In a directory that others can write to, every write goes through the
// descriptor that O_EXCL created, never through a name. With the sticky
// bit (/tmp) nobody else can rename or remove our temporary file. Without
// it, others can move names around but still not make livetrace write
// through a link or into a file of theirs, nor read the 0600 file.
package safefile

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// ErrSymlink is returned (wrapped) by [Create] when the final name is a
// symbolic link.
var ErrSymlink = errors.New("is a symbolic link")

// ErrNotRegular is returned (wrapped) by [Create] when the final name
// exists but is not a regular file.
var ErrNotRegular = errors.New("is not a regular file")

// Mode is the permission of every file [Create] makes: recordings and
// exports hold command lines, paths, symbols and thread names of the
// traced process, which are not for every user of the machine.
const Mode fs.FileMode = 0o600

// randomName returns the random part of a temporary name; tests replace it.
var randomName = func() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// File is an output file being written under a temporary name. Write to
// its embedded *os.File, then call Commit to put it at its final name,
// or Abort to remove it. A File is not safe for concurrent use.
type File struct {
	*os.File
	path string // the final name
	done bool   // Commit or Abort ran
}

// Create checks the final name path and creates the temporary file next
// to it. It fails if path is a symbolic link or exists and is not a
// regular file.
func Create(path string) (*File, error) {
	if err := check(path); err != nil {
		return nil, err
	}
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	var err error
	for range 100 {
		name := filepath.Join(dir, base+".tmp-"+randomName())
		var f *os.File
		f, err = os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, Mode)
		if err == nil {
			return &File{File: f, path: path}, nil
		}
		if !errors.Is(err, fs.ErrExist) {
			break
		}
		// Someone holds that name: draw another.
	}
	return nil, fmt.Errorf("create %s: %w", path, err)
}

// check refuses a final name that is a link or a non-regular file.
func check(path string) error {
	fi, err := os.Lstat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("create %s: %w", path, err)
	case fi.Mode()&fs.ModeSymlink != 0:
		return fmt.Errorf("create %s: %w: livetrace does not write through links (someone could point one at a file it must not overwrite): remove it, or give the real path", path, ErrSymlink)
	case !fi.Mode().IsRegular():
		return fmt.Errorf("create %s: %w (%s): give the path of a new or regular file", path, ErrNotRegular, kind(fi.Mode()))
	}
	return nil
}

func kind(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&fs.ModeCharDevice != 0:
		return "a character device"
	case m&fs.ModeDevice != 0:
		return "a block device"
	case m&fs.ModeNamedPipe != 0:
		return "a FIFO"
	case m&fs.ModeSocket != 0:
		return "a socket"
	}
	return "mode " + m.String()
}

// Path returns the final name.
func (f *File) Path() string { return f.path }

// Commit closes the file and renames it to its final name. If the close
// or the rename fails, the temporary file stays (its name is f.Name())
// and the caller decides: Abort removes it, or keep it when it holds data
// worth more than a clean directory (an unfinished recording).
func (f *File) Commit() error {
	if f.done {
		return fmt.Errorf("commit %s: already committed or aborted", f.path)
	}
	if err := f.File.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
		return fmt.Errorf("write %s: %w", f.path, err)
	}
	if err := os.Rename(f.File.Name(), f.path); err != nil {
		return fmt.Errorf("write %s: %w", f.path, err)
	}
	f.done = true
	return nil
}

// Abort closes and removes the temporary file. It does nothing after a
// successful Commit, so that `defer f.Abort()` cleans up every error path.
func (f *File) Abort() {
	if f.done {
		return
	}
	f.done = true
	_ = f.File.Close()
	_ = os.Remove(f.File.Name())
}
