package textpoke

import (
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

// TestLateTrap plays a thread whose SIGTRAP for one of our INT3s reaches
// the trap handler only after the batch that wrote the INT3 is over. The
// kernel reports a pending PTRACE_INTERRUPT (a sync's hold, or the stop of
// every thread when Close quiesces) before the thread dequeues the SIGTRAP
// of an INT3 it has just run, so the trap comes at the thread's next
// resume, however late. Here the batch put a relocated region's original
// bytes back: during that batch a trapping thread goes to the relocated
// copy of them (Detour), in a stub; after it, it must re-run the region
// itself, for Close unmaps the stubs right after it quiesces (a SQLite
// process under `livetrace record` died of SIGSEGV in the unmapped Detour
// of libc's memcmp).
func TestLateTrap(t *testing.T) {
	m := newMemEngine(4096)
	a := m.base + 64
	// push %rbp; mov %rsp,%rbp; sub $0x10,%rsp: a function's start.
	orig := []byte{0x55, 0x48, 0x89, 0xe5, 0x48, 0x83, 0xec, 0x10}
	copy(m.text[64:], orig)
	jmp, err := Jmp(a, a+0x10000)
	if err != nil {
		t.Fatal(err)
	}
	jmp = append(jmp, opInt3, opInt3, opInt3)
	detour := a + 0x10040
	if _, err := m.apply([]Patch{{Addr: a, Old: slices.Clone(orig), New: jmp, Region: true}}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.apply([]Patch{{Addr: a, Old: jmp, New: slices.Clone(orig), Region: true, Detour: detour}}); err != nil {
		t.Fatal(err)
	}
	claimed := 0
	claim := func() error { claimed++; return nil }
	trap := func() uint64 {
		t.Helper()
		regs := unix.PtraceRegs{Rip: a + 1, Rsp: 0x7ffe0000}
		if !m.handleTrap(1, &regs, claim) {
			t.Fatal("the trap at our site was not handled")
		}
		if regs.Rsp != 0x7ffe0000 {
			t.Fatalf("the stack pointer moved: %#x", regs.Rsp)
		}
		return regs.Rip
	}
	// While a batch has INT3s in, the handler emulates what the region
	// becomes: the jmp to the Detour.
	m.breaking.Store(true)
	if pc := trap(); pc != detour {
		t.Fatalf("a trap during the batch goes to %#x, want the Detour %#x", pc, detour)
	}
	// After it, the thread re-runs the site.
	m.breaking.Store(false)
	if pc := trap(); pc != a {
		t.Fatalf("a late trap goes to %#x, want the site %#x: a stub Close may have unmapped", pc, a)
	}
	if claimed != 2 || m.late.Load() != 1 {
		t.Fatalf("%d claims, %d late traps counted; want 2 and 1", claimed, m.late.Load())
	}
}
