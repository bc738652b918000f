package report

import (
	"fmt"
	"io"

	"github.com/livetrace/livetrace/internal/tracefile"
)

// ExportFormats are the formats [Export] writes, with the file name the
// CLI writes each to by default.
var ExportFormats = []struct{ Name, DefaultFile string }{
	{"chrome", "livetrace.json"},
	{"folded", "livetrace.folded"},
	{"pprof", "livetrace.pb.gz"},
	{"flamegraph", "livetrace.html"},
	{"perfetto", "livetrace.perfetto-trace"},
}

// Export writes rec in format: "chrome" ([ExportChrome]), "perfetto"
// ([ExportPerfettoStream]), "folded" ([ExportFolded]), "pprof"
// ([ExportPprof]) or "flamegraph" ([ExportFlameGraph]).
func Export(w io.Writer, rec *tracefile.Recording, format string, f Filter) error {
	return ExportStream(w, rec.Stream(tracefile.StreamOptions{}), format, f)
}

// ExportStream is [Export] of a stream: the exports read it once or twice
// and hold no events (see [ExportChromeStream]).
func ExportStream(w io.Writer, s *tracefile.Stream, format string, f Filter) error {
	switch format {
	case "chrome":
		return ExportChromeStream(w, s, f)
	case "folded":
		return ExportFoldedStream(w, s, f)
	case "pprof":
		return ExportPprofStream(w, s, f)
	case "flamegraph":
		return ExportFlameGraphStream(w, s, f)
	case "perfetto":
		return ExportPerfettoStream(w, s, f)
	}
	return fmt.Errorf("export: unknown format %q: use chrome, perfetto, folded, pprof or flamegraph", format)
}
