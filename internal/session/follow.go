package session

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/livetrace/livetrace/internal/agent"
	"github.com/livetrace/livetrace/internal/proc"
	"github.com/livetrace/livetrace/internal/textpoke"
	"github.com/livetrace/livetrace/internal/tracefile"
	"github.com/livetrace/livetrace/internal/tsc"
	"golang.org/x/sys/unix"
)

// Following forked children (Options.Follow, record --follow; see
// docs/DESIGN-NOTES.md, "Following fork and exec").
//
// A forked child is a copy of the target: the patched text, the stubs,
// the agent and its private region (thread table, shadow stacks), and the
// MAP_SHARED mapping of the very memfd the target records into. Only the
// control page reads 0 (MADV_WIPEONFORK). So a followed child keeps all of
// it and records into the shared buffer, each chunk carrying the tid of
// the thread that wrote it, and the session's one consumer and recording
// take its events like the target's. At the child's first stop, before it
// runs an instruction, the tracer (on the ptrace thread):
//   - completes any site a batch in flight had left as an INT3
//     (textpoke.Engine.FinishInto);
//   - fixes the child's copy of the thread table: the slot of the forking
//     thread (its key is the child's thread pointer, %fs:0 = fs_base) gets
//     the child's tid and gives up the chunk it shares with the parent's
//     thread (the parent keeps writing that chunk); every other slot
//     belongs to a thread that does not exist in the child and is retired;
//   - writes the owner record (the same agent regions; this tracer) into
//     the child's control page, so that `livetrace restore -p CHILD`
//     finds and undoes the child's agent if this tracer dies, then sets
//     enabled (and graph).
//
// Then, off the ptrace thread, the child gets a patch engine of its own
// (membarrier is registered per process), and its lease is renewed like
// the target's. At Close every followed child that still runs is undone
// exactly as the target is: text restored, threads stepped out of the
// agent, hijacked returns put back, agent unmapped, detached.
//
// A vfork child (and a clone(CLONE_VM) child) shares the target's memory
// and runs the patched text, as without --follow: the agent serves it,
// under the vforking thread's slot, and the engine emulates its INT3s
// (proc/sharedkids.go). A child that calls exec loses its agent with its
// address space; its followed process ends there.

// followState is the session's followed children, guarded by Session.mu
// (wg aside).
type followState struct {
	members []*member
	closing bool // Close has begun: no new child is followed
	errs    []error
	wg      sync.WaitGroup // setupMember goroutines
	allGone chan struct{}  // see followExited
	// execs are the new images followed processes exec'd into
	// (follow_exec.go); starting counts those whose session is being
	// started.
	execs    []*execImage
	starting sync.WaitGroup
	// passive says why nothing of the target itself is traced (nothing
	// matches): the session only follows its children and execs for
	// programs that match (follow_exec.go).
	passive string
}

// member is a followed child.
type member struct {
	p       *proc.Process
	ppid    int
	comm    string
	exe     string
	cmdline []string
	forkTSC uint64
	// eng is the child's patch engine (setupMember), nil until then or
	// if it could not be made.
	eng  *textpoke.Engine
	done chan struct{} // closed by Close: stop renewing the lease
	// shared: a vfork child, sharing its parent's memory and agent: it
	// has no agent of its own and is never written to.
	shared bool
}

// follow runs on the ptrace thread when a traced process forks (proc's
// FollowHandler): it prepares the child, stopped in its first stop, to
// record, and returns its handlers; nil leaves the child as without
// --follow (its text restored, detached).
func (s *Session) follow(child *proc.Process) *proc.Handlers {
	s.mu.Lock()
	closing := s.fl.closing || s.closed
	s.mu.Unlock()
	if closing {
		return nil
	}
	if child.SharesMemory() || s.fl.passive != "" {
		// vfork: never written to; only its exec (or exit) matters. The
		// child of a passive session has no agent either: the same.
		m := &member{p: child, ppid: child.Parent(), comm: child.Comm(), forkTSC: tsc.Read(), shared: true, done: make(chan struct{})}
		m.exe, _ = os.Readlink(fmt.Sprintf("/proc/%d/exe", child.Pid()))
		s.mu.Lock()
		s.fl.members = append(s.fl.members, m)
		s.mu.Unlock()
		h := &proc.Handlers{Exec: s.execed, Follow: s.follow}
		if child.SharesMemory() && s.eng != nil {
			// It runs the target's text: an INT3 of a batch is the
			// engine's to emulate, as a thread's. Delivered, it killed
			// a posix_spawn child, whose SIGTRAP action is the
			// default (proc/sharedkids.go).
			h.Trap = s.eng.HandleTrap
		}
		return h
	}
	if s.inj == nil || s.eng == nil || s.cons == nil {
		return nil
	}
	if err := s.adoptChild(child); err != nil {
		if _, alive := innerTID(child.Pid(), child.Pid()); !alive {
			return nil // it died before it ran: nothing to follow
		}
		s.mu.Lock()
		s.fl.errs = append(s.fl.errs, fmt.Errorf("follow child %d: %w", child.Pid(), err))
		s.mu.Unlock()
		return nil
	}
	m := &member{p: child, ppid: child.Parent(), comm: child.Comm(), forkTSC: tsc.Read(), done: make(chan struct{})}
	m.exe, _ = os.Readlink(fmt.Sprintf("/proc/%d/exe", child.Pid()))
	m.cmdline = readCmdline(child.Pid())
	s.mu.Lock()
	s.fl.members = append(s.fl.members, m)
	if s.inj.tids != nil {
		s.inj.tids.more = append(s.inj.tids.more, child.Pid())
		s.inj.tids.addIn(child.Pid(), child.Pid())
	}
	s.fl.wg.Add(1)
	s.mu.Unlock()
	go s.setupMember(m)
	return &proc.Handlers{
		ThreadExit: func(tid int) { s.threadExitIn(child, tid) },
		Fork:       s.forked,
		Follow:     s.follow,
		Exec:       s.execed,
	}
}

// adoptChild makes the agent copy of child (stopped, one thread) its own:
// see the comment at the top of this file.
func (s *Session) adoptChild(child *proc.Process) error {
	var regs unix.PtraceRegs
	if err := unix.PtraceGetRegs(child.Pid(), &regs); err != nil {
		return fmt.Errorf("read its registers: %w", err)
	}
	if err := s.eng.FinishInto(child.Mem()); err != nil {
		return err
	}
	inner, ok := innerTID(child.Pid(), child.Pid())
	if !ok {
		return errors.New("it is gone")
	}
	slots, err := s.inj.readThreads(child)
	if err != nil {
		return fmt.Errorf("read its thread table: %w", err)
	}
	var b8 [8]byte
	for i, slot := range slots {
		if !slot.InUse() {
			continue
		}
		at := s.inj.addrs.ThreadSlotAddr(i)
		if slot.Key != regs.Fs_base {
			if err := child.WriteMem(at+agent.ThreadKeyOff, agent.RetiredKey()); err != nil {
				return fmt.Errorf("retire a thread slot: %w", err)
			}
			continue
		}
		binary.LittleEndian.PutUint32(b8[:4], inner)
		if err := child.WriteMem(at+agent.ThreadTidOff, b8[:4]); err != nil {
			return fmt.Errorf("write its thread slot: %w", err)
		}
		// pos and lost are adjacent u32s after chunk: all three zero.
		var z [16]byte
		if err := child.WriteMem(at+agent.ThreadChunkOff, z[:agent.ThreadLostOff+4-agent.ThreadChunkOff]); err != nil {
			return fmt.Errorf("write its thread slot: %w", err)
		}
	}
	s.mu.Lock()
	ob, err := s.inj.owner(leaseDeadline(s.tscHz())).Encode()
	s.mu.Unlock()
	if err != nil {
		return err
	}
	if err := child.WriteMem(s.inj.addrs.Owner, ob); err != nil {
		return fmt.Errorf("write its owner record: %w", err)
	}
	return s.inj.setCtl(child, agent.Ctl{Enabled: true, Graph: s.opts.Graph})
}

// setupMember gives a followed child its patch engine, then renews its
// lease until Close or its exit.
func (s *Session) setupMember(m *member) {
	// An error here is no failure: the child may be exiting (its memory
	// is gone before its exit is reaped), and a child that lives on
	// without an engine of its own is restored in stop mode at Close.
	eng, err := s.eng.Fork(m.p, textpoke.Options{Mode: s.opts.Mode})
	if err == nil {
		s.mu.Lock()
		m.eng = eng
		s.mu.Unlock()
	}
	s.fl.wg.Done()
	t := time.NewTicker(leaseRenew)
	defer t.Stop()
	var flags [8]byte
	a := s.inj.addrs
	for {
		select {
		case <-m.p.Exited():
			return
		case <-m.done:
			return
		case <-t.C:
		}
		_ = m.p.WriteMem(a.Owner+agent.OwnerLeaseOff, agent.LeaseBytes(leaseDeadline(s.tscHz())))
		if m.p.ReadMem(a.Ctl, flags[:]) == nil {
			if c, err := agent.DecodeCtl(flags[:]); err == nil && !c.Enabled {
				select {
				case <-m.done:
					return // Close cleared it
				default:
				}
				_ = s.inj.setCtl(m.p, agent.Ctl{Enabled: true, Graph: s.opts.Graph})
			}
		}
	}
}

// closeMembers undoes every followed child (Close, before the target):
// each that still runs gets its text and its stack back and loses its
// agent, and is detached. Their last events are taken by Close's final
// consume, after this.
func (s *Session) closeMembers() error {
	s.mu.Lock()
	s.fl.closing = true
	s.mu.Unlock()
	// No new member now; wait until those there have their engine.
	s.fl.wg.Wait()
	s.mu.Lock()
	members := append([]*member(nil), s.fl.members...)
	errs := append([]error(nil), s.fl.errs...)
	s.mu.Unlock()
	// Children first: a grandchild was added after its parent.
	for i := len(members) - 1; i >= 0; i-- {
		m := members[i]
		close(m.done)
		if err := s.closeMember(m); err != nil {
			errs = append(errs, fmt.Errorf("followed child %d: %w", m.p.Pid(), err))
		}
	}
	return errors.Join(errs...)
}

func (s *Session) closeMember(m *member) error {
	gone := func() bool {
		select {
		case <-m.p.Exited():
			return true
		default:
			return false
		}
	}
	var errs []error
	note := func(err error) {
		// A child that exits meanwhile (a postgres backend whose client
		// left) has nothing left to undo: its last request failed, or
		// the next one would.
		if err != nil && !gone() && !proc.ExitedDuring(m.p.Pid(), err, 100*time.Millisecond) {
			errs = append(errs, err)
		}
	}
	if !gone() && !m.shared {
		inj := *s.inj // the same addresses; keep is the child's own
		inj.keep = false
		v := &Session{pid: m.p.Pid(), opts: s.opts, p: m.p, eng: m.eng, inj: &inj, sel: s.sel, mods: s.mods,
			lost: map[uint32]uint64{}, threads: map[uint32]string{}}
		if err := inj.setCtl(m.p, agent.Ctl{}); err != nil {
			var b [1]byte
			if m.p.ReadMem(inj.addrs.Base, b[:]) != nil {
				// Its memory is gone (it is exiting, or exec'd) before
				// the tracer has seen it end: nothing to undo.
				_ = m.p.Detach()
				return nil
			}
			note(err)
		}
		if m.eng != nil {
			_, err := m.eng.RestoreAll()
			note(err)
		} else {
			// No engine of its own (membarrier could not be set
			// up): put the text back with every thread stopped.
			if err := m.p.StopAll(); err != nil {
				note(err)
			} else {
				note(s.eng.RestoreInto(m.p.Mem()))
				note(m.p.ResumeAll())
			}
		}
		if !gone() {
			note(v.quiesce())
		}
		if !gone() {
			s.memberPendingLoss(m.p)
		}
		if len(inj.hooks) > 0 && !gone() {
			note(inj.unhookUnwind(m.p))
		}
		if !gone() {
			note(inj.remove(m.p))
		}
	}
	if err := m.p.Detach(); err != nil && !errors.Is(err, proc.ErrExited) && !m.p.Ended() {
		note(err)
	}
	return errors.Join(errs...)
}

// memberPendingLoss is attributePendingLoss for a followed child.
func (s *Session) memberPendingLoss(p *proc.Process) {
	slots, err := s.inj.readThreads(p)
	if err != nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, slot := range slots {
		if slot.InUse() && slot.Chunk == 0 && slot.Lost > 0 {
			s.notePendingLoss(slot.Tid, slot.Lost)
		}
	}
}

// pidOfThread returns the process of thread tid (tracer side). s.mu is
// held.
func (s *Session) pidOfThread(tid uint32) int {
	if s.inj != nil && s.inj.tids != nil {
		return s.inj.tids.pidOf(int(tid))
	}
	return s.pid
}

// followMeta adds the processes and each thread's pid to m, for a session
// that follows children. s.mu is held.
func (s *Session) followMeta(m *tracefile.Meta) {
	if !s.opts.Follow {
		return
	}
	m.Processes = append(m.Processes[:0], tracefile.Process{PID: s.pid, Comm: m.Comm, Cmdline: m.Cmdline, Exe: m.Exe, Untraced: s.fl.passive})
	for _, mb := range s.fl.members {
		m.Processes = append(m.Processes, tracefile.Process{PID: mb.p.Pid(), PPID: mb.ppid, Comm: mb.comm,
			Cmdline: mb.cmdline, Exe: mb.exe, ForkTSC: mb.forkTSC})
	}
	for i := range m.Threads {
		m.Threads[i].PID = s.pidOfThread(m.Threads[i].TID)
	}
}

// Followed returns the pids of the children followed so far.
func (s *Session) Followed() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	var pids []int
	for _, m := range s.fl.members {
		pids = append(pids, m.p.Pid())
	}
	return pids
}

// followExited returns a channel closed once the target, every child
// followed so far and every new image they exec'd have ended (a child
// followed after the target exited, a daemon's grandchild say, keeps the
// session going).
func (s *Session) followExited() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fl.allGone != nil {
		return s.fl.allGone
	}
	ch := make(chan struct{})
	s.fl.allGone = ch
	go func() {
		<-s.p.Exited()
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for ; ; <-t.C {
			if s.allEnded() {
				close(ch)
				return
			}
		}
	}()
	return ch
}

func ended(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// allEnded reports whether every followed process and image has ended,
// and none has a forked child whose first stop is still to be handled (a
// daemon's middle child exits before its child is followed). It must not
// hold s.mu while it asks proc: the ptrace thread may be waiting for it.
func (s *Session) allEnded() bool {
	s.mu.Lock()
	procs := []*proc.Process{s.p}
	for _, m := range s.fl.members {
		procs = append(procs, m.p)
	}
	var subs []*Session
	for _, x := range s.fl.execs {
		if x.sub == nil && x.why == "" {
			s.mu.Unlock()
			return false // still starting
		}
		if x.sub != nil {
			subs = append(subs, x.sub)
		}
	}
	nm, nx := len(s.fl.members), len(s.fl.execs)
	s.mu.Unlock()
	if testAllEndedLook != nil {
		testAllEndedLook()
	}
	for _, p := range procs {
		if !ended(p.Exited()) || p.PendingChildren() > 0 {
			return false
		}
	}
	for _, sub := range subs {
		if !ended(sub.Exited()) {
			return false
		}
	}
	// A child followed since the list was taken: its parent, which had
	// it pending then, may have exited since and no longer does (a
	// daemon's middle child exits right after its fork). The follow
	// handler adds the member before proc forgets the pending child, so
	// a pending count of 0 above means the list has it now.
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.fl.members) == nm && len(s.fl.execs) == nx
}

// testAllEndedLook, when set, runs in allEnded between taking the list of
// followed processes and asking each whether it ended.
var testAllEndedLook func()

// followEndReason is EndReason when children were followed ("" when
// none were).
func (s *Session) followEndReason() string {
	if !s.opts.Follow {
		return ""
	}
	s.mu.Lock()
	n := len(s.fl.members)
	s.mu.Unlock()
	if n == 0 {
		return ""
	}
	kids := "1 child"
	if n != 1 {
		kids = fmt.Sprintf("%d children", n)
	}
	return fmt.Sprintf("process %d and the %s followed have ended", s.pid, kids)
}
