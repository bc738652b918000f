package report

import (
	"errors"
	"io"

	"github.com/livetrace/livetrace/internal/tracefile"
)

func ExportPerfettoStream(w io.Writer, s *tracefile.Stream, f Filter) error {
	return errors.New("todo")
}
