package session

import (
	"encoding/binary"
	"fmt"
	"path"
	"strings"

	"github.com/livetrace/livetrace/internal/agent"
	"github.com/livetrace/livetrace/internal/tracefile"
)

// ArgRule says which values the agent captures for the functions that
// match Glob (the same globs as Options.Funcs): the arguments Args (record
// -A) and the return value Ret (record -R; graph mode only).
type ArgRule struct {
	Glob string
	Args []tracefile.ArgSpec
	Ret  *tracefile.ArgSpec
}

// DefaultStringMax is the default for Options.StringMax.
const DefaultStringMax = 32

// capture is what the agent captures at one selected site.
type capture struct {
	spec uint32 // agent.Site.Spec
	args []tracefile.ArgSpec
	ret  *tracefile.ArgSpec
}

// applyArgRules gives every selected site the values its rules capture:
// for each argument register (and the return value) the last rule that
// matches and names it wins.
func (s *Session) applyArgRules() error {
	if len(s.opts.Args) == 0 && !s.opts.AutoArgs {
		return nil
	}
	if err := s.checkArgRules(s.opts.Args); err != nil {
		return err
	}
	if s.opts.StringMax < 0 || s.opts.StringMax > agent.StringMax {
		return fmt.Errorf("--string-max %d: must be from 0 to %d", s.opts.StringMax, agent.StringMax)
	}
	auto, err := s.autoSpecs()
	if err != nil {
		return err
	}
	for i := range s.sel {
		var a *autoSpec
		if v, ok := auto[i]; ok {
			a = &v
		}
		s.sel[i].capture = s.captureOf(&s.sel[i], a, s.opts.Args)
	}
	return nil
}

// checkArgRules checks the globs and registers of rules.
func (s *Session) checkArgRules(rules []ArgRule) error {
	for _, r := range rules {
		if _, err := path.Match(r.Glob, ""); err != nil {
			return fmt.Errorf("bad argument pattern %q: %w", r.Glob, err)
		}
		for _, a := range r.Args {
			if a.Reg < 1 || a.Reg > 6 {
				return fmt.Errorf("argument spec for %s: register %d: only arguments 1 to 6 (rdi, rsi, rdx, rcx, r8, r9) can be captured", r.Glob, a.Reg)
			}
		}
	}
	return nil
}

// captureOf returns what the agent captures at site x: its DWARF spec a
// (record -a; nil: none), then each of rules that matches it, the last
// one that names a register (or the return value) winning.
func (s *Session) captureOf(x *selected, a *autoSpec, rules []ArgRule) capture {
	spec := s.mods[x.mod].Spec
	var byReg [7]*tracefile.ArgSpec
	if a != nil {
		for k := range a.args {
			byReg[a.args[k].Reg] = &a.args[k]
		}
		if s.opts.Graph {
			byReg[0] = a.ret
		}
	}
	for _, r := range rules {
		if !spec.MatchSite(x.site, r.Glob) {
			continue
		}
		for k := range r.Args {
			byReg[r.Args[k].Reg] = &r.Args[k]
		}
		if r.Ret != nil && s.opts.Graph {
			byReg[0] = r.Ret
		}
	}
	var c capture
	for reg := 1; reg <= 6; reg++ {
		a := byReg[reg]
		if a == nil {
			continue
		}
		c.args = append(c.args, *a)
		c.spec |= 1 << (reg - 1)
		if a.Format == tracefile.FormatString {
			c.spec |= 1 << (agent.SpecStrShift + reg - 1)
		}
	}
	if a := byReg[0]; a != nil {
		r := *a
		r.Reg = 0
		c.ret = &r
		c.spec |= agent.SpecRet
		if r.Format == tracefile.FormatFloat {
			c.spec |= agent.SpecRetFloat
		}
	}
	return c
}

// stubIndex is the site index the stub of site i loads into r11d.
func (s *Session) stubIndex(i int) uint32 {
	return agent.StubIndex(uint32(i), s.sel[i].capture.spec)
}

// stringMax is the agent's string_max for this session: always set, so
// that functions added while attached (Enable) can capture strings too,
// unless the target's seccomp filter refuses the system call the agent
// reads them with (0: the agent never makes it).
func (s *Session) stringMax() int {
	if s.ctl.noStrings != "" {
		return 0
	}
	if s.opts.StringMax == 0 {
		return DefaultStringMax
	}
	return s.opts.StringMax
}

// checkStrings refuses string arguments (/s) among sel's captures when
// the target's seccomp filter refuses the process_vm_readv the agent
// would read them with (ctlState.noStrings).
func (s *Session) checkStrings(sel []selected) error {
	if s.ctl.noStrings == "" {
		return nil
	}
	for _, x := range sel {
		if x.capture.spec&(agent.SpecArgs<<agent.SpecStrShift) != 0 {
			return fmt.Errorf("%w: it would %s on process_vm_readv, with which the agent reads string arguments (/s) such as those of %s: capture them as pointers (/p), or allow process_vm_readv in the process's seccomp policy", ErrSeccomp, s.ctl.noStrings, x.name)
		}
	}
	return nil
}

// dataGroup decodes the DATA record at the start of raw that follows an
// event of site: the event's values (only checked, args "", unless
// encode) and how many records the group takes after the event. The
// payload is the target's memory: a spec the site does not have, or a
// payload that does not match it, is refused (ok false), and the caller
// counts the event as corrupt. With encode, s.conv is held.
func (s *Session) dataGroup(site uint32, kind uint8, raw []byte, encode bool) (args string, records int, ok bool) {
	spec, n, nrec, ok := agent.DataRecord(raw)
	if !ok || len(raw) < (1+nrec)*agent.SizeofRecord {
		return "", 0, false
	}
	want := s.sel[site].capture.spec
	if kind == agent.KindEntry {
		want &= agent.SpecArgs | agent.SpecArgs<<agent.SpecStrShift
	} else {
		want &= agent.SpecRet | agent.SpecRetFloat
	}
	if spec != want || spec == 0 {
		return "", 1 + nrec, false
	}
	p := raw[agent.SizeofRecord : agent.SizeofRecord+n]
	if !encode {
		return "", 1 + nrec, tracefile.CheckArgs(spec, p) == nil
	}
	a, err := s.argsArena.Encode(spec, p)
	if err != nil {
		return "", 1 + nrec, false
	}
	return a, 1 + nrec, true
}

// isData reports whether the record at the start of raw is a DATA record.
func isData(raw []byte) bool {
	return len(raw) >= agent.SizeofRecord && binary.LittleEndian.Uint64(raw[agent.RecordMetaOff:])>>62 == agent.KindData
}

// applyFilters sets the spec bits of record -G and --caller on every
// selected site: a site that matches a -G glob is a trigger, every other
// one is recorded only below a trigger; a site that matches a --caller
// glob records the calls it is below, every other one is held back until
// then. Every site then takes the agent's slow path.
func (s *Session) applyFilters() error {
	if len(s.opts.GraphFuncs) == 0 && len(s.opts.CallerFuncs) == 0 {
		return nil
	}
	if !s.opts.Graph {
		return fmt.Errorf("-G and --caller need graph mode (--graph): the agent follows each thread's stack of traced calls")
	}
	for _, g := range append(append([]string(nil), s.opts.GraphFuncs...), s.opts.CallerFuncs...) {
		if _, err := path.Match(g, ""); err != nil {
			return fmt.Errorf("bad pattern %q: %w", g, err)
		}
	}
	var trig, callers int
	for i := range s.sel {
		f := s.filterSpec(&s.sel[i])
		s.sel[i].capture.spec |= f
		if f&agent.SpecTrigger != 0 {
			trig++
		}
		if f&agent.SpecCaller != 0 {
			callers++
		}
	}
	if len(s.opts.GraphFuncs) > 0 && trig == 0 {
		return fmt.Errorf("-G %s: no traced function matches: the functions of -G must be traced too (see -F)", strings.Join(s.opts.GraphFuncs, " "))
	}
	if len(s.opts.CallerFuncs) > 0 && callers == 0 {
		return fmt.Errorf("--caller %s: no traced function matches: the functions of --caller must be traced too (see -F)", strings.Join(s.opts.CallerFuncs, " "))
	}
	return nil
}

// filterSpec returns the spec bits of record -G and --caller of site x
// (see applyFilters); 0 without them.
func (s *Session) filterSpec(x *selected) uint32 {
	spec := s.mods[x.mod].Spec
	var f uint32
	if len(s.opts.GraphFuncs) > 0 {
		if spec.MatchSite(x.site, s.opts.GraphFuncs...) {
			f |= agent.SpecTrigger
		} else {
			f |= agent.SpecUnder
		}
	}
	if len(s.opts.CallerFuncs) > 0 {
		if spec.MatchSite(x.site, s.opts.CallerFuncs...) {
			f |= agent.SpecCaller
		} else {
			f |= agent.SpecDefer
		}
	}
	return f
}

// autoModule is what record -a read of one module: its functions' specs
// by link-time entry address, or why there are none.
type autoModule struct {
	specs map[uint64]autoSpec
	err   error
}

// autoOf returns the DWARF spec (record -a) of site x, nil when there is
// none or without AutoArgs. Each module's DWARF is read once
// (s.ctl.auto): at the start, then by Enable with s.ctlMu held.
func (s *Session) autoOf(x *selected) *autoSpec {
	if !s.opts.AutoArgs {
		return nil
	}
	am, ok := s.ctl.auto[x.mod]
	if !ok {
		specs, err := s.autoArgs(x.mod)
		am = autoModule{specs, err}
		if s.ctl.auto == nil {
			s.ctl.auto = map[int]autoModule{}
		}
		s.ctl.auto[x.mod] = am
	}
	fns := s.mods[x.mod].Spec.Funcs
	if x.site.Func < 0 || x.site.Func >= len(fns) {
		return nil
	}
	if a, ok := am.specs[fns[x.site.Func].Addr]; ok {
		return &a
	}
	return nil
}

// autoSpecs returns the DWARF specs (record -a) of the selected sites,
// by index in s.sel; none without AutoArgs.
func (s *Session) autoSpecs() (map[int]autoSpec, error) {
	if !s.opts.AutoArgs {
		return nil, nil
	}
	out := map[int]autoSpec{}
	for i := range s.sel {
		if a := s.autoOf(&s.sel[i]); a != nil {
			out[i] = *a
		}
	}
	if len(out) == 0 {
		for mi, am := range s.ctl.auto {
			if am.err != nil {
				return nil, fmt.Errorf("-a: %s: %w: build it with -g, or install its debug file (/usr/lib/debug/.build-id), or name the arguments with -A", s.mods[mi].Path, am.err)
			}
		}
		return nil, fmt.Errorf("-a: the DWARF of the traced modules describes no argument of the selected functions: name them with -A")
	}
	return out, nil
}

// setCapture gives x, a function Enable prepares, what it would have
// captured at the start (record -A, -R, -a, -G, --caller), then the
// values of rules (ctl enable -A/-R) too.
func (s *Session) setCapture(x *selected, rules []ArgRule) {
	all := s.opts.Args
	if len(rules) > 0 {
		all = append(append([]ArgRule(nil), s.opts.Args...), rules...)
	}
	if len(all) > 0 || s.opts.AutoArgs {
		x.capture = s.captureOf(x, s.autoOf(x), all)
	}
	x.capture.spec |= s.filterSpec(x)
}

// checkEnableRules checks the rules of an Enable (ctl enable -A/-R): a
// return value needs graph mode, and a function prepared before (traced
// now or disabled) cannot change what it captures: its stub says whether
// the agent reads a spec at all, and the recording's metadata holds one
// spec per function.
func (s *Session) checkEnableRules(rules []ArgRule) error {
	if err := s.checkArgRules(rules); err != nil {
		return err
	}
	for _, r := range rules {
		if r.Ret != nil && !s.opts.Graph {
			return fmt.Errorf("-R %s: this recording is not in graph mode (--graph): return values are captured at exits", r.Glob)
		}
	}
	all := append(append([]ArgRule(nil), s.opts.Args...), rules...)
	for i := range s.sel {
		x := &s.sel[i]
		c := s.captureOf(x, s.autoOf(x), all)
		c.spec |= s.filterSpec(x)
		if !sameCapture(c, x.capture) {
			return fmt.Errorf("%s was traced before in this recording, capturing %s: what it captures cannot change while attached; name it in -A/-R when the recording starts", x.name, captureString(x.capture))
		}
	}
	return nil
}

// sameCapture reports whether a and b capture the same values.
func sameCapture(a, b capture) bool {
	if a.spec != b.spec || len(a.args) != len(b.args) || (a.ret == nil) != (b.ret == nil) {
		return false
	}
	for i := range a.args {
		if !sameArg(a.args[i], b.args[i]) {
			return false
		}
	}
	return a.ret == nil || sameArg(*a.ret, *b.ret)
}

// sameArg reports whether a and b capture and print the same value.
func sameArg(a, b tracefile.ArgSpec) bool {
	if a.Reg != b.Reg || a.Format != b.Format || a.Size != b.Size || a.Name != b.Name || len(a.Enum) != len(b.Enum) {
		return false
	}
	for k, v := range a.Enum {
		if w, ok := b.Enum[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// captureString says what c captures, for an error message.
func captureString(c capture) string {
	var parts []string
	for _, a := range c.args {
		parts = append(parts, fmt.Sprintf("arg%d", a.Reg))
	}
	if c.ret != nil {
		parts = append(parts, "retval")
	}
	if len(parts) == 0 {
		return "no values"
	}
	return strings.Join(parts, ", ")
}
