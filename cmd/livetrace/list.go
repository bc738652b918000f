package main

import (
	"bufio"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/livetrace/livetrace/internal/elfsite"
	"github.com/livetrace/livetrace/internal/report"
	"github.com/livetrace/livetrace/internal/session"
	"github.com/livetrace/livetrace/internal/textpoke"
	"github.com/livetrace/livetrace/internal/tracefile"
)

// listOptions holds the flags and arguments of `livetrace list`.
type listOptions struct {
	pid   int
	json  bool
	file  string
	globs []string
	// modules: with -p, only the modules whose path or file name
	// matches one of these (record's -m).
	modules []string
	all     bool
	stdout  io.Writer
	stderr  io.Writer
}

func newListCmd(stdout, stderr io.Writer) *cobra.Command {
	o := &listOptions{stdout: stdout, stderr: stderr}
	cmd := &cobra.Command{
		Use:   "list [--json] [--all] (-p PID [-m MODULE] | FILE) [GLOB...]",
		Short: "List the patchable function sites of a program or a running process",
		Long: `List the functions that livetrace can trace: every patchable site of an
ELF file, or of every module (executable and shared libraries) of a running
process with -p, with its address and form. With -p, STATE shows what the
site holds now: nop (not traced), call (traced), int3 (being patched),
uprobe (a kernel uprobe holds it: bpftrace, perf probe; livetrace leaves
it alone).

GLOBs (shell syntax: *, ?, [a-z]) keep only the functions whose name, plain
or mangled, matches one of them. Functions of a stripped file that no
dynamic symbol covers are named by address (0x1234). With -p, -m keeps
only the modules it matches, as record's -m does (a path or file name
glob, or a soname such as libc.so.6): list --all -p PID -m M F shows what
record -p PID -m M -F F traces.

With --json the output is one JSON array of objects with the fields
function, symbol (mangled name), module (path), address ("0x..."; runtime
address with -p, link-time address otherwise), symbol_address, size, form
(nop5, sled or unknown), endbr, bytes (hex), with -p state, and
graph_unsafe when --graph will not trace the function (why; entry mode
does), which the table shows as a NOTE, and symbol_file when the name
comes from a separate debug file rather than the module itself. Sites of
form unknown hold bytes livetrace does not recognize and will not patch;
they are listed, in JSON too, and a warning goes to stderr.

With --all, functions without a compiler NOP are listed too: form reloc
when livetrace traces them by moving their first instructions into a stub
(record traces them unless --only-nop), or form none with the reason they
cannot be traced (JSON field refused, the table's NOTE).

A stripped module's functions are named from its separate debug file when
the debug directory holds one for its build ID (<dir>/.build-id/xx/yyyy.debug;
the directory is /usr/lib/debug, or the colon-separated list in
LIVETRACE_DEBUG_DIR, "-" for none): its static functions are then listed
too, and a note on stderr names the file.

The summary line ("12 sites in 2 modules") and warnings go to stderr.`,
		Example: `  livetrace list ./myprog
  livetrace list -p 1234 'parse_*'
  livetrace list --json -p 1234
  livetrace list --all -p 1234 -m libc.so.6 'str*'`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if cmd.Flags().Changed("pid") {
				if o.pid <= 0 {
					return fmt.Errorf("parse -p %d: a pid is a positive number", o.pid)
				}
				if len(args) > 0 {
					if fi, err := os.Stat(args[0]); err == nil && !fi.IsDir() {
						return fmt.Errorf("list: give either -p PID or FILE, not both (usage: %s)", cmd.UseLine())
					}
				}
				o.globs = args
			} else {
				if len(o.modules) > 0 {
					return fmt.Errorf("list: -m selects modules of a running process: give -p PID, or list the module's FILE itself")
				}
				if len(args) == 0 {
					return fmt.Errorf("list: give a FILE or -p PID (usage: %s)", cmd.UseLine())
				}
				o.file, o.globs = args[0], args[1:]
			}
			return o.run()
		},
	}
	cmd.Flags().IntVarP(&o.pid, "pid", "p", 0, "list the sites of the running process `PID`")
	cmd.Flags().BoolVar(&o.json, "json", false, "print one JSON array instead of a table")
	cmd.Flags().BoolVar(&o.all, "all", false, "also list functions without a compiler NOP: form reloc, or none with the reason they cannot be traced")
	cmd.Flags().StringArrayVarP(&o.modules, "module", "m", nil, "with -p, list only the modules whose path or file name matches `GLOB`, or whose file name extends it as a soname (repeatable)")
	return cmd
}

// listRow is one site in the output of `livetrace list`.
type listRow struct {
	Function      string `json:"function"`
	Symbol        string `json:"symbol,omitempty"`
	Module        string `json:"module"`
	Address       hexU64 `json:"address"`
	SymbolAddress hexU64 `json:"symbol_address,omitempty"`
	Size          uint64 `json:"size,omitempty"`
	Form          string `json:"form"`
	Endbr         bool   `json:"endbr"`
	Bytes         string `json:"bytes"`
	State         string `json:"state,omitempty"`
	// GraphUnsafe says why --graph does not trace the function (entry
	// mode does).
	GraphUnsafe string `json:"graph_unsafe,omitempty"`
	// Refused says why a function without a compiler NOP cannot be
	// traced (form none, --all).
	Refused string `json:"refused,omitempty"`
	// SymbolFile is the separate debug file the function's symbol was
	// read from (found by build ID), when it was not the module itself.
	SymbolFile string `json:"symbol_file,omitempty"`

	raw []string // every name, plain and mangled, of every alias, for globs
}

// hexU64 is a number written in JSON as a "0x..." string.
type hexU64 uint64

func (h hexU64) MarshalJSON() ([]byte, error) {
	return []byte(`"0x` + strconv.FormatUint(uint64(h), 16) + `"`), nil
}

func (o *listOptions) run() error {
	for _, g := range o.globs {
		if err := elfsite.ValidGlob(g); err != nil {
			return err
		}
	}
	var rows []listRow
	var modules int
	var err error
	if o.file != "" {
		rows, err = o.fileRows()
		modules = 1
	} else {
		rows, modules, err = o.pidRows()
	}
	if err != nil {
		return err
	}
	rows, err = filterRows(rows, o.globs)
	if err != nil {
		return err
	}
	if o.file == "" {
		if err := o.readStates(rows); err != nil {
			return err
		}
	}
	sort.SliceStable(rows, func(i, j int) bool {
		if rows[i].Module != rows[j].Module {
			return rows[i].Module < rows[j].Module
		}
		return rows[i].Address < rows[j].Address
	})
	if o.json {
		err = writeJSON(o.stdout, rows)
	} else {
		err = o.writeTable(rows)
	}
	if err != nil {
		return err
	}
	unknown, mods := 0, map[string]bool{}
	for _, r := range rows {
		mods[r.Module] = true
		if r.Form == elfsite.FormUnknown.String() {
			unknown++
		}
	}
	if unknown > 0 {
		fmt.Fprintf(o.stderr, "warning: %s of form unknown hold bytes livetrace does not recognize: they will not be patched\n", plural(unknown, "site"))
	}
	fmt.Fprintf(o.stderr, "%s in %s", plural(len(rows), "site"), plural(len(mods), "module"))
	if o.pid != 0 && modules != len(mods) {
		fmt.Fprintf(o.stderr, " (%s mapped)", plural(modules, "module"))
	}
	fmt.Fprintln(o.stderr)
	return o.checkOrphan()
}

// checkOrphan fails, saying what to do, when the process carries an agent
// whose livetrace died (sites listed as call are then still patched).
func (o *listOptions) checkOrphan() error {
	if o.pid == 0 {
		return nil
	}
	orphan, err := session.FindOrphan(o.pid)
	if errors.Is(err, session.ErrBadAgent) {
		return err
	}
	if err == nil && orphan != nil {
		return orphan.Err()
	}
	return nil
}

func plural(n int, word string) string {
	switch {
	case n == 1:
		return "1 " + word
	case strings.HasSuffix(word, "s"):
		return strconv.Itoa(n) + " " + word + "es"
	}
	return strconv.Itoa(n) + " " + word + "s"
}

// fileRows lists the sites of o.file at their link-time addresses.
func (o *listOptions) fileRows() ([]listRow, error) {
	spec, err := elfsite.Open(o.file)
	if err != nil {
		return nil, err
	}
	if err := spec.CheckSites(); err != nil && (!o.all || !hasReloc(spec)) {
		if o.all && spec.Stripped && !hasFuncs(spec) {
			// --all has nothing to relocate either: the functions'
			// bounds come from symbols, and a stripped executable
			// exports few or none.
			return nil, fmt.Errorf("%w in %s, and no function to relocate: it is stripped and names none (no .symtab, no dynamic function symbol, no debug file for build ID %s under %s); install its debug symbols (Debian: its -dbgsym package) or set %s to where they are, or rebuild it with clang -fpatchable-function-entry=5 (see docs/BUILDING.md)",
				elfsite.ErrNoSites, report.Printable(spec.Path), spec.BuildID, strings.Join(elfsite.DebugDirs(), ":"), elfsite.DebugDirEnv)
		}
		return nil, err
	}
	o.warnStripped(spec)
	o.noteSymbolFile(spec)
	return specRows(spec, o.file, 0, o.all), nil
}

// pidRows lists the sites of every module of process o.pid at their runtime
// addresses, and returns how many modules it read.
func (o *listOptions) pidRows() ([]listRow, int, error) {
	// The modules -m leaves out are read for their symbols only (an
	// IFUNC's implementation is found through their GOT slots).
	var lopts elfsite.LiveOptions
	if len(o.modules) > 0 {
		lopts.Full = func(p string) bool { return tracefile.MatchModule(p, o.modules) }
	}
	mods, skipped, err := elfsite.LiveModulesWith(o.pid, lopts)
	if err != nil {
		return nil, 0, err
	}
	for _, e := range skipped {
		fmt.Fprintf(o.stderr, "warning: module skipped: %v\n", e)
	}
	var rows []listRow
	var patchable bool
	matched := 0
	for _, m := range mods {
		if len(o.modules) > 0 && !tracefile.MatchModule(m.Path, o.modules) {
			continue
		}
		matched++
		extra := o.all && hasReloc(m.Spec)
		if len(m.Spec.Sites) == 0 && !extra {
			continue
		}
		if m.Spec.CheckSites() == nil || extra {
			patchable = true
		}
		o.warnStripped(m.Spec)
		o.noteSymbolFile(m.Spec)
		at := len(rows)
		rows = append(rows, specRows(m.Spec, m.Path, m.Bias, o.all)...)
		o.ifuncPicks(mods, m, rows[at:])
	}
	if matched == 0 {
		return nil, 0, fmt.Errorf("no module of pid %d matches -m %s: the MODULE column of livetrace list --all -p %d names them", o.pid, strings.Join(o.modules, " -m "), o.pid)
	}
	if !patchable {
		if !o.all {
			return nil, 0, fmt.Errorf("%w in pid %d (%s checked): `livetrace list --all -p %d` lists the functions livetrace traces by relocating their first instructions (record -F traces them), or build the program or its libraries with clang -fpatchable-function-entry=5 (see docs/BUILDING.md)",
				elfsite.ErrNoSites, o.pid, plural(len(mods), "module"), o.pid)
		}
		return nil, 0, fmt.Errorf("%w in pid %d (%s checked), and no function livetrace can relocate: build the program or its libraries with clang -fpatchable-function-entry=5 (see docs/BUILDING.md)",
			elfsite.ErrNoSites, o.pid, plural(len(mods), "module"))
	}
	return rows, len(mods), nil
}

// readStates fills in the live state of each row's site in process o.pid.
func (o *listOptions) readStates(rows []listRow) error {
	addrs := make([]uint64, len(rows))
	for i, r := range rows {
		addrs[i] = uint64(r.Address)
	}
	live, err := elfsite.ReadSiteBytes(o.pid, addrs)
	if err != nil {
		return err
	}
	var areas []textpoke.Area
	for i := range rows {
		switch rows[i].Form {
		case formNone:
			rows[i].State = "-"
			continue
		case elfsite.FormReloc.String():
			rows[i].State = relocState(live[i][:], rows[i].Bytes)
			continue
		}
		rows[i].State = elfsite.ClassifyLive(live[i]).String()
		if rows[i].State == elfsite.StateNop.String() {
			continue
		}
		// A uprobe's INT3 or its CALL into the kernel's trampoline is
		// not livetrace's: say so (textpoke/uprobe.go).
		if areas == nil {
			if areas, err = textpoke.UprobeAreas(o.pid); err != nil {
				return err
			}
		}
		orig, _ := hex.DecodeString(rows[i].Bytes)
		if textpoke.HeldByUprobe(uint64(rows[i].Address), live[i][:], orig, areas) {
			rows[i].State = "uprobe"
		}
	}
	return nil
}

func (o *listOptions) warnStripped(spec *elfsite.Spec) {
	if !spec.Stripped {
		return
	}
	unnamed := 0
	for _, st := range spec.Sites {
		if st.Func < 0 {
			unnamed++
		}
	}
	if unnamed > 0 {
		fmt.Fprintf(o.stderr, "warning: %s is stripped: %s without a dynamic symbol are named by address\n", spec.Path, plural(unnamed, "site"))
	}
}

// noteSymbolFile says on stderr where the functions of spec were named
// from when that is a separate debug file, and why a debug file found was
// not used.
func (o *listOptions) noteSymbolFile(spec *elfsite.Spec) {
	if spec.SymbolFileErr != nil {
		fmt.Fprintf(o.stderr, "warning: %s\n", report.Printable(spec.SymbolFileErr.Error()))
	}
	if spec.SymbolFile != "" {
		fmt.Fprintf(o.stderr, "note: functions of %s are named from its debug file %s\n", report.Printable(spec.Path), report.Printable(spec.SymbolFile))
	}
}

// ifuncPicks adds to the reason of each IFUNC symbol of m among rows
// (refused: its address is the resolver) the implementation process
// o.pid calls for it, which record -F traces for the name.
func (o *listOptions) ifuncPicks(mods []*elfsite.Module, m *elfsite.Module, rows []listRow) {
	for k := range rows {
		r := &rows[k]
		if r.Form != formNone {
			continue
		}
		i, ok := m.Spec.FuncIndex(uint64(r.SymbolAddress) - m.Bias)
		if !ok || !m.Spec.Funcs[i].IFunc {
			continue
		}
		j, why := elfsite.IFuncPick(o.pid, mods, m, i)
		if why != "" {
			continue
		}
		impl := m.Spec.Funcs[j].Name
		if _, why, ok := m.Spec.RelocFunc(j); ok && why != "" {
			r.Refused += "; the process calls " + impl + ", which cannot be traced either: " + why
		} else {
			r.Refused += "; the process calls " + impl + ", which record -F " + r.Function + " traces"
		}
	}
}

// hasFuncs reports whether spec has a function symbol of some size.
func hasFuncs(spec *elfsite.Spec) bool {
	for _, f := range spec.Funcs {
		if f.Size > 0 {
			return true
		}
	}
	return false
}

// hasReloc reports whether spec has functions without a NOP site.
func hasReloc(spec *elfsite.Spec) bool {
	sites, refused := spec.RelocSites()
	return len(sites)+len(refused) > 0
}

// formNone is the form listed for a function that cannot be traced.
const formNone = "none"

// relocState names what a relocating site holds now: orig (not traced),
// jmp (traced), int3 (being patched) or other.
func relocState(live []byte, origHex string) string {
	orig, _ := hex.DecodeString(origHex)
	switch {
	case len(orig) >= len(live) && string(live) == string(orig[:len(live)]):
		return "orig"
	case live[0] == 0xe9:
		return "jmp"
	case live[0] == 0xcc:
		return "int3"
	}
	return "other"
}

// specRows turns the sites of spec into rows; bias moves link-time
// addresses to runtime ones. With all, the relocating sites and the
// functions that cannot be traced are rows too.
func specRows(spec *elfsite.Spec, module string, bias uint64, all bool) []listRow {
	sites := spec.Sites
	if all {
		sites = spec.Traceable(false)
		for _, st := range spec.Sites {
			if !st.Form.Patchable() {
				sites = append(sites, st)
			}
		}
	}
	rows := make([]listRow, 0, len(sites))
	for _, st := range sites {
		r := listRow{
			Function: spec.SiteName(st),
			Module:   module,
			Address:  hexU64(st.Addr + bias),
			Form:     st.Form.String(),
			Endbr:    st.Endbr,
			Bytes:    hex.EncodeToString(st.Bytes[:]),

			GraphUnsafe: st.GraphUnsafe,
		}
		if st.Func >= 0 {
			r.SymbolFile = spec.SymbolFile
		}
		if st.Form == elfsite.FormReloc {
			r.Bytes = hex.EncodeToString(st.Plan.Orig())
		}
		r.raw = append(r.raw, r.Function)
		for i, f := range spec.Aliases(st.Func) {
			if i == 0 {
				r.Symbol = f.Raw
				r.SymbolAddress = hexU64(f.Addr + bias)
				r.Size = f.Size
			}
			r.raw = append(r.raw, f.Name, f.Raw)
		}
		rows = append(rows, r)
	}
	if all {
		_, refused := spec.RelocSites()
		for _, rf := range refused {
			f := spec.Funcs[rf.Func]
			r := listRow{Function: f.Name, Symbol: f.Raw, Module: module, Address: hexU64(rf.Addr + bias),
				SymbolAddress: hexU64(f.Addr + bias), Size: f.Size, Form: formNone, Refused: rf.Reason, SymbolFile: spec.SymbolFile}
			for _, a := range spec.Aliases(rf.Func) {
				r.raw = append(r.raw, a.Name, a.Raw)
			}
			rows = append(rows, r)
		}
	}
	return rows
}

// filterRows keeps the rows that any glob matches. A glob that matches no
// row is an error that suggests the closest function names.
func filterRows(rows []listRow, globs []string) ([]listRow, error) {
	if len(globs) == 0 {
		return rows, nil
	}
	hits := make([]bool, len(globs))
	var out []listRow
	for _, r := range rows {
		keep := false
		for gi, g := range globs {
			for _, n := range r.raw {
				if ok, _ := path.Match(g, n); ok {
					hits[gi], keep = true, true
					break
				}
			}
		}
		if keep {
			out = append(out, r)
		}
	}
	for gi, g := range globs {
		if hits[gi] {
			continue
		}
		names := make([]string, 0, len(rows))
		for _, r := range rows {
			names = append(names, r.Function)
		}
		if near := closest(g, names, 5); len(near) > 0 {
			return nil, fmt.Errorf("match %q: no function of the %s matches it; closest names: %s", g, plural(len(rows), "site"), strings.Join(near, ", "))
		}
		return nil, fmt.Errorf("match %q: no function of the %s matches it", g, plural(len(rows), "site"))
	}
	return out, nil
}

// closest returns up to n distinct names nearest to the glob g: names that
// contain g's literal text first, then by edit distance.
func closest(g string, names []string, n int) []string {
	lit := strings.ToLower(strings.Map(func(r rune) rune {
		if strings.ContainsRune(`*?[]\`, r) {
			return -1
		}
		return r
	}, g))
	if lit == "" {
		return nil
	}
	type cand struct {
		name string
		d    int
	}
	seen := map[string]bool{}
	var cs []cand
	for _, name := range names {
		if seen[name] {
			continue
		}
		seen[name] = true
		low := strings.ToLower(name)
		d := 0
		if !strings.Contains(low, lit) {
			d = 1 + editDistance(lit, low)
		}
		cs = append(cs, cand{name, d})
	}
	sort.Slice(cs, func(i, j int) bool {
		if cs[i].d != cs[j].d {
			return cs[i].d < cs[j].d
		}
		return cs[i].name < cs[j].name
	})
	var out []string
	for _, c := range cs {
		// Past the substring hits, suggest only names a typo away.
		if len(out) == n || c.d > 1+max(2, len(lit)/2) {
			break
		}
		out = append(out, c.name)
	}
	return out
}

// editDistance is the Levenshtein distance between a and b, in bytes.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func (o *listOptions) writeTable(rows []listRow) error {
	w := tabwriter.NewWriter(o.stdout, 0, 8, 2, ' ', 0)
	header := "FUNCTION\tMODULE\tADDRESS\tFORM"
	if o.pid != 0 {
		header += "\tSTATE"
	}
	notes := false
	for _, r := range rows {
		notes = notes || r.GraphUnsafe != "" || r.Refused != ""
	}
	if notes {
		header += "\tNOTE"
	}
	fmt.Fprintln(w, header)
	for _, r := range rows {
		// Names come from files the target controls: never raw on a terminal.
		fmt.Fprintf(w, "%s\t%s\t0x%x\t%s", report.Printable(r.Function), report.Printable(baseName(r.Module)), uint64(r.Address), r.Form)
		if o.pid != 0 {
			fmt.Fprintf(w, "\t%s", r.State)
		}
		if r.GraphUnsafe != "" {
			fmt.Fprintf(w, "\tnot traced with --graph: %s", r.GraphUnsafe)
		}
		if r.Refused != "" {
			fmt.Fprintf(w, "\tnot traceable: %s", report.Printable(r.Refused))
		}
		fmt.Fprintln(w)
	}
	if err := w.Flush(); err != nil {
		return fmt.Errorf("write table: %w", err)
	}
	return nil
}

func baseName(p string) string { return filepath.Base(strings.TrimSuffix(p, " (deleted)")) }

// writeJSON writes rows as one JSON array, one object per line.
func writeJSON(w io.Writer, rows []listRow) error {
	bw := bufio.NewWriter(w)
	bw.WriteString("[")
	for i, r := range rows {
		b, err := json.Marshal(r)
		if err != nil {
			return fmt.Errorf("encode site: %w", err)
		}
		if i > 0 {
			bw.WriteString(",")
		}
		bw.WriteString("\n")
		bw.Write(b)
	}
	if len(rows) > 0 {
		bw.WriteString("\n")
	}
	bw.WriteString("]\n")
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write JSON: %w", err)
	}
	return nil
}
