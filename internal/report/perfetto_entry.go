package report

import "github.com/livetrace/livetrace/internal/tracefile"

// entryInstants writes the instants of an entry-mode stream, one per entry
// that passes the thread and function filters, with its caller in a debug
// annotation. An entry without captured values whose function name and
// caller are interned already (nearly all) goes through sliceBegin, the
// others through event.
func (p *perfettoWriter) entryInstants(s *tracefile.Stream, f Filter) error {
	syms := newSymbolizer(p.meta)
	conv := s.Clock.Converter()
	// callers maps a caller's address to the interned id of its name;
	// lastCaller and lastVIID are its last hit (a hot loop calls from
	// one place).
	callers := map[uint64]uint64{}
	var (
		callerAIID         uint64
		lastCaller, lastVI uint64
		haveLast           bool
		threads            = map[uint32]*pfThread{}
		th                 *pfThread
	)
	for {
		b, ok := s.NextBatch()
		if !ok {
			break
		}
		for i := range b {
			ev := &b[i]
			if ev.Kind != tracefile.KindEntry || !f.keep(ev) {
				continue
			}
			ns := conv.Nanos(ev.TSC)
			if fn := int(ev.Func); ev.Args == "" && callerAIID != 0 && fn < len(p.iids) && p.iids[fn] != 0 {
				// A caller seen before: its name is interned.
				viid, ok := lastVI, haveLast && ev.Caller == lastCaller
				if !ok {
					if viid, ok = callers[ev.Caller]; ok {
						lastCaller, lastVI, haveLast = ev.Caller, viid, true
					}
				}
				if ok {
					if th == nil || ev.TID != th.tid {
						if th = threads[ev.TID]; th == nil {
							th = &pfThread{tid: ev.TID}
							threads[ev.TID] = th
						}
					}
					if th.n == 0 {
						p.describe(th, typeInstant)
					}
					p.sliceBegin(th, ns, p.iids[fn], callerAIID, viid)
					continue
				}
			}
			name := syms.name(ev.Caller)
			p.extra = argsMap(p.meta, ev.Func, ev.Args, false)
			p.event(ns, ev.TID, typeInstant, int64(ev.Func), "caller", name)
			callerAIID = p.annots["caller"]
			// (A name's id never changes: lastVI stays right.)
			if viid, ok := p.values[name]; ok && len(callers) < maxCallerCache {
				callers[ev.Caller] = viid
			}
		}
	}
	return s.Err()
}
