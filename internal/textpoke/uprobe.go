package textpoke

import (
	"strings"

	"github.com/livetrace/livetrace/internal/proc"
)

// Sites shared with other tools.
//
// The kernel's uprobes (bpftrace, perf probe, bcc) write into the same text
// livetrace patches, through the same anonymous copy of the page
// (kernel/events/uprobes.c, uprobe_write_opcode):
//
//   - registering a uprobe writes INT3 into byte 0 of the probed
//     instruction and nothing else;
//   - on x86-64 since Linux 6.18, the first hit of a uprobe on a NOP5
//     rewrites all five bytes into a CALL to a trampoline page the kernel
//     maps near the code, named [uprobes-trampoline] in /proc/PID/maps
//     (arch/x86/kernel/uprobes.c, arch_uprobe_optimize); the XOL page of
//     the other uprobes is [uprobes];
//   - unregistering writes back the instruction the uprobe saved, read from
//     the file, not from memory: byte 0 alone after an INT3, all five bytes
//     after the CALL.
//
// So a site that another tool holds shows as INT3 followed by the rest of
// the instruction it covered, or as a CALL (or JMP) into a [uprobes…]
// mapping. The engine never writes over such bytes: it compares every site
// with what it last wrote before each write, and leaves a site that
// changed under it alone ([Engine.Held]).
//
// One case is repaired rather than left: a uprobe registered on a site that
// holds livetrace's CALL turns it into INT3 + the CALL's rel32. Its
// unregistration will restore byte 0 only, and would leave the CALL's tail
// behind the file's opcode: an invalid instruction. Under the uprobe's INT3
// the tail is never executed (that is step 2 of the protocol), so
// [Engine.RestoreAll] writes the original tail there, keeps the INT3, and
// the site is then exactly what the uprobe would have made of the original
// text. A foreign INT3 at one of our sites while we are attached can only
// be a uprobe or another writer of /proc/PID/mem: a debugger cannot ptrace
// the process while livetrace does.
//
// What the comparison cannot see: a uprobe registered on a site that holds
// one of our own INT3s (mid-batch) finds a breakpoint already there and
// writes nothing, so the last step of the batch removes it unnoticed; and a
// tool that writes in the microseconds between a read and the write that
// follows it. Both need a tool to act within one batch.
//
// Known hazard, sleds: a uprobe runs the instruction it read from the file.
// On a sled (five 1-byte NOPs) that is one NOP, after which the thread
// resumes at site+1; if livetrace has converted the sled (to a NOP5 or our
// CALL), site+1 is the middle of a 5-byte instruction and the thread dies
// (SIGILL or SIGSEGV, seen with bpftrace on gcc -fpatchable-function-entry
// builds). NOP5 sites have no such problem: the uprobe's copy is the same
// 5-byte NOP and the thread resumes at site+5.

// Area is a range [Start, End) of the target's address space.
type Area struct{ Start, End uint64 }

// UprobeAreas returns the kernel's uprobe mappings of process pid: the XOL
// page [uprobes] and the trampolines [uprobes-trampoline] of optimized
// uprobes. None means no uprobe was hit in the process yet (an INT3 can
// still be there).
func UprobeAreas(pid int) ([]Area, error) {
	maps, err := proc.ReadMaps(pid)
	if err != nil {
		return nil, err
	}
	return uprobeAreas(maps), nil
}

func uprobeAreas(maps []proc.Mapping) []Area {
	var out []Area
	for _, m := range maps {
		if m.Inode == 0 && strings.HasPrefix(m.Path, "[uprobes") {
			out = append(out, Area{m.Start, m.End})
		}
	}
	return out
}

func inAreas(addr uint64, areas []Area) bool {
	for _, a := range areas {
		if addr >= a.Start && addr < a.End {
			return true
		}
	}
	return false
}

// HeldByUprobe reports whether the site at addr, which holds now where
// expected was due (the file's bytes, or what livetrace wrote), holds a
// uprobe: an INT3 over the expected instruction, or a CALL or JMP into one
// of areas (see [UprobeAreas]). Sites are x86-64 ones.
func HeldByUprobe(addr uint64, now, expected []byte, areas []Area) bool {
	return AMD64{}.UprobeHeld(addr, now, expected, areas)
}
