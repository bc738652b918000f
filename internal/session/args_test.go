package session

import (
	"bytes"
	"encoding/binary"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/livetrace/livetrace/internal/agent"
	"github.com/livetrace/livetrace/internal/testtarget"
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

// TestSeccompStrings: a target whose seccomp filter kills on
// process_vm_readv, with which the agent reads string arguments. A
// recording that asks for strings is refused up front (ErrSeccomp), one
// that does not is traced with string_max 0 (the agent never makes the
// call), and Enable of a function with a string spec is refused; the
// target stays alive and intact throughout.
func TestSeccompStrings(t *testing.T) {
	exe := buildHostile(t)
	tp := startHostile(t, exe, "seccomp=process_vm_readv:kill")
	hostileAlive(t, tp)
	before := testtarget.TakeSnapshot(t, tp.Pid())
	str := []ArgRule{{Glob: "hot_*", Args: []tracefile.ArgSpec{{Reg: 1, Format: tracefile.FormatString}}}}
	_, err := Start(tp.Pid(), Options{Funcs: []string{"hot_*"}, Output: filepath.Join(t.TempDir(), "rec.data"), Args: str})
	if !errors.Is(err, ErrSeccomp) || !strings.Contains(err.Error(), "process_vm_readv") {
		t.Fatalf("start with a string spec: %v, want ErrSeccomp naming process_vm_readv", err)
	}
	hostileAlive(t, tp)
	s, err := Start(tp.Pid(), Options{Funcs: []string{"hot_leaf"}, Output: filepath.Join(t.TempDir(), "rec.data"),
		Args: []ArgRule{{Glob: "hot_*", Args: []tracefile.ArgSpec{{Reg: 1, Format: tracefile.FormatHex}}}}})
	if err != nil {
		t.Fatalf("start with an integer spec: %v", err)
	}
	if n := s.stringMax(); n != 0 {
		t.Errorf("string_max %d, want 0", n)
	}
	if _, err := s.EnableArgs([]string{"hot_mid"}, []ArgRule{{Glob: "hot_mid", Args: str[0].Args}}); !errors.Is(err, ErrSeccomp) {
		t.Errorf("enable with a string spec: %v, want ErrSeccomp", err)
	}
	hostileAlive(t, tp)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	hostileAlive(t, tp)
	testtarget.CheckText(t, tp.Pid())
	before.CheckSame(t, tp.Pid())
}
