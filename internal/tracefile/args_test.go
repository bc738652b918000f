package tracefile_test

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/livetrace/livetrace/internal/tracefile"
)

func payload(vals ...uint64) []byte {
	var b []byte
	for _, v := range vals {
		b = binary.LittleEndian.AppendUint64(b, v)
	}
	return b
}

func TestArgsRoundTrip(t *testing.T) {
	// arg1 (int), arg2 (string "bob"), arg3 (string, unreadable), arg5.
	p := payload(42, 0x1000, 0, 7)
	p = append(p, 3, 'b', 'o', 'b', 0xff)
	spec := uint32(1|2|4|16) | (2|4)<<8
	entry, err := tracefile.EncodeArgs(spec, p)
	if err != nil {
		t.Fatal(err)
	}
	ret, err := tracefile.EncodeArgs(1<<16, payload(47))
	if err != nil {
		t.Fatal(err)
	}
	cut, err := tracefile.EncodeArgs(1|1<<8, append(payload(0x2000), 0x80|4, 'a', 'b', 'c', 'd'))
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	w, err := tracefile.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	meta := tracefile.Meta{Version: tracefile.Version, Mode: tracefile.ModeGraph, Funcs: []tracefile.Func{{
		Name: "lookup_user", Module: -1, Addr: 0x1000, Site: 0x1000,
		Args: []tracefile.ArgSpec{{Reg: 1, Format: "d"}, {Reg: 2, Format: "s"}},
		Ret:  &tracefile.ArgSpec{Format: "d"},
	}}}
	evs := []tracefile.Event{
		{TSC: 100, TID: 1, Kind: tracefile.KindEntry, Func: 0, Args: entry},
		{TSC: 101, TID: 1, Kind: tracefile.KindEntry, Func: 0, Depth: 1},
		{TSC: 102, TID: 1, Kind: tracefile.KindExit, Func: 0, Depth: 1},
		{TSC: 103, TID: 1, Kind: tracefile.KindEntry, Func: 0, Depth: 1, Args: cut},
		{TSC: 104, TID: 1, Kind: tracefile.KindExit, Func: 0, Depth: 1},
		{TSC: 200, TID: 1, Kind: tracefile.KindExit, Func: 0, Args: ret},
	}
	if err := w.WriteEvents(evs); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(meta); err != nil {
		t.Fatal(err)
	}
	rec, err := readBytes(buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(evs, rec.Events); diff != "" {
		t.Fatalf("events (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(meta.Funcs[0].Args, rec.Meta.Funcs[0].Args); diff != "" {
		t.Fatalf("arg specs (-want +got):\n%s", diff)
	}
	got, err := tracefile.DecodeArgs(rec.Events[0].Args)
	if err != nil {
		t.Fatal(err)
	}
	want := []tracefile.Value{
		{Reg: 1, Raw: 42},
		{Reg: 2, Raw: 0x1000, Str: true, Text: "bob"},
		{Reg: 3, Raw: 0, Str: true, Bad: true},
		{Reg: 5, Raw: 7},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("entry values (-want +got):\n%s", diff)
	}
	got, err = tracefile.DecodeArgs(rec.Events[3].Args)
	if err != nil || len(got) != 1 || got[0].Text != "abcd" || !got[0].Cut {
		t.Errorf("cut string: %+v, %v", got, err)
	}
	got, err = tracefile.DecodeArgs(rec.Events[5].Args)
	if err != nil || len(got) != 1 || got[0].Reg != 0 || got[0].Raw != 47 {
		t.Errorf("return value: %+v, %v", got, err)
	}
}

func TestArgsRejects(t *testing.T) {
	for name, c := range map[string]struct {
		spec uint32
		p    []byte
	}{
		"short value":        {1, []byte{1, 2, 3}},
		"trailing":           {1, append(payload(1), 9)},
		"string without arg": {1 | 2<<8, payload(1)},
		"string too short":   {1 | 1<<8, append(payload(1), 5, 'a')},
		"no string byte":     {1 | 1<<8, payload(1)},
		"ret and args":       {1 | 1<<16, payload(1, 2)},
		"ret too long":       {1 << 16, payload(1, 2)},
		"nothing":            {0, nil},
		"too long":           {1 | 1<<8, append(payload(1), make([]byte, 2000)...)},
	} {
		if _, err := tracefile.EncodeArgs(c.spec, c.p); err == nil {
			t.Errorf("%s: accepted", name)
		} else if !strings.Contains(err.Error(), "argument values") {
			t.Errorf("%s: error %q does not say what is wrong", name, err)
		}
	}
}

// FuzzDecodeArgs: any bytes decode to values or an error, never a panic,
// and what decodes encodes back to the same bytes.
func FuzzDecodeArgs(f *testing.F) {
	f.Add([]byte{0x07, 1, 0, 0, 0, 0, 0, 0, 0})
	f.Add(append([]byte{0x81, 0x02}, append(payload(0x1000), 3, 'b', 'o', 'b')...))
	f.Add(append([]byte{0x80, 0x80, 0x04}, payload(47)...))
	f.Fuzz(func(t *testing.T, b []byte) {
		vals, err := tracefile.DecodeArgs(string(b))
		// EncodeArgs checks without decoding: it must agree.
		if spec, n := binary.Uvarint(b); n > 0 && spec <= 0xffffffff && n == len(binary.AppendUvarint(nil, spec)) {
			enc, eerr := tracefile.EncodeArgs(uint32(spec), b[n:])
			if (eerr == nil) != (err == nil) {
				t.Fatalf("%x: EncodeArgs says %v, DecodeArgs %v", b, eerr, err)
			}
			if eerr == nil && enc != string(b) {
				t.Fatalf("%x encodes to %x", b, enc)
			}
		}
		if err != nil {
			return
		}
		if len(vals) == 0 {
			t.Fatalf("%x decodes to no values", b)
		}
	})
}
