package session

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/livetrace/livetrace/internal/elfsite"
	"github.com/livetrace/livetrace/internal/proc"
	"github.com/livetrace/livetrace/internal/testtarget"
	"github.com/livetrace/livetrace/internal/textpoke"
	"github.com/livetrace/livetrace/internal/tracefile"
)

// The probed function of the simple fixture; in "loop" mode every function
// is called every 10 ms.
const uprobeVictim = "simple_beta"

// TestUprobeAfterUs: livetrace traces every function, then bpftrace puts a
// uprobe on one of them. Closing the session must not switch the uprobe
// off: the text is then the original one with the uprobe in place, the
// uprobe keeps counting, and once bpftrace exits the text is the original.
func TestUprobeAfterUs(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := simpleCopy(t, testtarget.ClangNop5)
	tp := startLoop(t, bin)
	out := filepath.Join(t.TempDir(), "rec.data")
	s, err := Start(tp.Pid(), Options{Funcs: []string{"simple_*"}, Output: out})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var addr uint64
	var orig []byte
	for _, x := range s.sel {
		if x.name == uprobeVictim {
			addr, orig = x.addr, x.orig
		}
	}
	if addr == 0 {
		t.Fatalf("%s is not traced", uprobeVictim)
	}
	call := siteBytes(t, tp.Pid(), addr)
	bt := testtarget.StartBpftrace(t, bin, uprobeVictim, tp.Pid(), addr, call)
	pollFor(t, s, 300*time.Millisecond)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	held := s.Held()
	if len(held) != 1 || held[0].Name != uprobeVictim || !held[0].Uprobe {
		t.Fatalf("Held() = %+v, want %s held by a uprobe", held, uprobeVictim)
	}
	checkTextUprobe(t, tp.Pid(), addr, orig)
	n0 := bt.Count(t)
	if n := bt.WaitCount(t, n0+10); n < n0+10 {
		t.Fatalf("the uprobe counted %d calls in 5 s after livetrace detached, want 10 or more (one every 10 ms)", n-n0)
	}
	bt.Stop(t)
	testtarget.CheckText(t, tp.Pid())
	rec, err := tracefile.Read(out)
	check(t, err)
	if countEntries(rec)["simple_alpha"] == 0 {
		t.Error("no call of simple_alpha recorded")
	}
}

// TestUprobeBeforeUs: bpftrace's uprobe is on a function before livetrace
// attaches. The recording must go ahead without that function, say so,
// record the others, and leave the uprobe counting. With NOP5 sites (the
// kernel turns its INT3 into a CALL at the first hit) and with sleds (it
// keeps the INT3; the other sleds are converted in stop mode).
func TestUprobeBeforeUs(t *testing.T) {
	testtarget.RequireRoot(t)
	for _, form := range []testtarget.Form{testtarget.ClangNop5, testtarget.GccSled} {
		t.Run(string(form), func(t *testing.T) { uprobeBeforeUs(t, form) })
	}
}

func uprobeBeforeUs(t *testing.T, form testtarget.Form) {
	bin := simpleCopy(t, form)
	tp := startLoop(t, bin)
	addr, orig := fileSite(t, tp.Pid(), uprobeVictim)
	bt := testtarget.StartBpftrace(t, bin, uprobeVictim, tp.Pid(), addr, orig)
	bt.WaitCount(t, 1) // one hit: on a NOP5 the kernel turns its INT3 into a CALL
	out := filepath.Join(t.TempDir(), "rec.data")
	s, err := Start(tp.Pid(), Options{Funcs: []string{"simple_*"}, Output: out})
	if err != nil {
		t.Fatalf("record with a uprobe on %s: %v", uprobeVictim, err)
	}
	defer s.Close()
	held := s.Held()
	if len(held) != 1 || held[0].Name != uprobeVictim || !held[0].Uprobe || held[0].Addr != addr {
		t.Fatalf("Held() = %+v, want %s at %#x held by a uprobe", held, uprobeVictim, addr)
	}
	if got := DescribeHeld("skipped", held); len(got) != 1 || got[0] != "skipped 1 site held by uprobes: "+uprobeVictim {
		t.Errorf("DescribeHeld = %q", got)
	}
	n0 := bt.Count(t)
	pollFor(t, s, 300*time.Millisecond)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if n := bt.Count(t); n <= n0 {
		t.Errorf("the uprobe counted no call while livetrace traced")
	}
	rec, err := tracefile.Read(out)
	check(t, err)
	got := countEntries(rec)
	if got["simple_alpha"] == 0 || got[uprobeVictim] != 0 {
		t.Errorf("recorded %d calls of simple_alpha and %d of %s; want some and none", got["simple_alpha"], got[uprobeVictim], uprobeVictim)
	}
	checkTextUprobe(t, tp.Pid(), addr, orig)
	n1 := bt.Count(t)
	if n := bt.WaitCount(t, n1+10); n < n1+10 {
		t.Fatalf("the uprobe counted %d calls in 5 s after livetrace detached, want 10 or more", n-n1)
	}
	bt.Stop(t)
	testtarget.CheckText(t, tp.Pid())
}

func pollFor(t *testing.T, s *Session, d time.Duration) {
	t.Helper()
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		if _, err := s.Poll(); err != nil {
			t.Fatal(err)
		}
	}
}

// simpleCopy builds the simple fixture and copies it into a directory of
// the test: a uprobe is set on a file, and other tests run the cached
// build at the same time.
func simpleCopy(t *testing.T, form testtarget.Form) string {
	t.Helper()
	src := testtarget.Build(t, testtarget.Simple, form)
	b, err := os.ReadFile(src)
	check(t, err)
	dst := filepath.Join(t.TempDir(), "simple")
	check(t, os.WriteFile(dst, b, 0o755))
	return dst
}

func startLoop(t *testing.T, bin string) *testtarget.Process {
	t.Helper()
	tp := testtarget.Start(t, bin, "loop")
	if _, err := tp.Expect("ready", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	return tp
}

// fileSite returns the runtime address and the file bytes of the site of
// function name in process pid.
func fileSite(t *testing.T, pid int, name string) (uint64, []byte) {
	t.Helper()
	s := &Session{pid: pid, opts: Options{Funcs: []string{name}}}
	check(t, s.discover())
	if len(s.sel) != 1 {
		t.Fatalf("%d sites for %s", len(s.sel), name)
	}
	return s.sel[0].addr, s.sel[0].orig
}

func siteBytes(t *testing.T, pid int, addr uint64) []byte {
	t.Helper()
	m, err := proc.OpenMem(pid)
	check(t, err)
	defer m.Close()
	b := make([]byte, 5)
	check(t, m.Read(addr, b))
	return b
}

// checkTextUprobe checks that the executable text of pid is its files'
// except at the site addr, which holds the uprobe's INT3 over orig or its
// CALL into the kernel's trampoline.
func checkTextUprobe(t *testing.T, pid int, addr uint64, orig []byte) {
	t.Helper()
	maps, err := proc.ReadMaps(pid)
	check(t, err)
	mem, err := proc.OpenMem(pid)
	check(t, err)
	defer mem.Close()
	areas, err := textpoke.UprobeAreas(pid)
	check(t, err)
	for _, m := range maps {
		if !m.Exec() || !m.FileBacked() {
			continue
		}
		live := make([]byte, m.End-m.Start)
		check(t, mem.Read(m.Start, live))
		disk := make([]byte, len(live))
		f, err := os.Open(m.Path)
		check(t, err)
		n, _ := f.ReadAt(disk, int64(m.Offset))
		f.Close()
		live, disk = live[:n], disk[:n]
		if addr >= m.Start && addr+5 <= m.Start+uint64(n) {
			off := addr - m.Start
			if site := live[off : off+5]; !textpoke.HeldByUprobe(addr, site, orig, areas) {
				t.Fatalf("site %#x holds % x: not the uprobe (areas %v)", addr, site, areas)
			}
			copy(live[off:off+5], disk[off:off+5])
		}
		if !bytes.Equal(live, disk) {
			for i := range live {
				if live[i] != disk[i] {
					t.Fatalf("%s: text at %#x is %#x in memory, %#x in the file", m.Path, m.Start+uint64(i), live[i], disk[i])
				}
			}
		}
	}
}

// TestUprobeAfterUsRelocated: bpftrace puts a uprobe on functions that
// livetrace traces by relocation, then exits while livetrace still traces
// them. A uprobe takes the instruction it displaces from the file: at each
// hit the kernel runs the function's first instruction and resumes right
// after it, and when the uprobe goes it writes the file's first byte back.
// Both must land on what livetrace left in place (the first instruction,
// a push, with the region after it): the program counts right all along,
// the calls under the uprobe are recorded, and the text is the original
// after detach. With the region at the function's start, the first hit
// ran the jmp's displacement and the program died. And a uprobe placed
// before the attach sits on the kept instruction, outside the region: the
// function is traced all the same (it was refused: "its live text is not
// the file's").
func TestUprobeAfterUsRelocated(t *testing.T) {
	testtarget.RequireRoot(t)
	for _, tc := range []struct {
		name          string
		graph, before bool
	}{{"entry", false, false}, {"graph", true, false}, {"uprobe-first", false, true}} {
		// No "=" in the name: bpftrace cannot parse it in a path.
		t.Run(tc.name, func(t *testing.T) {
			// A copy: a uprobe is on the file, for every process that maps it.
			src := testtarget.Build(t, testtarget.Workload, testtarget.ClangNop5, testtarget.NoSites())
			dir := t.TempDir()
			bin := filepath.Join(dir, filepath.Base(src))
			for _, f := range []string{src, testtarget.LibPath(src)} {
				b, err := os.ReadFile(f)
				check(t, err)
				check(t, os.WriteFile(filepath.Join(dir, filepath.Base(f)), b, 0o755))
			}
			tp := testtarget.Start(t, bin, "-t", "2")
			if _, err := tp.Expect("ready", 10*time.Second); err != nil {
				t.Fatal(err)
			}
			before := testtarget.TakeSnapshot(t, tp.Pid())
			var bt *testtarget.Bpftrace
			if tc.before {
				mods, err := elfsite.LiveModules(tp.Pid())
				check(t, err)
				var fn uint64
				for _, m := range mods {
					for _, f := range m.Spec.Funcs {
						if f.Name == "work_nested" && filepath.Base(m.Path) == filepath.Base(bin) {
							fn = m.Runtime(f.Addr)
						}
					}
				}
				if fn == 0 {
					t.Fatal("work_nested not found")
				}
				bt = testtarget.StartBpftrace(t, bin, "work_nested", tp.Pid(), fn, siteBytes(t, tp.Pid(), fn))
			}
			out := filepath.Join(t.TempDir(), "rec.data")
			s, err := Start(tp.Pid(), Options{Funcs: []string{"work_nested", "work_recurse"}, Graph: tc.graph, Output: out})
			check(t, err)
			defer s.Close()
			var fn uint64
			var kept []byte
			for _, x := range s.sel {
				if x.plan == nil || x.plan.KeptDelta != 8 {
					t.Fatalf("%s: not relocated with its push kept in place: %+v", x.name, x.plan)
				}
				if x.name == "work_nested" {
					fn, kept = x.plan.Addr, x.plan.Kept
				}
			}
			if len(s.sel) != 2 || len(s.Held()) != 0 {
				t.Fatalf("%d functions traced, held %+v; want both traced", len(s.sel), s.Held())
			}
			head := siteBytes(t, tp.Pid(), fn)
			run := func(when string) {
				t.Helper()
				counts, err := testtarget.RunWorkload(tp, 20, 30*time.Second)
				if err != nil || counts["work_nested"] != 40 || counts["work_recurse"] != 240 {
					t.Fatalf("%s: %v, %v; want 40 work_nested and 240 work_recurse", when, counts, err)
				}
				pollFor(t, s, 50*time.Millisecond)
			}
			if !tc.before {
				run("traced")
				bt = testtarget.StartBpftrace(t, bin, "work_nested", tp.Pid(), fn, head)
				head[0] = 0xcc
			}
			run("traced, with a uprobe over the kept push")
			if n := bt.WaitCount(t, 40); n < 40 {
				t.Errorf("the uprobe counted %d calls, want 40", n)
			}
			bt.Stop(t)
			head[0] = kept[0]
			if got := siteBytes(t, tp.Pid(), fn); !bytes.Equal(got, head) {
				t.Fatalf("after the uprobe went, work_nested begins % x, want % x", got, head)
			}
			run("traced, the uprobe gone")
			check(t, s.Close())
			rec, err := tracefile.Read(out)
			check(t, err)
			want := uint64(120)
			if tc.before {
				want = 80
			}
			if got := countEntries(rec); got["work_nested"] != want || got["work_recurse"] != 6*want {
				t.Errorf("recorded %d work_nested and %d work_recurse calls, want %d and %d", got["work_nested"], got["work_recurse"], want, 6*want)
			}
			testtarget.CheckText(t, tp.Pid())
			before.CheckSame(t, tp.Pid())
		})
	}
}
