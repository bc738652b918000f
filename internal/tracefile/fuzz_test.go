package tracefile_test

import (
	"bytes"
	"errors"
	"slices"
	"testing"

	"github.com/livetrace/livetrace/internal/tracefile"
	"github.com/livetrace/livetrace/internal/tracefile/tracefiletest"
)

// FuzzRead feeds arbitrary bytes to the strict and the recovering reader:
// no input may panic, every error must be typed, and every recording
// returned must be consistent.
func FuzzRead(f *testing.F) {
	small, _ := smallFile(f)
	f.Add(small)
	f.Add(small[:len(small)-7])
	f.Add(encode(f, tracefiletest.Scenario(tracefile.ModeEntry)))
	f.Add(encode(f, tracefiletest.Scenario(tracefile.ModeGraph)))
	f.Add([]byte("LVTRACE\x00\x01\x00\x10\x00\x00\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, recover := range []bool{false, true} {
			read := tracefile.ReadFrom
			if recover {
				read = tracefile.RecoverFrom
			}
			rec, err := read(bytes.NewReader(data), int64(len(data)))
			if err != nil {
				if !errors.Is(err, tracefile.ErrCorrupt) && !errors.Is(err, tracefile.ErrTruncated) &&
					!errors.Is(err, tracefile.ErrNotRecording) && !errors.Is(err, tracefile.ErrUnsupportedVersion) {
					t.Fatalf("untyped error: %v", err)
				}
				continue
			}
			checkRecording(t, rec)
		}
	})
}

// checkRecording checks the promises Read makes about a recording.
func checkRecording(t *testing.T, rec *tracefile.Recording) {
	t.Helper()
	if rec.Mode != tracefile.ModeEntry && rec.Mode != tracefile.ModeGraph {
		t.Fatalf("mode %d", rec.Mode)
	}
	for _, ev := range rec.Events {
		if int(ev.Func) >= len(rec.Funcs) {
			t.Fatalf("event refers to function %d of %d", ev.Func, len(rec.Funcs))
		}
		if ev.Kind != tracefile.KindEntry && ev.Kind != tracefile.KindExit {
			t.Fatalf("event kind %d", ev.Kind)
		}
	}
	for _, f := range rec.Funcs {
		if f.Module < -1 || f.Module >= len(rec.Modules) {
			t.Fatalf("function in module %d of %d", f.Module, len(rec.Modules))
		}
	}
	for _, s := range rec.Symbols {
		if s.Module < -1 || s.Module >= len(rec.Modules) {
			t.Fatalf("symbol in module %d of %d", s.Module, len(rec.Modules))
		}
	}
	if !slices.IsSortedFunc(rec.Events, tracefile.CompareEvents) {
		t.Fatal("events not sorted")
	}
}
