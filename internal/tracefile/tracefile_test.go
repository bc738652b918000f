package tracefile_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/livetrace/livetrace/internal/tracefile"
	"github.com/livetrace/livetrace/internal/tracefile/tracefiletest"
)

// encode writes the scenario of mode into memory.
func encode(t testing.TB, b *tracefiletest.Builder) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := tracefile.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Write(w); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func readBytes(data []byte) (*tracefile.Recording, error) {
	return tracefile.ReadFrom(bytes.NewReader(data), int64(len(data)))
}

func TestRoundTrip(t *testing.T) {
	for _, mode := range []tracefile.Mode{tracefile.ModeEntry, tracefile.ModeGraph} {
		t.Run(mode.String(), func(t *testing.T) {
			b := tracefiletest.Scenario(mode)
			want := b.Recording()
			data := encode(t, b)
			got, err := readBytes(data)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(want, got, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("round trip (-want +got):\n%s", diff)
			}
			if len(got.Events) == 0 {
				t.Fatal("no events")
			}
		})
	}
}

func TestRoundTripFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "livetrace.data")
	b := tracefiletest.Scenario(tracefile.ModeGraph)
	if err := b.WriteFile(path); err != nil {
		t.Fatal(err)
	}
	got, err := tracefile.Read(path)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(b.Recording(), got, cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
	if _, err := tracefile.Read(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Read(missing) = %v, want ErrNotExist", err)
	}
}

// TestReadMeta reads only the metadata and the event count.
func TestReadMeta(t *testing.T) {
	path := filepath.Join(t.TempDir(), "livetrace.data")
	b := tracefiletest.Scenario(tracefile.ModeGraph)
	if err := b.WriteFile(path); err != nil {
		t.Fatal(err)
	}
	meta, n, err := tracefile.ReadMeta(path)
	if err != nil {
		t.Fatal(err)
	}
	want := b.Recording()
	if n != uint64(len(want.Events)) {
		t.Errorf("ReadMeta counts %d events, want %d", n, len(want.Events))
	}
	if diff := cmp.Diff(want.Meta, *meta, cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("metadata (-want +got):\n%s", diff)
	}
	if err := os.WriteFile(path, []byte("not a recording at all, but long enough to have a trailer...."), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := tracefile.ReadMeta(path); err == nil {
		t.Error("ReadMeta accepted a file that is not a recording")
	}
}

// TestManyBlocks streams more events than fit in one block, from several
// threads in interleaved batches, and checks the order the reader returns.
func TestManyBlocks(t *testing.T) {
	var buf bytes.Buffer
	w, err := tracefile.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	const perThread = tracefile.BlockEvents + 1000
	var batch []tracefile.Event
	for i := 0; i < perThread; i += 100 {
		for tid := uint32(1); tid <= 3; tid++ {
			batch = batch[:0]
			for j := i; j < min(i+100, perThread); j++ {
				batch = append(batch, tracefile.Event{
					TSC: uint64(j)*10 + uint64(tid), TID: tid, Kind: tracefile.KindEntry,
					Func: uint32(j % 7), Caller: uint64(0x400000 + j%13),
				})
			}
			if err := w.WriteEvents(batch); err != nil {
				t.Fatal(err)
			}
		}
	}
	meta := tracefile.Meta{Mode: tracefile.ModeEntry, Funcs: make([]tracefile.Func, 7)}
	for i := range meta.Funcs {
		meta.Funcs[i].Module = -1
	}
	if err := w.Close(meta); err != nil {
		t.Fatal(err)
	}
	if err := w.WriteEvents(batch); !errors.Is(err, tracefile.ErrClosed) {
		t.Errorf("WriteEvents after Close = %v, want ErrClosed", err)
	}
	rec, err := readBytes(buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if len(rec.Events) != 3*perThread {
		t.Fatalf("got %d events, want %d", len(rec.Events), 3*perThread)
	}
	for i, ev := range rec.Events {
		j, tid := i/3, uint32(i%3+1)
		want := tracefile.Event{TSC: uint64(j)*10 + uint64(tid), TID: tid, Kind: tracefile.KindEntry,
			Func: uint32(j % 7), Caller: uint64(0x400000 + j%13)}
		if ev != want {
			t.Fatalf("event %d = %+v, want %+v", i, ev, want)
		}
	}
	// Compressed well below the 27 bytes of an event in memory (S2 trades
	// some ratio for speed: about 8 bytes here).
	if n := buf.Len(); n > 3*perThread*10 {
		t.Errorf("file is %d bytes for %d events", n, 3*perThread)
	}
}

func TestWriterRejectsBadMeta(t *testing.T) {
	var buf bytes.Buffer
	w, _ := tracefile.NewWriter(&buf)
	if err := w.WriteEvents([]tracefile.Event{{TID: 1, Kind: tracefile.KindEntry, Func: 3}}); err != nil {
		t.Fatal(err)
	}
	if err := w.WriteEvents([]tracefile.Event{{TID: 1, Kind: 7}}); err == nil {
		t.Error("WriteEvents accepted kind 7")
	}
	err := w.Close(tracefile.Meta{Mode: tracefile.ModeEntry, Funcs: []tracefile.Func{{Name: "a"}}})
	if err == nil || !strings.Contains(err.Error(), "function 3") {
		t.Errorf("Close with too few funcs = %v", err)
	}
	var buf2 bytes.Buffer
	w, _ = tracefile.NewWriter(&buf2)
	if err := w.Close(tracefile.Meta{Mode: tracefile.ModeGraph, Funcs: []tracefile.Func{{Name: "a", Module: 2}}}); err == nil {
		t.Error("Close accepted a function in module 2 of 0")
	}
	var buf3 bytes.Buffer
	w, _ = tracefile.NewWriter(&buf3)
	if err := w.Close(tracefile.Meta{}); err == nil {
		t.Error("Close accepted mode 0")
	}
	for _, c := range []tracefile.Change{{Op: "enable", Funcs: []uint32{1}}, {Op: "frob"}} {
		var b bytes.Buffer
		w, _ = tracefile.NewWriter(&b)
		if err := w.Close(tracefile.Meta{Mode: tracefile.ModeEntry, Funcs: []tracefile.Func{{Name: "a", Module: -1}}, Changes: []tracefile.Change{c}}); err == nil {
			t.Errorf("Close accepted change %+v", c)
		}
	}
}

// TestChangesRoundTrip: the changes made while attached come back.
func TestChangesRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	w, _ := tracefile.NewWriter(&buf)
	at := time.Date(2026, 11, 30, 6, 0, 0, 0, time.UTC)
	ch := []tracefile.Change{{Time: at, TSC: 42, Op: "enable", Globs: []string{"b*"}, Funcs: []uint32{1}}, {Time: at.Add(time.Second), TSC: 43, Op: "disable", Globs: []string{"a"}, Funcs: []uint32{0}}}
	if err := w.Close(tracefile.Meta{Mode: tracefile.ModeEntry, Funcs: []tracefile.Func{{Name: "a", Module: -1}, {Name: "b", Module: -1}}, Changes: ch}); err != nil {
		t.Fatal(err)
	}
	rec, err := tracefile.ReadFrom(bytes.NewReader(buf.Bytes()), int64(buf.Len()))
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(ch, rec.Changes); d != "" {
		t.Errorf("changes (-want +got):\n%s", d)
	}
}

// smallFile is a recording with a checkpoint, a flushed block, and more
// events after it, for the truncation and corruption tests.
func smallFile(t testing.TB) ([]byte, *tracefile.Recording) {
	t.Helper()
	b := tracefiletest.New(tracefile.ModeGraph)
	th := b.Thread(7, "main", 0)
	th.Enter("a").Advance(10).Call("b", 5).Advance(3)
	th.Exit()
	rec := b.Recording()
	var buf bytes.Buffer
	w, err := tracefile.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Checkpoint(rec.Meta); err != nil {
		t.Fatal(err)
	}
	if err := w.WriteEvents(rec.Events[:2]); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := w.WriteEvents(rec.Events[2:]); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(rec.Meta); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), rec
}

func TestTruncatedEveryOffset(t *testing.T) {
	data, want := smallFile(t)
	got, err := readBytes(data)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got, cmpopts.EquateEmpty()); diff != "" {
		t.Fatalf("full file (-want +got):\n%s", diff)
	}
	recovered := 0
	for n := 0; n < len(data); n++ {
		_, err := readBytes(data[:n])
		if !errors.Is(err, tracefile.ErrTruncated) {
			t.Fatalf("prefix of %d bytes: err = %v, want ErrTruncated", n, err)
		}
		rec, err := tracefile.RecoverFrom(bytes.NewReader(data[:n]), int64(n))
		if err != nil {
			if !errors.Is(err, tracefile.ErrTruncated) {
				t.Fatalf("recover prefix of %d bytes: err = %v, want ErrTruncated", n, err)
			}
			continue
		}
		recovered++
		if !rec.Recovered {
			t.Fatalf("recover prefix of %d bytes: Recovered not set", n)
		}
		if len(rec.Events) > len(want.Events) {
			t.Fatalf("recover prefix of %d bytes: %d events", n, len(rec.Events))
		}
		if diff := cmp.Diff(want.Events[:len(rec.Events)], rec.Events, cmpopts.EquateEmpty()); diff != "" {
			t.Fatalf("recover prefix of %d bytes (-want +got):\n%s", n, diff)
		}
	}
	if recovered == 0 {
		t.Error("no prefix could be recovered")
	}
	// The prefix holding the checkpoint and the first block recovers both.
	rec, err := tracefile.RecoverFrom(bytes.NewReader(data[:len(data)-1]), int64(len(data)-1))
	if err != nil || len(rec.Events) < 2 {
		t.Errorf("recover without the last byte: %v events, err %v", rec, err)
	}
	// A finished file recovers as itself.
	rec, err = tracefile.RecoverFrom(bytes.NewReader(data), int64(len(data)))
	if err != nil || rec.Recovered || len(rec.Events) != len(want.Events) {
		t.Errorf("recover a finished file: %+v, %v", rec, err)
	}
}

func TestCorruptEveryByte(t *testing.T) {
	data, _ := smallFile(t)
	bad := make([]byte, len(data))
	for i := range data {
		for _, x := range []byte{0x01, 0x80, 0xff} {
			copy(bad, data)
			bad[i] ^= x
			_, err := readBytes(bad)
			if err == nil {
				t.Fatalf("byte %d ^ %#x: no error", i, x)
			}
			if !errors.Is(err, tracefile.ErrCorrupt) && !errors.Is(err, tracefile.ErrTruncated) &&
				!errors.Is(err, tracefile.ErrNotRecording) && !errors.Is(err, tracefile.ErrUnsupportedVersion) {
				t.Fatalf("byte %d ^ %#x: untyped error %v", i, x, err)
			}
			// Recovery must not panic either.
			tracefile.RecoverFrom(bytes.NewReader(bad), int64(len(bad)))
		}
	}
}

func TestErrors(t *testing.T) {
	data, _ := smallFile(t)
	for _, tc := range []struct {
		name string
		data []byte
		want error
		msg  string
	}{
		{"text", []byte("hello, world, this is not a recording at all, clearly not"), tracefile.ErrNotRecording, "not a livetrace recording"},
		{"elf", []byte("\x7fELF\x02\x01\x01"), tracefile.ErrNotRecording, ""},
		{"empty", nil, tracefile.ErrTruncated, "truncated recording"},
		{"magic only", []byte("LVTRACE\x00"), tracefile.ErrTruncated, ""},
		{"version 3", func() []byte {
			d := bytes.Clone(data)
			binary.LittleEndian.PutUint16(d[8:], 3)
			return d
		}(), tracefile.ErrUnsupportedVersion, "unsupported version 3: "},
		{"bad trailer crc", func() []byte {
			d := bytes.Clone(data)
			d[len(d)-40] ^= 1
			return d
		}(), tracefile.ErrCorrupt, "corrupt recording: trailer checksum"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := readBytes(tc.data)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if !strings.HasPrefix(err.Error(), tc.msg) {
				t.Errorf("err = %q, want prefix %q", err, tc.msg)
			}
			var ve *tracefile.VersionError
			if errors.As(err, &ve) && ve.Version != 3 {
				t.Errorf("VersionError.Version = %d", ve.Version)
			}
		})
	}
}

// hostileBlock returns a file whose one event block claims count events in
// raw bytes, with a valid checksum.
func hostileBlock(codec byte, count, raw uint32, payload []byte) []byte {
	var b []byte
	b = append(b, "LVTRACE\x00"...)
	b = binary.LittleEndian.AppendUint16(b, 1)
	b = binary.LittleEndian.AppendUint16(b, 16)
	b = binary.LittleEndian.AppendUint32(b, 0)
	hdr := []byte("EVNT")
	hdr = append(hdr, codec, 0, 0, 0)
	hdr = binary.LittleEndian.AppendUint32(hdr, count)
	hdr = binary.LittleEndian.AppendUint32(hdr, raw)
	hdr = binary.LittleEndian.AppendUint32(hdr, uint32(len(payload)))
	hdr = binary.LittleEndian.AppendUint32(hdr, 0)
	return append(append(b, hdr...), payload...)
}

// TestSmallFileSmallAlloc checks that a tiny file claiming huge blocks makes
// the reader allocate little.
func TestSmallFileSmallAlloc(t *testing.T) {
	files := [][]byte{
		hostileBlock(1, 1<<20, 16<<20, bytes.Repeat([]byte{0x28}, 60)),
		hostileBlock(0, 1<<20, 16<<20, bytes.Repeat([]byte{0x28}, 60)),
		hostileBlock(1, math.MaxUint32, math.MaxUint32, nil),
	}
	for i, f := range files {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		for range 10 {
			readBytes(f)
			tracefile.RecoverFrom(bytes.NewReader(f), int64(len(f)))
		}
		runtime.ReadMemStats(&after)
		if d := after.TotalAlloc - before.TotalAlloc; d > 4<<20 {
			t.Errorf("file %d (%d bytes): allocated %d bytes", i, len(f), d)
		}
	}
}

func TestClockNanos(t *testing.T) {
	c := tracefile.Clock{TSC0: 1000, Mono0: 5000, TSC1: 4000, Mono1: 6000}
	for _, tc := range []struct {
		tsc  uint64
		want int64
	}{{1000, 5000}, {4000, 6000}, {2500, 5500}, {7000, 7000}, {100, 4700}, {0, 4667}} {
		if got := c.Nanos(tc.tsc); got != tc.want {
			t.Errorf("Nanos(%d) = %d, want %d", tc.tsc, got, tc.want)
		}
	}
	// No end pair: TSCHz.
	c = tracefile.Clock{TSC0: 1000, Mono0: 5000, TSCHz: 2e9}
	if got := c.Nanos(3000); got != 6000 {
		t.Errorf("Nanos with TSCHz = %d, want 6000", got)
	}
	// Nothing: one tick a nanosecond.
	c = tracefile.Clock{TSC0: 1000, Mono0: 5000}
	if got := c.Nanos(1500); got != 5500 {
		t.Errorf("Nanos without calibration = %d, want 5500", got)
	}
	// Hostile values saturate instead of overflowing or panicking.
	c = tracefile.Clock{TSC0: 0, Mono0: math.MaxUint64, TSC1: 1, Mono1: math.MaxUint64}
	if got := c.Nanos(math.MaxUint64); got != math.MaxInt64 {
		t.Errorf("Nanos saturates to %d", got)
	}
	c = tracefile.Clock{TSC0: math.MaxUint64, Mono0: 0, TSC1: math.MaxUint64, TSCHz: 1}
	if got := c.Nanos(0); got != -math.MaxInt64 {
		t.Errorf("Nanos saturates to %d", got)
	}
}

func TestModeText(t *testing.T) {
	for _, m := range []tracefile.Mode{tracefile.ModeEntry, tracefile.ModeGraph} {
		b, err := m.MarshalText()
		if err != nil {
			t.Fatal(err)
		}
		var got tracefile.Mode
		if err := got.UnmarshalText(b); err != nil || got != m {
			t.Errorf("mode %v: round trip %v, %v", m, got, err)
		}
	}
	if _, err := tracefile.Mode(9).MarshalText(); err == nil {
		t.Error("mode 9 marshals")
	}
}

// TestConcurrentWriters writes from several goroutines at once, as a
// consumer with one goroutine per CPU might.
func TestConcurrentWriters(t *testing.T) {
	var buf bytes.Buffer
	w, err := tracefile.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	const n, per = 4, 20000
	done := make(chan error, n)
	for g := 0; g < n; g++ {
		go func(tid uint32) {
			evs := make([]tracefile.Event, 100)
			for i := 0; i < per; i += len(evs) {
				for j := range evs {
					evs[j] = tracefile.Event{TSC: uint64(i + j), TID: tid, Kind: tracefile.KindEntry}
				}
				if err := w.WriteEvents(evs); err != nil {
					done <- err
					return
				}
			}
			done <- nil
		}(uint32(g + 1))
	}
	for g := 0; g < n; g++ {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(tracefile.Meta{Mode: tracefile.ModeEntry, Funcs: []tracefile.Func{{Name: "f", Module: -1}}}); err != nil {
		t.Fatal(err)
	}
	rec, err := readBytes(buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	next := map[uint32]uint64{}
	for _, ev := range rec.Events {
		if ev.TSC != next[ev.TID] {
			t.Fatalf("thread %d: event at %d, want %d", ev.TID, ev.TSC, next[ev.TID])
		}
		next[ev.TID]++
	}
	if len(rec.Events) != n*per {
		t.Errorf("%d events, want %d", len(rec.Events), n*per)
	}
}
