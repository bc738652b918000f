package session

import (
	"golang.org/x/sys/unix"

	"github.com/livetrace/livetrace/internal/proc"
)

// quiesceEach is quiesce without stopping every thread at once, for the
// case where that is provably enough: entry mode (no return address is
// hijacked), no hooks in the unwinder's GOT and no relocated site (no
// displaced instructions a signal frame could return into). Close calls
// it after RestoreAll, whose last sync made every site hold its original
// bytes on every CPU: no thread can enter a stub or the agent any more,
// so each thread needs looking at once, alone, while the others run
// (proc.Batch.EachThread, as the engine checks relocated regions). A
// thread found in the agent is stepped out of it; one found in a stub
// steps into the agent (the stub jumps to lt_entry), which EachThread
// does not step out of again: then done is false, and quiesce stops every
// thread as before. Each thread stalls only for its own check, instead
// of every thread for the slowest one to stop.
func (s *Session) quiesceEach() (done bool, err error) {
	if s.opts.Graph || len(s.inj.hooks) > 0 || s.hasReloc() {
		return false, nil
	}
	done = true
	stepped := map[int]bool{}
	err = s.p.Batch(func(b *proc.Batch) error {
		return b.EachThread(10000, func(tid int, regs *unix.PtraceRegs) (uint64, uint64, error) {
			lo, hi, in := s.inj.contains(regs.Rip)
			switch {
			case !in:
				return 0, 0, nil
			case stepped[tid]:
				// Stepped out of a stub into the agent: quiesce
				// takes it from here.
				done = false
				return 0, 0, nil
			}
			stepped[tid] = true
			s.quiesceStepped++
			return lo, hi, nil
		})
	})
	if err != nil || !done {
		return done, err
	}
	if s.inj.busy(s.p) {
		// A thread held inside the agent: quiesce looks again, with
		// every thread stopped, and waits for it if need be.
		return false, nil
	}
	s.quiescedEach = true
	return true, nil
}
