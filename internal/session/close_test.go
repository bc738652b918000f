package session

import (
	"encoding/binary"
	"strings"
	"testing"
	"time"

	"github.com/livetrace/livetrace/internal/agent"
	"github.com/livetrace/livetrace/internal/proc"
	"github.com/livetrace/livetrace/internal/testtarget"
)

// TestCloseReportsKeptAgent: a Close that must leave the agent mapped (a
// thread slot says its thread is inside the agent, as for one whose
// signal handler interrupted it there) says so in its error, and restore
// removes the agent later. Detach closes proc's Exited too, and Close once
// took that for the target's exit and dropped every error it had: record
// exited 0 and said nothing while the agent stayed in the process.
func TestCloseReportsKeptAgent(t *testing.T) {
	testtarget.RequireRoot(t)
	tp := testtarget.Start(t, testtarget.Build(t, testtarget.Simple, testtarget.ClangNop5), "loop")
	if _, err := tp.Expect("ready", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	s, _ := startCounting(t, tp.Pid(), Options{Funcs: []string{"simple_*"}})
	at := busySlot(t, s)
	err := s.Close()
	if err == nil || !strings.Contains(err.Error(), "stays mapped") {
		t.Fatalf("Close with a thread inside the agent: %v, want the agent's code kept and said so", err)
	}
	o, err := FindOrphan(tp.Pid())
	if err != nil || o == nil {
		t.Fatalf("FindOrphan after Close kept the agent: %v, %v", o, err)
	}
	// The slot freed (its thread left the agent) and this tracer gone
	// (the owner record names another start time), restore removes it.
	mem, err := proc.OpenMem(tp.Pid())
	if err != nil {
		t.Fatal(err)
	}
	err = mem.Write(at+agent.ThreadBusyOff, make([]byte, 8))
	if err == nil {
		err = mem.Write(s.inj.addrs.Owner+agent.OwnerStartOff, []byte{1, 0, 0, 0, 0, 0, 0, 0})
	}
	mem.Close()
	if err != nil {
		t.Fatal(err)
	}
	if res, err := Restore(tp.Pid()); err != nil {
		t.Fatalf("restore: %v", err)
	} else {
		t.Log(res)
	}
	testtarget.CheckText(t, tp.Pid())
	if o, err := FindOrphan(tp.Pid()); err != nil || o != nil {
		t.Errorf("after restore: orphan %v, %v", o, err)
	}
}

// TestCloseWaitsForHeldThread: a thread slot busy when Close first looks
// (a thread inside the agent under a signal handler, or a vfork child on
// its parent's slot) that frees itself a moment later must not keep the
// agent mapped: Close looks again, and removes everything.
func TestCloseWaitsForHeldThread(t *testing.T) {
	testtarget.RequireRoot(t)
	tp := testtarget.Start(t, testtarget.Build(t, testtarget.Simple, testtarget.ClangNop5), "loop")
	if _, err := tp.Expect("ready", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	before := testtarget.TakeSnapshot(t, tp.Pid())
	s, _ := startCounting(t, tp.Pid(), Options{Funcs: []string{"simple_*"}})
	at := busySlot(t, s)
	tries := 0
	testHookQuiesceHeld = func(try int) {
		tries = try
		mem, err := proc.OpenMem(tp.Pid())
		if err != nil {
			t.Error(err)
			return
		}
		defer mem.Close()
		if err := mem.Write(at+agent.ThreadBusyOff, make([]byte, 8)); err != nil {
			t.Error(err)
		}
	}
	defer func() { testHookQuiesceHeld = nil }()
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if tries != 1 {
		t.Errorf("Close found the slot held in %d tries, want 1", tries)
	}
	if o, err := FindOrphan(tp.Pid()); err != nil || o != nil {
		t.Fatalf("after Close: orphan %+v, %v; want none", o, err)
	}
	testtarget.CheckText(t, tp.Pid())
	before.CheckSame(t, tp.Pid())
}

// busySlot takes a thread slot no thread has and marks it busy, as a
// thread interrupted inside the agent shows, and returns its address.
func busySlot(t *testing.T, s *Session) uint64 {
	t.Helper()
	slots, err := s.inj.readThreads(s.p)
	if err != nil {
		t.Fatal(err)
	}
	i := len(slots) - 1
	for ; i >= 0 && slots[i].InUse(); i-- {
	}
	at := s.inj.addrs.ThreadSlotAddr(i)
	var key, busy [8]byte
	binary.LittleEndian.PutUint64(key[:], 0x5eed)
	binary.LittleEndian.PutUint64(busy[:], 1)
	if err := s.p.WriteMem(at+agent.ThreadKeyOff, key[:]); err != nil {
		t.Fatal(err)
	}
	if err := s.p.WriteMem(at+agent.ThreadBusyOff, busy[:]); err != nil {
		t.Fatal(err)
	}
	return at
}
