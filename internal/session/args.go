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
	for _, r := range s.opts.Args {
		if _, err := path.Match(r.Glob, ""); err != nil {
			return fmt.Errorf("bad argument pattern %q: %w", r.Glob, err)
		}
		for _, a := range r.Args {
			if a.Reg < 1 || a.Reg > 6 {
				return fmt.Errorf("argument spec for %s: register %d: only arguments 1 to 6 (rdi, rsi, rdx, rcx, r8, r9) can be captured", r.Glob, a.Reg)
			}
		}
	}
	if s.opts.StringMax < 0 || s.opts.StringMax > agent.StringMax {
		return fmt.Errorf("--string-max %d: must be from 0 to %d", s.opts.StringMax, agent.StringMax)
	}
	auto, err := s.autoSpecs()
	if err != nil {
		return err
	}
	for i := range s.sel {
		x := &s.sel[i]
		spec := s.mods[x.mod].Spec
		var byReg [7]*tracefile.ArgSpec
		if a, ok := auto[i]; ok {
			for k := range a.args {
				byReg[a.args[k].Reg] = &a.args[k]
			}
			if s.opts.Graph {
				byReg[0] = a.ret
			}
		}
		for _, r := range s.opts.Args {
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
		x.capture = c
	}
	return nil
}

// stubIndex is the site index the stub of site i loads into r11d.
func (s *Session) stubIndex(i int) uint32 {
	if s.sel[i].capture.spec != 0 {
		return uint32(i) | agent.Capture
	}
	return uint32(i)
}

// stringMax is the agent's string_max for this session.
func (s *Session) stringMax() int {
	for _, x := range s.sel {
		if x.capture.spec&(agent.SpecArgs<<agent.SpecStrShift) != 0 {
			if s.opts.StringMax == 0 {
				return DefaultStringMax
			}
			return s.opts.StringMax
		}
	}
	return 0
}

// dataGroup decodes the DATA record at the start of raw that follows an
// event of site: the event's values and how many records the group takes
// after the event. The payload is the target's memory: a spec the site
// does not have, or a payload that does not match it, is refused (ok
// false), and the caller counts the event as corrupt.
func (s *Session) dataGroup(site uint32, kind uint8, raw []byte) (args string, records int, ok bool) {
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
	a, err := tracefile.EncodeArgs(spec, p)
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
		x := &s.sel[i]
		spec := s.mods[x.mod].Spec
		if len(s.opts.GraphFuncs) > 0 {
			if spec.MatchSite(x.site, s.opts.GraphFuncs...) {
				x.capture.spec |= agent.SpecTrigger
				trig++
			} else {
				x.capture.spec |= agent.SpecUnder
			}
		}
		if len(s.opts.CallerFuncs) > 0 {
			if spec.MatchSite(x.site, s.opts.CallerFuncs...) {
				x.capture.spec |= agent.SpecCaller
				callers++
			} else {
				x.capture.spec |= agent.SpecDefer
			}
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

// autoSpecs returns the DWARF specs (record -a) of the selected sites,
// by index in s.sel; none without AutoArgs.
func (s *Session) autoSpecs() (map[int]autoSpec, error) {
	if !s.opts.AutoArgs {
		return nil, nil
	}
	byMod := map[int]map[uint64]autoSpec{}
	errs := map[int]error{}
	out := map[int]autoSpec{}
	for i, x := range s.sel {
		specs, ok := byMod[x.mod]
		if !ok {
			var err error
			specs, err = s.autoArgs(x.mod)
			byMod[x.mod], errs[x.mod] = specs, err
		}
		fns := s.mods[x.mod].Spec.Funcs
		if x.site.Func < 0 || x.site.Func >= len(fns) {
			continue
		}
		if a, ok := specs[fns[x.site.Func].Addr]; ok {
			out[i] = a
		}
	}
	if len(out) == 0 {
		for mi, err := range errs {
			if err != nil {
				return nil, fmt.Errorf("-a: %s: %w: build it with -g, or install its debug file (/usr/lib/debug/.build-id), or name the arguments with -A", s.mods[mi].Path, err)
			}
		}
		return nil, fmt.Errorf("-a: the DWARF of the traced modules describes no argument of the selected functions: name them with -A")
	}
	return out, nil
}
