package reloc

import (
	"debug/elf"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"github.com/livetrace/livetrace/internal/testtarget"
)

// TestExecuteCompiled relocates the compiled functions of
// testdata/realfn.c inside a running harness, built by gcc and clang at
// several levels, with and without ENDBR64: it runs every rf_* function on
// a set of inputs, then patches every function Analyze accepts with a jmp
// to its stub (all at once, so that patched functions call patched
// functions), runs them again and compares the full register state.
func TestExecuteCompiled(t *testing.T) {
	clang := testtarget.Compiler(testtarget.ClangNop5)
	variants := []struct {
		name, cc string
		flags    []string
	}{
		{"gcc -O0", "gcc", []string{"-O0", "-fcf-protection=none"}},
		{"gcc -O2", "gcc", []string{"-O2", "-fcf-protection=none"}},
		{"gcc -O3 cet", "gcc", []string{"-O3", "-fcf-protection=full"}},
		{"clang -O0 cet", clang, []string{"-O0", "-fcf-protection=full"}},
		{"clang -O2", clang, []string{"-O2", "-fcf-protection=none"}},
		{"clang -O3 cet", clang, []string{"-O3", "-fcf-protection=full"}},
		// Position-dependent: switches dispatch through absolute jump
		// tables, checked with Options.ReadOnly.
		{"gcc -O2 no-pie", "gcc", []string{"-O2", "-fcf-protection=none", "-fno-pie", "-no-pie"}},
		{"clang -O2 no-pie", clang, []string{"-O2", "-fcf-protection=none", "-fno-pie", "-no-pie"}},
	}
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			exe := buildCached(t, v.cc, append([]string{"-Wall"}, v.flags...), "testdata/harness.c", "harness", "testdata/realfn.c")
			runCompiled(t, exe)
		})
	}
}

func runCompiled(t *testing.T, exe string) {
	f, err := elf.Open(exe)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	syms, err := f.Symbols()
	if err != nil {
		t.Fatal(err)
	}
	text := f.Section(".text")
	code, err := text.Data()
	if err != nil {
		t.Fatal(err)
	}
	h, err := startHarness(exe)
	if err != nil {
		t.Fatal(err)
	}
	defer h.close()

	var runCode, global uint64
	type fn struct {
		name      string
		link, run uint64
		bytes     []byte
	}
	var fns []fn
	for _, s := range syms {
		switch {
		case s.Name == "run_code":
			runCode = s.Value
		case s.Name == "rf_global":
			global = s.Value
		case strings.HasPrefix(s.Name, "rf_") && elf.ST_TYPE(s.Info) == elf.STT_FUNC:
			lo := s.Value - text.Addr
			fns = append(fns, fn{name: s.Name, link: s.Value, bytes: code[lo : lo+s.Size]})
		}
	}
	if runCode == 0 || global == 0 || len(fns) < 15 {
		t.Fatalf("%s: run_code %#x, rf_global %#x, %d rf_* functions", exe, runCode, global, len(fns))
	}
	base := h.call(t, 'B') - runCode
	var ro *ReadOnly
	if f.Type == elf.ET_EXEC {
		if base != 0 {
			t.Fatalf("position-dependent harness loaded %#x away from its link address", base)
		}
		var addrs []uint64
		var segs [][]byte
		var code [][2]uint64
		for _, p := range f.Progs {
			switch {
			case p.Type != elf.PT_LOAD:
			case p.Flags&elf.PF_X != 0:
				code = append(code, [2]uint64{p.Vaddr, p.Vaddr + p.Memsz})
			case p.Flags&elf.PF_W == 0:
				b := make([]byte, p.Filesz)
				if _, err := p.ReadAt(b, 0); err != nil {
					t.Fatal(err)
				}
				addrs, segs = append(addrs, p.Vaddr), append(segs, b)
			}
		}
		ro = NewReadOnly(addrs, segs, code)
	}
	global += base
	var targets []uint64
	for _, a := range BranchTargets(code, text.Addr) {
		targets = append(targets, a+base)
	}

	inputs := [][2]uint64{{0, 0}, {1, 2}, {2, 1}, {7, 3}, {12, 18}, {255, 1 << 40}, {1<<63 + 5, 9}, {100, 0}}
	runAll := func() []*result {
		var rs []*result
		var data [dataLen]byte
		for i := range fns {
			for _, in := range inputs {
				h.write(t, global, binary.LittleEndian.AppendUint64(nil, 7))
				regs := regState{0: 0x1111, 1: 0x2222, 2: 0x3333, 3: 0x4444, 5: 0x5555, 6: in[1], 7: in[0], 8: 8, 9: 9, 10: 10, 11: 11, 12: 12, 13: 13, 14: 14, 15: 15}
				r := h.run(t, fns[i].run, regs, &data)
				if r.sig != 0 {
					t.Fatalf("%s(%d, %d): signal %d", fns[i].name, in[0], in[1], r.sig)
				}
				rs = append(rs, r)
			}
		}
		return rs
	}
	for i := range fns {
		fns[i].run = fns[i].link + base
	}
	before := runAll()

	stubs := h.call(t, 'S')
	if stubs == 0 {
		t.Fatal("harness found no page near its code for the stubs")
	}
	at := stubs
	var accepted []string
	refused := map[string]string{}
	for _, fn := range fns {
		p, err := Analyze(fn.bytes, fn.run, Options{EmulateCalls: true, ExtraTargets: targets, ReadOnly: ro})
		var r *Refusal
		if errors.As(err, &r) {
			refused[fn.name] = err.Error()
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", fn.name, err)
		}
		stub, err := p.Relocate(at)
		if err != nil {
			t.Fatalf("%s: %v", fn.name, err)
		}
		patch, err := p.Patch(at)
		if err != nil {
			t.Fatalf("%s: %v", fn.name, err)
		}
		if at+uint64(len(stub)) > stubs+4096 {
			t.Fatalf("stubs do not fit in a page")
		}
		h.write(t, at, stub)
		h.write(t, p.Entry, patch)
		at += uint64(len(stub)+15) &^ 15
		accepted = append(accepted, fn.name)
	}
	after := runAll()
	for i := range fns {
		for j, in := range inputs {
			k := i*len(inputs) + j
			if d := after[k].diff(before[k]); d != "" {
				t.Errorf("%s(%d, %d) patched:%s", fns[i].name, in[0], in[1], d)
			}
		}
	}
	t.Logf("%d of %d functions relocated and run: %v; refused: %v", len(accepted), len(fns), accepted, refused)
	if _, ok := refused["rf_switch"]; ok && ro != nil {
		t.Errorf("rf_switch refused in a position-dependent build: %s", refused["rf_switch"])
	}
	if len(accepted) < len(fns)*2/3 {
		t.Errorf("only %d of %d functions accepted", len(accepted), len(fns))
	}
}
