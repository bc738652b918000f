package session

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/livetrace/livetrace/internal/elfsite"
	"github.com/livetrace/livetrace/internal/testtarget"
	"github.com/livetrace/livetrace/internal/tracefile"
)

// readGOT returns the value of every GOT slot bound to the unwinder's
// entry points in process pid, by slot address.
func readGOT(t *testing.T, pid int) map[uint64]uint64 {
	t.Helper()
	mods, err := elfsite.LiveModules(pid)
	if err != nil {
		t.Fatal(err)
	}
	plan, err := planUnwind(pid, mods)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got := map[uint64]uint64{}
	var word [8]byte
	for _, sl := range plan.slots {
		if _, err := f.ReadAt(word[:], int64(sl.addr)); err != nil {
			t.Fatalf("read GOT slot %#x: %v", sl.addr, err)
		}
		got[sl.addr] = binary.LittleEndian.Uint64(word[:])
	}
	return got
}

// throwRound makes the cxx fixture (in "serve" mode) run "throw n" and
// returns its reply: checksum, cleanups and entry counts.
func throwRound(t *testing.T, tp *testtarget.Process, n int) (string, map[string]uint64) {
	t.Helper()
	return fixtureRound(t, tp, fmt.Sprintf("throw %d", n), "exc::", "sum", "cleanups")
}

// fixtureRound sends cmd to a fixture that answers "done k=v ...", and
// returns the reply and its counts by function (prefix+k), leaving out
// the keys in skip.
func fixtureRound(t *testing.T, tp *testtarget.Process, cmd, prefix string, skip ...string) (string, map[string]uint64) {
	t.Helper()
	if err := tp.Send(cmd); err != nil {
		t.Fatal(err)
	}
	line, err := tp.Expect("done ", 30*time.Second)
	if err != nil {
		t.Fatalf("%v; stderr: %s", err, tp.Stderr())
	}
	counts := map[string]uint64{}
	for _, f := range strings.Fields(line)[1:] {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			t.Fatalf("bad reply %q", line)
		}
		if slices.Contains(skip, k) {
			continue
		}
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("bad reply %q", line)
		}
		counts[prefix+k] += n
	}
	return line, counts
}

// TestGraphCXXExceptions records the C++ fixture in graph mode while it
// throws through traced frames (caught at several depths, rethrown with
// `throw;` and with std::rethrow_exception, destructors run on the way),
// in every site form, attaching both before the program's first throw
// (the unwinder's GOT slots still lazily bound) and after it. The program
// must compute what it computes untraced, every entry of the exc::
// functions must be recorded, and detaching must restore the text, the
// GOT slots, the mappings and the fds.
func TestGraphCXXExceptions(t *testing.T) {
	testtarget.RequireRoot(t)
	const n = 300
	for _, form := range testtarget.Forms {
		for _, lazy := range []bool{true, false} {
			name := string(form) + "/bound"
			if lazy {
				name = string(form) + "/lazy"
			}
			t.Run(name, func(t *testing.T) {
				tp := testtarget.Start(t, testtarget.Build(t, testtarget.CXX, form), "serve")
				if _, err := tp.Expect("ready", 10*time.Second); err != nil {
					t.Fatal(err)
				}
				var base string
				if !lazy {
					base, _ = throwRound(t, tp, n)
				}
				gotBefore := readGOT(t, tp.Pid())
				if len(gotBefore) == 0 {
					t.Fatal("no GOT slot of the unwinder found")
				}
				snap := testtarget.TakeSnapshot(t, tp.Pid())
				out := filepath.Join(t.TempDir(), "rec.data")
				s, err := Start(tp.Pid(), Options{Output: out, Graph: true})
				if err != nil {
					t.Fatal(err)
				}
				hooks := s.hookedSlots()
				if len(hooks) != len(gotBefore) {
					t.Errorf("%d GOT slots hooked, want %d", len(hooks), len(gotBefore))
				}
				during := readGOT(t, tp.Pid())
				for _, h := range hooks {
					if during[h.addr] != h.hook {
						t.Errorf("GOT slot %#x (%s) holds %#x while tracing, want the hook %#x", h.addr, h.what, during[h.addr], h.hook)
					}
				}
				line1, want1 := throwRound(t, tp, n)
				line2, want2 := throwRound(t, tp, n)
				if err := s.Close(); err != nil {
					t.Fatal(err)
				}
				gotAfter := readGOT(t, tp.Pid())
				for addr, v := range gotBefore {
					if gotAfter[addr] != v {
						t.Errorf("GOT slot %#x holds %#x after detach, %#x before", addr, gotAfter[addr], v)
					}
				}
				after, _ := throwRound(t, tp, n)
				if base == "" {
					base = after
				}
				for _, l := range []string{line1, line2, after} {
					if l != base {
						t.Errorf("the program computed %q, untraced %q", l, base)
					}
				}
				testtarget.CheckText(t, tp.Pid())
				snap.CheckSame(t, tp.Pid())

				rec, err := tracefile.Read(out)
				if err != nil {
					t.Fatal(err)
				}
				got := map[string]uint64{}
				for fn, c := range countEntries(rec) {
					for k := range want1 {
						if fn == k || strings.HasPrefix(fn, k+"(") {
							got[k] += c
						}
					}
				}
				for k := range want1 {
					if w := want1[k] + want2[k]; got[k] != w {
						t.Errorf("%s: recorded %d entries, the program counted %d", k, got[k], w)
					}
				}
				checkCXXGraph(t, rec)
			})
		}
	}
}

// checkCXXGraph checks the graph of the cxx fixture's "throw" rounds: every
// entry has its exit, at the same depth (the frames an exception left get
// theirs at the catch), and the depth of a call does not depend on the
// exceptions thrown before it: exc::top is always at the same depth and
// exc::mid, which it calls, one deeper. The
// agent once emptied the whole shadow stack at every throw: the frames
// still open (exc::top after exc::mid caught) lost their exits and the
// calls after the catch were recorded at depth 0.
func checkCXXGraph(t *testing.T, rec *tracefile.Recording) {
	t.Helper()
	name := func(f uint32) string {
		n := rec.Funcs[f].Name
		if i := strings.IndexByte(n, '('); i >= 0 {
			n = n[:i]
		}
		return n
	}
	// Depths relative to exc::top's first (exc::run may be a traced frame).
	want := map[string]uint16{"exc::top": 0, "exc::mid": 1}
	var top uint16
	haveTop := false
	type open struct {
		fn uint32
		i  int
	}
	exits := 0
	threads := map[uint32]map[uint16][]open{}
	for i, ev := range rec.Events {
		if !strings.HasPrefix(name(ev.Func), "exc::") {
			continue
		}
		th := threads[ev.TID]
		if th == nil {
			th = map[uint16][]open{}
			threads[ev.TID] = th
		}
		switch ev.Kind {
		case tracefile.KindEntry:
			fn := name(ev.Func)
			if _, ok := want[fn]; ok {
				if !haveTop && fn == "exc::top" {
					top, haveTop = ev.Depth, true
				}
				if d := top + want[fn]; haveTop && ev.Depth != d {
					t.Errorf("event %d: %s entered at depth %d, want %d", i, fn, ev.Depth, d)
					return
				}
			}
			if len(th[ev.Depth]) != 0 {
				t.Errorf("event %d: %s entered at depth %d while %s (event %d) is open there", i, name(ev.Func), ev.Depth, name(th[ev.Depth][0].fn), th[ev.Depth][0].i)
				return
			}
			th[ev.Depth] = append(th[ev.Depth], open{ev.Func, i})
		case tracefile.KindExit:
			o := th[ev.Depth]
			if len(o) == 0 || o[0].fn != ev.Func {
				t.Errorf("event %d: exit of %s at depth %d, open there: %v", i, name(ev.Func), ev.Depth, o)
				return
			}
			th[ev.Depth] = nil
			exits++
		}
	}
	for _, th := range threads {
		for d, o := range th {
			if len(o) != 0 {
				t.Errorf("%s (event %d) at depth %d never exited", name(o[0].fn), o[0].i, d)
			}
		}
	}
	if exits == 0 {
		t.Error("no exit of an exc:: function recorded")
	}
}

// TestGraphCXXLoop records the C++ fixture's "loop" mode (it throws and
// catches every 10 ms) in graph mode, with and without
// --graph-unwind-unsafe: it used to be refused, and must survive now.
func TestGraphCXXLoop(t *testing.T) {
	testtarget.RequireRoot(t)
	for _, allow := range []bool{false, true} {
		t.Run(fmt.Sprintf("allow=%v", allow), func(t *testing.T) {
			tp := testtarget.Start(t, testtarget.Build(t, testtarget.CXX, testtarget.ClangNop5), "loop")
			if _, err := tp.Expect("ready", 10*time.Second); err != nil {
				t.Fatal(err)
			}
			out := filepath.Join(t.TempDir(), "rec.data")
			s, err := Start(tp.Pid(), Options{Output: out, Graph: true, AllowUnwind: allow})
			if err != nil {
				t.Fatal(err)
			}
			time.Sleep(200 * time.Millisecond)
			select {
			case <-s.Exited():
				t.Fatalf("the target died while traced: %s", tp.Stderr())
			default:
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(50 * time.Millisecond)
			testtarget.CheckText(t, tp.Pid())
			rec, err := tracefile.Read(out)
			if err != nil {
				t.Fatal(err)
			}
			if countEntries(rec)["shapes::fail_if"] == 0 {
				t.Errorf("no entry of shapes::fail_if recorded: %v", countEntries(rec))
			}
		})
	}
}

// TestGraphCXXFork forks inside a traced frame while recording in graph
// mode; the child, which keeps the hooked GOT and its copy of the agent
// (tracing disabled there), throws through the inherited hijacked frame
// and through new frames, and must compute what the program computes
// untraced. The parent goes on throwing while traced.
func TestGraphCXXFork(t *testing.T) {
	testtarget.RequireRoot(t)
	const n = 200
	for _, form := range testtarget.Forms {
		t.Run(string(form), func(t *testing.T) {
			tp := testtarget.Start(t, testtarget.Build(t, testtarget.CXX, form), "serve")
			if _, err := tp.Expect("ready", 10*time.Second); err != nil {
				t.Fatal(err)
			}
			base, _ := throwRound(t, tp, n)
			wantSum := strings.Fields(base)[1] // sum=S
			s, err := Start(tp.Pid(), Options{Output: filepath.Join(t.TempDir(), "rec.data"), Graph: true})
			if err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 3; i++ {
				if err := tp.Send(fmt.Sprintf("fork %d", n)); err != nil {
					t.Fatal(err)
				}
				line, err := tp.Expect("child ", 30*time.Second)
				if err != nil {
					t.Fatalf("%v; stderr: %s", err, tp.Stderr())
				}
				if got := strings.TrimPrefix(line, "child "); got != wantSum {
					t.Errorf("the forked child computed %s, untraced %s", got, wantSum)
				}
				if line, err = tp.Expect("forked ", 30*time.Second); err != nil || line != "forked ok=1" {
					t.Fatalf("%q %v; stderr: %s", line, err, tp.Stderr())
				}
				if line, _ := throwRound(t, tp, n); line != base {
					t.Errorf("the program computed %q, untraced %q", line, base)
				}
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if line, _ := throwRound(t, tp, n); line != base {
				t.Errorf("after detach the program computed %q, untraced %q", line, base)
			}
			testtarget.CheckText(t, tp.Pid())
		})
	}
}

// TestUnwindRelocsMalformed feeds the relocation reader truncated and
// corrupted copies of a real C++ runtime: it must return, never panic.
func TestUnwindRelocsMalformed(t *testing.T) {
	var data []byte
	for _, p := range []string{"/lib/x86_64-linux-gnu/libstdc++.so.6", "/usr/lib/x86_64-linux-gnu/libstdc++.so.6"} {
		if b, err := os.ReadFile(p); err == nil {
			data = b
			break
		}
	}
	if data == nil {
		testtarget.SkipOrFatal(t, "no libstdc++.so.6 (make test has g++, which brings it)")
	}
	relocs, _, err := unwindRelocs(bytes.NewReader(data), "libstdc++.so.6")
	if err != nil || len(relocs) < 2 {
		t.Fatalf("libstdc++.so.6: %d relocations, %v; want at least 2", len(relocs), err)
	}
	for _, n := range []int{0, 16, 64, 1000, len(data) / 3, len(data) / 2, len(data) - 1} {
		_, _, _ = unwindRelocs(bytes.NewReader(data[:n]), "truncated")
	}
	bad := append([]byte(nil), data...)
	for i := 0x28; i < 0x40 && i < len(bad); i++ {
		bad[i] ^= 0xff // section header offset, sizes
	}
	_, _, _ = unwindRelocs(bytes.NewReader(bad), "corrupt")
}

// TestSymbolsOnlyDemangled records a C++ program with -m naming the
// program alone: libstdc++ is read for its symbols only, its names
// demangled for the recording only when the metadata is written, and the
// recording must name its functions as a full parse does.
func TestSymbolsOnlyDemangled(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := testtarget.Build(t, testtarget.CXX, testtarget.ClangNop5)
	tp := testtarget.Start(t, bin, "loop")
	if _, err := tp.Expect("ready", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "rec.data")
	s, err := Start(tp.Pid(), Options{Output: out, Modules: []string{filepath.Base(bin)}})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	rec, err := tracefile.Read(out)
	if err != nil {
		t.Fatal(err)
	}
	mod := -1
	for i, m := range rec.Modules {
		if strings.Contains(filepath.Base(m.Path), "libstdc++") {
			mod = i
		}
	}
	if mod < 0 {
		t.Fatalf("no libstdc++ among the recorded modules: %v", rec.Modules)
	}
	full, err := elfsite.Open(rec.Modules[mod].Path)
	if err != nil {
		t.Fatal(err)
	}
	var got, want []string
	for _, sym := range rec.Symbols {
		if sym.Module == mod {
			got = append(got, sym.Name)
		}
	}
	for _, f := range full.Funcs {
		want = append(want, f.Name)
	}
	slices.Sort(got)
	slices.Sort(want)
	if len(got) < 1000 || !slices.Equal(got, want) {
		t.Fatalf("libstdc++ symbols in the recording: %d, not the %d names of a full parse", len(got), len(want))
	}
}
