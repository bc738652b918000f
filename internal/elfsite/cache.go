package elfsite

import (
	"fmt"
	"os"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// The parse cache keeps the last few Specs of module files, so that a
// process that attaches again (a library user, the tests, a tracer that
// follows a fork) does not parse the same libc and program again. A Spec
// is immutable, so one is shared.
//
// A cached Spec is used only for the very same file content: the key is
// the file's device, inode, size, mtime and ctime (the kernel sets ctime
// on every change of content or metadata, and nobody can set it back),
// the build ID read from the open file, and the same identity of the
// debug files that build ID could name in [DebugDirs] (debug.go), present
// or not. A file replaced or rewritten, or a debug file installed since,
// therefore misses the cache; a hostile file can at worst be parsed, as
// without a cache. There is no cache on disk: it would be data the
// tracer, often root, reads back with no more right to trust it than the
// file itself, and a parse of a program of 10,000 functions and its libc
// takes a few ms.
const cacheEntries = 8

type cacheKey struct {
	dev, ino, size uint64
	mtime, ctime   int64
	symbolsOnly    bool
	buildID        string
	debug          string // the identity of the candidate debug files
}

var parseCache struct {
	sync.Mutex
	keys  []cacheKey // least recently used first
	specs []*Spec
}

// cachedParse is Parse (or ParseSymbols) of f, through the cache.
func cachedParse(f *os.File, path string, symbolsOnly bool) (*Spec, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return parse(f, path, symbolsOnly)
	}
	id, ok := fileBuildID(f, path)
	if !ok || id == "" {
		return parse(f, path, symbolsOnly)
	}
	k := cacheKey{dev: st.Dev, ino: st.Ino, size: uint64(st.Size), mtime: st.Mtim.Nano(), ctime: st.Ctim.Nano(),
		symbolsOnly: symbolsOnly, buildID: id, debug: debugFilesState(id)}
	if spec := cacheGet(k); spec != nil {
		cp := *spec
		cp.Path = path
		return &cp, nil
	}
	spec, err := parse(f, path, symbolsOnly)
	if err == nil && spec.BuildID == id {
		cachePut(k, spec)
	}
	return spec, err
}

// debugFilesState describes the files that could be the debug file of
// build ID id: for each debug directory, the identity of the file there
// or its absence.
func debugFilesState(id string) string {
	var b strings.Builder
	for _, dir := range DebugDirs() {
		p := DebugFilePath(dir, id)
		var st unix.Stat_t
		if p == "" || unix.Stat(p, &st) != nil {
			fmt.Fprintf(&b, "%s:-;", p)
			continue
		}
		fmt.Fprintf(&b, "%s:%d:%d:%d:%d:%d;", p, st.Dev, st.Ino, st.Size, st.Mtim.Nano(), st.Ctim.Nano())
	}
	return b.String()
}

// fileBuildID reads the build ID of the ELF file r, and reports whether it
// could.
func fileBuildID(r *os.File, path string) (id string, ok bool) {
	defer func() {
		if recover() != nil {
			id, ok = "", false
		}
	}()
	f, size, err := openELF(r, path, "")
	if err != nil {
		return "", false
	}
	p := &parser{f: f, r: r, size: size}
	return p.buildID(), true
}

func cacheGet(k cacheKey) *Spec {
	parseCache.Lock()
	defer parseCache.Unlock()
	for i, ck := range parseCache.keys {
		if ck == k {
			spec := parseCache.specs[i]
			// Most recently used last.
			parseCache.keys = append(append(parseCache.keys[:i:i], parseCache.keys[i+1:]...), k)
			parseCache.specs = append(append(parseCache.specs[:i:i], parseCache.specs[i+1:]...), spec)
			return spec
		}
	}
	return nil
}

func cachePut(k cacheKey, spec *Spec) {
	parseCache.Lock()
	defer parseCache.Unlock()
	for i, ck := range parseCache.keys {
		if ck == k {
			parseCache.specs[i] = spec
			return
		}
	}
	if len(parseCache.keys) >= cacheEntries {
		parseCache.keys = parseCache.keys[1:]
		parseCache.specs = parseCache.specs[1:]
	}
	parseCache.keys = append(parseCache.keys, k)
	parseCache.specs = append(parseCache.specs, spec)
}

// resetCache empties the cache (tests).
func resetCache() {
	parseCache.Lock()
	parseCache.keys, parseCache.specs = nil, nil
	parseCache.Unlock()
}
