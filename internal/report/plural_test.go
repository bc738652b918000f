package report_test

import (
	"bytes"
	"strings"
	"testing"

	"github.com/livetrace/livetrace/internal/report"
	"github.com/livetrace/livetrace/internal/tracefile"
	"github.com/livetrace/livetrace/internal/tracefile/tracefiletest"
)

// TestOneIsSingular checks that counts of one read "1 event", "1 call".
func TestOneIsSingular(t *testing.T) {
	b := tracefiletest.New(tracefile.ModeGraph)
	b.Thread(1, "main", 0).Enter("a").Advance(10).Lose(1).Exit().Call("b", 10)
	rec := b.Recording()
	var out bytes.Buffer
	if err := report.Replay(&out, rec, report.Filter{}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "# lost 1 event (1 in thread 1)") {
		t.Errorf("replay:\n%s", out.String())
	}
	e := tracefiletest.New(tracefile.ModeEntry)
	e.Thread(1, "main", 0).Call("once", 10)
	out.Reset()
	if err := report.ExportFlameGraph(&out, e.Recording(), report.Filter{}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "once: 1 call (") || strings.Contains(out.String(), "1 calls") {
		t.Errorf("flame graph: %s", out.String())
	}
}
