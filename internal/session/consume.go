package session

import (
	"encoding/binary"

	"github.com/livetrace/livetrace/internal/agent"
	"github.com/livetrace/livetrace/internal/proc"
	"github.com/livetrace/livetrace/internal/tracefile"
)

// Poll moves the events the agent has published so far into the recording.
// Call it regularly while the target runs (every millisecond or so keeps
// the default buffer from overflowing at tens of millions of events per
// second). It returns the number of events moved.
func (s *Session) Poll() (int, error) { return s.consume(false) }

// consume moves published chunks (all chunks, with final) to the writer.
func (s *Session) consume(final bool) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cons == nil || s.w == nil {
		return 0, nil
	}
	var werr error
	fn := func(tid uint32, lostBefore uint32, raw []byte) {
		if werr == nil {
			werr = s.deliverRaw(tid, lostBefore, raw)
		}
	}
	var n int
	var err error
	if final {
		n, err = s.cons.DrainRaw(fn)
	} else {
		n, err = s.cons.PollRaw(fn)
	}
	if werr != nil {
		return n, werr
	}
	return n, err
}

// deliverRaw converts one chunk's records, straight from the shared
// memory, and writes them. Records come from the target's memory: a site
// index out of range is counted as corrupt and dropped.
func (s *Session) deliverRaw(tid uint32, lostBefore uint32, raw []byte) error {
	tid = s.tids.host(s.pid, tid) // the agent records namespace tids (nstid.go)
	if _, ok := s.threads[tid]; !ok {
		s.threads[tid] = threadName(s.pid, int(tid))
	}
	s.lost[tid] += uint64(lostBefore)
	if !s.wantTID(tid) {
		return nil
	}
	nrec := len(raw) / agent.SizeofRecord
	if cap(s.evbuf) < nrec {
		s.evbuf = make([]tracefile.Event, nrec)
	}
	evs := s.evbuf[:nrec]
	maxDepth := s.opts.Filters.MaxDepth
	nsel := uint32(len(s.sel))
	n := 0
	for i := 0; i < nrec; i++ {
		// The fields of agent.Record, decoded in place (see
		// agent.DecodeRecord): a Record temporary per event cost more than
		// the rest of the loop.
		rec := raw[i*agent.SizeofRecord : (i+1)*agent.SizeofRecord]
		tsc := binary.LittleEndian.Uint64(rec[agent.RecordTscOff:])
		meta := binary.LittleEndian.Uint64(rec[agent.RecordMetaOff:])
		kind, depth := uint8(meta>>62), uint8(meta>>54)
		site := uint32(meta>>32) & (agent.MaxSites - 1)
		if site >= nsel || (kind != agent.KindEntry && kind != agent.KindExit) {
			s.corrupt++
			continue
		}
		if maxDepth > 0 && int(depth) >= maxDepth {
			continue
		}
		ev := &evs[n]
		n++
		ev.TSC, ev.TID, ev.Func, ev.Depth = tsc, tid, site, uint16(depth)
		ev.Kind, ev.Caller = tracefile.KindExit, 0
		if kind == agent.KindEntry {
			ev.Kind = tracefile.KindEntry
			if low := uint32(meta); low != agent.CallerUnknown {
				ev.Caller = uint64(int64(s.sel[site].addr) + int64(int32(low)))
			}
		}
	}
	evs = evs[:n]
	s.events += uint64(n)
	return s.w.WriteEvents(evs)
}

// threadExit runs on the ptrace thread when a thread of the target exits
// (it is stopped for good). Its agent slot is retired, so a new thread that
// reuses its thread pointer gets a slot of its own, and its partly filled
// chunk is handed to the consumer.
func (s *Session) threadExit(tid int) {
	if s.inj == nil || s.cons == nil {
		return
	}
	slots, err := s.inj.readThreads(s.p)
	if err != nil {
		return
	}
	for i, slot := range slots {
		if !slot.InUse() || slot.Tid != s.tids.ns(s.pid, uint32(tid)) {
			continue
		}
		_ = s.p.WriteMem(s.inj.addrs.ThreadSlotAddr(i)+agent.ThreadKeyOff, agent.RetiredKey())
		if slot.Chunk != 0 {
			s.mu.Lock()
			var werr error
			_, _ = s.cons.RetireChunkRaw(slot.Chunk, func(tid uint32, lostBefore uint32, raw []byte) {
				if werr == nil {
					werr = s.deliverRaw(tid, lostBefore, raw)
				}
			})
			s.mu.Unlock()
		}
	}
}

// forked runs on the ptrace thread when the target forks: the child gets
// the original text back, so it never runs into our stubs or INT3s. (Its
// copy of the agent stays mapped: frames hijacked in graph mode still
// return through it, and its control page reads 0, so it records nothing.)
func (s *Session) forked(child int, mem *proc.Mem) {
	if s.eng == nil {
		return
	}
	_ = s.eng.RestoreInto(mem)
}

// wantTID applies the --tid filter.
func (s *Session) wantTID(tid uint32) bool {
	if len(s.opts.Filters.TIDs) == 0 {
		return true
	}
	for _, t := range s.opts.Filters.TIDs {
		if t == tid {
			return true
		}
	}
	return false
}
