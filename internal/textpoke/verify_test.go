package textpoke

import (
	"bytes"
	"errors"
	"fmt"
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
			if !held[i] && !bytes.Equal(tb.insns[k], want) {
				t.Fatalf("%s: table: site %d stands for % x, want % x", when, i, tb.insns[k], want)
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
