package textpoke

import (
	"fmt"
	"slices"

	"github.com/livetrace/livetrace/internal/proc"
)

// FinishInto prepares the text of a forked child that the tracer follows
// (record --follow; docs/DESIGN-NOTES.md, "Following fork and exec"): the
// child keeps the patched text, but a fork in the middle of a batch copies
// INT3s that no batch will ever take out of the child. Every site of the
// table whose first byte in m (the stopped child's memory) is an INT3 gets
// the whole instruction the site stands for, what the trap handler would
// emulate there. The child is stopped and has one thread, which is in
// fork(), so the write cannot tear an instruction under it.
//
// It takes no lock: a fork can be reported in the middle of a batch.
func (e *Engine) FinishInto(m *proc.Mem) error {
	t := e.table.Load()
	if t == nil {
		return nil
	}
	bp := e.arch.Breakpoint()
	var b [1]byte
	for i, a := range t.addrs {
		if err := m.Read(a, b[:]); err != nil {
			return fmt.Errorf("read site %#x of a forked child: %w", a, err)
		}
		if b[0] != bp {
			continue
		}
		insn := t.insns[i].bytes()
		if len(insn) == 0 {
			// A region written in stop mode has no trap instruction;
			// its original bytes are the safe choice.
			insn = t.origs[i].bytes()
		}
		if err := m.Write(a, insn); err != nil {
			return fmt.Errorf("finish site %#x of a forked child: %w", a, err)
		}
	}
	return nil
}

// Fork returns an engine for p, a forked child of e's process that the
// tracer follows, which inherited e's sites: it knows their original bytes
// (RestoreAll puts them back in the child) and treats what the child holds
// now (after FinishInto) as what it last wrote. Like New, it registers p
// for membarrier and picks the mode, so call it off the ptrace thread.
func (e *Engine) Fork(p *proc.Process, opts Options) (*Engine, error) {
	c, err := New(p, opts)
	if err != nil {
		return nil, err
	}
	// The instructions are copied: the next batch of e fills the array of
	// the table it replaced (Engine.spare).
	e.mu.Lock()
	t := e.table.Load()
	var insns []siteBytes
	if t != nil {
		insns = slices.Clone(t.insns)
	}
	e.mu.Unlock()
	if t == nil {
		return c, nil
	}
	nt := &trapTable{addrs: t.addrs, insns: insns, origs: t.origs, region: t.region, detour: t.detour,
		written: make([]siteBytes, len(t.addrs))}
	var b [maxSiteLen]byte
	for i, a := range t.addrs {
		n := t.origs[i].n
		if err := p.Mem().Read(a, b[:n]); err != nil {
			return nil, fmt.Errorf("read site %#x of a forked child: %w", a, err)
		}
		nt.written[i] = mkSiteBytes(b[:n])
	}
	c.table.Store(nt)
	return c, nil
}
