package agent

import (
	"encoding/binary"
	"errors"
	"reflect"
	"testing"
)

func TestOwnerRoundTrip(t *testing.T) {
	o := Owner{Lease: 7, Pid: 1234, Start: 99, Base: 0x7f0000000000, SharedSize: 1 << 20,
		Stubs: []Range{{0x1000, 0x2000}}, Hooks: []Hook{{Slot: 8, Orig: 16, Hook: 24}}, Rbrk: 0x7f00, RbrkPad: 0x166}
	b, err := o.Encode()
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeOwner(b)
	if err != nil || !reflect.DeepEqual(got, o) {
		t.Fatalf("DecodeOwner(Encode(%+v)) = %+v, %v", o, got, err)
	}
	// Records before version 4 lay in the page a fork wipes, at another
	// offset: not read.
	v3 := append([]byte(nil), b...)
	for _, v := range []uint32{1, 2, 3, OwnerVersion + 1} {
		binary.LittleEndian.PutUint32(v3[OwnerVersionOff:], v)
		if _, err := DecodeOwner(v3); err == nil {
			t.Errorf("DecodeOwner took version %d", v)
		}
	}
	// The owner record starts the page a forked child keeps; only the
	// page before it is wiped on fork.
	if CtlOwnerOff != 4096 || CtlSize < CtlOwnerOff+SizeofOwner+SizeofSigaction {
		t.Errorf("control area: owner at +%#x of %#x bytes, want it to start the second page, with room after it", CtlOwnerOff, CtlSize)
	}
	if _, err := (Owner{Stubs: make([]Range, MaxStubRegions+1)}).Encode(); err == nil {
		t.Error("Encode took too many stub regions")
	}
	if _, err := DecodeOwner(make([]byte, SizeofOwner)); !errors.Is(err, ErrNoOwner) {
		t.Errorf("a zero page: %v, want ErrNoOwner", err)
	}
	bad := append([]byte(nil), b...)
	binary.LittleEndian.PutUint32(bad[OwnerNstubsOff:], MaxStubRegions+1)
	if _, err := DecodeOwner(bad); err == nil {
		t.Error("DecodeOwner took a stub count beyond the cap")
	}
	if _, err := DecodeOwner(b[:10]); err == nil {
		t.Error("DecodeOwner took a short buffer")
	}
	// The flags written to the control page never reach the owner record.
	if n := len((Ctl{Enabled: true, Graph: true}).Encode()); n > CtlOwnerOff {
		t.Errorf("Ctl.Encode writes %d bytes, over the owner record at %d", n, CtlOwnerOff)
	}
}

// TestSharedSites checks the site table read back from a target: a
// formatted table comes back whole, and a header that lies is an error.
func TestSharedSites(t *testing.T) {
	// A region of 5 bytes is as long as a NOP site: only its flag tells.
	sites := []Site{{Addr: 0x1000, Target: 0x9010, Orig: [SiteOrig]byte{0x0f, 0x1f, 0x44, 0, 8}, Len: 5}, {Addr: 0x2000, Target: 0x9020, Len: 7, Region: true},
		{Addr: 0x3000, Target: 0x9030, Orig: [SiteOrig]byte{0x48, 0x8d, 0x47, 0x01, 0x90}, Len: 5, Region: true}}
	cfg := Config{Chunks: 1, ChunkRecords: 4, Sites: sites}
	mem := make([]byte, SharedSize(cfg))
	if err := InitShared(mem, cfg); err != nil {
		t.Fatal(err)
	}
	end := SiteTableEnd(mem, uint64(len(mem)))
	got, err := SharedSites(mem[:end], uint64(len(mem)))
	if err != nil || !reflect.DeepEqual(got, sites) {
		t.Fatalf("SharedSites = %+v, %v; want %+v", got, err, sites)
	}
	le := binary.LittleEndian
	for name, lie := range map[string]func(b []byte){
		"count":     func(b []byte) { le.PutUint64(b[SharedHdrNsitesOff:], 1<<40) },
		"offset":    func(b []byte) { le.PutUint64(b[SharedHdrSiteOffOff:], ^uint64(0)-8) },
		"magic":     func(b []byte) { le.PutUint32(b[SharedHdrMagicOff:], 0) },
		"duplicate": func(b []byte) { le.PutUint64(b[SharedHdrPage+SizeofSite+SiteAddrOff:], 0x1000) },
		// A NOP site covers 5 bytes, a region at most SiteOrig.
		"nop length":    func(b []byte) { le.PutUint32(b[SharedHdrPage+SiteLenOff:], 7) },
		"region length": func(b []byte) { le.PutUint32(b[SharedHdrPage+SizeofSite+SiteLenOff:], SiteJmp|(SiteOrig+1)) },
		"length bits":   func(b []byte) { le.PutUint32(b[SharedHdrPage+SiteLenOff:], 1<<31|5) },
	} {
		b := append([]byte(nil), mem...)
		lie(b)
		if _, err := SharedSites(b[:SiteTableEnd(b, uint64(len(b)))], uint64(len(b))); err == nil {
			t.Errorf("a lying %s: no error", name)
		}
	}
}

// TestAppendSites checks sites added to a formatted table while attached:
// out of address order, they come back after the first ones, and a table
// without room refuses more.
func TestAppendSites(t *testing.T) {
	sites := []Site{{Addr: 0x1000, Target: 0x9010, Len: 5}, {Addr: 0x2000, Target: 0x9020, Len: 7, Region: true}}
	cfg := Config{Chunks: 1, ChunkRecords: 4, Sites: sites, SiteCap: 3}
	mem := make([]byte, SharedSize(cfg))
	if err := InitShared(mem, cfg); err != nil {
		t.Fatal(err)
	}
	more := []Site{{Addr: 0x1800, Target: 0x9030, Len: 5}}
	if err := AppendSites(mem, cfg, 2, more); err != nil {
		t.Fatal(err)
	}
	got, err := SharedSites(mem[:SiteTableEnd(mem, uint64(len(mem)))], uint64(len(mem)))
	if want := append(sites, more...); err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("SharedSites = %+v, %v; want %+v", got, err, want)
	}
	// A page holds 73 sites: the room is rounded up to it.
	if err := AppendSites(mem, cfg, 3, make([]Site, PageSize/SizeofSite)); !errors.Is(err, ErrBadConfig) {
		t.Fatalf("AppendSites past the room: %v, want ErrBadConfig", err)
	}
}
