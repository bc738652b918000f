package report

import (
	"bytes"
	"debug/dwarf"
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/livetrace/livetrace/internal/tracefile"
)

// Limits on what sourceLines reads from the files of this machine, which
// the recording names but does not vouch for.
const (
	maxLineFile    = 4 << 30 // bytes of an ELF file
	maxLineEntries = 1 << 22 // line-table rows of one module
	maxBuildIDNote = 1 << 16 // bytes of a build-id note section
)

// debugRoot is where separate debug files live, by build ID (a variable
// for the tests).
var debugRoot = "/usr/lib/debug"

// sourceLines finds the source file and line of addresses in the modules
// of a recording, from the DWARF line tables of the modules' files on this
// machine. A module's file is used only if it carries the build ID the
// recording holds for it: a rebuilt or updated file would give wrong
// lines. Modules load on first use; one without lines costs nothing more.
// Not safe for concurrent use.
type sourceLines struct {
	rec  *tracefile.Meta
	mods map[int]*moduleLines
}

// lineRow is one row of a line table: code from addr on comes from file
// at line, up to the next row; end marks the end of a sequence.
type lineRow struct {
	addr uint64
	file string
	line int
	end  bool
}

type moduleLines struct {
	rows []lineRow // sorted by addr
}

func newSourceLines(rec *tracefile.Meta) *sourceLines {
	return &sourceLines{rec: rec, mods: map[int]*moduleLines{}}
}

func (s *sourceLines) close() { s.mods = nil }

// line returns the file and line of the runtime address addr in module
// mod (an index in rec.Modules).
func (s *sourceLines) line(mod int, addr uint64) (string, int, bool) {
	if mod < 0 || mod >= len(s.rec.Modules) {
		return "", 0, false
	}
	ml, ok := s.mods[mod]
	if !ok {
		ml, _ = loadLines(s.rec.Modules[mod])
		s.mods[mod] = ml
	}
	if ml == nil {
		return "", 0, false
	}
	a := addr - s.rec.Modules[mod].Bias
	i := sort.Search(len(ml.rows), func(i int) bool { return ml.rows[i].addr > a }) - 1
	if i < 0 || ml.rows[i].end || ml.rows[i].line <= 0 {
		return "", 0, false
	}
	return ml.rows[i].file, ml.rows[i].line, true
}

// loadLines reads the line tables of module m from its file, or from its
// separate debug file. It returns nil without a build ID to check, or
// without a file that has both that build ID and line tables.
func loadLines(m tracefile.Module) (*moduleLines, error) {
	if m.BuildID == "" || len(m.BuildID) < 4 {
		return nil, errors.New("no build id")
	}
	if _, err := hex.DecodeString(m.BuildID); err != nil {
		return nil, fmt.Errorf("build id %q: %w", m.BuildID, err)
	}
	candidates := []string{
		m.Path,
		filepath.Join(debugRoot, ".build-id", m.BuildID[:2], m.BuildID[2:]+".debug"),
	}
	var errs []error
	for _, path := range candidates {
		ml, err := fileLines(path, m.BuildID)
		if err == nil {
			return ml, nil
		}
		errs = append(errs, err)
	}
	return nil, errors.Join(errs...)
}

// fileLines reads the line tables of the ELF file at path if its build ID
// is buildID.
func fileLines(path, buildID string) (ml *moduleLines, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() || fi.Size() > maxLineFile {
		return nil, fmt.Errorf("%s: not a regular file of at most %d bytes", path, int64(maxLineFile))
	}
	// debug/elf and debug/dwarf may panic on malformed input.
	defer func() {
		if p := recover(); p != nil {
			ml, err = nil, fmt.Errorf("%s: malformed ELF or DWARF: %v", path, p)
		}
	}()
	ef, err := elf.NewFile(f)
	if err != nil {
		return nil, err
	}
	if id := elfBuildID(ef); id != buildID {
		return nil, fmt.Errorf("%s: build id %q, the recording's module has %q", path, id, buildID)
	}
	d, err := ef.DWARF()
	if err != nil {
		return nil, err
	}
	ml = &moduleLines{}
	r := d.Reader()
	for {
		cu, err := r.Next()
		if err != nil {
			return nil, err
		}
		if cu == nil {
			break
		}
		if cu.Tag != dwarf.TagCompileUnit {
			r.SkipChildren()
			continue
		}
		r.SkipChildren()
		lr, err := d.LineReader(cu)
		if err != nil || lr == nil {
			continue
		}
		compDir, _ := cu.Val(dwarf.AttrCompDir).(string)
		names := map[*dwarf.LineFile]string{}
		var le dwarf.LineEntry
		for {
			if err := lr.Next(&le); err != nil {
				if err != io.EOF {
					return nil, err
				}
				break
			}
			if len(ml.rows) >= maxLineEntries {
				return nil, fmt.Errorf("%s: more than %d line-table rows", path, maxLineEntries)
			}
			name, ok := names[le.File]
			if !ok && le.File != nil {
				name = fixJoin(compDir, le.File.Name)
				names[le.File] = name
			}
			ml.rows = append(ml.rows, lineRow{addr: le.Address, file: name, line: le.Line, end: le.EndSequence})
		}
	}
	if len(ml.rows) == 0 {
		return nil, fmt.Errorf("%s: no line tables", path)
	}
	// Ends of sequences first at an address, then the first row of the
	// others: that row is the line of a function's entry (its opening
	// line), the rows after it at the same address are not.
	sort.SliceStable(ml.rows, func(i, j int) bool {
		a, b := ml.rows[i], ml.rows[j]
		if a.addr != b.addr {
			return a.addr < b.addr
		}
		return a.end && !b.end
	})
	rows := ml.rows[:0]
	for i, row := range ml.rows {
		if i > 0 && !row.end && row.addr == ml.rows[i-1].addr && !ml.rows[i-1].end {
			continue
		}
		rows = append(rows, row)
	}
	ml.rows = rows
	return ml, nil
}

// fixJoin undoes a join that debug/dwarf makes in DWARF 5 line tables:
// it prefixes the directory to a file name even when the name is absolute
// (go/src/debug/dwarf/line.go, readFileEntry), so clang's "/src/a.c"
// compiled in /build reads "/build/src/a.c". When that file does not
// exist and the name without the compilation directory does, the latter
// is the file.
func fixJoin(compDir, name string) string {
	if compDir == "" || !strings.HasPrefix(name, strings.TrimSuffix(compDir, "/")+"/") {
		return name
	}
	abs := name[len(strings.TrimSuffix(compDir, "/")):]
	if _, err := os.Stat(name); err == nil {
		return name
	}
	if _, err := os.Stat(abs); err == nil {
		return abs
	}
	return name
}

// elfBuildID returns the GNU build ID of f in hex, "" if it has none.
func elfBuildID(f *elf.File) string {
	for _, s := range f.Sections {
		if s.Type != elf.SHT_NOTE || s.Size > maxBuildIDNote {
			continue
		}
		data, err := s.Data()
		if err != nil {
			continue
		}
		order := f.ByteOrder
		for len(data) >= 12 {
			namesz, descsz, typ := order.Uint32(data), order.Uint32(data[4:]), order.Uint32(data[8:])
			name := (uint64(namesz) + 3) &^ 3
			desc := (uint64(descsz) + 3) &^ 3
			if 12+name+desc > uint64(len(data)) {
				break
			}
			if typ == 3 /* NT_GNU_BUILD_ID */ && namesz == 4 && bytes.Equal(data[12:16], []byte("GNU\x00")) {
				return hex.EncodeToString(data[12+name : 12+name+uint64(descsz)])
			}
			data = data[12+name+desc:]
		}
	}
	return ""
}
