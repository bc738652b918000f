package textpoke

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// memEngine is an engine over text in memory, without a target: what
// BenchmarkBookkeeping measures and TestVerifyShared checks. Its ptrace
// thread, which shares the verify pass (spread), is a goroutine.
type memEngine struct {
	*Engine
	base uint64
	text []byte
}

func newMemEngine(size int) *memEngine {
	m := &memEngine{Engine: &Engine{arch: AMD64{}, held: map[uint64]Held{}}, base: 0x400000, text: make([]byte, size)}
	m.readText = func(addr uint64, buf []byte) error {
		copy(buf, m.text[addr-m.base:])
		return nil
	}
	m.lend = func(fn func()) bool {
		go fn()
		return true
	}
	return m
}

func (m *memEngine) write(addr uint64, buf []byte) error {
	copy(m.text[addr-m.base:], buf)
	return nil
}

// apply runs a live batch's steps on the text: verify, publish, the three
// passes and settle. It returns the batch and the stages' errors.
func (m *memEngine) apply(ps []Patch) (*batch, error) {
	bt, err := m.verify(ps, false, true)
	if errors.Is(err, errNotAsIs) {
		if ps, err = m.prepareCopy(ps); err != nil {
			return nil, err
		}
		bt, err = m.verify(ps, false, false)
	}
	if err != nil {
		return nil, err
	}
	m.publish(bt)
	for _, st := range []step{stepBreak, stepTail, stepHead} {
		if err := m.pass(bt, m.write, st, nil); err != nil {
			return bt, err
		}
	}
	m.settle(bt)
	return bt, nil
}

// TestVerifyShared checks the verify pass shared with the ptrace thread
// (spread) in short runs: the table it prepares for a batch over known
// sites, the sites it leaves alone, the error that names the first
// unexpected sites in address order, and the merge when a site is new.
func TestVerifyShared(t *testing.T) {
	defer func(n int, l uint64) { minPartnerText, maxRunLen, testPartnerFirst = n, l, false }(minPartnerText, maxRunLen)
	minPartnerText, maxRunLen, testPartnerFirst = 0, 4096, true

	const n, stride = 2000, 64
	m := newMemEngine(n*stride + 64)
	nop := []byte{0x0f, 0x1f, 0x44, 0x00, 0x00}
	addr := func(i int) uint64 { return m.base + uint64(i*stride) }
	call := func(i int) []byte {
		c, err := Call(addr(i), m.base+uint64(n*stride))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	for i := range n {
		copy(m.text[i*stride:], nop)
	}
	// Each run's read sleeps a little, so that the two threads take
	// turns whatever the scheduler does, and both verify some runs; the
	// first run sleeps long, so that the other thread finishes the rest
	// first.
	read := m.readText
	m.readText = func(a uint64, buf []byte) error {
		if a == m.base {
			time.Sleep(30 * time.Millisecond)
		} else {
			time.Sleep(20 * time.Microsecond)
		}
		return read(a, buf)
	}
	toggle := func(lo, hi int, on bool) []Patch {
		var ps []Patch
		for i := lo; i < hi; i++ {
			if on {
				ps = append(ps, Patch{Addr: addr(i), Old: nop, New: call(i)})
			} else {
				ps = append(ps, Patch{Addr: addr(i), Old: call(i), New: nop})
			}
		}
		return ps
	}
	// check compares the text and the trap table with what sites for
	// which on is true enabled and the rest not should give.
	check := func(when string, on func(i int) bool, held map[int]bool) {
		t.Helper()
		tb := m.table.Load()
		for i := range n {
			want := nop
			if on(i) && !held[i] {
				want = call(i)
			}
			got := m.text[i*stride : i*stride+5]
			if !bytes.Equal(got, want) && !held[i] {
				t.Fatalf("%s: site %d holds % x, want % x", when, i, got, want)
			}
			k := tb.index(addr(i))
			if k < 0 {
				continue
			}
			if !held[i] && !bytes.Equal(tb.insns[k].bytes(), want) {
				t.Fatalf("%s: table: site %d stands for % x, want % x", when, i, tb.insns[k].bytes(), want)
			}
			if !held[i] && !bytes.Equal(tb.written[k].bytes(), want) {
				t.Fatalf("%s: table: site %d last written % x, want % x", when, i, tb.written[k].bytes(), want)
			}
		}
	}

	// The first half, then all: both merge (sites new to the table).
	for _, on := range []int{n / 2, n} {
		bt, err := m.apply(toggle(on-n/2, on, true))
		if err != nil {
			t.Fatal(err)
		}
		if bt.table != nil {
			t.Fatalf("enable %d: verify prepared a table with new sites in the batch", on)
		}
		if on == n/2 {
			check("half enabled", func(i int) bool { return i < n/2 }, nil)
		}
	}
	all := func(int) bool { return true }
	none := func(int) bool { return false }
	check("all enabled", all, nil)

	// All off, then on again: verify prepares the table, sharing the runs.
	for _, on := range []bool{false, true} {
		bt, err := m.apply(toggle(0, n, on))
		if err != nil {
			t.Fatal(err)
		}
		if bt.table == nil {
			t.Fatalf("toggle to %v: no table prepared", on)
		}
		if bt.lent == 0 || bt.lent == len(bt.runs) || len(bt.runs) < 8 {
			t.Fatalf("toggle to %v: the ptrace thread verified %d of %d runs", on, bt.lent, len(bt.runs))
		}
		want := none
		if on {
			want = all
		}
		check(fmt.Sprintf("toggled to %v", on), want, nil)
	}
	// A part: the table keeps the other sites' instructions.
	if bt, err := m.apply(toggle(n/4, 3*n/4, false)); err != nil || bt.table == nil {
		t.Fatalf("disable a part: %v (table prepared: %v)", err, bt != nil && bt.table != nil)
	}
	check("a part disabled", func(i int) bool { return i < n/4 || i >= 3*n/4 }, nil)
	if _, err := m.apply(append(toggle(0, n/4, false), toggle(3*n/4, n, false)...)); err != nil {
		t.Fatal(err)
	}
	check("all disabled again", none, nil)

	// Unexpected bytes at four sites spread over the runs: nothing is
	// written, and the error names the first three in address order.
	bad := []int{1999, 5, 700, 1500}
	for _, i := range bad {
		m.text[i*stride+1] ^= 0xff
	}
	before := bytes.Clone(m.text)
	_, err := m.apply(toggle(0, n, true))
	if !errors.Is(err, ErrVerify) {
		t.Fatalf("batch over changed sites: %v, want ErrVerify", err)
	}
	msg := err.Error()
	for _, i := range []int{5, 700, 1500} {
		if !strings.Contains(msg, fmt.Sprintf("site %#x", addr(i))) {
			t.Errorf("error does not name site %d: %s", i, msg)
		}
	}
	if !strings.Contains(msg, "(and 1 more)") || strings.Index(msg, fmt.Sprintf("%#x", addr(5))) > strings.Index(msg, fmt.Sprintf("%#x", addr(700))) {
		t.Errorf("error: %s", msg)
	}
	if !bytes.Equal(m.text, before) {
		t.Fatal("a refused batch wrote text")
	}
	for _, i := range bad {
		m.text[i*stride+1] ^= 0xff
	}

	// Sites the engine gave up are left alone, and keep their place in
	// the prepared table.
	if _, err := m.apply(toggle(0, n, true)); err != nil {
		t.Fatal(err)
	}
	held := map[int]bool{3: true, 1200: true}
	for i := range held {
		m.text[i*stride] = 0xcc
		m.held[addr(i)] = Held{Addr: addr(i)}
	}
	bt, err := m.apply(toggle(0, n, false))
	if err != nil {
		t.Fatal(err)
	}
	if bt.table == nil || len(bt.gone) != len(held) {
		t.Fatalf("batch with held sites: table %v, %d sites left alone, want %d", bt.table != nil, len(bt.gone), len(held))
	}
	for i := range held {
		if m.text[i*stride] != 0xcc {
			t.Errorf("held site %d overwritten: % x", i, m.text[i*stride:i*stride+5])
		}
	}
	check("all off, two held", none, held)
}

// TestLiveRegionsListed checks the regions verify finds for the check of
// threads inside them (liveRegions): every region whose old bytes are not
// just a jmp, in a batch whose runs both verify threads share, and none
// in a batch of NOP sites or of regions that only lose their jmp.
func TestLiveRegionsListed(t *testing.T) {
	const n, stride = 20000, 64
	m := newMemEngine(n * stride)
	nop := []byte{0x0f, 0x1f, 0x44, 0x00, 0x00}
	// Eight bytes of a function's first instructions: push %rbp; mov
	// %rsp,%rbp; sub $0x10,%rsp.
	orig := []byte{0x55, 0x48, 0x89, 0xe5, 0x48, 0x83, 0xec, 0x10}
	var sites, regions []Patch
	want := map[uint64]bool{}
	for i := 0; i < n; i++ {
		a := m.base + uint64(i*stride)
		if i%1000 != 7 {
			copy(m.text[i*stride:], nop)
			call, err := Call(a, m.base+uint64(n*stride))
			if err != nil {
				t.Fatal(err)
			}
			sites = append(sites, Patch{Addr: a, Old: nop, New: call})
			continue
		}
		copy(m.text[i*stride:], orig)
		jmp := append(slices.Clone(orig[:0]), opJmp, 0, 0, 0, 0, opInt3, opInt3, opInt3)
		regions = append(regions, Patch{Addr: a, Old: slices.Clone(orig), New: jmp, Region: true, Detour: a + 0x1000})
		want[a] = true
	}
	if _, err := m.apply(sites); err != nil {
		t.Fatal(err)
	}
	// The NOP sites back off, the regions get their jmp: both verify
	// threads see regions (one every 1,000 sites, across 20 runs).
	var off []Patch
	for _, pt := range sites {
		off = append(off, Patch{Addr: pt.Addr, Old: pt.New, New: pt.Old})
	}
	ps, err := m.prepareCopy(append(off, regions...))
	if err != nil {
		t.Fatal(err)
	}
	bt, err := m.verify(ps, false, false)
	if err != nil {
		t.Fatal(err)
	}
	got := bt.liveRegions()
	if len(got) != len(regions) {
		t.Fatalf("%d live regions listed, want %d", len(got), len(regions))
	}
	for _, pt := range got {
		if !want[pt.Addr] {
			t.Fatalf("%#x listed as a live region", pt.Addr)
		}
	}
	// A region dropped (another tool's bytes) is not listed.
	bt.drop[slices.IndexFunc(bt.ps, func(pt Patch) bool { return pt.Region })] = true
	if got := bt.liveRegions(); len(got) != len(regions)-1 {
		t.Fatalf("%d live regions listed after a drop, want %d", len(got), len(regions)-1)
	}
	// The NOP sites alone: nothing to list.
	if bt, err = m.verify(off, false, true); err != nil {
		t.Fatal(err)
	}
	if got := bt.liveRegions(); len(got) != 0 {
		t.Fatalf("a batch of NOP sites lists %d live regions", len(got))
	}
	// Regions going back to their original bytes from a jmp only: a
	// thread cannot be inside a lone jmp, so none is listed.
	for i := range regions {
		copy(m.text[regions[i].Addr-m.base:], regions[i].New)
		regions[i].Old, regions[i].New = regions[i].New, regions[i].Old
	}
	if ps, err = m.prepareCopy(regions); err != nil {
		t.Fatal(err)
	}
	if bt, err = m.verify(ps, false, false); err != nil {
		t.Fatal(err)
	}
	if got := bt.liveRegions(); len(got) != 0 {
		t.Fatalf("regions that lose their jmp list %d live regions", len(got))
	}
}
