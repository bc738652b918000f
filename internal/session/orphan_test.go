package session

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/livetrace/livetrace/internal/agent"
	"github.com/livetrace/livetrace/internal/proc"
	"github.com/livetrace/livetrace/internal/testtarget"
	"github.com/livetrace/livetrace/internal/tsc"
)

func TestStartTime(t *testing.T) {
	st, err := StartTime(os.Getpid())
	if err != nil || st == 0 || st != selfStart {
		t.Fatalf("StartTime(self) = %d, %v; selfStart %d", st, err, selfStart)
	}
	if ownerAlive(agent.Owner{Pid: uint64(os.Getpid()), Start: st + 1}) {
		t.Error("a process with another start time is taken for the owner")
	}
	if !ownerAlive(agent.Owner{Pid: uint64(os.Getpid()), Start: st}) {
		t.Error("a live owner is taken for dead")
	}
	if ownerAlive(agent.Owner{Pid: 1 << 40, Start: st}) {
		t.Error("an impossible pid is taken for alive")
	}
}

func TestCovered(t *testing.T) {
	maps := []proc.Mapping{{Start: 0x1000, End: 0x3000}, {Start: 0x3000, End: 0x4000, Path: "/x"}, {Start: 0x5000, End: 0x6000}}
	anon := func(m proc.Mapping) bool { return m.Path == "" }
	for _, tc := range []struct {
		lo, hi uint64
		want   bool
	}{
		{0x1000, 0x3000, true}, {0x2000, 0x2001, true}, {0x1000, 0x4000, false},
		{0x4000, 0x5000, false}, {0x5000, 0x6000, true}, {0x5000, 0x6001, false}, {0x3000, 0x3000, false},
	} {
		if got := covered(maps, tc.lo, tc.hi, anon); got != tc.want {
			t.Errorf("covered(%#x, %#x) = %v, want %v", tc.lo, tc.hi, got, tc.want)
		}
	}
	if _, ok := mappingAt(maps, 0x2ffc, 8); ok {
		t.Error("mappingAt took a range across two mappings")
	}
	if _, ok := mappingAt(maps, ^uint64(0)-2, 8); ok {
		t.Error("mappingAt took a range that wraps")
	}
	// A site restore writes must be in a module's code mapped private:
	// not in anonymous memory, data, or a file's code mapped shared.
	code := []proc.Mapping{
		{Start: 0x1000, End: 0x2000, Perms: "r-xp", Inode: 7, Path: "/lib/a.so"},
		{Start: 0x2000, End: 0x3000, Perms: "r-xs", Inode: 8, Path: "/lib/b.so"},
		{Start: 0x3000, End: 0x4000, Perms: "rw-p", Inode: 7, Path: "/lib/a.so"},
		{Start: 0x4000, End: 0x5000, Perms: "r-xp"},
	}
	for _, tc := range []struct {
		addr uint64
		want bool
	}{{0x1000, true}, {0x1ffb, true}, {0x1ffc, false}, {0x2000, false}, {0x3000, false}, {0x4000, false}} {
		if got := inCode(code, tc.addr, 5); got != tc.want {
			t.Errorf("inCode(%#x) = %v, want %v", tc.addr, got, tc.want)
		}
	}
}

// TestLeaseRate: the first lease, written right after Start's own sample,
// is converted at the TSC's real rate (from the process's first sample),
// not at fallbackHz, which made it about three times too long here.
func TestLeaseRate(t *testing.T) {
	for tsc.Sample().Mono-startCalib.Mono < uint64(20*time.Millisecond) {
		time.Sleep(time.Millisecond)
	}
	s := &Session{calib: tsc.Sample()}
	hz := s.tscHz()
	want := tsc.Hz(startCalib, tsc.Sample())
	if hz == 0 || hz < want*99/100 || hz > want*101/100 {
		t.Fatalf("tscHz right after Start's sample = %d, want about %d", hz, want)
	}
	d := time.Duration(float64(leaseDeadline(hz)-tsc.Read()) / float64(hz) * float64(time.Second))
	if d < 900*time.Millisecond || d > leaseTerm {
		t.Fatalf("the first lease lasts %v, want %v", d, leaseTerm)
	}
}

// TestFindOrphanNone: a process without an agent has none.
func TestFindOrphanNone(t *testing.T) {
	o, err := FindOrphan(os.Getpid())
	if err != nil || o != nil {
		t.Fatalf("FindOrphan(self) = %+v, %v", o, err)
	}
	if _, err := Restore(os.Getpid()); err == nil {
		t.Fatal("Restore of a process without an agent succeeded")
	}
}

// TestLeaseKeepsLiveTracer: a live tracer that does not consume for longer
// than the lease (busy, or stopped) keeps its agent on: the lease is
// renewed on its own, and an agent that turned itself off anyway (its
// lease forced into the past here) is turned back on.
func TestLeaseKeepsLiveTracer(t *testing.T) {
	testtarget.RequireRoot(t)
	tp, want := startHammering(t, testtarget.ClangNop5)
	out := filepath.Join(t.TempDir(), "rec.data")
	s, err := Start(tp.Pid(), Options{Output: out, Chunks: 4})
	if err != nil {
		t.Fatal(err)
	}
	enabled := func() bool {
		var b [4]byte
		if err := s.p.ReadMem(s.inj.addrs.Enabled, b[:]); err != nil {
			t.Fatal(err)
		}
		return b != [4]byte{}
	}
	o, err := FindOrphan(tp.Pid())
	if err != nil || o == nil || !o.Alive || int(o.Owner.Pid) != os.Getpid() {
		t.Fatalf("FindOrphan while recording: %+v, %v: want this process as the live owner", o, err)
	}
	// No Poll: the buffer is full within milliseconds.
	time.Sleep(1500 * time.Millisecond)
	if !enabled() {
		t.Fatal("the agent turned itself off while its tracer was alive")
	}
	check(t, s.p.WriteMem(s.inj.addrs.Owner+agent.OwnerLeaseOff, agent.LeaseBytes(1)))
	deadline := time.Now().Add(time.Second)
	for enabled() && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(3 * leaseRenew)
	if !enabled() {
		t.Fatal("the agent stayed off after its live tracer renewed the lease")
	}
	check(t, s.Close())
	stopHammering(t, tp, want)
	if o, err := FindOrphan(tp.Pid()); err != nil || o != nil {
		t.Fatalf("FindOrphan after Close: %+v, %v", o, err)
	}
}
