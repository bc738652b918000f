package agent

import (
	"encoding/binary"
	"fmt"
	"slices"
)

// Range is a mapping the tracer made in the target (struct lt_range).
type Range struct {
	Addr, Size uint64
}

// End returns the first address after r.
func (r Range) End() uint64 { return r.Addr + r.Size }

// Hook is a GOT slot pointed at an agent hook (struct lt_hook).
type Hook struct {
	Slot uint64 // address of the GOT slot
	Orig uint64 // the value it held before
	Hook uint64 // the value the tracer wrote there
}

// Owner is the owner record in the agent's control page (struct
// lt_owner): everything a later tracer needs to undo an agent whose
// tracer died, except the site table, which is in the shared memory. Read
// back from a target it is untrusted: [DecodeOwner] checks only its shape
// (magic, version, counts); the caller checks every address against the
// target's mappings.
type Owner struct {
	Lease      uint64 // TSC deadline for the tracer's next renewal; 0: none
	Pid        uint64 // the tracer's pid
	Start      uint64 // the tracer's start time (field 22 of /proc/PID/stat)
	Base       uint64 // the agent region's base
	SharedSize uint64 // bytes of the shared memory mapping (0: not yet mapped)
	Stubs      []Range
	Hooks      []Hook
	// Rbrk is the address of the INT3 the tracer wrote over the `ret` of
	// the dynamic loader's r_brk (0: none); restore writes the `ret`
	// (0xc3) back.
	Rbrk uint64
	// RbrkPad is 0x100 | the original byte at Rbrk+1 when that byte is
	// alignment padding the tracer made a second `ret`, so that a thread
	// that runs on past the INT3 returns (0: none); restore writes the
	// byte back.
	RbrkPad uint64
}

// Encode returns the SizeofOwner bytes to write at [Addrs.Owner], with the
// magic and version set. It fails when s lists too many stubs or hooks.
func (o Owner) Encode() ([]byte, error) {
	if len(o.Stubs) > MaxStubRegions || len(o.Hooks) > MaxHooks {
		return nil, fmt.Errorf("encode owner record: %d stub regions and %d hooks, at most %d and %d", len(o.Stubs), len(o.Hooks), MaxStubRegions, MaxHooks)
	}
	b := make([]byte, SizeofOwner)
	le := binary.LittleEndian
	le.PutUint32(b[OwnerMagicOff:], OwnerMagic)
	le.PutUint32(b[OwnerVersionOff:], OwnerVersion)
	le.PutUint64(b[OwnerLeaseOff:], o.Lease)
	le.PutUint64(b[OwnerPidOff:], o.Pid)
	le.PutUint64(b[OwnerStartOff:], o.Start)
	le.PutUint64(b[OwnerBaseOff:], o.Base)
	le.PutUint64(b[OwnerSharedSizeOff:], o.SharedSize)
	le.PutUint32(b[OwnerNstubsOff:], uint32(len(o.Stubs)))
	le.PutUint32(b[OwnerNhooksOff:], uint32(len(o.Hooks)))
	le.PutUint64(b[OwnerRbrkOff:], o.Rbrk)
	le.PutUint64(b[OwnerRbrkPadOff:], o.RbrkPad)
	for i, r := range o.Stubs {
		at := OwnerStubsOff + i*SizeofRange
		le.PutUint64(b[at+RangeAddrOff:], r.Addr)
		le.PutUint64(b[at+RangeSizeOff:], r.Size)
	}
	for i, h := range o.Hooks {
		at := OwnerHooksOff + i*SizeofHook
		le.PutUint64(b[at+HookSlotOff:], h.Slot)
		le.PutUint64(b[at+HookOrigOff:], h.Orig)
		le.PutUint64(b[at+HookHookOff:], h.Hook)
	}
	return b, nil
}

// LeaseBytes returns the 8 bytes to write at [Addrs.Owner]+OwnerLeaseOff to
// renew the lease until the TSC reaches deadline.
func LeaseBytes(deadline uint64) []byte {
	return binary.LittleEndian.AppendUint64(nil, deadline)
}

// ErrNoOwner means a control page holds no owner record (no magic).
var ErrNoOwner = fmt.Errorf("no owner record")

// DecodeOwner decodes an owner record read at [Addrs.Owner]. It fails with
// [ErrNoOwner] when the magic is missing, and with an error when the
// version or a count is wrong.
func DecodeOwner(b []byte) (Owner, error) {
	var o Owner
	if len(b) < SizeofOwner {
		return o, fmt.Errorf("decode owner record: %d bytes, need %d", len(b), SizeofOwner)
	}
	le := binary.LittleEndian
	if le.Uint32(b[OwnerMagicOff:]) != OwnerMagic {
		return o, ErrNoOwner
	}
	// Version 4 moved the record to the page a forked child keeps: an
	// older one is not where this livetrace reads it.
	if v := le.Uint32(b[OwnerVersionOff:]); v != OwnerVersion {
		return o, fmt.Errorf("decode owner record: version %d, this livetrace reads version %d", v, OwnerVersion)
	}
	ns, nh := le.Uint32(b[OwnerNstubsOff:]), le.Uint32(b[OwnerNhooksOff:])
	if ns > MaxStubRegions || nh > MaxHooks {
		return o, fmt.Errorf("decode owner record: %d stub regions and %d hooks, at most %d and %d", ns, nh, MaxStubRegions, MaxHooks)
	}
	o.Lease = le.Uint64(b[OwnerLeaseOff:])
	o.Pid = le.Uint64(b[OwnerPidOff:])
	o.Start = le.Uint64(b[OwnerStartOff:])
	o.Base = le.Uint64(b[OwnerBaseOff:])
	o.SharedSize = le.Uint64(b[OwnerSharedSizeOff:])
	o.Rbrk = le.Uint64(b[OwnerRbrkOff:])
	o.RbrkPad = le.Uint64(b[OwnerRbrkPadOff:])
	for i := range int(ns) {
		at := OwnerStubsOff + i*SizeofRange
		o.Stubs = append(o.Stubs, Range{Addr: le.Uint64(b[at+RangeAddrOff:]), Size: le.Uint64(b[at+RangeSizeOff:])})
	}
	for i := range int(nh) {
		at := OwnerHooksOff + i*SizeofHook
		o.Hooks = append(o.Hooks, Hook{Slot: le.Uint64(b[at+HookSlotOff:]), Orig: le.Uint64(b[at+HookOrigOff:]), Hook: le.Uint64(b[at+HookHookOff:])})
	}
	return o, nil
}

// SharedSites decodes the site table of a shared memory header and table
// read from a target (untrusted): shared holds the first bytes of the
// shared mapping, at least up to the end of the table. It checks the
// header's magic and version, that the table lies inside size bytes (the
// mapping's size), and that no two sites share an address; it holds at most [MaxSites]
// entries.
func SharedSites(shared []byte, size uint64) ([]Site, error) {
	le := binary.LittleEndian
	if len(shared) < SharedHdrPage {
		return nil, fmt.Errorf("read site table: %w: %d bytes", ErrBadShared, len(shared))
	}
	if le.Uint32(shared[SharedHdrMagicOff:]) != Magic || le.Uint32(shared[SharedHdrVersionOff:]) != Version {
		return nil, fmt.Errorf("read site table: %w: bad magic or version", ErrBadShared)
	}
	off, n := le.Uint64(shared[SharedHdrSiteOffOff:]), le.Uint64(shared[SharedHdrNsitesOff:])
	if n > MaxSites || off < SharedHdrPage || off > size || n*SizeofSite > size-off || off+n*SizeofSite > uint64(len(shared)) {
		return nil, fmt.Errorf("read site table: %w: %d sites at offset %d in %d bytes", ErrBadShared, n, off, size)
	}
	sites := make([]Site, n)
	for i := range sites {
		o := off + uint64(i)*SizeofSite
		sites[i].Addr = le.Uint64(shared[o+SiteAddrOff:])
		sites[i].Target = le.Uint64(shared[o+SiteTargetOff:])
		copy(sites[i].Orig[:], shared[o+SiteOrigOff:])
		n := le.Uint32(shared[o+SiteLenOff:])
		sites[i].Region = n&SiteJmp != 0
		sites[i].Len = n &^ SiteJmp
		sites[i].Spec = le.Uint32(shared[o+SiteSpecOff:])
		if sites[i].Len < 5 || sites[i].Len > SiteOrig || !sites[i].Region && sites[i].Len != 5 {
			return nil, fmt.Errorf("read site table: %w: site %d covers %d bytes (region %v)", ErrBadShared, i, sites[i].Len, sites[i].Region)
		}
	}
	// Sorted up to the sites chosen at attach, then the sites added while
	// attached: no two may be at the same address. Address 0 is a site
	// retired with its module (DropSites).
	addrs := make([]uint64, 0, n)
	for i := range sites {
		if sites[i].Addr != 0 {
			addrs = append(addrs, sites[i].Addr)
		}
	}
	slices.Sort(addrs)
	for i := 1; i < len(addrs); i++ {
		if addrs[i] == addrs[i-1] {
			return nil, fmt.Errorf("read site table: %w: two sites at %#x", ErrBadShared, addrs[i])
		}
	}
	return sites, nil
}

// SiteTableEnd returns how many bytes of the shared memory hold the header
// and the site table, as the header in shared says (capped at limit), so a
// reader knows how much to read before calling [SharedSites].
func SiteTableEnd(hdr []byte, limit uint64) uint64 {
	if len(hdr) < SharedHdrPage {
		return 0
	}
	le := binary.LittleEndian
	off, n := le.Uint64(hdr[SharedHdrSiteOffOff:]), le.Uint64(hdr[SharedHdrNsitesOff:])
	if n > MaxSites || off > limit || n*SizeofSite > limit-off {
		return min(limit, SharedHdrPage)
	}
	return off + n*SizeofSite
}
