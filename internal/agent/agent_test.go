package agent

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"unsafe"

	"github.com/livetrace/livetrace/internal/testtarget"
	"golang.org/x/arch/x86/x86asm"
)

func TestBlobUpToDate(t *testing.T) {
	if _, err := exec.LookPath(clangPath()); err != nil {
		testtarget.SkipOrFatal(t, "%s not found: install clang-16 (make deps-test) to check the agent blob", clangPath())
	}
	if _, err := exec.LookPath("ld"); err != nil {
		testtarget.SkipOrFatal(t, "ld not found: install binutils to check the agent blob")
	}
	out := t.TempDir()
	cmd := exec.Command("go", "run", "./gen", "-src", "csrc", "-out", out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go run ./gen: %v\n%s", err, b)
	}
	for _, f := range []string{"agent.bin", "layout_generated.go"} {
		want, err := os.ReadFile(filepath.Join(out, f))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s is stale: run go generate ./internal/agent", f)
		}
	}
}

func TestBlobShape(t *testing.T) {
	if len(Blob) == 0 || len(Blob) > CodeSize || CodeSize%PageSize != 0 {
		t.Fatalf("blob of %d bytes, CodeSize %d", len(Blob), CodeSize)
	}
	if CtlOff != CodeSize || PrivOff != CtlOff+CtlSize || SharedOff != PrivOff+PrivSize {
		t.Errorf("regions not contiguous: code %#x ctl %#x+%#x priv %#x+%#x shared %#x", CodeSize, CtlOff, CtlSize, PrivOff, PrivSize, SharedOff)
	}
	if SizeofPriv > PrivSize || PrivThreadsOff+MaxThreads*SizeofThread > PrivShadowOff {
		t.Errorf("private region layout is inconsistent")
	}
	// Every entry point decodes, and lt_return ends in an indirect jmp.
	for _, off := range []int{EntryOff, ReturnOff, SigtrapOff, RestorerOff} {
		if _, err := x86asm.Decode(Blob[off:], 64); err != nil {
			t.Errorf("decode at %#x: %v", off, err)
		}
	}
	in, _ := x86asm.Decode(Blob[RestorerOff:], 64)
	if in.Op != x86asm.MOV {
		t.Errorf("lt_restorer starts with %v", in)
	}
}

func TestStubCode(t *testing.T) {
	b, err := StubCode(7, 0x1000, 0x2000)
	if err != nil {
		t.Fatal(err)
	}
	want := []byte{0x41, 0xbb, 7, 0, 0, 0, 0xe9}
	want = binary.LittleEndian.AppendUint32(want, uint32(0x2000-0x100b))
	if !bytes.Equal(b[:11], want) {
		t.Errorf("stub % x, want % x", b[:11], want)
	}
	for _, c := range b[11:] {
		if c != 0xcc {
			t.Errorf("stub padding % x", b[11:])
		}
	}
	in, err := x86asm.Decode(b[:], 64)
	if err != nil || in.Op != x86asm.MOV || in.Args[0] != x86asm.R11L {
		t.Errorf("stub decodes as %v, %v", in, err)
	}
	in, err = x86asm.Decode(b[6:], 64)
	if err != nil || in.Op != x86asm.JMP {
		t.Errorf("stub jmp decodes as %v, %v", in, err)
	}
	// Backwards reach and the edges of rel32.
	if _, err := StubCode(1, 0x7fff0000_0000, 0x7fff0000_0000-0x7fff0000); err != nil {
		t.Errorf("backward jump: %v", err)
	}
	if _, err := StubCode(1, 0x1000, 0x1000+11+0x7fffffff); err != nil {
		t.Errorf("max forward jump: %v", err)
	}
	if _, err := StubCode(1, 0x1000, 0x1000+11+0x80000000); !errors.Is(err, ErrOutOfReach) {
		t.Errorf("out of reach: %v", err)
	}
	if _, err := StubCode(MaxSites, 0x1000, 0x2000); !errors.Is(err, ErrBadConfig) {
		t.Errorf("site index too large: %v", err)
	}
}

func TestSpringboard(t *testing.T) {
	b := Springboard(0x7f0011223344)
	in, err := x86asm.Decode(b[:], 64)
	if err != nil || in.Op != x86asm.JMP || in.Len != 6 {
		t.Fatalf("springboard decodes as %v, %v", in, err)
	}
	if binary.LittleEndian.Uint64(b[6:]) != 0x7f0011223344 {
		t.Errorf("springboard target % x", b[6:14])
	}
}

func TestRecordRoundTrip(t *testing.T) {
	for _, r := range []Record{
		{TSC: 1, Kind: KindEntry, Depth: 255, Site: MaxSites - 1, CallerDelta: -5, CallerKnown: true},
		{TSC: 1 << 63, Kind: KindEntry, Site: 3},
		{TSC: 42, Kind: KindExit, Depth: 7, Site: 9},
		{TSC: 0, Kind: KindEntry, CallerDelta: 0x7fffffff, CallerKnown: true},
	} {
		b := EncodeRecord(r)
		if got := DecodeRecord(b[:]); got != r {
			t.Errorf("round trip %+v -> %+v", r, got)
		}
	}
	if got := DecodeRecord([]byte{1, 2, 3}); got != (Record{}) {
		t.Errorf("short record decodes as %+v", got)
	}
	// The bit layout is the agent's: kind 63..62, depth 61..54, site 53..32.
	b := make([]byte, 16)
	binary.LittleEndian.PutUint64(b[8:], 1<<62|5<<54|77<<32|0xfffffffe)
	if got := DecodeRecord(b); got.Kind != KindEntry || got.Depth != 5 || got.Site != 77 || got.CallerDelta != -2 || !got.CallerKnown {
		t.Errorf("decoded %+v", got)
	}
}

// alignedBuf returns an 8-byte aligned buffer of n bytes.
func alignedBuf(n int) []byte {
	u := make([]uint64, (n+7)/8)
	return unsafe.Slice((*byte)(unsafe.Pointer(&u[0])), n)
}

// newShared lays out fresh shared memory for cfg and returns it with a
// consumer of it.
func newShared(t *testing.T, cfg Config) ([]byte, *Consumer) {
	t.Helper()
	mem := alignedBuf(SharedSize(cfg))
	if err := InitShared(mem, cfg); err != nil {
		t.Fatal(err)
	}
	c, err := NewConsumer(mem)
	if err != nil {
		t.Fatal(err)
	}
	return mem, c
}

func TestConfigErrors(t *testing.T) {
	for _, cfg := range []Config{
		{Chunks: -1},
		{ChunkRecords: maxChunkRecords + 1},
		{Sites: []Site{{Addr: 2}, {Addr: 1}}},
		{Sites: []Site{{Addr: 2}, {Addr: 2}}},
	} {
		if SharedSize(cfg) != 0 {
			t.Errorf("SharedSize(%+v) != 0", cfg)
		}
		if err := InitShared(alignedBuf(1<<20), cfg); !errors.Is(err, ErrBadConfig) {
			t.Errorf("InitShared(%+v) = %v", cfg, err)
		}
	}
	cfg := Config{Chunks: 4, ChunkRecords: 16}
	if err := InitShared(alignedBuf(SharedSize(cfg)-1), cfg); !errors.Is(err, ErrBadConfig) {
		t.Errorf("short memory: %v", err)
	}
}

// producer simulates the agent's chunk protocol in Go.
type producer struct {
	mem []byte
	c   *Consumer
	seq uint64
}

func (p *producer) chunk(idx int, state, tid, lost uint32, recs ...Record) {
	h := p.c.hdr(uint64(idx))
	le := binary.LittleEndian
	for i, r := range recs {
		b := EncodeRecord(r)
		copy(p.mem[h+SizeofChunkHdr+uint64(i)*SizeofRecord:], b[:])
	}
	le.PutUint32(p.mem[h+ChunkHdrTidOff:], tid)
	le.PutUint32(p.mem[h+ChunkHdrLostOff:], lost)
	le.PutUint32(p.mem[h+ChunkHdrCountOff:], uint32(len(recs)))
	if state == ChunkFull {
		// As lt_publish: a number from the shared counter, then FULL.
		p.seq++
		le.PutUint64(p.mem[SharedHdrSeqOff:], p.seq)
		le.PutUint64(p.mem[h+ChunkHdrSeqOff:], p.seq)
	}
	le.PutUint32(p.mem[h+ChunkHdrStateOff:], state)
}

func TestConsumerProtocol(t *testing.T) {
	cfg := Config{Chunks: 4, ChunkRecords: 4, Sites: []Site{{Addr: 1, Target: 2}, {Addr: 3, Target: 4}}}
	mem, c := newShared(t, cfg)
	p := &producer{mem: mem, c: c}
	e := func(tsc uint64) Record {
		return Record{TSC: tsc, Kind: KindEntry, Site: 1, CallerKnown: true, CallerDelta: 9}
	}

	type got struct {
		tid, lost uint32
		tscs      []uint64
	}
	var all []got
	fn := func(tid, lost uint32, recs []Record) {
		g := got{tid: tid, lost: lost}
		for _, r := range recs {
			g.tscs = append(g.tscs, r.TSC)
		}
		all = append(all, g)
	}
	// Published out of index order: delivered by seq.
	p.chunk(2, ChunkFull, 10, 0, e(1), e(2), e(3), e(4))
	p.chunk(0, ChunkFull, 10, 3, e(5), e(6), e(7), e(8))
	p.chunk(1, ChunkOwned, 10, 1, e(9))
	n, err := c.Poll(fn)
	if err != nil || n != 8 || len(all) != 2 || all[0].tscs[0] != 1 || all[1].lost != 3 {
		t.Fatalf("poll: %d %v %+v", n, err, all)
	}
	for _, i := range []uint64{0, 2} {
		if st := binary.LittleEndian.Uint32(mem[c.hdr(i):]); st != ChunkFree {
			t.Errorf("chunk %d state %d after poll", i, st)
		}
	}
	// Drain delivers the OWNED chunk without freeing it; the rest comes later.
	all = nil
	if n, _ := c.Drain(fn); n != 1 || len(all) != 1 || all[0].lost != 1 || all[0].tscs[0] != 9 {
		t.Fatalf("drain: %d %+v", n, all)
	}
	all = nil
	if n, _ := c.Drain(fn); n != 0 || len(all) != 0 {
		t.Fatalf("second drain: %d %+v", n, all)
	}
	p.chunk(1, ChunkFull, 10, 1, e(9), e(10), e(11), e(12))
	if n, _ := c.Poll(fn); n != 3 || len(all) != 1 || all[0].lost != 0 || all[0].tscs[0] != 10 {
		t.Fatalf("poll after drain: %d %+v", n, all)
	}
	// RetireChunk frees an exited thread's chunk.
	all = nil
	p.chunk(3, ChunkOwned, 11, 0, e(20), e(21))
	off := c.hdr(3)
	if n, err := c.RetireChunk(off, fn); n != 2 || err != nil {
		t.Fatalf("retire: %d %v", n, err)
	}
	if st := binary.LittleEndian.Uint32(mem[off:]); st != ChunkFree {
		t.Errorf("retired chunk state %d", st)
	}
	if _, err := c.RetireChunk(off+8, fn); err == nil {
		t.Errorf("retire of a bad offset succeeded")
	}
	// A count beyond the chunk is clamped and counted.
	p.chunk(0, ChunkFull, 12, 0)
	binary.LittleEndian.PutUint32(mem[c.hdr(0)+ChunkHdrCountOff:], 1000)
	if n, _ := c.Poll(func(uint32, uint32, []Record) {}); n != 4 || c.Counters().Corrupt != 1 {
		t.Errorf("corrupt count: %d records, counters %+v", n, c.Counters())
	}
}

func TestNewConsumerRejects(t *testing.T) {
	cfg := Config{Chunks: 2, ChunkRecords: 8}
	good := alignedBuf(SharedSize(cfg))
	if err := InitShared(good, cfg); err != nil {
		t.Fatal(err)
	}
	for name, mutate := range map[string]func(b []byte){
		"magic":     func(b []byte) { b[0] ^= 1 },
		"version":   func(b []byte) { b[SharedHdrVersionOff]++ },
		"records":   func(b []byte) { binary.LittleEndian.PutUint32(b[SharedHdrChunkRecordsOff:], 0) },
		"nchunks":   func(b []byte) { binary.LittleEndian.PutUint64(b[SharedHdrNchunksOff:], 1000) },
		"chunksize": func(b []byte) { binary.LittleEndian.PutUint64(b[SharedHdrChunkSizeOff:], 64) },
		"chunkoff":  func(b []byte) { binary.LittleEndian.PutUint64(b[SharedHdrChunkOffOff:], 1<<62) },
		"overflow":  func(b []byte) { binary.LittleEndian.PutUint64(b[SharedHdrNchunksOff:], 1<<63) },
	} {
		b := alignedBuf(len(good))
		copy(b, good)
		mutate(b)
		if _, err := NewConsumer(b); !errors.Is(err, ErrBadShared) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := NewConsumer(good[:100]); err == nil {
		t.Errorf("short memory accepted")
	}
}

func TestTargetHelpers(t *testing.T) {
	a := AddrsAt(0x7f0000000000)
	if a.ThreadSlotAddr(1)-a.ThreadSlotAddr(0) != SizeofThread || a.ShadowEntryAddr(1, 0)-a.ShadowEntryAddr(0, 0) != ShadowDepth*SizeofShadow {
		t.Errorf("slot strides wrong")
	}
	if a.ShadowEntryAddr(MaxThreads-1, ShadowDepth-1)+SizeofShadow > a.Base+PrivOff+PrivSize {
		t.Errorf("last shadow entry beyond the private region")
	}
	b := make([]byte, SizeofThread)
	binary.LittleEndian.PutUint64(b[ThreadKeyOff:], 0x7f00deadb000)
	binary.LittleEndian.PutUint32(b[ThreadTidOff:], 99)
	binary.LittleEndian.PutUint32(b[ThreadDepthOff:], 100000)
	s, err := DecodeThreadSlot(b)
	if err != nil || !s.InUse() || s.Tid != 99 || s.Frames() != ShadowDepth {
		t.Errorf("slot %+v %v", s, err)
	}
	if _, err := DecodeThreadSlot(b[:10]); err == nil {
		t.Errorf("short slot decoded")
	}
	if s := DecodeShadowStack(make([]byte, 5*SizeofShadow+3), 100); len(s) != 5 {
		t.Errorf("shadow stack of %d entries", len(s))
	}
	sa := a.SigtrapAction()
	if got, _ := DecodeSigaction(sa.Encode()); got != sa || sa.Handler != a.Sigtrap || sa.Restorer != a.Restorer {
		t.Errorf("sigaction %+v", got)
	}
	if c, _ := DecodeCtl((Ctl{Enabled: true}).Encode()); !c.Enabled || c.Graph {
		t.Errorf("ctl %+v", c)
	}
	if binary.LittleEndian.Uint64(RetiredKey()) != KeyRetired {
		t.Errorf("retired key")
	}
}

func FuzzConsumer(f *testing.F) {
	cfg := Config{Chunks: 3, ChunkRecords: 4}
	seed := alignedBuf(SharedSize(cfg))
	InitShared(seed, cfg)
	f.Add(seed[:SizeofSharedHdr], []byte{2, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0})
	f.Add([]byte{}, []byte{})
	f.Fuzz(func(t *testing.T, hdr, body []byte) {
		// Small inputs keep minimization quick.
		if len(hdr) > SizeofSharedHdr || len(body) > 256 {
			return
		}
		mem := alignedBuf(64 << 10)
		copy(mem, seed)
		copy(mem, hdr)
		// Spray the body over every chunk position the header may name.
		for off := SharedHdrPage; off < len(mem) && len(body) > 0; off += len(body) * 7 {
			copy(mem[off:], body)
		}
		c, err := NewConsumer(mem)
		if err != nil {
			return
		}
		total := 0
		fn := func(tid, lost uint32, recs []Record) { total += len(recs) }
		for i := 0; i < 2; i++ {
			if _, err := c.Poll(fn); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Drain(fn); err != nil {
				t.Fatal(err)
			}
		}
		c.RetireChunk(c.chunkOff, fn)
		if uint64(total) > 4*c.nchunks*c.records {
			t.Fatalf("delivered %d records from %d chunks of %d", total, c.nchunks, c.records)
		}
		_ = c.Counters()
	})
}

// TestConsumerIdlePoll checks the poll's shortcut: with the publication
// counter unchanged since its last scan it scans nothing, so a chunk made
// FULL without a number from the counter (a thread preempted between the
// two, as the shortcut's comment says) waits for the next publication or
// drain, and is then delivered in order, not lost.
func TestConsumerIdlePoll(t *testing.T) {
	cfg := Config{Chunks: 4, ChunkRecords: 4, Sites: []Site{{Addr: 1, Target: 2}}}
	mem, c := newShared(t, cfg)
	p := &producer{mem: mem, c: c}
	e := func(tsc uint64) Record { return Record{TSC: tsc, Kind: KindEntry, Site: 0} }
	var tscs []uint64
	fn := func(tid, lost uint32, recs []Record) {
		for _, r := range recs {
			tscs = append(tscs, r.TSC)
		}
	}
	if n, _ := c.Poll(fn); n != 0 {
		t.Fatalf("empty poll: %d", n)
	}
	// Numbered, but the counter taken back: as if the FULL store came
	// after the scan of a poll that had already read the counter.
	p.chunk(0, ChunkFull, 10, 0, e(1), e(2), e(3), e(4))
	binary.LittleEndian.PutUint64(mem[SharedHdrSeqOff:], p.seq-1)
	c.lastSeq = p.seq - 1
	if n, _ := c.Poll(fn); n != 0 {
		t.Fatalf("poll with the counter unchanged delivered %d", n)
	}
	// The thread's next chunk moves the counter: both come out, in order.
	binary.LittleEndian.PutUint64(mem[SharedHdrSeqOff:], p.seq)
	p.chunk(1, ChunkFull, 10, 0, e(5), e(6), e(7), e(8))
	if n, _ := c.Poll(fn); n != 8 || !slices.Equal(tscs, []uint64{1, 2, 3, 4, 5, 6, 7, 8}) {
		t.Fatalf("poll after the next publication: %d %v", n, tscs)
	}
	// Without one, a drain scans anyway.
	tscs = nil
	p.chunk(2, ChunkFull, 10, 0, e(9))
	binary.LittleEndian.PutUint64(mem[SharedHdrSeqOff:], p.seq-1)
	c.lastSeq = p.seq - 1
	if n, _ := c.Poll(fn); n != 0 {
		t.Fatalf("poll with the counter unchanged delivered %d", n)
	}
	if n, _ := c.Drain(fn); n != 1 || !slices.Equal(tscs, []uint64{9}) {
		t.Fatalf("drain: %d %v", n, tscs)
	}
}
