package report_test

import (
	"bytes"
	"encoding/binary"
	"math"
	"strings"
	"testing"

	"github.com/livetrace/livetrace/internal/report"
	"github.com/livetrace/livetrace/internal/tracefile"
)

func TestFormatValue(t *testing.T) {
	for _, c := range []struct {
		sp   tracefile.ArgSpec
		v    tracefile.Value
		want string
	}{
		{tracefile.ArgSpec{Format: "d"}, tracefile.Value{Raw: uint64(1<<64 - 42)}, "-42"},
		{tracefile.ArgSpec{Format: "d", Size: 4}, tracefile.Value{Raw: 0xdead_fffffff0}, "-16"},
		{tracefile.ArgSpec{Format: "u", Size: 4}, tracefile.Value{Raw: 0xdead_ee6b2800}, "4000000000"},
		{tracefile.ArgSpec{Format: "u", Size: 1}, tracefile.Value{Raw: 0x1ff}, "255"},
		{tracefile.ArgSpec{Format: "x", Size: 2}, tracefile.Value{Raw: 0x12beef}, "0xbeef"},
		{tracefile.ArgSpec{Format: "c"}, tracefile.Value{Raw: 'Z'}, "'Z'"},
		{tracefile.ArgSpec{Format: "c"}, tracefile.Value{Raw: 0x1b}, `'\x1b'`},
		{tracefile.ArgSpec{Format: "p"}, tracefile.Value{Raw: 0}, "NULL"},
		{tracefile.ArgSpec{Format: "p"}, tracefile.Value{Raw: 0x1234}, "0x1234"},
		{tracefile.ArgSpec{Format: "f"}, tracefile.Value{Raw: math.Float64bits(2.5)}, "2.5"},
		{tracefile.ArgSpec{Format: "d", Size: 4, Enum: map[int64]string{2: "GREEN", -1: "NONE"}}, tracefile.Value{Raw: 2}, "GREEN"},
		{tracefile.ArgSpec{Format: "d", Size: 4, Enum: map[int64]string{2: "GREEN", -1: "NONE"}}, tracefile.Value{Raw: 0xffffffff}, "NONE"},
		{tracefile.ArgSpec{Format: "d", Size: 4, Enum: map[int64]string{2: "GREEN"}}, tracefile.Value{Raw: 3}, "3"},
		{tracefile.ArgSpec{Format: "s"}, tracefile.Value{Raw: 0x1000, Str: true, Text: "a\"b\\\n\x1b[31m"}, `"a\"b\\\n\x1b[31m"`},
		{tracefile.ArgSpec{Format: "s"}, tracefile.Value{Raw: 0x1000, Str: true, Text: "abc", Cut: true}, `"abc"...`},
		{tracefile.ArgSpec{Format: "s"}, tracefile.Value{Raw: 0, Str: true, Bad: true}, "NULL"},
		{tracefile.ArgSpec{Format: "s"}, tracefile.Value{Raw: 0xdead000, Str: true, Bad: true}, "0xdead000"},
	} {
		if got := report.FormatValue(c.sp, c.v); got != c.want {
			t.Errorf("FormatValue(%+v, %+v) = %s, want %s", c.sp, c.v, got, c.want)
		}
	}
}

// argsRecording is a graph-mode recording of two lookup_user calls with
// captured values, those of the second one malformed.
func argsRecording(t *testing.T) *tracefile.Recording {
	u64 := func(v ...uint64) []byte {
		var b []byte
		for _, x := range v {
			b = binary.LittleEndian.AppendUint64(b, x)
		}
		return b
	}
	entry, err := tracefile.EncodeArgs(1|2|2<<8, append(u64(42, 0x1000), 3, 'b', 'o', 'b'))
	if err != nil {
		t.Fatal(err)
	}
	ret, err := tracefile.EncodeArgs(1<<16, u64(47))
	if err != nil {
		t.Fatal(err)
	}
	meta := tracefile.Meta{Version: tracefile.Version, Mode: tracefile.ModeGraph, PID: 1, Comm: "t",
		Clock: tracefile.Clock{TSC0: 0, Mono0: 0, TSC1: 1000000, Mono1: 1000000},
		Funcs: []tracefile.Func{{Name: "lookup_user", Module: -1, Addr: 0x1000, Site: 0x1000,
			Args: []tracefile.ArgSpec{{Reg: 1, Format: "d", Name: "id"}, {Reg: 2, Format: "s", Name: "name"}},
			Ret:  &tracefile.ArgSpec{Format: "d"}}},
		Threads: []tracefile.Thread{{TID: 7, Name: "t"}}}
	evs := []tracefile.Event{
		{TSC: 1000, TID: 7, Kind: tracefile.KindEntry, Args: entry},
		{TSC: 3000, TID: 7, Kind: tracefile.KindExit, Args: ret},
		{TSC: 4000, TID: 7, Kind: tracefile.KindEntry, Args: "\x01\x01"},
		{TSC: 5000, TID: 7, Kind: tracefile.KindExit},
	}
	var buf bytes.Buffer
	w, err := tracefile.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.WriteEvents(evs); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(meta); err != nil {
		t.Fatal(err)
	}
	rec, err := tracefile.ReadFrom(bytes.NewReader(buf.Bytes()), int64(buf.Len()))
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

// TestReplayArgs replays a recording with captured values, one of them
// malformed (a damaged file prints "?", it does not stop the replay).
func TestReplayArgs(t *testing.T) {
	rec := argsRecording(t)
	var out bytes.Buffer
	if err := report.Replay(&out, rec, report.Filter{}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`lookup_user(id=42, name="bob") = 47;`, `lookup_user(?);`} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("replay lacks %s:\n%s", want, out.String())
		}
	}
	out.Reset()
	if err := report.ExportChrome(&out, rec, report.Filter{}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"id":"42"`, `"name":"\"bob\""`, `"retval":"47"`} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("chrome export lacks %s:\n%s", want, out.String())
		}
	}
}

func TestPerfettoArgs(t *testing.T) {
	rec := argsRecording(t)
	var out bytes.Buffer
	if err := report.ExportPerfettoStream(&out, rec.Stream(tracefile.StreamOptions{}), report.Filter{}); err != nil {
		t.Fatal(err)
	}
	sl := decodePerfetto(t, out.Bytes())
	if len(sl) != 2 {
		t.Fatalf("%d slices, want 2: %+v", len(sl), sl)
	}
	if want := `id=42,name="bob",retval=47`; sl[0].Annotation != want {
		t.Errorf("first slice has args %q, want %q", sl[0].Annotation, want)
	}
	if want := "args=?"; sl[1].Annotation != want {
		t.Errorf("second slice has args %q, want %q", sl[1].Annotation, want)
	}
}
