package session

import (
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/livetrace/livetrace/internal/agent"
	"github.com/livetrace/livetrace/internal/elfsite"
	"github.com/livetrace/livetrace/internal/proc"
)

// C++ exceptions in graph mode (docs/DESIGN.md §4, "Exit tracing").
//
// The unwinder must never see lt_return: it has no unwind information and
// the program would die in std::terminate. The C++ runtime starts every
// unwind through libgcc's _Unwind_RaiseException (__cxa_throw,
// std::rethrow_exception) or _Unwind_Resume_or_Rethrow (__cxa_rethrow),
// called through its GOT. In graph mode the tracer points those GOT slots,
// in every module that has them, at the agent's hooks, which give the
// thread's hijacked return addresses back and tail-jump to the real
// function (whose address the tracer writes into the agent's private
// region first). The GOT slots of __cxa_begin_catch get a hook too: at
// the catch the agent ends the frames the exception left (with exit
// records) and hijacks the live ones again, so that they keep their exits.
// So do those of the longjmp family, whose hook ends the frames a jump
// leaves (internal/agent/doc.go, "Graph mode"). _Unwind_Resume (the
// landing pads' continuation) needs no hook: the phase that started the
// unwind has already given every hijacked return address back, no frame is
// hijacked again while an exception is in flight, and a frame entered
// later lies below the landing pad.
//
// A slot not yet bound (lazy binding: it points back into its own module's
// PLT) gets the address that libgcc_s's dynamic symbol table defines; the
// original PLT address goes back at detach, so lazy binding resumes then.
// Detach puts every slot that still holds our hook back to its original
// value while every thread is stopped, before the agent is unmapped; if
// that fails the agent stays mapped (its hooks work with tracing disabled).
//
// A thread inside the dynamic linker, about to bind a lazy slot when the
// hooks go in, can still overwrite the hook with the real function (a
// first throw racing with the attach); that slot then stays unhooked.
//
// Not covered: a C++ runtime loaded by dlopen after the attach, a program
// that links libgcc's unwinder statically (no GOT), and forced unwinds
// (pthread_cancel, pthread_exit), which glibc starts through a pointer it
// looked up with dlsym.

// unwindSyms are the functions whose GOT slots get the agent's hooks, in
// the order of agent.Addrs.Hooks: the unwinder's entry points, then
// __cxa_begin_catch (the agent ends the frames an exception left and
// hijacks the others again) and the longjmp family (the agent ends the
// frames a jump leaves; docs in internal/agent/doc.go, "Graph mode").
// Only the first is required (requiredSyms): without the others, frames
// lose exit records, and the program is safe all the same.
var unwindSyms = [...]string{"_Unwind_RaiseException", "_Unwind_Resume_or_Rethrow",
	"__cxa_begin_catch", "longjmp", "_longjmp", "siglongjmp", "__longjmp_chk"}

// requiredSyms is how many of unwindSyms must be hooked when they are
// called at all: the unwinder's entry points.
const requiredSyms = 2

// unwindSlot is a GOT slot bound to unwindSyms[sym].
type unwindSlot struct {
	mod  *elfsite.Module
	sym  int
	addr uint64 // runtime address of the slot
}

// unwindPlan is what discover found: the GOT slots to hook and where
// libgcc_s defines each symbol (0: not known).
type unwindPlan struct {
	slots []unwindSlot
	defs  [len(unwindSyms)]uint64
}

// gotHook is a GOT slot that holds an agent hook.
type gotHook struct {
	addr, orig, hook uint64
	what             string
}

// isCXXRuntime reports whether a module is a C++ runtime library.
func isCXXRuntime(m *elfsite.Module) bool {
	n := m.Name()
	return strings.Contains(n, "libstdc++") || strings.Contains(n, "libc++")
}

// planUnwind finds, in every module, the GOT slots bound to unwindSyms. It
// fails when a C++ runtime is loaded but no slot of
// _Unwind_RaiseException is found: exceptions could not be made safe.
func planUnwind(pid int, mods []*elfsite.Module) (*unwindPlan, error) {
	plan := &unwindPlan{}
	cxx := ""
	for _, m := range mods {
		if cxx == "" && isCXXRuntime(m) {
			cxx = m.Name()
		}
		relocs, defs, err := moduleUnwindRelocs(pid, m)
		if err != nil {
			if cxx == m.Name() {
				return nil, err
			}
			continue // a module we cannot read has no C++ runtime calls we know of
		}
		for _, r := range relocs {
			// The file is untrusted: a slot must lie in the module.
			if addr := m.Runtime(r.off); inModule(m, addr) && inModule(m, addr+7) {
				plan.slots = append(plan.slots, unwindSlot{mod: m, sym: r.sym, addr: addr})
			}
		}
		// Where a lazily bound slot will go: the first module that
		// defines the symbol, but libgcc_s for the unwinder's.
		gcc := strings.HasPrefix(m.Name(), "libgcc_s")
		for i, v := range defs {
			if v != 0 && (plan.defs[i] == 0 || gcc && i < requiredSyms) {
				plan.defs[i] = m.Runtime(v)
			}
		}
	}
	if cxx != "" {
		found := false
		for _, sl := range plan.slots {
			found = found || sl.sym == 0 // _Unwind_RaiseException
		}
		if !found {
			return nil, fmt.Errorf("%s is loaded but no module calls %s through its GOT, so livetrace cannot hook the unwinder", cxx, unwindSyms[0])
		}
	}
	return plan, nil
}

type unwindReloc struct {
	sym int
	off uint64 // link-time address of the GOT slot
}

// moduleUnwindRelocs reads m's file and returns its unwindRelocs.
func moduleUnwindRelocs(pid int, m *elfsite.Module) (relocs []unwindReloc, defs [len(unwindSyms)]uint64, err error) {
	if len(m.Mappings) == 0 {
		return nil, defs, fmt.Errorf("read relocations of %s: no mapping", m.Path)
	}
	// Never by the path from maps, which the target controls (a FIFO there
	// would block us): see elfsite.OpenMappedFile.
	f, err := elfsite.OpenMappedFile(pid, m.Mappings[0])
	if err != nil {
		return nil, defs, fmt.Errorf("read relocations of %s: %w", m.Path, err)
	}
	defer f.Close()
	return unwindRelocs(f, m.Path)
}

// unwindRelocs reads an ELF file (untrusted: a panic in debug/elf becomes
// an error) and returns its R_X86_64_JUMP_SLOT and R_X86_64_GLOB_DAT
// relocations naming one of unwindSyms, and the link-time addresses at
// which it defines them (0: not defined).
func unwindRelocs(r io.ReaderAt, path string) (relocs []unwindReloc, defs [len(unwindSyms)]uint64, err error) {
	defer func() {
		if p := recover(); p != nil {
			relocs, err = nil, fmt.Errorf("read relocations of %s: malformed ELF: %v", path, p)
		}
	}()
	ef, err := elf.NewFile(r)
	if err != nil {
		return nil, defs, fmt.Errorf("read relocations of %s: %w", path, err)
	}
	syms, err := ef.DynamicSymbols()
	if err != nil {
		if errors.Is(err, elf.ErrNoSymbols) {
			return nil, defs, nil
		}
		return nil, defs, fmt.Errorf("read dynamic symbols of %s: %w", path, err)
	}
	// want maps a dynamic symbol index (1-based, as in r_info) to a hook.
	want := map[uint32]int{}
	for i, s := range syms {
		for k, name := range unwindSyms {
			if s.Name != name {
				continue
			}
			if s.Section == elf.SHN_UNDEF {
				want[uint32(i+1)] = k
			} else if elf.ST_TYPE(s.Info) == elf.STT_FUNC && s.Value != 0 && defs[k] == 0 {
				defs[k] = s.Value
			}
		}
	}
	if len(want) == 0 {
		return nil, defs, nil
	}
	for _, sec := range ef.Sections {
		if sec.Type != elf.SHT_RELA || sec.Flags&elf.SHF_ALLOC == 0 {
			continue
		}
		if int(sec.Link) >= len(ef.Sections) || ef.Sections[sec.Link].Type != elf.SHT_DYNSYM {
			continue
		}
		data, err := sec.Data()
		if err != nil {
			return nil, defs, fmt.Errorf("read %s of %s: %w", sec.Name, path, err)
		}
		for i := 0; i+24 <= len(data); i += 24 {
			off := binary.LittleEndian.Uint64(data[i:])
			info := binary.LittleEndian.Uint64(data[i+8:])
			typ := elf.R_X86_64(info & 0xffffffff)
			if typ != elf.R_X86_64_JMP_SLOT && typ != elf.R_X86_64_GLOB_DAT {
				continue
			}
			if k, ok := want[uint32(info>>32)]; ok && off%8 == 0 {
				relocs = append(relocs, unwindReloc{sym: k, off: off})
			}
		}
	}
	return relocs, defs, nil
}

// inModule reports whether addr lies in one of m's mappings.
func inModule(m *elfsite.Module, addr uint64) bool {
	for _, g := range m.Mappings {
		if addr >= g.Start && addr < g.End {
			return true
		}
	}
	return false
}

// hookUnwind points every planned GOT slot at the agent's hook, after
// writing the real functions' addresses into the agent's private region.
// Every thread is stopped meanwhile, so that none reads a slot half
// written. The hooked slots are recorded in s.inj.hooks as they are
// written, for unhookUnwind.
func (s *Session) hookUnwind() error {
	plan := s.unwind
	if plan == nil || len(plan.slots) == 0 {
		return nil
	}
	if err := s.p.StopAll(); err != nil {
		return fmt.Errorf("hook the unwinder: %w", err)
	}
	defer s.p.ResumeAll()
	agentHooks := s.inj.addrs.RuntimeHooks()
	if len(agentHooks) != len(unwindSyms) {
		return fmt.Errorf("hook the unwinder: the agent has %d hooks, livetrace knows %d", len(agentHooks), len(unwindSyms))
	}
	var hooks, table [len(unwindSyms)]uint64
	for k, h := range agentHooks {
		if h.Sym != unwindSyms[k] {
			return fmt.Errorf("hook the unwinder: agent hook %d is for %s, not %s", k, h.Sym, unwindSyms[k])
		}
		hooks[k], table[k] = h.Hook, h.Real
	}
	var real [len(unwindSyms)]uint64
	var from [len(unwindSyms)]string
	origs := make([]uint64, len(plan.slots))
	skip := make([]bool, len(plan.slots))
	var word [8]byte
	for i, sl := range plan.slots {
		if err := s.p.ReadMem(sl.addr, word[:]); err != nil {
			return fmt.Errorf("hook the unwinder: read the GOT slot of %s in %s: %w", unwindSyms[sl.sym], sl.mod.Name(), err)
		}
		v := binary.LittleEndian.Uint64(word[:])
		origs[i] = v
		target, how := v, "its GOT slot in "+sl.mod.Name()
		if inModule(sl.mod, v) {
			// Lazy binding: not resolved yet, it points at its own PLT.
			target, how = plan.defs[sl.sym], "the module defining it (for the lazily bound slot in "+sl.mod.Name()+")"
			if target == 0 && sl.sym < requiredSyms {
				return fmt.Errorf("%w: the GOT slot of %s in %s is not bound yet (lazy binding) and no libgcc_s defining it is loaded; run the program with LD_BIND_NOW=1, or trace it without --graph",
					ErrUnwindUnsafe, unwindSyms[sl.sym], sl.mod.Name())
			}
		}
		bad := target == 0 || target == hooks[sl.sym] || real[sl.sym] != 0 && real[sl.sym] != target
		if bad && sl.sym >= requiredSyms {
			// Not needed for safety: leave this slot alone (its frames
			// lose exit records; see unwindSyms).
			skip[i] = true
			continue
		}
		if target == 0 || target == hooks[sl.sym] {
			return fmt.Errorf("%w: the GOT slot of %s in %s holds %#x", ErrUnwindUnsafe, unwindSyms[sl.sym], sl.mod.Name(), v)
		}
		if real[sl.sym] != 0 && real[sl.sym] != target {
			return fmt.Errorf("%w: %s resolves to %#x through %s but to %#x through %s; livetrace hooks one unwinder only: trace it without --graph",
				ErrUnwindUnsafe, unwindSyms[sl.sym], real[sl.sym], from[sl.sym], target, how)
		}
		real[sl.sym], from[sl.sym] = target, how
	}
	for k := range real {
		if real[k] == 0 {
			continue
		}
		if err := s.p.WriteMem(table[k], binary.LittleEndian.AppendUint64(nil, real[k])); err != nil {
			return fmt.Errorf("hook the unwinder: %w", err)
		}
	}
	for i, sl := range plan.slots {
		if skip[i] || real[sl.sym] == 0 {
			continue
		}
		if len(s.inj.hooks) >= agent.MaxHooks {
			// The owner record (what restore needs after a tracer
			// death) has room for MaxHooks slots.
			if sl.sym >= requiredSyms {
				continue // optional: its frames lose exit records
			}
			return fmt.Errorf("%w: more than %d GOT slots to hook; trace it without --graph", ErrUnwindUnsafe, agent.MaxHooks)
		}
		h := gotHook{addr: sl.addr, orig: origs[i], hook: hooks[sl.sym], what: unwindSyms[sl.sym] + " in " + sl.mod.Name()}
		s.inj.hooks = append(s.inj.hooks, h)
		if err := s.publishOwner(); err != nil { // before the slot changes (orphan.go)
			return err
		}
		if err := s.p.WriteMem(sl.addr, binary.LittleEndian.AppendUint64(nil, h.hook)); err != nil {
			return fmt.Errorf("hook the unwinder: write the GOT slot of %s: %w", h.what, err)
		}
	}
	return nil
}

// unhookUnwind puts every hooked GOT slot that still holds its hook back to
// its original value. Every thread should be stopped. A slot that cannot
// be put back keeps the agent mapped (inj.keep): the hooks still work.
func (inj *injection) unhookUnwind(p *proc.Process) error {
	var errs []error
	var word [8]byte
	left := inj.hooks[:0]
	for _, h := range inj.hooks {
		if err := p.ReadMem(h.addr, word[:]); err != nil {
			errs = append(errs, fmt.Errorf("unhook %s: %w", h.what, err))
			left = append(left, h)
			continue
		}
		if binary.LittleEndian.Uint64(word[:]) != h.hook {
			continue // rebound by someone else: not ours any more
		}
		if err := p.WriteMem(h.addr, binary.LittleEndian.AppendUint64(nil, h.orig)); err != nil {
			errs = append(errs, fmt.Errorf("unhook %s: %w", h.what, err))
			left = append(left, h)
		}
	}
	inj.hooks = left
	if len(left) > 0 {
		inj.keep = true
	}
	return errors.Join(errs...)
}

// hookedSlots returns the GOT slots that hold an agent hook (for tests).
func (s *Session) hookedSlots() []gotHook {
	if s.inj == nil {
		return nil
	}
	return append([]gotHook(nil), s.inj.hooks...)
}
