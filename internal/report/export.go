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
}

// Export writes rec in format: "chrome" ([ExportChrome]), "folded"
// ([ExportFolded]), "pprof" ([ExportPprof]) or "flamegraph"
// ([ExportFlameGraph]).
func Export(w io.Writer, rec *tracefile.Recording, format string, f Filter) error {
	switch format {
	case "chrome":
		return ExportChrome(w, rec, f)
	case "folded":
		return ExportFolded(w, rec, f)
	case "pprof":
		return ExportPprof(w, rec, f)
	case "flamegraph":
		return ExportFlameGraph(w, rec, f)
	}
	return fmt.Errorf("export: unknown format %q: use chrome, folded, pprof or flamegraph", format)
}
