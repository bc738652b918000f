package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/term"

	"github.com/livetrace/livetrace/internal/report"
	"github.com/livetrace/livetrace/internal/tracefile"
)

// defaultRecording is the file the readers read and record writes by
// default.
const defaultRecording = "livetrace.data"

// inputOptions are the flags of every command that reads a recording.
type inputOptions struct {
	file    string
	recover bool
	modules []string
	stdin   io.Reader
}

func (o *inputOptions) addFlags(fs *pflag.FlagSet) {
	fs.StringVarP(&o.file, "input", "i", defaultRecording, "read the recording `FILE` (- for stdin; or give FILE as the argument)")
	fs.BoolVar(&o.recover, "recover", false, "read what can be read of a recording the tracer did not finish")
}

// addModuleFlag adds -m, for the readers that show functions.
func (o *inputOptions) addModuleFlag(fs *pflag.FlagSet) {
	fs.StringArrayVarP(&o.modules, "module", "m", nil, "show only functions of modules whose path or file name matches `GLOB`, or whose file name extends it as a soname (libfoo.so.1 for libfoo.so.1.2.3; repeatable)")
}

// inputArgs is the Args check of the readers: at most one argument, the
// recording, which stands for -i.
func (o *inputOptions) inputArgs(cmd *cobra.Command, args []string) error {
	switch {
	case len(args) > 1:
		return fmt.Errorf("%s: give one recording, not %d (usage: %s)", cmd.Name(), len(args), cmd.UseLine())
	case len(args) == 1 && cmd.Flags().Changed("input") && args[0] != o.file:
		return fmt.Errorf("%s: give the recording either as -i %s or as %s, not both", cmd.Name(), o.file, args[0])
	case len(args) == 1:
		o.file = args[0]
	}
	if o.file == "" {
		return fmt.Errorf("%s: -i needs a file name (or - for standard input)", cmd.Name())
	}
	return nil
}

// open opens the recording for streaming, with errors that say what to
// do. The readers hold no events: their memory does not grow with the
// recording (see package tracefile's Stream).
//
// -i - reads standard input. The metadata that names the functions is at
// the end of a recording, and the readers merge the threads' event blocks
// in time order with the block index, also at the end: a stream cannot be
// read in one pass. So standard input is copied to an unlinked temporary
// file first, and read from there like any recording.
func (o *inputOptions) open() (*tracefile.Stream, error) {
	if o.file == "-" {
		in := o.stdin
		if in == nil {
			in = os.Stdin
		}
		return o.openPipe(in, "standard input")
	}
	return o.openFile(o.file, o.file)
}

// recordingMagic returns the first bytes of every recording.
func recordingMagic() []byte {
	var b bytes.Buffer
	_, _ = tracefile.NewWriter(&b)
	return b.Bytes()[:8]
}

// openPipe copies in, named name, to a temporary file and opens that.
func (o *inputOptions) openPipe(in io.Reader, name string) (*tracefile.Stream, error) {
	if f, ok := in.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		return nil, fmt.Errorf("read %s: it is a terminal: pipe a recording in (livetrace record -o - ... | livetrace replay -i -), or give a file", name)
	}
	// Check the magic first: what is not a recording (say /dev/zero) is
	// not copied.
	magic := recordingMagic()
	head := make([]byte, len(magic))
	if n, err := io.ReadFull(in, head); err != nil || !bytes.Equal(head, magic) {
		if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("read %s: %w", name, err)
		}
		return nil, fmt.Errorf("read %s: %w (its first %d bytes are not a recording's)", name, tracefile.ErrNotRecording, n)
	}
	in = io.MultiReader(bytes.NewReader(head), in)
	// CreateTemp makes the file with O_EXCL and mode 0600.
	tmp, err := os.CreateTemp("", "livetrace-input-*.data")
	if err != nil {
		return nil, fmt.Errorf("read %s: %w: set TMPDIR to a writable directory", name, err)
	}
	defer tmp.Close()
	defer os.Remove(tmp.Name()) // the stream keeps its own descriptor
	if _, err := io.Copy(tmp, in); err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	if err := tmp.Close(); err != nil {
		return nil, fmt.Errorf("read %s: copy to %s: %w", name, tmp.Name(), err)
	}
	return o.openFile(tmp.Name(), name)
}

// openFile opens the recording at path, named name in messages.
func (o *inputOptions) openFile(path, name string) (*tracefile.Stream, error) {
	s, err := tracefile.OpenStream(path, tracefile.StreamOptions{Recover: o.recover})
	switch {
	case err == nil:
		return s, nil
	case errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("open %s: no such file: record one with `livetrace record -p PID`", name)
	case errors.Is(err, tracefile.ErrTruncated) && !o.recover:
		// Suggest --recover only when it reads something.
		if r, rerr := tracefile.OpenStream(path, tracefile.StreamOptions{Recover: true}); rerr == nil {
			r.Close()
			return nil, fmt.Errorf("read %s: %w: rerun with --recover to read its complete blocks (%s)", name, err, plural(int(r.Total), "event"))
		}
		return nil, fmt.Errorf("read %s: %w; it holds no intact metadata, so --recover cannot read it either", name, err)
	case errors.Is(err, tracefile.ErrNotRecording), errors.Is(err, tracefile.ErrCorrupt),
		errors.Is(err, tracefile.ErrTruncated), errors.Is(err, tracefile.ErrUnsupportedVersion):
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	var pe *fs.PathError
	if errors.As(err, &pe) && path == name {
		return nil, err // "open FILE: permission denied"
	}
	return nil, fmt.Errorf("read %s: %w", name, err)
}

// readErr words an error met while reading the events.
func (o *inputOptions) readErr(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, tracefile.ErrCorrupt) || errors.Is(err, tracefile.ErrTruncated) {
		name := o.file
		if name == "-" {
			name = "standard input"
		}
		return fmt.Errorf("read %s: %w", name, err)
	}
	return err
}

// filterOptions are the flags that select calls (-D, -t, --tid).
type filterOptions struct {
	depth  int
	minDur time.Duration
	tids   []uint
	since  time.Duration
	until  time.Duration
}

func (o *filterOptions) addFlags(fs *pflag.FlagSet) {
	fs.IntVarP(&o.depth, "depth", "D", 0, "show calls at depth < `N` only (graph mode; 0 = all)")
	fs.DurationVarP(&o.minDur, "time-filter", "t", 0, "show calls that took at least `DURATION` (graph mode; e.g. 10us, 1.5ms)")
	fs.UintSliceVar(&o.tids, "tid", nil, "show thread `TID` only (repeat or separate with commas)")
	fs.DurationVar(&o.since, "since", 0, "read the events from `DURATION` after the first event on (e.g. 1.5s)")
	fs.DurationVar(&o.until, "until", 0, "read the events up to `DURATION` after the first event (0 = to the end)")
}

// load checks the filter flags, opens the recording (narrowed to
// --since/--until), and returns it with the filter to apply (see
// filterFor). The caller closes the stream.
func load(in *inputOptions, fo *filterOptions) (*tracefile.Stream, report.Filter, error) {
	if _, err := fo.filter(); err != nil {
		return nil, report.Filter{}, err
	}
	s, err := in.open()
	if err != nil {
		return nil, report.Filter{}, err
	}
	if fo.since != 0 || fo.until != 0 {
		s.SetTimeRange(fo.since, fo.until)
	}
	f, err := fo.filterFor(&s.Meta)
	if err == nil && len(in.modules) > 0 {
		f.Funcs, err = report.ModuleFuncs(&s.Meta, in.modules)
	}
	if err != nil {
		s.Close()
		return nil, report.Filter{}, err
	}
	return s, f, nil
}

// filterFor is filter() with the filters given at record time (stored in
// the recording) as defaults for those not given on the command line.
func (o *filterOptions) filterFor(rec *tracefile.Meta) (report.Filter, error) {
	f, err := o.filter()
	if err != nil || rec.Mode != tracefile.ModeGraph {
		return f, err
	}
	if f.MinDuration == 0 {
		f.MinDuration = rec.Filters.MinDuration
	}
	if f.MaxDepth == 0 {
		f.MaxDepth = rec.Filters.MaxDepth
	}
	return f, nil
}

func (o *filterOptions) filter() (report.Filter, error) {
	f := report.Filter{MaxDepth: o.depth, MinDuration: o.minDur}
	if o.depth < 0 {
		return f, fmt.Errorf("parse -D %d: give a depth of 1 or more (0 = all)", o.depth)
	}
	if o.minDur < 0 {
		return f, fmt.Errorf("parse -t %v: give a duration of 0 or more", o.minDur)
	}
	if o.since < 0 || o.until < 0 {
		return f, fmt.Errorf("parse --since %v --until %v: give durations of 0 or more after the first event", o.since, o.until)
	}
	if o.until != 0 && o.until <= o.since {
		return f, fmt.Errorf("parse --since %v --until %v: --until must be after --since", o.since, o.until)
	}
	for _, tid := range o.tids {
		if tid == 0 || tid > math.MaxUint32 {
			return f, fmt.Errorf("parse --tid %d: give a thread id from the recording (see livetrace info)", tid)
		}
		f.TIDs = append(f.TIDs, uint32(tid))
	}
	return f, nil
}

// replayOptions holds the flags of `livetrace replay`.
type replayOptions struct {
	in     inputOptions
	filter filterOptions
	stdout io.Writer
}

func newReplayCmd(stdout, stderr io.Writer) *cobra.Command {
	o := &replayOptions{stdout: stdout}
	cmd := &cobra.Command{
		Use:   "replay [FILE | -i FILE] [-m GLOB]... [-D N] [-t DURATION] [--tid TID]... [--since D] [--until D]",
		Short: "Print a recording event by event, like ftrace",
		Long: `Print a recording one line per event.

Entry-mode recordings print like ftrace's function tracer: thread, CPU
(not recorded: ---), seconds since the first event, the function and its
caller as symbol+offset.

Graph-mode recordings print like ftrace's function_graph tracer (and uftrace
replay): threads interleaved in time order with a TID column, calls indented
by depth, the duration of each call on its closing line, and leaf calls
folded into one line "name();". A call whose exit the agent lost is marked
/* exit lost */, one still running at the end /* unfinished */; exits whose
entry is missing (the function was running when tracing started) are
skipped.

--since and --until read a slice of the recording (times after its first
event; replay times stay relative to the first event). Calls that cross
the slice's start show from their first event inside it, and those still
open at its end are /* unfinished */.

FILE (or -i FILE) is the recording, livetrace.data by default; - reads it
from standard input. -m shows only the functions of the modules whose path
or file name matches GLOB, as if record had been given -m.`,
		Example: `  livetrace replay
  livetrace replay run1.data -D 3 -t 10us --tid 1234
  livetrace record -p 1234 -d 1s -o - | livetrace replay -
  livetrace replay -m libc.so.6
  livetrace replay --since 2s --until 2.5s`,
		Args: o.in.inputArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			s, f, err := load(&o.in, &o.filter)
			if err != nil {
				return err
			}
			defer s.Close()
			return o.in.readErr(report.ReplayStream(o.stdout, s, f))
		},
	}
	o.in.addFlags(cmd.Flags())
	o.in.addModuleFlag(cmd.Flags())
	o.filter.addFlags(cmd.Flags())
	return cmd
}
