package textpoke

// Forget drops the sites at addrs from everything the engine knows, as if
// it had never touched them: no batch, RestoreAll or RestoreInto writes
// them again. It is for sites whose text the target unmapped (a dlclose'd
// module, internal/session/dlopen.go): another mapping may take their
// addresses. The caller makes sure no batch of its own is about to write
// them (it holds no Patch for them).
func (e *Engine) Forget(addrs []uint64) {
	if len(addrs) == 0 {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	drop := make(map[uint64]bool, len(addrs))
	for _, a := range addrs {
		drop[a] = true
		delete(e.held, a)
	}
	t := e.table.Load()
	if t == nil {
		return
	}
	n := len(t.addrs)
	nt := &trapTable{
		addrs:   make([]uint64, 0, n),
		insns:   make([]siteBytes, 0, n),
		origs:   make([]siteBytes, 0, n),
		region:  make([]bool, 0, n),
		detour:  make([]uint64, 0, n),
		written: make([]siteBytes, 0, n),
	}
	for i, a := range t.addrs {
		if drop[a] {
			continue
		}
		nt.addrs = append(nt.addrs, a)
		nt.insns = append(nt.insns, t.insns[i])
		nt.origs = append(nt.origs, t.origs[i])
		nt.region = append(nt.region, t.region[i])
		nt.detour = append(nt.detour, t.detour[i])
		nt.written = append(nt.written, t.written[i])
	}
	e.table.Store(nt)
	e.spare = nil
}
