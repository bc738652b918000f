package session

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/livetrace/livetrace/internal/agent"
	"github.com/livetrace/livetrace/internal/tracefile"
)

// TestDeliverData feeds deliverRaw DATA groups as the agent writes them
// and forged ones (a hostile target): good groups become Event.Args,
// bad ones are counted as corrupt and never end up in the recording,
// and the records after them are still read.
func TestDeliverData(t *testing.T) {
	var buf bytes.Buffer
	w, err := tracefile.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	s := &Session{w: w, lost: map[uint32]uint64{}, threads: map[uint32]string{1: "x"}, sel: make([]selected, 3)}
	s.sel[1].capture.spec = 3 | agent.SpecRet
	rec := func(r agent.Record) []byte { b := agent.EncodeRecord(r); return b[:] }
	data := func(spec uint32, n int, payload ...uint64) []byte {
		b := binary.LittleEndian.AppendUint64(nil, uint64(spec)|uint64(n)<<32)
		b = binary.LittleEndian.AppendUint64(b, uint64(agent.KindData)<<62|uint64(n))
		for _, v := range payload {
			b = binary.LittleEndian.AppendUint64(b, v)
		}
		return b
	}
	var raw []byte
	add := func(b ...[]byte) {
		for _, x := range b {
			raw = append(raw, x...)
		}
	}
	add(data(3, 16, 1, 2))                                                                        // a DATA group after nothing
	add(rec(agent.Record{TSC: 10, Kind: agent.KindEntry, Site: 1}), data(3, 16, 42, 7))           // good
	add(rec(agent.Record{TSC: 11, Kind: agent.KindExit, Site: 1}), data(agent.SpecRet, 8, 47, 0)) // good
	add(rec(agent.Record{TSC: 12, Kind: agent.KindEntry, Site: 1}), data(1, 8, 42, 0))            // spec the site does not have
	add(rec(agent.Record{TSC: 13, Kind: agent.KindEntry, Site: 2}), data(3, 16, 1, 2))            // a site without a spec
	add(rec(agent.Record{TSC: 14, Kind: agent.KindEntry, Site: 1}), data(3, 8, 1, 0))             // payload too short for the spec
	add(rec(agent.Record{TSC: 15, Kind: agent.KindEntry, Site: 0}))                               // plain, still read
	add(rec(agent.Record{TSC: 16, Kind: agent.KindEntry, Site: 1}), data(3, 4000, 1, 2))          // length beyond the chunk
	if err := s.deliverRaw(1, 0, raw); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(tracefile.Meta{Version: tracefile.Version, Mode: tracefile.ModeGraph, Funcs: []tracefile.Func{{Name: "a", Module: -1}, {Name: "b", Module: -1}, {Name: "c", Module: -1}}}); err != nil {
		t.Fatal(err)
	}
	r, err := tracefile.ReadFrom(bytes.NewReader(buf.Bytes()), int64(buf.Len()))
	if err != nil {
		t.Fatal(err)
	}
	var tscs []uint64
	for _, ev := range r.Events {
		tscs = append(tscs, ev.TSC)
		if ev.TSC == 10 {
			v, err := tracefile.DecodeArgs(ev.Args)
			if err != nil || len(v) != 2 || v[0].Raw != 42 || v[1].Raw != 7 {
				t.Errorf("entry values %+v, %v", v, err)
			}
		}
		if ev.TSC == 11 {
			v, err := tracefile.DecodeArgs(ev.Args)
			if err != nil || len(v) != 1 || v[0].Raw != 47 {
				t.Errorf("return value %+v, %v", v, err)
			}
		}
		if ev.TSC > 11 && ev.Args != "" {
			t.Errorf("event %d has values %q", ev.TSC, ev.Args)
		}
	}
	if len(tscs) < 3 || tscs[0] != 10 || tscs[1] != 11 || tscs[2] != 15 {
		t.Errorf("events %v, want 10, 11, 15 first", tscs)
	}
	if n := s.badRecords.Load(); n < 4 {
		t.Errorf("%d corrupt, want at least 4", n)
	}
}
