package reloc

import (
	"debug/elf"
	"math/rand/v2"
	"os"
	"reflect"
	"testing"
)

// checkQuick compares quickDecode with decode and directTarget at offset
// off of code (at address addr): wherever quickDecode answers, the sweep
// must see the same instruction length and the same branch target.
func checkQuick(t *testing.T, what string, code []byte, off int, addr uint64) bool {
	t.Helper()
	n, rel, branch, ok := quickDecode(code[off:])
	if !ok {
		return false
	}
	in, hand, err := decode(code, off)
	end := min(len(code), off+16)
	switch {
	case err != nil:
		t.Errorf("%s +%#x (% x): quickDecode says %d bytes, x86asm: %v", what, off, code[off:end], n, err)
	case hand:
		t.Errorf("%s +%#x (% x): quickDecode answers for an instruction decoded by hand", what, off, code[off:end])
	case in.Len != n:
		t.Errorf("%s +%#x (% x): quickDecode says %d bytes, x86asm %d (%v)", what, off, code[off:end], n, in.Len, in)
	default:
		pc := addr + uint64(off)
		want, isBranch := directTarget(in, pc)
		got := pc + uint64(n) + uint64(rel)
		if isBranch != branch || branch && got != want {
			t.Errorf("%s +%#x (% x): quickDecode branch %v to %#x, x86asm %v to %#x (%v)", what, off, code[off:end], branch, got, isBranch, want, in)
		}
	}
	return true
}

// TestQuickDecode checks quickDecode against x86asm at every byte offset
// of the executable sections of real programs and libraries (libc, bash,
// Debian's redis-server and python3, which the Makefile installs for the
// tests), and on random instructions built from the opcodes it knows, with
// every prefix, ModRM, SIB and displacement; and that BranchTargets, which
// uses it, finds the same targets as a sweep with x86asm alone.
func TestQuickDecode(t *testing.T) {
	checked := 0
	eachRealBinary(t, func(path string, f *elf.File) {
		for _, s := range f.Sections {
			if s.Type != elf.SHT_PROGBITS || s.Flags&elf.SHF_EXECINSTR == 0 {
				continue
			}
			code, err := s.Data()
			if err != nil {
				t.Fatal(err)
			}
			answered := 0
			for off := range code {
				if checkQuick(t, path+" "+s.Name, code, off, s.Addr) {
					answered++
				}
				if t.Failed() && answered > 0 && off > 0 && off%4096 == 0 {
					t.FailNow()
				}
			}
			checked += len(code)
			if got, want := BranchTargets(code, s.Addr), slowBranchTargets(code, s.Addr); !equalU64(got, want) {
				t.Errorf("%s %s: BranchTargets found %d targets, the x86asm sweep %d", path, s.Name, len(got), len(want))
			}
			if len(code) > 1<<16 {
				t.Logf("%s %s: %d bytes, quickDecode answered at %.0f%% of the offsets", path, s.Name, len(code), 100*float64(answered)/float64(len(code)))
			}
		}
	})
	if checked == 0 {
		t.Fatal("no code checked")
	}
	// Random instructions: a prefix or none, an opcode quickDecode knows,
	// and random bytes after it.
	r := rand.New(rand.NewPCG(7, 11))
	var ops [][]byte
	for o := range 256 {
		if oneByte[o] != qNone {
			ops = append(ops, []byte{byte(o)})
		}
		if twoByte[o] != qNone {
			ops = append(ops, []byte{0x0f, byte(o)})
		}
		// The SSE ones with their mandatory prefix first, so that
		// the random prefixes below add a REX or a second one.
		if sse66[o] != qNone {
			ops = append(ops, []byte{0x66, 0x0f, byte(o)}, []byte{0x0f, byte(o)})
		}
		if sseF3[o] != qNone {
			ops = append(ops, []byte{0xf3, 0x0f, byte(o)}, []byte{0x0f, byte(o)})
		}
	}
	// NOP padding, with the 66s and CS prefix it comes with.
	ops = append(ops, []byte{0x66, 0x0f, 0x1f}, []byte{0x66, 0x2e, 0x0f, 0x1f}, []byte{0x66, 0x66, 0x2e, 0x0f, 0x1f},
		[]byte{0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x2e, 0x0f, 0x1f}, []byte{0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x2e, 0x0f, 0x1f})
	prefixes := [][]byte{nil, {0x66}, {0xf2}, {0xf3}, {0x48}, {0x41}, {0x4c}, {0x66, 0x41}, {0xf3, 0x48}, {0xf2, 0x4f}, {0x66, 0x48},
		{0x64}, {0x65}, {0x64, 0x48}, {0x65, 0x66}, {0x64, 0xf3}, {0x64, 0x66, 0x41}, {0x2e}, {0x66, 0x64}}
	buf := make([]byte, 32)
	for k := 0; k < 2_000_000; k++ {
		p := prefixes[r.IntN(len(prefixes))]
		op := ops[r.IntN(len(ops))]
		n := copy(buf, p)
		n += copy(buf[n:], op)
		for j := n; j < len(buf); j++ {
			buf[j] = byte(r.Uint32())
		}
		checkQuick(t, "random", buf, 0, 0x400000)
		if t.Failed() {
			t.FailNow()
		}
	}
}

// slowBranchTargets is BranchTargets with x86asm alone.
func slowBranchTargets(code []byte, addr uint64) []uint64 {
	quickOff = true
	defer func() { quickOff = false }()
	return BranchTargets(code, addr)
}

// BenchmarkBranchTargets sweeps the text of Debian's redis-server (libc
// when it is missing), with quickDecode and with x86asm alone:
//
//	go test -run '^$' -bench BranchTargets ./internal/reloc
func BenchmarkBranchTargets(b *testing.B) {
	var code []byte
	var addr uint64
	for _, path := range []string{"/usr/bin/redis-server", "/usr/lib/x86_64-linux-gnu/libc.so.6"} {
		f, err := elf.Open(path)
		if err != nil {
			continue
		}
		if s := f.Section(".text"); s != nil {
			code, _ = s.Data()
			addr = s.Addr
		}
		f.Close()
		if code != nil {
			break
		}
	}
	if code == nil {
		b.Fatal("no text to sweep")
	}
	b.Run("quick", func(b *testing.B) {
		b.SetBytes(int64(len(code)))
		for b.Loop() {
			BranchTargets(code, addr)
		}
	})
	b.Run("x86asm", func(b *testing.B) {
		b.SetBytes(int64(len(code)))
		for b.Loop() {
			slowBranchTargets(code, addr)
		}
	})
}

// TestQuickProof analyzes every function symbol of libc, bash,
// redis-server and python3 twice, with quickProof and with x86asm alone,
// and requires the same plan or the same refusal each time.
func TestQuickProof(t *testing.T) {
	defer func() { quickOff = false }()
	total := 0
	eachRealBinary(t, func(path string, f *elf.File) {
		syms, _ := f.Symbols()
		dyn, _ := f.DynamicSymbols()
		seen := map[uint64]bool{}
		for _, s := range append(syms, dyn...) {
			if elf.ST_TYPE(s.Info) != elf.STT_FUNC || s.Size == 0 || s.Size > 1<<16 || seen[s.Value] {
				continue
			}
			seen[s.Value] = true
			var code []byte
			for _, sec := range f.Sections {
				if sec.Flags&elf.SHF_EXECINSTR != 0 && s.Value >= sec.Addr && s.Value+s.Size <= sec.Addr+sec.Size {
					data, err := sec.Data()
					if err != nil {
						t.Fatal(err)
					}
					code = data[s.Value-sec.Addr : s.Value-sec.Addr+s.Size]
				}
			}
			if code == nil {
				continue
			}
			quickOff = false
			p1, err1 := Analyze(code, s.Value, Options{})
			quickOff = true
			p2, err2 := Analyze(code, s.Value, Options{})
			if !reflect.DeepEqual(p1, p2) || !reflect.DeepEqual(err1, err2) {
				t.Fatalf("%s %s: with quickProof %v, %v; with x86asm alone %v, %v", path, s.Name, p1, err1, p2, err2)
			}
			total++
		}
	})
	if total < 1000 {
		t.Fatalf("only %d functions analyzed", total)
	}
	t.Logf("%d functions analyzed alike", total)
}

// eachRealBinary calls fn with each of libc, bash, Debian's redis-server
// and python3 (the Makefile installs the last two for the tests; libc
// must be there).
func eachRealBinary(t *testing.T, fn func(path string, f *elf.File)) {
	t.Helper()
	for i, path := range []string{"/usr/lib/x86_64-linux-gnu/libc.so.6", "/bin/bash", "/usr/bin/redis-server", "/usr/bin/python3"} {
		f, err := elf.Open(path)
		if err != nil {
			if os.IsNotExist(err) && i > 0 {
				t.Logf("%s: not installed", path)
				continue
			}
			t.Fatal(err)
		}
		fn(path, f)
		f.Close()
	}
}
