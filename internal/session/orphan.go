package session

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"time"

	"github.com/livetrace/livetrace/internal/agent"
	"github.com/livetrace/livetrace/internal/proc"
	"github.com/livetrace/livetrace/internal/tsc"
)

// Orphaned agents (docs/DESIGN.md §4, "The agent can undo itself").
//
// A tracer that dies without cleaning up (SIGKILL, the OOM killer, a
// panic) leaves the target patched, with the agent mapped. Everything
// needed to undo that stays in the target:
//   - the owner record in the agent's control page (struct lt_owner): the
//     tracer's pid and start time, the agent's base, the size of the
//     shared memory, every stub region and every GOT slot pointed at an
//     agent hook, with its original value. The tracer rewrites it after
//     each mapping it makes and before it writes a GOT slot; the magic
//     tells a later tracer that the page is an agent's;
//   - the site table in the shared memory (struct lt_site): each patched
//     site, the stub its CALL goes to, and the bytes it held before;
//   - the shadow stacks and the saved SIGTRAP action in the private
//     region, as during any recording.
//
// `livetrace restore -p PID` (restore.go) adopts such an agent and undoes
// it with the same code a normal detach runs.
//
// The lease. While a tracer consumes, it renews a TSC deadline in the
// owner record every leaseRenew. An agent whose buffer is full checks it
// (only then: the fast path pays nothing), and once it has expired clears
// its own enabled flag, so that every traced call returns at once instead
// of scanning a full buffer for a free chunk. A living tracer that finds
// the flag cleared (it was stopped, or starved of CPU, for longer than
// the lease) sets it again.

const (
	leaseRenew = 100 * time.Millisecond
	leaseTerm  = time.Second
	// fallbackHz converts the lease to TSC ticks while the tracer has no
	// estimate of the TSC rate yet; too high a rate only makes the first
	// lease longer.
	fallbackHz = 6_000_000_000
)

// selfStart is this process's start time, read once.
var selfStart = func() uint64 {
	st, _ := StartTime(os.Getpid())
	return st
}()

// StartTime returns the start time of process pid (field 22 of
// /proc/PID/stat, in clock ticks since boot), which tells a process from a
// later one that reuses its pid.
func StartTime(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, proc.ProcError(pid, err)
	}
	// comm (field 2) may hold spaces and parentheses: fields resume after
	// the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("parse /proc/%d/stat: no command name", pid)
	}
	f := bytes.Fields(b[i+1:])
	// f[0] is field 3 (state): field 22 is f[19].
	if len(f) < 20 {
		return 0, fmt.Errorf("parse /proc/%d/stat: %d fields", pid, len(f)+2)
	}
	v, err := strconv.ParseUint(string(f[19]), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parse /proc/%d/stat: start time: %w", pid, err)
	}
	return v, nil
}

// ownerAlive reports whether the tracer an owner record names is still
// running: a process with that pid and that start time exists.
func ownerAlive(o agent.Owner) bool {
	if o.Pid == 0 || o.Pid > 1<<22 {
		return false
	}
	st, err := StartTime(int(o.Pid))
	return err == nil && st == o.Start
}

// leaseDeadline returns the TSC value leaseTerm from now, at rate hz.
func leaseDeadline(hz uint64) uint64 {
	if hz < 100_000_000 || hz > 20_000_000_000 {
		hz = fallbackHz
	}
	return tsc.Read() + uint64(leaseTerm.Seconds()*float64(hz))
}

// startCalib is a TSC sample from this process's start. The first lease
// is written during the injection, often less than 10 ms after Start's
// own sample: with only that one, the lease was converted at fallbackHz,
// 2.9 s instead of 1 on a 2.1 GHz TSC, and an agent whose tracer was
// killed right after the attach scanned its full buffer on every call for
// that long.
var startCalib = tsc.Sample()

// tscHz estimates the TSC rate from the samples taken so far: Start's, or
// else the process's first; 0 while both are under 10 ms old.
func (s *Session) tscHz() uint64 {
	now := tsc.Sample()
	for _, c := range [...]tsc.Pair{s.calib, startCalib} {
		if c.Mono != 0 && now.Mono-c.Mono >= uint64(10*time.Millisecond) {
			return tsc.Hz(c, now)
		}
	}
	return 0
}

// owner builds the owner record from what inject has mapped so far.
func (inj *injection) owner(lease uint64) agent.Owner {
	o := agent.Owner{Lease: lease, Pid: uint64(os.Getpid()), Start: selfStart, Base: inj.addrs.Base, SharedSize: inj.sharedSize, Rbrk: inj.rbrk, RbrkPad: inj.rbrkPad}
	for _, r := range inj.regions {
		if r.what == "stubs" {
			o.Stubs = append(o.Stubs, agent.Range{Addr: r.addr, Size: r.size})
		}
	}
	if r := inj.planned; r != nil {
		o.Stubs = append(o.Stubs, agent.Range{Addr: r.addr, Size: r.size})
	}
	for _, h := range inj.hooks {
		o.Hooks = append(o.Hooks, agent.Hook{Slot: h.addr, Orig: h.orig, Hook: h.hook})
	}
	return o
}

// publishOwner writes the owner record into the control page, once the
// control page exists, and starts renewing the lease.
func (s *Session) publishOwner() error {
	inj := s.inj
	mapped := false
	for _, r := range inj.regions {
		mapped = mapped || r.what == "agent control page"
	}
	if !mapped {
		return nil
	}
	b, err := inj.owner(leaseDeadline(s.tscHz())).Encode()
	if err != nil {
		return fmt.Errorf("inject agent: %w", err)
	}
	if err := s.p.WriteMem(inj.addrs.Owner, b); err != nil {
		return fmt.Errorf("inject agent: write the owner record: %w", err)
	}
	if !s.leasing {
		s.leasing = true
		go s.renewLease()
	}
	return nil
}

// renewLease renews the lease every leaseRenew until the session closes or
// the target is gone, and turns the agent back on if it turned itself off
// because the lease expired while this tracer was alive but not running
// (stopped with SIGSTOP, say).
func (s *Session) renewLease() {
	t := time.NewTicker(leaseRenew)
	defer t.Stop()
	var flags [8]byte
	for {
		select {
		case <-s.p.Exited():
			return
		case <-t.C:
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return
		}
		a := s.inj.addrs
		_ = s.p.WriteMem(a.Owner+agent.OwnerLeaseOff, agent.LeaseBytes(leaseDeadline(s.tscHz())))
		if s.cons != nil && s.p.ReadMem(a.Ctl, flags[:]) == nil {
			if c, err := agent.DecodeCtl(flags[:]); err == nil && !c.Enabled {
				_ = s.inj.setCtl(s.p, agent.Ctl{Enabled: true, Graph: s.opts.Graph})
			}
		}
		s.mu.Unlock()
	}
}

// Orphan is an agent found in a process by [FindOrphan].
type Orphan struct {
	Pid   int         // the process it is in
	Base  uint64      // the agent region's base
	Owner agent.Owner // its owner record (untrusted: read from the target)
	// Alive says the tracer that owns it is still running.
	Alive bool
}

// ErrOrphan means a process carries an agent whose tracer died; the error
// says to run `livetrace restore`.
var ErrOrphan = errors.New("orphaned livetrace agent")

// ErrBadAgent means a process carries an agent whose owner record this
// livetrace cannot read (another version, or damaged).
var ErrBadAgent = errors.New("unreadable livetrace agent")

// ErrOwned means a process carries an agent whose tracer is still running.
var ErrOwned = errors.New("process is traced by a running livetrace")

// Err returns the error that tells the user about o: what it is, and what
// to do.
func (o *Orphan) Err() error {
	if o.Alive {
		return fmt.Errorf("%w: pid %d carries the agent of livetrace pid %d, which is still running: stop that livetrace first (Ctrl-C, or kill -TERM %d)",
			ErrOwned, o.Pid, o.Owner.Pid, o.Owner.Pid)
	}
	return fmt.Errorf("%w in pid %d at %#x (its livetrace, pid %d, died without cleaning up): run `livetrace restore -p %d` to put the process back",
		ErrOrphan, o.Pid, o.Base, o.Owner.Pid, o.Pid)
}

// FindOrphan looks for an agent in process pid: an anonymous mapping that
// holds a control page whose owner record has the magic, the version and
// the base that puts the control page there. It needs no ptrace
// attachment, only the right to read /proc/PID/mem. It returns nil when
// there is none. Nothing it returns has been checked beyond that: see
// [Restore].
func FindOrphan(pid int) (*Orphan, error) {
	maps, err := proc.ReadMaps(pid)
	if err != nil {
		return nil, err
	}
	var mem *proc.Mem
	defer func() {
		if mem != nil {
			mem.Close()
		}
	}()
	buf := make([]byte, agent.SizeofOwner)
	anon := func(m proc.Mapping) bool { return m.Path == "" }
	seen := map[uint64]bool{}
	for _, m := range maps {
		if m.Path != "" {
			continue
		}
		// The control page is mapped first, on its own or merged with
		// the code before it (both anonymous and writable while the
		// agent goes in): try this mapping as either.
		for _, base := range []uint64{m.Start - agent.CtlOff, m.Start} {
			a := agent.AddrsAt(base)
			if base > m.Start || seen[base] || !covered(maps, a.Owner, a.Owner+agent.SizeofOwner, anon) {
				continue
			}
			seen[base] = true
			if mem == nil {
				if mem, err = proc.OpenMem(pid); err != nil {
					return nil, err
				}
			}
			if mem.Read(a.Owner, buf[:4]) != nil || le.Uint32(buf) != agent.OwnerMagic || mem.Read(a.Owner, buf) != nil {
				// An agent of a livetrace from before the owner record
				// moved to a page of its own: say so, not "no agent".
				var old [8]byte
				if mem.Read(base+agent.CtlOff+legacyOwnerOff, old[:]) == nil && le.Uint32(old[:]) == agent.OwnerMagic && le.Uint32(old[4:]) < agent.OwnerVersion {
					return nil, fmt.Errorf("%w in pid %d at %#x: owner record version %d, this livetrace reads version %d: run the restore of the livetrace that injected it, or restart the process",
						ErrBadAgent, pid, base, le.Uint32(old[4:]), agent.OwnerVersion)
				}
				continue
			}
			o, err := agent.DecodeOwner(buf)
			if err != nil {
				return nil, fmt.Errorf("%w in pid %d at %#x: %w: this livetrace cannot undo it; run the restore of the livetrace that injected it, or restart the process",
					ErrBadAgent, pid, base, err)
			}
			if o.Base != base {
				continue
			}
			return &Orphan{Pid: pid, Base: base, Owner: o, Alive: ownerAlive(o)}, nil
		}
	}
	return nil, nil
}

// legacyOwnerOff is where in the control page the owner record was before
// owner record version 4, which moved it to the page a forked child keeps.
const legacyOwnerOff = 0x40

// le is the byte order of the target.
var le = binary.LittleEndian

// FindOrphans looks for an agent, as [FindOrphan] does, in every process
// but this one, and returns those it found in increasing pid order, with
// the pids it could not look into and why (a process that exited meanwhile
// is left out).
func FindOrphans() ([]*Orphan, map[int]error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, map[int]error{0: err}
	}
	var out []*Orphan
	failed := map[int]error{}
	self := os.Getpid()
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		o, err := FindOrphan(pid)
		switch {
		case errors.Is(err, proc.ErrKernelThread) || errors.Is(err, os.ErrNotExist) || proc.ExitedDuring(pid, err, 0):
			// A kernel thread, or it exited (between reading its maps
			// and its memory, too).
		case err != nil:
			failed[pid] = err
		case o != nil:
			out = append(out, o)
		}
	}
	slices.SortFunc(out, func(a, b *Orphan) int { return a.Pid - b.Pid })
	return out, failed
}
