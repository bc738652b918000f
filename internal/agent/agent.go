package agent

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
	"unsafe"
)

// Errors returned by this package.
var (
	// ErrOutOfReach means a stub cannot reach its target with a rel32 jump:
	// use a [Springboard] near the stub.
	ErrOutOfReach = errors.New("target out of rel32 reach")
	// ErrBadConfig means a [Config] cannot be laid out.
	ErrBadConfig = errors.New("invalid agent config")
	// ErrBadShared means the shared memory does not hold a valid header.
	ErrBadShared = errors.New("invalid shared memory")
)

const (
	// StubSize is the size of one per-site stub slot and of a springboard.
	StubSize = 16
	// PageSize is the page size the layout assumes (x86-64).
	PageSize = 4096
	// CallerUnknown is the low meta word of an entry record whose caller
	// did not fit in an int32 delta.
	CallerUnknown = 0x80000000
	// DefaultChunks is the chunk pool size used when Config.Chunks is 0.
	DefaultChunks = 64
	// DefaultChunkRecords is the chunk size used when Config.ChunkRecords is 0.
	DefaultChunkRecords = 4096

	maxChunks       = 1 << 20
	maxChunkRecords = 1 << 20
	maxSharedSize   = 1 << 40
)

// stubFast are the bits of a stub index that [StubIndex] sets for the
// assembly fast paths.
const stubFast = SpecArgs<<StubShift | StubRet

// StubIndex returns the index the stub of site idx with spec loads
// ([StubCode]): idx, and when spec is not 0 the [Capture] flag (the agent
// reads the site's spec). When spec captures integer arguments and
// nothing else but maybe the return value, the index also carries the
// argument bits (<< [StubShift]) and [StubRet] for a return value: the
// agent's fast paths (agent.S, .Le_cap and .Lg_cap) then write the
// arguments without reading the site table.
func StubIndex(idx, spec uint32) uint32 {
	if spec == 0 || idx >= MaxSites {
		return idx // StubCode refuses an index too large
	}
	idx |= Capture
	if spec&^(SpecArgs|SpecRet|SpecRetFloat) == 0 && spec&SpecArgs != 0 {
		idx |= (spec & SpecArgs) << StubShift
		if spec&SpecRet != 0 {
			idx |= StubRet
		}
	}
	return idx
}

// StubCode returns the 16-byte stub for site index idx placed at stubAddr:
// `mov $idx, %r11d; jmp target; int3...`. idx may carry the [Capture]
// flag and the fast path's bits ([StubIndex]): the site has a spec
// ([Site.Spec]), which the agent captures; and the [Keep] flag: the
// relocation stub that calls the slot saved [KeepSave] bytes of registers
// first, and every register must come back unchanged, at the entry and at
// the hijacked return (lt_return_keep). target is lt_entry (base +
// [EntryOff]) or a [Springboard] within reach. It fails with
// [ErrOutOfReach] when target is beyond a rel32 jump, and when idx does
// not fit in the 22 bits of a record.
func StubCode(idx uint32, stubAddr, target uint64) ([StubSize]byte, error) {
	var b [StubSize]byte
	if x := idx &^ Keep; (x&Capture == 0 && x >= MaxSites) || x&^(Capture|stubFast) >= MaxSites {
		return b, fmt.Errorf("encode stub for site %d: %w: at most %d sites per session", idx, ErrBadConfig, MaxSites)
	}
	rel := int64(target - (stubAddr + 11))
	if rel != int64(int32(rel)) {
		return b, fmt.Errorf("encode stub at %#x for %#x: %w", stubAddr, target, ErrOutOfReach)
	}
	for i := range b {
		b[i] = 0xcc
	}
	b[0], b[1] = 0x41, 0xbb
	binary.LittleEndian.PutUint32(b[2:], idx)
	b[6] = 0xe9
	binary.LittleEndian.PutUint32(b[7:], uint32(int32(rel)))
	return b, nil
}

// Springboard returns 16 bytes that jump to the absolute address target
// (`jmp *0(%rip); .quad target`), for stubs too far from the agent.
func Springboard(target uint64) [StubSize]byte {
	var b [StubSize]byte
	b[0], b[1] = 0xff, 0x25
	binary.LittleEndian.PutUint64(b[6:], target)
	b[14], b[15] = 0xcc, 0xcc
	return b
}

// Site is one entry of the site table the SIGTRAP backstop searches.
type Site struct {
	Addr   uint64         // runtime address of the patched site (its first byte)
	Target uint64         // the CALL target written there (the site's stub)
	Orig   [SiteOrig]byte // the bytes the site held before (its first Len)
	// Len is the number of bytes the site covers: 5 for a NOP site, up
	// to SiteOrig for a relocated region. 0 means 5.
	Len uint32
	// Region marks a relocated region (package reloc, a function without
	// a NOP whose first instructions moved into its stub): Target is
	// jumped to, where a NOP site's is CALLed. Stored as SiteJmp in the
	// table's len: the length cannot tell the two apart, since a
	// region's instructions may add up to 5 bytes too.
	Region bool
	// Spec says what the agent captures at this site: SpecArgs bits
	// (argument i+1 in bit i), the same bits << SpecStrShift for the
	// arguments read as strings, SpecRet and SpecRetFloat. A site with a
	// spec needs the Capture flag in its stub ([StubCode]); 0 means none.
	Spec uint32
}

// Config describes the shared memory the tracer formats. The zero value
// of Chunks and ChunkRecords selects the defaults.
type Config struct {
	Chunks       int    // chunks in the pool
	ChunkRecords int    // records per chunk
	Sites        []Site // sorted by Addr, strictly increasing
	// SiteCap is the room of the site table, in sites (at least
	// len(Sites)): sites added while attached ([AppendSites]) go there.
	SiteCap   int
	TSCHz     uint64 // informational, stored in the header
	StringMax int    // bytes a string argument records, at most StringMax (0: none)
	// Zeroed says the memory given to [InitShared] holds only zeros (a
	// memfd just created and sized): it is then not cleared, so that its
	// pages are not all allocated on the attach path (the tracer
	// allocates them with fallocate meanwhile, session/inject.go).
	Zeroed bool
}

type sharedLayout struct {
	siteOff, chunkOff, chunkSize, chunks, records, total uint64
}

func roundUp(x, a uint64) uint64 { return (x + a - 1) / a * a }

func (cfg Config) layout() (sharedLayout, error) {
	var l sharedLayout
	chunks, recs := cfg.Chunks, cfg.ChunkRecords
	if chunks == 0 {
		chunks = DefaultChunks
	}
	if recs == 0 {
		recs = DefaultChunkRecords
	}
	if chunks < 1 || chunks > maxChunks {
		return l, fmt.Errorf("%w: Chunks %d not in [1, %d]", ErrBadConfig, chunks, maxChunks)
	}
	if recs < 1 || recs > maxChunkRecords {
		return l, fmt.Errorf("%w: ChunkRecords %d not in [1, %d]", ErrBadConfig, recs, maxChunkRecords)
	}
	if cfg.StringMax < 0 || cfg.StringMax > StringMax {
		return l, fmt.Errorf("%w: StringMax %d not in [0, %d]", ErrBadConfig, cfg.StringMax, StringMax)
	}
	if len(cfg.Sites) > MaxSites {
		return l, fmt.Errorf("%w: %d sites, at most %d", ErrBadConfig, len(cfg.Sites), MaxSites)
	}
	for i := 1; i < len(cfg.Sites); i++ {
		if cfg.Sites[i].Addr <= cfg.Sites[i-1].Addr {
			return l, fmt.Errorf("%w: sites not sorted by address at index %d", ErrBadConfig, i)
		}
	}
	if cfg.SiteCap > MaxSites {
		return l, fmt.Errorf("%w: room for %d sites, at most %d", ErrBadConfig, cfg.SiteCap, MaxSites)
	}
	l.siteOff = SharedHdrPage
	l.chunkOff = roundUp(l.siteOff+uint64(max(len(cfg.Sites), cfg.SiteCap))*SizeofSite, PageSize)
	l.chunkSize = roundUp(SizeofChunkHdr+uint64(recs)*SizeofRecord, 64)
	l.chunks, l.records = uint64(chunks), uint64(recs)
	l.total = roundUp(l.chunkOff+l.chunks*l.chunkSize, PageSize)
	if l.total > maxSharedSize {
		return l, fmt.Errorf("%w: shared memory of %d bytes is too large", ErrBadConfig, l.total)
	}
	return l, nil
}

// SharedSize returns the size in bytes (a multiple of the page size) of the
// shared memfd for cfg, or 0 when cfg is invalid ([InitShared] says why).
func SharedSize(cfg Config) int {
	l, err := cfg.layout()
	if err != nil {
		return 0
	}
	return int(l.total)
}

// RegionSize returns the size of the agent's whole region when its shared
// memfd is sharedSize bytes: code, control page, private region, shared.
func RegionSize(sharedSize int) uint64 {
	return SharedOff + uint64(sharedSize)
}

// InitShared formats mem, the tracer's mapping of the shared memfd, for
// cfg: header, site table and a pool of FREE chunks. Call it before the
// agent can run; mem must be at least [SharedSize](cfg) bytes and 8-byte
// aligned. It zeroes all of it unless cfg.Zeroed, which also allocates
// every page of the memfd now, in the tracer, rather than one page fault
// at a time on the target's traced calls.
func InitShared(mem []byte, cfg Config) error {
	l, err := cfg.layout()
	if err != nil {
		return fmt.Errorf("format shared memory: %w", err)
	}
	if uint64(len(mem)) < l.total {
		return fmt.Errorf("format shared memory: %w: %d bytes, need %d", ErrBadConfig, len(mem), l.total)
	}
	if !cfg.Zeroed {
		clear(mem[:l.total])
	}
	le := binary.LittleEndian
	for i, s := range cfg.Sites {
		putSite(mem[l.siteOff+uint64(i)*SizeofSite:], s)
	}
	le.PutUint64(mem[SharedHdrStringMaxOff:], uint64(cfg.StringMax))
	le.PutUint32(mem[SharedHdrVersionOff:], Version)
	le.PutUint32(mem[SharedHdrHdrSizeOff:], SharedHdrPage)
	le.PutUint32(mem[SharedHdrChunkRecordsOff:], uint32(l.records))
	le.PutUint64(mem[SharedHdrTotalSizeOff:], l.total)
	le.PutUint64(mem[SharedHdrSiteOffOff:], l.siteOff)
	le.PutUint64(mem[SharedHdrNsitesOff:], uint64(len(cfg.Sites)))
	le.PutUint64(mem[SharedHdrChunkOffOff:], l.chunkOff)
	le.PutUint64(mem[SharedHdrNchunksOff:], l.chunks)
	le.PutUint64(mem[SharedHdrChunkSizeOff:], l.chunkSize)
	le.PutUint64(mem[SharedHdrTscHzOff:], cfg.TSCHz)
	le.PutUint32(mem[SharedHdrMagicOff:], Magic)
	return nil
}

func putSite(b []byte, s Site) {
	le := binary.LittleEndian
	le.PutUint64(b[SiteAddrOff:], s.Addr)
	le.PutUint64(b[SiteTargetOff:], s.Target)
	copy(b[SiteOrigOff:SiteOrigOff+SiteOrig], s.Orig[:])
	n := s.Len
	if n == 0 {
		n = 5
	}
	if s.Region {
		n |= SiteJmp
	}
	le.PutUint32(b[SiteLenOff:], n)
	le.PutUint32(b[SiteSpecOff:], s.Spec)
}

// AppendSites writes sites into the site table of mem (a shared memory
// formatted by [InitShared] for cfg, which the agent may be using) from
// index at on, after the at sites there, then publishes at+len(sites) as
// the count: the SIGTRAP backstop never sees an entry before it is
// complete. The appended sites need not be in address order (the backstop
// scans what its binary search misses). Nothing is read from mem, which
// the target can write: the caller knows at, and cfg gives the room
// ([Config.SiteCap]). Not safe for concurrent use with itself.
func AppendSites(mem []byte, cfg Config, at int, sites []Site) error {
	l, err := cfg.layout()
	if err != nil {
		return fmt.Errorf("add sites: %w", err)
	}
	room := int((l.chunkOff - l.siteOff) / SizeofSite)
	if at < 0 || at+len(sites) > room || l.chunkOff > uint64(len(mem)) {
		return fmt.Errorf("add sites: %w: %d sites, room for %d", ErrBadConfig, at+len(sites), room)
	}
	for i, s := range sites {
		putSite(mem[l.siteOff+uint64(at+i)*SizeofSite:], s)
	}
	p := (*uint64)(unsafe.Pointer(&mem[SharedHdrNsitesOff]))
	atomic.StoreUint64(p, uint64(at+len(sites)))
	return nil
}

// DropSites retires the entries at indexes idx of the site table in mem
// (the tracer's mapping of the shared memory): their address becomes 0, a
// tombstone, so that neither the SIGTRAP backstop nor a restore ever takes
// an address that another module may now hold for one of these sites (the
// module that had them was unloaded). The indexes stay taken: records
// name sites by index.
func DropSites(mem []byte, cfg Config, idx []int) error {
	l, err := cfg.layout()
	if err != nil {
		return fmt.Errorf("drop sites: %w", err)
	}
	n := int(atomic.LoadUint64((*uint64)(unsafe.Pointer(&mem[SharedHdrNsitesOff]))))
	for _, i := range idx {
		if i < 0 || i >= n || l.siteOff+uint64(i+1)*SizeofSite > uint64(len(mem)) {
			return fmt.Errorf("drop sites: %w: site %d of %d", ErrBadConfig, i, n)
		}
		p := (*uint64)(unsafe.Pointer(&mem[l.siteOff+uint64(i)*SizeofSite+SiteAddrOff]))
		atomic.StoreUint64(p, 0)
	}
	return nil
}

// Record is one decoded event.
type Record struct {
	TSC         uint64 // rdtsc at the event
	Kind        uint8  // KindEntry, KindExit or KindData (see [DataRecord])
	Depth       uint8  // shadow stack depth mod 256 (0 in entry-only mode)
	Site        uint32 // site index
	CallerDelta int32  // entry: caller's return address minus the site address
	CallerKnown bool   // entry: CallerDelta is valid
}

// DecodeRecord decodes the 16-byte record at the start of b. A shorter b
// gives the zero Record (Kind 0, which is no valid kind).
func DecodeRecord(b []byte) Record {
	if len(b) < SizeofRecord {
		return Record{}
	}
	le := binary.LittleEndian
	meta := le.Uint64(b[RecordMetaOff:])
	low := uint32(meta)
	r := Record{
		TSC:   le.Uint64(b[RecordTscOff:]),
		Kind:  uint8(meta >> 62),
		Depth: uint8(meta >> 54),
		Site:  uint32(meta>>32) & (MaxSites - 1),
	}
	if r.Kind == KindEntry && low != CallerUnknown {
		r.CallerDelta, r.CallerKnown = int32(low), true
	}
	return r
}

// EncodeRecord is the inverse of [DecodeRecord], for tests and tools.
func EncodeRecord(r Record) [SizeofRecord]byte {
	var b [SizeofRecord]byte
	low := uint32(0)
	if r.Kind == KindEntry {
		low = CallerUnknown
		if r.CallerKnown {
			low = uint32(r.CallerDelta)
		}
	}
	meta := uint64(r.Kind&3)<<62 | uint64(r.Depth)<<54 | uint64(r.Site&(MaxSites-1))<<32 | uint64(low)
	binary.LittleEndian.PutUint64(b[RecordTscOff:], r.TSC)
	binary.LittleEndian.PutUint64(b[RecordMetaOff:], meta)
	return b
}

// DataRecord decodes a record of kind KindData, which follows the entry or
// exit record of a site with a spec: spec is the part of the site's spec
// the payload holds (the argument bits for an entry, the return bits for
// an exit), n the payload's length in bytes, and records the number of
// 16-byte records the payload takes after this one. ok is false when b
// is not a KindData record or n is impossible (a hostile target).
func DataRecord(b []byte) (spec uint32, n int, records int, ok bool) {
	if len(b) < SizeofRecord {
		return 0, 0, 0, false
	}
	le := binary.LittleEndian
	meta := le.Uint64(b[RecordMetaOff:])
	if meta>>62 != KindData {
		return 0, 0, 0, false
	}
	n64 := meta & (1<<62 - 1)
	if n64 > MaxPayload {
		return 0, 0, 0, false
	}
	n = int(n64)
	spec = uint32(le.Uint64(b[RecordTscOff:]))
	return spec, n, (n + SizeofRecord - 1) / SizeofRecord, true
}
