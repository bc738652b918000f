package report_test

import (
	"io"
	"os"
	"testing"

	"github.com/livetrace/livetrace/internal/report"
	"github.com/livetrace/livetrace/internal/tracefile"
)

func TestZZProf(t *testing.T) {
	path := os.Getenv("ZZREC")
	if path == "" {
		t.Skip()
	}
	s, err := tracefile.OpenStream(path, tracefile.StreamOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	switch os.Getenv("ZZWHAT") {
	case "perfetto":
		err = report.ExportStream(io.Discard, s, "perfetto", report.Filter{})
	default:
		err = report.ReportStream(io.Discard, s, report.ReportOptions{})
	}
	if err != nil {
		t.Fatal(err)
	}
}
