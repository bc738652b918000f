package proc

import (
	"debug/elf"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/livetrace/livetrace/internal/testtarget"
)

// loaderBrk returns the address of the `ret` of the dynamic loader's r_brk
// in process pid, read through `_r_debug` as internal/session does.
func loaderBrk(t *testing.T, p *Process) uint64 {
	t.Helper()
	maps, err := ReadMaps(p.Pid())
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range maps {
		if !strings.Contains(m.Path, "/ld-linux") || m.Offset != 0 {
			continue
		}
		f, err := elf.Open(m.Path)
		if err != nil {
			t.Fatal(err)
		}
		syms, err := f.DynamicSymbols()
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range syms {
			if s.Name != "_r_debug" {
				continue
			}
			var b [8]byte
			if err := p.ReadMem(m.Start+s.Value+16, b[:]); err != nil {
				t.Fatal(err)
			}
			brk := binary.LittleEndian.Uint64(b[:])
			var code [5]byte
			if err := p.ReadMem(brk, code[:]); err != nil {
				t.Fatal(err)
			}
			if code[0] == 0xf3 { // endbr64
				brk += 4
			}
			return brk
		}
	}
	t.Fatal("no _r_debug in the loader")
	return 0
}

// TestBreakpointParks puts the tracer's breakpoint on the loader's r_brk
// of a program that loads and unloads a library from two threads: each
// hit parks its thread, which StopAll counts as stopped and ResumeAll
// leaves stopped, until Unpark returns it from r_brk; the program runs
// its rounds to the end, and after the `ret` is back and the process
// detached, it runs on.
func TestBreakpointParks(t *testing.T) {
	testtarget.RequireRoot(t)
	exe := testtarget.Build(t, testtarget.Dlopen, testtarget.ClangNop5)
	tp := testtarget.Start(t, exe)
	if _, err := tp.Expect("ready", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	p, err := Attach(tp.Pid())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Detach()
	brk := loaderBrk(t, p)
	hits := make(chan int, 64)
	p.SetBreakpoint(brk, func(tid int) { hits <- tid })
	if err := p.WriteMem(brk, []byte{0xcc}); err != nil {
		t.Fatal(err)
	}
	if err := tp.Send("run 20"); err != nil {
		t.Fatal(err)
	}
	done := make(chan string, 1)
	go func() {
		l, _ := tp.Expect("done ", 60*time.Second)
		done <- l
	}()
	n := 0
	var line string
	for line == "" {
		select {
		case tid := <-hits:
			n++
			if !slices.Contains(p.Parked(), tid) {
				t.Fatalf("thread %d hit the breakpoint but is not parked", tid)
			}
			if n%4 == 0 {
				// A hold in between: the parked thread stays parked.
				if err := p.StopAll(); err != nil {
					t.Fatal(err)
				}
				if err := p.ResumeAll(); err != nil {
					t.Fatal(err)
				}
				if !slices.Contains(p.Parked(), tid) {
					t.Fatalf("thread %d left the breakpoint at ResumeAll", tid)
				}
			}
			if err := p.Unpark(tid); err != nil {
				t.Fatal(err)
			}
		case line = <-done:
		case <-time.After(60 * time.Second):
			t.Fatalf("no progress after %d hits", n)
		}
	}
	var outer, leaf, loads, bases int
	if _, err := fmt.Sscanf(line, "done plug_outer=%d plug_leaf=%d loads=%d bases=%d", &outer, &leaf, &loads, &bases); err != nil || outer != 2*20*5 {
		t.Fatalf("the program says %q (%v)", line, err)
	}
	if n < 4*loads {
		t.Errorf("%d hits for %d loads and unloads, want at least %d", n, loads, 4*loads)
	}
	p.SetBreakpoint(brk, nil)
	if err := p.WriteMem(brk, []byte{0xc3}); err != nil {
		t.Fatal(err)
	}
	if err := p.Detach(); err != nil {
		t.Fatal(err)
	}
	if err := tp.Send("run 2"); err != nil {
		t.Fatal(err)
	}
	if _, err := tp.Expect("done plug_outer=20 ", 30*time.Second); err != nil {
		t.Fatalf("after detach: %v", err)
	}
	testtarget.CheckText(t, tp.Pid())
	t.Logf("%d hits, %d loads", n, loads)
}
