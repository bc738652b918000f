package report_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"math/rand"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/livetrace/livetrace/internal/report"
	"github.com/livetrace/livetrace/internal/tracefile"
	"github.com/livetrace/livetrace/internal/tracefile/tracefiletest"
)

// pfField is one decoded protobuf field: a varint or bytes.
type pfField struct {
	num protowire.Number
	v   uint64
	b   []byte
}

// pfFields decodes one protobuf message into its fields.
func pfFields(t *testing.T, b []byte) []pfField {
	t.Helper()
	var out []pfField
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			t.Fatalf("bad tag: %v", protowire.ParseError(n))
		}
		b = b[n:]
		f := pfField{num: num}
		switch typ {
		case protowire.VarintType:
			f.v, n = protowire.ConsumeVarint(b)
		case protowire.BytesType:
			f.b, n = protowire.ConsumeBytes(b)
		default:
			t.Fatalf("field %d: unexpected wire type %d", num, typ)
		}
		if n < 0 {
			t.Fatalf("field %d: %v", num, protowire.ParseError(n))
		}
		b = b[n:]
		out = append(out, f)
	}
	return out
}

// pfSlice is a slice or instant rebuilt from a Perfetto trace.
type pfSlice struct {
	Name       string
	TID        uint32
	StartNS    int64
	DurNS      int64 // -1 for an instant
	Depth      int
	Annotation string
}

// decodePerfetto walks a Perfetto trace as trace_processor would: it
// checks the sequence flags and interning, and nests the slices of each
// thread track.
func decodePerfetto(t *testing.T, data []byte) []pfSlice {
	t.Helper()
	names := map[uint64]string{}
	annots := map[uint64]string{}
	values := map[uint64]string{}
	tracks := map[uint64]uint32{} // uuid -> tid
	open := map[uint64][]int{}    // uuid -> stack of indexes into out
	var out []pfSlice
	for i, pkt := range pfFields(t, data) {
		if pkt.num != 1 {
			t.Fatalf("Trace field %d, want only packets (1)", pkt.num)
		}
		var (
			ts       uint64
			seq, flg uint64
			te       []byte
		)
		for _, f := range pfFields(t, pkt.b) {
			switch f.num {
			case 8:
				ts = f.v
			case 10:
				seq = f.v
			case 13:
				flg = f.v
			case 12:
				for _, d := range pfFields(t, f.b) {
					var iid uint64
					var name string
					for _, g := range pfFields(t, d.b) {
						if g.num == 1 {
							iid = g.v
						} else if g.num == 2 {
							name = string(g.b)
						}
					}
					switch d.num {
					case 2:
						names[iid] = name
					case 3:
						annots[iid] = name
					case 29:
						values[iid] = name
					}
				}
			case 60:
				var uuid uint64
				var tid uint32
				thread := false
				for _, g := range pfFields(t, f.b) {
					switch g.num {
					case 1:
						uuid = g.v
					case 4:
						thread = true
						for _, h := range pfFields(t, g.b) {
							if h.num == 2 {
								tid = uint32(h.v)
							}
						}
					}
				}
				if thread {
					tracks[uuid] = tid
				}
			case 11:
				te = f.b
			}
		}
		if seq == 0 {
			t.Fatalf("packet %d without trusted_packet_sequence_id", i)
		}
		if i == 0 && flg != 1 {
			t.Fatalf("first packet: sequence_flags %d, want SEQ_INCREMENTAL_STATE_CLEARED", flg)
		}
		if te == nil {
			continue
		}
		if flg != 2 {
			t.Fatalf("packet %d: sequence_flags %d, want SEQ_NEEDS_INCREMENTAL_STATE", i, flg)
		}
		var typ, track, nameIID uint64
		var annot string
		for _, g := range pfFields(t, te) {
			switch g.num {
			case 9:
				typ = g.v
			case 11:
				track = g.v
			case 10:
				nameIID = g.v
				if _, ok := names[nameIID]; !ok {
					t.Fatalf("packet %d: name_iid %d not interned before", i, nameIID)
				}
			case 4:
				var k uint64
				var v string
				for _, h := range pfFields(t, g.b) {
					switch h.num {
					case 1:
						k = h.v
					case 6:
						v = string(h.b)
					case 17:
						var ok bool
						if v, ok = values[h.v]; !ok {
							t.Fatalf("packet %d: string_value_iid %d not interned before", i, h.v)
						}
					}
				}
				if annot != "" {
					annot += ","
				}
				annot += annots[k] + "=" + v
			}
		}
		tid, ok := tracks[track]
		if !ok {
			t.Fatalf("packet %d: track %d not described before", i, track)
		}
		switch typ {
		case 1:
			out = append(out, pfSlice{Name: names[nameIID], TID: tid, StartNS: int64(ts), Depth: len(open[track]), Annotation: annot})
			open[track] = append(open[track], len(out)-1)
		case 2:
			st := open[track]
			if len(st) == 0 {
				t.Fatalf("packet %d: slice end without a begin", i)
			}
			s := &out[st[len(st)-1]]
			s.DurNS = int64(ts) - s.StartNS
			if annot != "" {
				// trace_processor adds the end's args to the slice.
				if s.Annotation != "" {
					s.Annotation += ","
				}
				s.Annotation += annot
			}
			if s.DurNS < 0 {
				t.Fatalf("packet %d: slice %s ends before it begins", i, s.Name)
			}
			open[track] = st[:len(st)-1]
		case 3:
			out = append(out, pfSlice{Name: names[nameIID], TID: tid, StartNS: int64(ts), DurNS: -1, Depth: len(open[track]), Annotation: annot})
		default:
			t.Fatalf("packet %d: event type %d", i, typ)
		}
	}
	for uuid, st := range open {
		if len(st) > 0 {
			t.Errorf("track %d: %d slices never end", uuid, len(st))
		}
	}
	return out
}

// TestExportPerfetto decodes the Perfetto export of the test scenario and
// checks that it holds the calls of the Chrome export: same names,
// threads, start times, durations and marks, nested by time; and that it
// is much smaller.
func TestExportPerfetto(t *testing.T) {
	for _, mode := range []tracefile.Mode{tracefile.ModeGraph, tracefile.ModeEntry} {
		t.Run(mode.String(), func(t *testing.T) {
			rec := tracefiletest.Scenario(mode).Recording()
			filters := []report.Filter{{}, {TIDs: []uint32{101}}}
			if mode == tracefile.ModeGraph {
				filters = append(filters, report.Filter{MinDuration: 20 * time.Microsecond, MaxDepth: 2})
			}
			for _, fl := range filters {
				pb, js := checkPerfettoAsChrome(t, rec, fl)
				t.Logf("%s %+v: perfetto %d bytes, chrome JSON %d bytes (%.1f%%)", mode, fl, pb, js, 100*float64(pb)/float64(js))
				// The small scenario has a large share of descriptors and
				// names; a big recording's ratio is in the benchmark.
				if pb*5 > js*3 {
					t.Errorf("perfetto trace is %d bytes, more than 60%% of the JSON's %d", pb, js)
				}
			}
		})
	}
}

// TestExportPerfettoLossy exports random call trees of several threads
// with lost events (exits lost, orphan exits, calls still running at the
// end) and checks them against the Chrome export, with and without
// filters.
func TestExportPerfettoLossy(t *testing.T) {
	rng := rand.New(rand.NewSource(7))
	for round := 0; round < 20; round++ {
		b := tracefiletest.New(tracefile.ModeGraph)
		ths := []*tracefiletest.Thread{b.Thread(11, "a", 0), b.Thread(12, "b", 100), b.Thread(13, "c", 300)}
		for i := 0; i < 300; i++ {
			th := ths[rng.Intn(len(ths))]
			switch r := rng.Intn(10); {
			case r < 4 && th.Depth() < 6:
				th.Enter(fmt.Sprintf("f%d", rng.Intn(8)))
			case r < 8 && th.Depth() > 0:
				th.Exit()
			case r == 8:
				th.Lose(1 + rng.Intn(3))
			case r == 9:
				th.OrphanExit(fmt.Sprintf("f%d", rng.Intn(8)), rng.Intn(4))
			}
			th.Advance(int64(1 + rng.Intn(50)))
		}
		rec := b.Recording()
		if len(rec.Events) == 0 {
			continue
		}
		for _, fl := range []report.Filter{{}, {TIDs: []uint32{12, 13}}, {MaxDepth: 3}} {
			checkPerfettoAsChrome(t, rec, fl)
		}
	}
}

// checkPerfettoAsChrome checks that the Perfetto export of rec holds the
// calls of its Chrome export: same names, threads, start times, durations
// and marks, nested by time. It returns the sizes of both.
func checkPerfettoAsChrome(t *testing.T, rec *tracefile.Recording, fl report.Filter) (int, int) {
	t.Helper()
	var pb, js bytes.Buffer
	if err := report.Export(&pb, rec, "perfetto", fl); err != nil {
		t.Fatal(err)
	}
	if err := report.ExportChrome(&js, rec, fl); err != nil {
		t.Fatal(err)
	}
	got := decodePerfetto(t, pb.Bytes())
	var chrome struct {
		TraceEvents []struct {
			Name string
			Ph   string
			TS   float64
			Dur  float64
			TID  uint32
			Args map[string]any
		}
	}
	if err := json.Unmarshal(js.Bytes(), &chrome); err != nil {
		t.Fatal(err)
	}
	first := rec.Clock.Nanos(rec.Events[0].TSC)
	var want []pfSlice
	for _, e := range chrome.TraceEvents {
		s := pfSlice{Name: e.Name, TID: e.TID, StartNS: first + int64(math.Round(e.TS*1e3)), DurNS: int64(math.Round(e.Dur * 1e3))}
		switch e.Ph {
		case "X":
			if e.Args["exit_lost"] == true {
				s.Annotation = "status=exit lost"
			}
			if e.Args["unfinished"] == true {
				s.Annotation = "status=unfinished"
			}
		case "i":
			s.DurNS = -1
			s.Annotation = fmt.Sprint("caller=", e.Args["caller"])
		default:
			continue
		}
		want = append(want, s)
	}
	// Depth: the slices open on the thread at its start.
	for i := range want {
		for j := range want[:i] {
			a, b := &want[j], &want[i]
			// (A slice that ends where an empty one starts ended
			// before, closed by the event that began it, unless both
			// still ran at the end.)
			if a.TID == b.TID && a.DurNS >= 0 && b.DurNS >= 0 && a.StartNS <= b.StartNS && b.StartNS+b.DurNS <= a.StartNS+a.DurNS &&
				(b.StartNS < a.StartNS+a.DurNS || a.DurNS == 0 || a.Annotation == "status=unfinished") {
				b.Depth++
			}
		}
	}
	if len(want) == 0 {
		t.Fatal("the chrome export has no events")
	}
	if !slices.Equal(got, want) {
		i := 0
		for i < min(len(got), len(want)) && got[i] == want[i] {
			i++
		}
		g, w := "none", "none"
		if i < len(got) {
			g = fmt.Sprintf("%+v", got[i])
		}
		if i < len(want) {
			w = fmt.Sprintf("%+v", want[i])
		}
		t.Fatalf("filter %+v: %d perfetto slices, %d in the chrome export; slice %d is\n%s\nwant\n%s", fl, len(got), len(want), i, g, w)
	}
	return pb.Len(), js.Len()
}

// TestExportPerfettoLarge exports enough calls, on threads that take
// turns, to fill the output buffer many times over, and checks every slice
// against the calls made.
func TestExportPerfettoLarge(t *testing.T) {
	b := tracefiletest.New(tracefile.ModeGraph)
	ths := []*tracefiletest.Thread{b.Thread(11, "a", 1000), b.Thread(12, "b", 1500), b.Thread(13, "c", 1700)}
	const rounds = 20000
	for i := 0; i < rounds; i++ {
		th := ths[i%len(ths)]
		th.Enter("outer").Advance(3)
		th.Call(fmt.Sprintf("leaf%d", i%300), int64(1+i%7)) // 300 names: interning
		th.Exit().Advance(int64(1 + i%5))
	}
	var pb bytes.Buffer
	if err := report.Export(&pb, b.Recording(), "perfetto", report.Filter{}); err != nil {
		t.Fatal(err)
	}
	if pb.Len() < 1<<20 {
		t.Fatalf("export of %d calls is %d bytes: too small to test several output buffers", 2*rounds, pb.Len())
	}
	got := decodePerfetto(t, pb.Bytes())
	if len(got) != 2*rounds {
		t.Fatalf("%d slices, want %d", len(got), 2*rounds)
	}
	seen := map[uint32]int{}
	for _, s := range got {
		switch {
		case s.Depth == 0 && s.Name == "outer":
		case s.Depth == 1:
			i := seen[s.TID]*len(ths) + int(s.TID-11)
			if want := fmt.Sprintf("leaf%d", i%300); s.Name != want || s.DurNS != int64(1+i%7) {
				t.Fatalf("call %d: slice %+v, want %s of %d ns", i, s, want, 1+i%7)
			}
			seen[s.TID]++
		default:
			t.Fatalf("unexpected slice %+v", s)
		}
	}
}

// failWriter fails every write after the first n bytes.
type failWriter struct{ n int }

func (w *failWriter) Write(b []byte) (int, error) {
	if len(b) > w.n {
		return 0, fmt.Errorf("disk full")
	}
	w.n -= len(b)
	return len(b), nil
}

// TestExportPerfettoWriteError checks that a failed write is reported.
func TestExportPerfettoWriteError(t *testing.T) {
	b := tracefiletest.New(tracefile.ModeGraph)
	th := b.Thread(11, "a", 1000)
	for i := 0; i < 50000; i++ {
		th.Call("f", 2).Advance(1)
	}
	err := report.Export(&failWriter{n: 1 << 10}, b.Recording(), "perfetto", report.Filter{})
	if err == nil || !strings.Contains(err.Error(), "write perfetto trace: disk full") {
		t.Fatalf("export to a failing writer: %v, want the write error", err)
	}
}
