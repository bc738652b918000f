package proc

// Batch is a sequence of operations that runs on the ptrace thread as one
// closure, so that tracee stops are handled between its steps without any
// hand-off: while the text holds INT3s, a thread that traps must not wait
// for a goroutine to be scheduled. Writes are cut into pieces, with the
// pending stops handled after each piece, so no trapped thread waits
// longer than one piece takes to write (tens of microseconds).
//
// A Batch is only valid inside the function passed to [Process.Batch].
type Batch struct {
	p *Process
}

// batchPiece is the most a Batch writes before it handles pending stops.
const batchPiece = 32 << 10

// Batch runs fn on the ptrace thread with a Batch handle.
func (p *Process) Batch(fn func(b *Batch) error) error {
	return p.doErr(func() error { return fn(&Batch{p: p}) })
}

// HoldRemote is [Process.HoldRemote] inside a batch. The Remote's methods
// must only be called within the batch.
func (b *Batch) HoldRemote() (*Remote, error) {
	r, err := b.p.holdRemoteLocked(0)
	if err != nil {
		return nil, err
	}
	r.inline = true
	return r, nil
}

// Write writes data at addr in pieces, handling pending stops (INT3 hits,
// new threads, signals) between pieces.
func (b *Batch) Write(addr uint64, data []byte) error {
	for len(data) > 0 {
		n := min(len(data), batchPiece)
		if err := b.p.mem.Write(addr, data[:n]); err != nil {
			return err
		}
		b.p.reap()
		addr += uint64(n)
		data = data[n:]
	}
	return nil
}

// Pump handles every pending stop.
func (b *Batch) Pump() { b.p.reap() }
