package tracefile

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"testing"
)

// fixChecksums rewrites the checksums of every block it can walk, and of
// the trailer, so that the fuzzer reaches the decoders behind them.
func fixChecksums(data []byte) []byte {
	d := bytes.Clone(data)
	for off := headerSize; off+blockHeaderSize <= len(d); {
		h := parseBlockHeader(d[off:])
		end := off + blockHeaderSize + int(h.stored)
		if h.stored > uint32(len(d)) || end > len(d) {
			break
		}
		binary.LittleEndian.PutUint32(d[off+20:], blockCRC(d[off:], d[off+blockHeaderSize:end]))
		off = end
	}
	if len(d) >= headerSize+trailerSize {
		t := d[len(d)-trailerSize:]
		binary.LittleEndian.PutUint32(t[28:], crc32.Checksum(t[:28], castagnoli))
	}
	return d
}

// FuzzReadFixed is FuzzRead with the checksums fixed up, so that mutations
// of lengths, event encodings and metadata get past them.
func FuzzReadFixed(f *testing.F) {
	var buf bytes.Buffer
	w, _ := NewWriter(&buf)
	w.WriteEvents([]Event{
		{TSC: 10, TID: 1, Kind: KindEntry, Func: 0, Caller: 0x401000},
		{TSC: 20, TID: 1, Kind: KindEntry, Func: 1, Depth: 1, Caller: 0x401010},
		{TSC: 25, TID: 2, Kind: KindEntry, Func: 0},
		{TSC: 30, TID: 1, Kind: KindExit, Func: 1, Depth: 1},
		{TSC: 40, TID: 1, Kind: KindExit, Func: 0},
	})
	w.Close(Meta{Mode: ModeGraph, Modules: []Module{{Path: "/a"}},
		Funcs:   []Func{{Name: "f", Module: 0, Addr: 0x401000}, {Name: "g", Module: -1}},
		Symbols: []Symbol{{Name: "f", Module: 0, Addr: 0x401000, Size: 0x20}},
		Threads: []Thread{{TID: 1, Name: "main", Lost: 3}}, Lost: 3})
	f.Add(buf.Bytes())
	f.Fuzz(func(t *testing.T, data []byte) {
		data = fixChecksums(data)
		for _, recover := range []bool{false, true} {
			rec, err := read(bytes.NewReader(data), int64(len(data)), recover)
			if err != nil {
				if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrTruncated) &&
					!errors.Is(err, ErrNotRecording) && !errors.Is(err, ErrUnsupportedVersion) {
					t.Fatalf("untyped error: %v", err)
				}
				continue
			}
			for _, ev := range rec.Events {
				if int(ev.Func) >= len(rec.Funcs) || (ev.Kind != KindEntry && ev.Kind != KindExit) {
					t.Fatalf("bad event %+v", ev)
				}
			}
			if err := checkMeta(&rec.Meta); err != nil {
				t.Fatalf("bad metadata: %v", err)
			}
		}
	})
}

// FuzzDecodeEvents checks that the event decoder never panics and that
// what it decodes encodes back to the same bytes.
func FuzzDecodeEvents(f *testing.F) {
	var b []byte
	evs := []Event{{TSC: 5, TID: 9, Kind: KindEntry, Func: 3, Depth: 2, Caller: 77}, {TSC: 4, TID: 9, Kind: KindExit, Func: 3, Depth: 2}}
	var prev Event
	for i := range evs {
		b = appendEvent(b, &prev, &evs[i], i == 0)
		prev = evs[i]
	}
	f.Add(b, uint8(2))
	f.Fuzz(func(t *testing.T, data []byte, count uint8) {
		got, msg := decodeEvents(nil, data, int(count))
		if msg != "" {
			return
		}
		var out []byte
		var prev Event
		for i := range got {
			out = appendEvent(out, &prev, &got[i], i == 0)
			prev = got[i]
		}
		// Varints have more than one encoding, so compare by decoding again.
		again, msg := decodeEvents(nil, out, len(got))
		if msg != "" || len(again) != len(got) {
			t.Fatalf("re-decode: %q", msg)
		}
		for i := range got {
			if again[i] != got[i] {
				t.Fatalf("event %d: %+v != %+v", i, again[i], got[i])
			}
		}
	})
}
