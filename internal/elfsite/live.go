package elfsite

import (
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/livetrace/livetrace/internal/proc"
)

// Module is one ELF file mapped into a live process: a [Spec] plus where
// the process mapped it. It is immutable once returned and safe for
// concurrent read-only use, but it describes the process only at the time
// [LiveModules] read its maps.
type Module struct {
	// Path is the path as /proc/PID/maps shows it (it may end in
	// " (deleted)").
	Path string
	// Bias is added to a link-time address to get the runtime address.
	// It is 0 for ET_EXEC files.
	Bias uint64
	// Spec is the parsed file.
	Spec *Spec
	// Mappings are the process's mappings of the file, in address order.
	Mappings []proc.Mapping
}

// Runtime returns the runtime address of the link-time address addr.
func (m *Module) Runtime(addr uint64) uint64 { return addr + m.Bias }

// Name returns the base name of the module's file, without " (deleted)".
func (m *Module) Name() string {
	p := strings.TrimSuffix(m.Path, " (deleted)")
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[i+1:]
	}
	return p
}

// LiveModules returns every file-backed ELF module of process pid that has
// an executable mapping, in address order. Modules without sites are
// included (their Spec.Sites is empty); the vDSO is skipped, and so are
// mapped files that are not ELF, malformed, not x86-64, do not match their
// mappings, or cannot be shown to be the file mapped ([ErrModuleChanged]),
// unless no module is left, in which case the first such error is
// returned. Errors from [proc.ReadMaps] (no such process, permission,
// kernel thread) are returned as they are. [LiveModulesSkipped] also says
// which modules were skipped and why.
//
// Each file is opened with [OpenMappedFile].
func LiveModules(pid int) ([]*Module, error) {
	mods, _, err := LiveModulesSkipped(pid)
	return mods, err
}

// LiveModulesSkipped is [LiveModules], and also returns one error per
// mapped file that was skipped, saying why.
func LiveModulesSkipped(pid int) (mods []*Module, skipped []error, err error) {
	return LiveModulesWith(pid, LiveOptions{})
}

// LiveOptions tune [LiveModulesWith].
type LiveOptions struct {
	// Full, when set, says which modules (by their path in
	// /proc/PID/maps) are parsed in full; the others are parsed with
	// [ParseSymbols]. Nil parses every module in full.
	Full func(path string) bool
}

// LiveModulesWith is [LiveModulesSkipped] with options.
func LiveModulesWith(pid int, opts LiveOptions) (mods []*Module, skipped []error, err error) {
	maps, err := proc.ReadMaps(pid)
	if err != nil {
		return nil, nil, err
	}
	var groups [][]proc.Mapping
	for _, g := range groupMappings(maps) {
		if hasExec(g) {
			groups = append(groups, g)
		}
	}
	// The files are parsed in parallel, on all CPUs but one: a program
	// and its libc cost about the same, and attaching waits for both,
	// but the tracer runs real-time while it attaches (proc/nice.go),
	// and a parse on every CPU would stop every thread of the target
	// for as long as it lasts.
	specs := make([]*Spec, len(groups))
	errs := make([]error, len(groups))
	var wg sync.WaitGroup
	sem := make(chan struct{}, max(1, runtime.GOMAXPROCS(0)-1))
	for i, g := range groups {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			// A file whose code is mapped shared is read for its
			// symbols only: a write through /proc/PID/mem would go
			// to the file itself, and the kernel refuses it.
			specs[i], errs[i] = openMapped(pid, g, opts.Full != nil && !opts.Full(g[0].Path) || sharedExec(g))
		}()
	}
	wg.Wait()
	for i, g := range groups {
		spec, err := specs[i], errs[i]
		if errors.Is(err, ErrNotELF) || errors.Is(err, ErrMalformed) || errors.Is(err, ErrUnsupported) || errors.Is(err, ErrModuleChanged) {
			// One odd file the process mapped must not keep us from
			// tracing the rest of it.
			skipped = append(skipped, err)
			continue
		}
		if err != nil {
			return nil, nil, err
		}
		if sharedExec(g) {
			c := *spec
			c.Refused = sharedRefusal
			spec = &c
		}
		bias, err := computeBias(spec, g)
		if err != nil {
			skipped = append(skipped, fmt.Errorf("map module %s of pid %d: %w", g[0].Path, pid, err))
			continue
		}
		mods = append(mods, &Module{Path: g[0].Path, Bias: bias, Spec: spec, Mappings: g})
	}
	if len(mods) == 0 && len(skipped) > 0 {
		// Nothing usable at all, as in a 32-bit process: say why.
		return nil, skipped, skipped[0]
	}
	return mods, skipped, nil
}

// groupMappings splits the file-backed mappings into one group per mapped
// instance of a file, in address order. A file mapped twice (a second
// mapping at file offset 0 after the first instance) starts a new group.
func groupMappings(maps []proc.Mapping) [][]proc.Mapping {
	type key struct {
		dev   string
		inode uint64
		path  string
	}
	var groups [][]proc.Mapping
	cur := map[key]int{}
	for _, m := range maps {
		if !m.FileBacked() {
			continue
		}
		k := key{m.Dev, m.Inode, m.Path}
		i, ok := cur[k]
		if ok && m.Offset == 0 && m.Start >= groups[i][len(groups[i])-1].End {
			ok = false
		}
		if !ok {
			groups = append(groups, nil)
			i = len(groups) - 1
			cur[k] = i
		}
		groups[i] = append(groups[i], m)
	}
	return groups
}

// sharedRefusal is why a module whose code is mapped shared is not traced.
const sharedRefusal = "its code is mapped shared from the file (MAP_SHARED): a write into it would change the file itself, and the kernel lets no debugger make one"

// sharedExec reports whether an executable mapping of g is shared
// (MAP_SHARED): its pages are the file's page cache, not a private copy.
func sharedExec(g []proc.Mapping) bool {
	for _, m := range g {
		if m.Exec() && len(m.Perms) == 4 && m.Perms[3] == 's' {
			return true
		}
	}
	return false
}

func hasExec(g []proc.Mapping) bool {
	for _, m := range g {
		if m.Exec() {
			return true
		}
	}
	return false
}

// openMapped parses the file behind the mappings g of process pid, in
// full or only its symbols; the result may come from the cache
// (cache.go).
func openMapped(pid int, g []proc.Mapping, symbolsOnly bool) (*Spec, error) {
	m := g[0]
	f, err := OpenMappedFile(pid, m)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	spec, err := cachedParse(f, m.Path, symbolsOnly)
	if err != nil {
		return nil, fmt.Errorf("read module of pid %d: %w", pid, err)
	}
	return spec, nil
}

// ErrModuleChanged means the file found at a mapped path is not the file
// the process mapped (another file, a FIFO, a symlink, a device...): the
// module is skipped.
var ErrModuleChanged = errors.New("the file at the mapped path is not the file the process mapped")

// useMapFiles is turned off by tests to take the path of a tracer that has
// CAP_SYS_PTRACE but not CAP_SYS_ADMIN.
var useMapFiles = true

// OpenMappedFile opens, read-only, the very file that process pid mapped
// at m, and returns ErrModuleChanged (wrapped) when it cannot be sure it
// did.
//
// The path in /proc/PID/maps is the target's to control: it can delete the
// file and put a FIFO there (an open would block forever), a symlink to a
// file only root may read, a device, or another ELF file. So the file is
// never opened by that path in the tracer's own namespace. It is reached
// through /proc/PID/map_files/START-END, which is the mapped file itself
// even when deleted (the kernel requires CAP_SYS_ADMIN for it), and
// otherwise by resolving the path inside the target's root
// (/proc/PID/root) with openat2 RESOLVE_IN_ROOT|RESOLVE_NO_MAGICLINKS and
// O_NOFOLLOW. Either way it is first opened with O_PATH, which neither
// blocks nor has side effects on any file type; it must then be a regular
// file whose device and inode are those of the maps row, and only then is
// it reopened for reading through /proc/self/fd.
func OpenMappedFile(pid int, m proc.Mapping) (*os.File, error) {
	what := fmt.Sprintf("open module %s of pid %d", m.Path, pid)
	if useMapFiles {
		fd, err := unix.Open(fmt.Sprintf("/proc/%d/map_files/%x-%x", pid, m.Start, m.End), unix.O_PATH|unix.O_CLOEXEC, 0)
		if err == nil {
			return verifyAndOpen(pid, m, fd, what)
		}
	}
	var err error
	for _, path := range rootPaths(pid, strings.TrimSuffix(m.Path, " (deleted)")) {
		var fd int
		fd, err = openInRoot(pid, path)
		if err != nil {
			err = openError(pid, m, err, what)
		} else {
			var f *os.File
			if f, err = verifyAndOpen(pid, m, fd, what); err == nil {
				return f, nil
			}
		}
		if !errors.Is(err, ErrModuleChanged) {
			break
		}
	}
	return nil, err
}

// rootPaths returns the paths under which to look for the mapped file path
// in process pid's root. The kernel shows the path of a mapping relative to
// the root of the reader of /proc/PID/maps when it can, so the mappings of
// a process chrooted into /srv/ct read "/srv/ct/lib/libc.so.6", and that
// file is "/lib/libc.so.6" in its root: both are tried (the file opened is
// checked against the mapping whatever the path).
func rootPaths(pid int, path string) []string {
	paths := []string{path}
	if root, err := os.Readlink(fmt.Sprintf("/proc/%d/root", pid)); err == nil && root != "/" && strings.HasPrefix(path, root+"/") {
		paths = append(paths, path[len(root):])
	}
	return paths
}

// openError turns a failure to open the mapped file of m into an error
// that says what to do.
func openError(pid int, m proc.Mapping, err error, what string) error {
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ELOOP) || errors.Is(err, unix.EXDEV) || errors.Is(err, unix.ENOTDIR) {
		if _, serr := os.Stat(fmt.Sprintf("/proc/%d", pid)); serr != nil {
			return proc.ProcError(pid, serr)
		}
		if m.Deleted() {
			return fmt.Errorf("%s: %w: it was deleted, and only root (CAP_SYS_ADMIN) can open deleted files through /proc/%d/map_files", what, ErrModuleChanged, pid)
		}
		return fmt.Errorf("%s: %w: %v (run livetrace as root to read it through /proc/%d/map_files)", what, ErrModuleChanged, err, pid)
	}
	return proc.ProcError(pid, err)
}

// verifyAndOpen checks that the O_PATH descriptor fd (which it closes) is
// the regular file mapped by m, and opens it for reading.
func verifyAndOpen(pid int, m proc.Mapping, fd int, what string) (*os.File, error) {
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, fmt.Errorf("%s: %w: it is now %s, not a regular file", what, ErrModuleChanged, fileType(st.Mode))
	}
	if !sameFile(m, &st) {
		return nil, fmt.Errorf("%s: %w: it is device %02x:%02x inode %d, the mapping is of %s inode %d "+
			"(the file was replaced, or lives on a file system such as overlayfs that shows other numbers: run livetrace as root to read it through /proc/%d/map_files)",
			what, ErrModuleChanged, unix.Major(st.Dev), unix.Minor(st.Dev), st.Ino, m.Dev, m.Inode, pid)
	}
	// Reopen for reading: fd is a verified regular file, so this can
	// neither block nor reach another file.
	rfd, err := unix.Open(fmt.Sprintf("/proc/self/fd/%d", fd), unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return os.NewFile(uintptr(rfd), m.Path), nil
}

// openInRoot opens path, with O_PATH and without following a symlink, as
// process pid sees it: resolved inside its root directory, so that an
// absolute symlink on the way stays in the target's (container's) root,
// and magic links (/proc/self/...) are refused.
func openInRoot(pid int, path string) (int, error) {
	root, err := unix.Open(fmt.Sprintf("/proc/%d/root", pid), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	defer unix.Close(root)
	rel := strings.TrimLeft(path, "/")
	if rel == "" {
		return -1, unix.ENOENT
	}
	fd, err := unix.Openat2(root, rel, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_NOFOLLOW | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
	})
	if errors.Is(err, unix.ENOSYS) {
		// Before Linux 5.6: a symlink on the way may then lead outside
		// the target's root, but the device and inode check that follows
		// refuses any file other than the mapped one.
		fd, err = unix.Openat(root, rel, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	}
	if err != nil {
		return -1, err
	}
	return fd, nil
}

// sameFile reports whether st is the file of mapping m: its device (maps
// shows "major:minor" in hex) and its inode.
func sameFile(m proc.Mapping, st *unix.Stat_t) bool {
	maj, min, ok := strings.Cut(m.Dev, ":")
	if !ok {
		return false
	}
	ma, err1 := strconv.ParseUint(maj, 16, 32)
	mi, err2 := strconv.ParseUint(min, 16, 32)
	return err1 == nil && err2 == nil && st.Ino == m.Inode &&
		uint64(unix.Major(st.Dev)) == ma && uint64(unix.Minor(st.Dev)) == mi
}

// fileType names the type of a file mode, for errors.
func fileType(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFIFO:
		return "a FIFO"
	case unix.S_IFLNK:
		return "a symlink"
	case unix.S_IFDIR:
		return "a directory"
	case unix.S_IFCHR, unix.S_IFBLK:
		return "a device"
	case unix.S_IFSOCK:
		return "a socket"
	}
	return "a special file"
}

// computeBias returns runtime address minus link-time address for the
// module mapped by g. It takes the mapping with the lowest file offset
// (normally 0) and the PT_LOAD that contains that offset: the loader maps
// that segment's page at vaddr+bias, and ELF requires p_vaddr ≡ p_offset
// modulo the page size, so bias = start - offset - (p_vaddr - p_offset).
func computeBias(spec *Spec, g []proc.Mapping) (uint64, error) {
	if spec.Type == elf.ET_EXEC {
		return 0, nil
	}
	low := g[0]
	for _, m := range g[1:] {
		if m.Offset < low.Offset {
			low = m
		}
	}
	for _, l := range spec.Loads {
		// The loader maps from the page that holds p_offset, so a mapping's
		// offset can be up to a page below the segment's.
		if l.Offset&^(pageSize-1) <= low.Offset && low.Offset < l.Offset+l.Filesz {
			return low.Start - low.Offset - (l.Vaddr - l.Offset), nil
		}
	}
	return 0, fmt.Errorf("no PT_LOAD segment holds file offset %#x: the file on disk does not match the mapping", low.Offset)
}

// pageSize is the x86-64 page size the loader aligns mappings to.
const pageSize = 4096

// State is the live state of a site's five bytes in a process.
type State uint8

// The live states of a site.
const (
	StateUnknown State = iota // anything else
	StateNop                  // a NOP5 or a sled: not patched
	StateCall                 // e8 rel32: patched
	StateInt3                 // cc first: in the middle of a patch batch
)

// String returns "nop", "call", "int3" or "unknown".
func (s State) String() string {
	switch s {
	case StateNop:
		return "nop"
	case StateCall:
		return "call"
	case StateInt3:
		return "int3"
	}
	return "unknown"
}

// ClassifyLive returns the state of the live bytes b of a site.
func ClassifyLive(b [5]byte) State {
	switch {
	case Classify(b).Patchable():
		return StateNop
	case b[0] == 0xe8:
		return StateCall
	case b[0] == 0xcc:
		return StateInt3
	}
	return StateUnknown
}

// maxCoalesce caps one read of /proc/PID/mem; readGap is the largest gap
// between sites that is still read rather than skipped.
const (
	maxCoalesce = 1 << 20
	readGap     = 4096
)

// ReadSiteBytes returns the five bytes at each runtime address in addrs of
// process pid, read (read-only) from /proc/PID/mem. Nearby addresses share
// one read. Reading a process's memory needs the same privilege as ptrace.
func ReadSiteBytes(pid int, addrs []uint64) ([][5]byte, error) {
	out := make([][5]byte, len(addrs))
	if len(addrs) == 0 {
		return out, nil
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		return nil, proc.ProcError(pid, err)
	}
	defer f.Close()
	order := make([]int, len(addrs))
	for i := range order {
		order[i] = i
	}
	sort.Slice(order, func(i, j int) bool { return addrs[order[i]] < addrs[order[j]] })
	var buf []byte
	for i := 0; i < len(order); {
		start := addrs[order[i]]
		end := start + 5
		j := i + 1
		for ; j < len(order); j++ {
			a := addrs[order[j]]
			if a > end+readGap || a+5-start > maxCoalesce {
				break
			}
			end = max(end, a+5)
		}
		n := int(end - start)
		if cap(buf) < n {
			buf = make([]byte, n)
		}
		buf = buf[:n]
		if err := readMem(f, pid, buf, start); err != nil {
			// The range may span an unmapped page between two sites: fall
			// back to one read per site to find the culprit.
			for _, k := range order[i:j] {
				if err := readMem(f, pid, out[k][:], addrs[k]); err != nil {
					return nil, err
				}
			}
		} else {
			for _, k := range order[i:j] {
				copy(out[k][:], buf[addrs[k]-start:])
			}
		}
		i = j
	}
	return out, nil
}

func readMem(f *os.File, pid int, b []byte, addr uint64) error {
	if addr > 1<<63 {
		return fmt.Errorf("read memory of pid %d at %#x: address out of range", pid, addr)
	}
	n, err := f.ReadAt(b, int64(addr))
	if n == len(b) {
		return nil
	}
	if err == nil {
		err = errors.New("short read")
	}
	if errors.Is(err, os.ErrPermission) {
		return proc.ProcError(pid, err)
	}
	return fmt.Errorf("read memory of pid %d at %#x: %w", pid, addr, err)
}
