package reloc

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand"
	"os/exec"
	"sync"
	"testing"
)

// The fixed mappings of testdata/harness.c.
const (
	codeAddr = 0x200000000
	dataAddr = 0x200010000
	nearAddr = 0x200020000
	farAddr  = 0x300020000
	dataLen  = 256
)

// regState is the register state the harness loads and captures: rax rcx
// rdx rbx rsp rbp rsi rdi r8..r15, then rflags (arithmetic flags only).
type regState [17]uint64

var regNames = []string{"rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
	"r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rflags"}

// result is what one run of code in the harness gives.
type result struct {
	sig  byte // 0, or the signal that stopped the code
	regs regState
	data [dataLen]byte
}

func (r *result) diff(o *result) string {
	var b bytes.Buffer
	if r.sig != o.sig {
		fmt.Fprintf(&b, " signal %d != %d", r.sig, o.sig)
	}
	for i := range r.regs {
		if r.regs[i] != o.regs[i] {
			fmt.Fprintf(&b, " %s %#x != %#x", regNames[i], r.regs[i], o.regs[i])
		}
	}
	if r.data != o.data {
		fmt.Fprintf(&b, " data differs")
	}
	return b.String()
}

// harness is one running testdata/harness.c, shared by the tests of the
// process (and by every input of a fuzz worker). It is safe for
// concurrent use.
type harness struct {
	cmd   *exec.Cmd
	stdin io.Closer
	mu    sync.Mutex
	in    *bufio.Writer
	out   *bufio.Reader
}

var (
	harnessOnce sync.Once
	harnessP    *harness
	harnessErr  error
)

// getHarness builds (cached) and starts the shared harness once per
// process.
func getHarness(tb testing.TB) *harness {
	tb.Helper()
	exe := buildCached(tb, "gcc", []string{"-O2", "-Wall"}, "testdata/harness.c", "harness", "testdata/realfn.c")
	harnessOnce.Do(func() {
		// The process lives as long as the test binary: its stdin closes
		// when the binary exits, and the harness exits on EOF.
		harnessP, harnessErr = startHarness(exe)
	})
	if harnessErr != nil {
		tb.Fatalf("start harness %s: %v", exe, harnessErr)
	}
	return harnessP
}

// startHarness starts the harness executable exe. Closing h.stdin ends it.
func startHarness(exe string) (*harness, error) {
	cmd := exec.Command(exe)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = &prefixWriter{}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return &harness{cmd: cmd, stdin: stdin, in: bufio.NewWriter(stdin), out: bufio.NewReader(stdout)}, nil
}

// close ends the harness and waits for it.
func (h *harness) close() {
	h.stdin.Close()
	h.cmd.Wait()
}

// call sends a request with an 8-byte reply.
func (h *harness) call(tb testing.TB, op byte) uint64 {
	tb.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	h.in.Write(binary.LittleEndian.AppendUint64([]byte{op}, 0))
	var b [8]byte
	if err := h.in.Flush(); err != nil {
		tb.Fatalf("harness: %v", err)
	}
	if _, err := io.ReadFull(h.out, b[:]); err != nil {
		tb.Fatalf("harness: request %c: %v", op, err)
	}
	return binary.LittleEndian.Uint64(b[:])
}

// write patches the harness's own memory at addr.
func (h *harness) write(tb testing.TB, addr uint64, b []byte) {
	tb.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	req := binary.LittleEndian.AppendUint64([]byte{'W'}, addr)
	req = binary.LittleEndian.AppendUint32(req, uint32(len(b)))
	h.in.Write(append(req, b...))
	if err := h.in.Flush(); err != nil {
		tb.Fatalf("harness: %v", err)
	}
	st, err := h.out.ReadByte()
	if err != nil || st != 0 {
		tb.Fatalf("harness: write %d bytes at %#x: status %d, %v", len(b), addr, st, err)
	}
}

type prefixWriter struct{}

func (prefixWriter) Write(b []byte) (int, error) {
	fmt.Printf("harness stderr: %s", b)
	return len(b), nil
}

func (h *harness) load(tb testing.TB, addr uint64, code []byte) {
	tb.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	b := binary.LittleEndian.AppendUint64([]byte{'L'}, addr)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(code)))
	h.in.Write(append(b, code...))
	if err := h.in.Flush(); err != nil {
		tb.Fatalf("harness: %v", err)
	}
	st, err := h.out.ReadByte()
	if err != nil || st != 0 {
		tb.Fatalf("harness: load %d bytes at %#x: status %d, %v", len(code), addr, st, err)
	}
}

func (h *harness) run(tb testing.TB, addr uint64, regs regState, data *[dataLen]byte) *result {
	tb.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	b := binary.LittleEndian.AppendUint64([]byte{'R'}, addr)
	for _, r := range regs {
		b = binary.LittleEndian.AppendUint64(b, r)
	}
	h.in.Write(append(b, data[:]...))
	if err := h.in.Flush(); err != nil {
		tb.Fatalf("harness: %v", err)
	}
	reply := make([]byte, 1+17*8+dataLen)
	if _, err := io.ReadFull(h.out, reply); err != nil {
		tb.Fatalf("harness: run %#x: %v", addr, err)
	}
	r := &result{sig: reply[0]}
	for i := range r.regs {
		r.regs[i] = binary.LittleEndian.Uint64(reply[1+8*i:])
	}
	copy(r.data[:], reply[1+17*8:])
	return r
}

// execCompare runs fn (loaded at codeAddr) three ways: as is; patched
// with a jmp to its stub relocated at nearAddr; and entering a stub
// relocated at farAddr (absolute jumps) directly. It fails tb unless all
// three end with the same registers, flags and data. It returns false
// when Analyze refuses fn.
func execCompare(tb testing.TB, h *harness, fn []byte, opts Options, regs regState, data *[dataLen]byte) bool {
	tb.Helper()
	p, err := Analyze(fn, codeAddr, opts)
	if err != nil {
		return false
	}
	h.load(tb, codeAddr, fn)
	want := h.run(tb, codeAddr, regs, data)
	if want.sig != 0 {
		tb.Fatalf("original % x stopped by signal %d", fn, want.sig)
	}

	stub, err := p.Relocate(nearAddr)
	if err != nil {
		tb.Fatalf("Relocate(near) of % x: %v", fn, err)
	}
	patch, err := p.Patch(nearAddr)
	if err != nil {
		tb.Fatalf("Patch of % x: %v", fn, err)
	}
	patched := append([]byte(nil), fn...)
	copy(patched[p.Entry-codeAddr:], patch)
	h.load(tb, nearAddr, stub)
	h.load(tb, codeAddr, patched)
	if got := h.run(tb, codeAddr, regs, data); *got != *want {
		tb.Fatalf("patched % x with near stub % x:%s", fn, stub, got.diff(want))
	}

	stub, err = p.Relocate(farAddr)
	if err != nil {
		if p.hasRIP() {
			return true // out of reach, as it must be
		}
		tb.Fatalf("Relocate(far) of % x: %v", fn, err)
	}
	h.load(tb, codeAddr, fn)
	h.load(tb, farAddr, stub)
	regs2 := regs
	if got := h.run(tb, farAddr, regs2, data); *got != *want {
		tb.Fatalf("% x entered through far stub % x:%s", fn, stub, got.diff(want))
	}
	return true
}

func (p *Plan) hasRIP() bool {
	for _, in := range p.Insts {
		if in.kind == kRIPRel || in.kind == kJmpRIP || in.kind == kCallInd && in.inst.PCRel != 0 {
			return true
		}
	}
	return false
}

func randState(rng *rand.Rand) (regState, [dataLen]byte) {
	var regs regState
	for i := range regs {
		regs[i] = rng.Uint64()
	}
	var data [dataLen]byte
	rng.Read(data[:])
	return regs, data
}

// ripTo encodes op bytes then a disp32 that addresses dataAddr+slot from
// an instruction at codeAddr+off whose total length is n.
func ripTo(op []byte, off, n, slot int, tail ...byte) []byte {
	disp := int32(int64(dataAddr+slot) - int64(codeAddr+off+n))
	return append(binary.LittleEndian.AppendUint32(append([]byte(nil), op...), uint32(disp)), tail...)
}

// callee returns a function at offset off of codeAddr that adds 5 to rax
// and stores its rsp and return address in the data page.
func callee(off int) []byte {
	return cat([]byte{0x48, 0x83, 0xc0, 0x05}, ripTo([]byte{0x48, 0x89, 0x25}, off+4, 7, 56),
		[]byte{0x48, 0x8b, 0x0c, 0x24}, ripTo([]byte{0x48, 0x89, 0x0d}, off+15, 7, 64), ret)
}

// TestExecute runs hand-written sequences, original and relocated, in the
// harness and compares the register state and data they leave.
func TestExecute(t *testing.T) {
	h := getHarness(t)
	rng := rand.New(rand.NewSource(1))
	tests := []struct {
		name string
		fn   []byte
		opts Options
		set  func(*regState)
	}{
		{name: "prologue", fn: cat(pushRBP, movRBPRSP, subRSP16, []byte{0x48, 0x83, 0xc4, 0x10, 0x5d}, ret)},
		{name: "endbr prologue", fn: cat(endbr, pushRBP, movRBPRSP, []byte{0x48, 0x01, 0xd8, 0x5d}, ret)},
		// mov rax,[rip->data+8]; add rax,rdi; mov [rip->data+16],rax; lea rsi,[rip->data]
		{name: "rip-relative", fn: cat(ripTo([]byte{0x48, 0x8b, 0x05}, 0, 7, 8), []byte{0x48, 0x01, 0xf8},
			ripTo([]byte{0x48, 0x89, 0x05}, 10, 7, 16), ripTo([]byte{0x48, 0x8d, 0x35}, 17, 7, 0), ret)},
		// cmp qword [rip->data+24], 7; mov dword [rip->data+32], imm32; sete al
		{name: "rip-relative with immediates", fn: cat(ripTo([]byte{0x48, 0x83, 0x3d}, 0, 8, 24, 0x07),
			ripTo([]byte{0xc7, 0x05}, 8, 10, 32, 0x44, 0x33, 0x22, 0x11), []byte{0x0f, 0x94, 0xc0}, ret)},
		// test edi,edi; je +3; push rbp; nop; nop; (pop rbp)... both paths balanced
		{name: "jcc rel8 taken", fn: cat(testEDI, []byte{0x74, 0x05}, []byte{0x48, 0x83, 0xc0, 0x01}, nop, ret), set: func(r *regState) { r[7] = 0 }},
		{name: "jcc rel8 not taken", fn: cat(testEDI, []byte{0x74, 0x05}, []byte{0x48, 0x83, 0xc0, 0x01}, nop, ret), set: func(r *regState) { r[7] = 1 }},
		{name: "jcc rel32", fn: cat(testEDI, []byte{0x0f, 0x85}, le(4), []byte{0x48, 0x83, 0xc0, 0x01}, ret), set: func(r *regState) { r[7] = 1 }},
		{name: "jmp rel8 ends region", fn: cat(xorEAX, testEDI, []byte{0xeb, 0x04}, []byte{0x48, 0x83, 0xc0, 0x01}, ret)},
		{name: "ret ends region", fn: cat(pushRBP, xorEAX, []byte{0x5d}, ret)},
		{name: "ret then padding", fn: cat(xorEAX, ret, nop, nop, nop)},
		{name: "jmp over padding", fn: jmpOverPadding, set: func(r *regState) { r[7] = 3 }},
		{name: "jmp over padding, no iteration", fn: jmpOverPadding, set: func(r *regState) { r[7] = 0 }},
		// add rax,1; cmp rax,10; jb entry; ret: loops through the stub.
		// sub rax,1; jne entry: the jcc to Entry is displaced.
		{name: "displaced loop to entry", fn: cat([]byte{0x48, 0x83, 0xe8, 0x01, 0x75, 0xfa}, ret), set: func(r *regState) { r[0] = 3 }},
		// push rbx; call callee; pop rbx; ret; callee: add rax,5; mov [rip->data+40],rsp; ret
		{name: "emulated call", opts: Options{EmulateCalls: true}, fn: cat([]byte{0x53, 0xe8}, le(2), []byte{0x5b}, ret, callee(8))},
		// mov rax,rbx; call r11; ret; callee
		{name: "emulated call r11", opts: Options{EmulateCalls: true}, fn: cat([]byte{0x48, 0x89, 0xd8, 0x41, 0xff, 0xd3}, ret, callee(7)),
			set: func(r *regState) { r[11] = codeAddr + 7 }},
		// call [rip->data+48]; ret; callee (its address in the data page)
		{name: "emulated call [rip]", opts: Options{EmulateCalls: true}, fn: cat(ripTo([]byte{0xff, 0x15}, 0, 6, 48), ret, callee(7)), set: func(r *regState) { r[0] = 1 }},
		{name: "loop to entry", fn: cat([]byte{0x48, 0x83, 0xc0, 0x01, 0x48, 0x83, 0xf8, 0x0a, 0x72, 0xf6}, ret), set: func(r *regState) { r[0] = 2 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			regs, data := randState(rng)
			binary.LittleEndian.PutUint64(data[48:], codeAddr+7)
			if tt.set != nil {
				tt.set(&regs)
			}
			if !execCompare(t, h, tt.fn, tt.opts, regs, &data) {
				_, err := Analyze(tt.fn, codeAddr, tt.opts)
				t.Fatalf("Analyze refused % x: %v", tt.fn, err)
			}
		})
	}
}
