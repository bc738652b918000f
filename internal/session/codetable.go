package session

import (
	"cmp"
	"slices"

	"github.com/livetrace/livetrace/internal/agent"
	"github.com/livetrace/livetrace/internal/elfsite"
)

// The code table (agent.CodeTable): in graph mode the agent hijacks a
// return address only when it lies in one of the process's modules. A call
// from anywhere else comes from code a runtime compiled, and such a runtime
// may read the return address back: HotSpot takes the pc of the Java frame
// that called into the VM (InterpreterRuntime::*, OptoRuntime::*,
// SharedRuntime::*, ...) from the return address when it walks the stack,
// and died on lt_return within 200 ms of a --graph of those functions
// (docs/DESIGN-NOTES.md, "Return addresses in JIT-compiled code").

// codeSpans returns the address ranges of the modules of mods, but those
// gone says are unmapped: for each module, every run of its mappings that
// follow one another without a hole and hold an executable one (the loader
// maps a module's segments over one reservation, so no other mapping can
// come between them), sorted, touching ranges merged.
func codeSpans(mods []*elfsite.Module, gone func(i int) bool) []agent.Span {
	var spans []agent.Span
	for i, m := range mods {
		if gone != nil && gone(i) {
			continue
		}
		maps := m.Mappings
		for j := 0; j < len(maps); {
			k, exec := j, maps[j].Exec()
			for k+1 < len(maps) && maps[k+1].Start == maps[k].End {
				k++
				exec = exec || maps[k].Exec()
			}
			if exec {
				spans = append(spans, agent.Span{Lo: maps[j].Start, Hi: maps[k].End})
			}
			j = k + 1
		}
	}
	slices.SortFunc(spans, func(a, b agent.Span) int { return cmp.Compare(a.Lo, b.Lo) })
	out := spans[:0]
	for _, sp := range spans {
		if n := len(out); n > 0 && sp.Lo <= out[n-1].Hi {
			out[n-1].Hi = max(out[n-1].Hi, sp.Hi)
			continue
		}
		out = append(out, sp)
	}
	return out
}

// writeCode makes the modules the session knows the agent's code table
// (graph mode only: entry mode hijacks nothing).
func (s *Session) writeCode() error {
	if !s.opts.Graph || s.isClosed() {
		return nil
	}
	gone := func(i int) bool { return s.loader.gone[i] }
	return s.inj.code.Write(s.p.WriteMem, s.inj.addrs, codeSpans(s.mods, gone))
}

// beginCode voids the agent's code table until the next writeCode: a
// module is being unloaded (RT_DELETE), and its addresses may hold JIT
// code next.
func (s *Session) beginCode() error {
	if !s.opts.Graph || s.isClosed() {
		return nil
	}
	return s.inj.code.Begin(s.p.WriteMem, s.inj.addrs)
}
