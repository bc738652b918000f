package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

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
}

func (o *inputOptions) addFlags(fs *pflag.FlagSet) {
	fs.StringVarP(&o.file, "input", "i", defaultRecording, "read the recording `FILE`")
	fs.BoolVar(&o.recover, "recover", false, "read what can be read of a recording the tracer did not finish")
}

// read reads the recording, with errors that say what to do.
func (o *inputOptions) read() (*tracefile.Recording, error) {
	read := tracefile.Read
	if o.recover {
		read = tracefile.Recover
	}
	rec, err := read(o.file)
	switch {
	case err == nil:
		return rec, nil
	case errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("open %s: no such file: record one with `livetrace record -p PID`", o.file)
	case errors.Is(err, tracefile.ErrTruncated) && !o.recover:
		// Suggest --recover only when it reads something.
		if r, rerr := tracefile.Recover(o.file); rerr == nil {
			return nil, fmt.Errorf("read %s: %w: rerun with --recover to read its complete blocks (%d events)", o.file, err, len(r.Events))
		}
		return nil, fmt.Errorf("read %s: %w; it holds no intact metadata, so --recover cannot read it either", o.file, err)
	case errors.Is(err, tracefile.ErrNotRecording), errors.Is(err, tracefile.ErrCorrupt),
		errors.Is(err, tracefile.ErrTruncated), errors.Is(err, tracefile.ErrUnsupportedVersion):
		return nil, fmt.Errorf("read %s: %w", o.file, err)
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return nil, err // "open FILE: permission denied"
	}
	return nil, fmt.Errorf("read %s: %w", o.file, err)
}

// filterOptions are the flags that select calls (-D, -t, --tid).
type filterOptions struct {
	depth  int
	minDur time.Duration
	tids   []uint
}

func (o *filterOptions) addFlags(fs *pflag.FlagSet) {
	fs.IntVarP(&o.depth, "depth", "D", 0, "show calls at depth < `N` only (graph mode; 0 = all)")
	fs.DurationVarP(&o.minDur, "time-filter", "t", 0, "show calls that took at least `DURATION` (graph mode; e.g. 10us, 1.5ms)")
	fs.UintSliceVar(&o.tids, "tid", nil, "show thread `TID` only (repeat or separate with commas)")
}

// load checks the filter flags, reads the recording, and returns it with
// the filter to apply (see filterFor).
func load(in *inputOptions, fo *filterOptions) (*tracefile.Recording, report.Filter, error) {
	if _, err := fo.filter(); err != nil {
		return nil, report.Filter{}, err
	}
	rec, err := in.read()
	if err != nil {
		return nil, report.Filter{}, err
	}
	f, err := fo.filterFor(rec)
	return rec, f, err
}

// filterFor is filter() with the filters given at record time (stored in
// the recording) as defaults for those not given on the command line.
func (o *filterOptions) filterFor(rec *tracefile.Recording) (report.Filter, error) {
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
		Use:   "replay [-i FILE] [-D N] [-t DURATION] [--tid TID]...",
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
skipped.`,
		Example: `  livetrace replay
  livetrace replay -i run1.data -D 3 -t 10us --tid 1234`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			rec, f, err := load(&o.in, &o.filter)
			if err != nil {
				return err
			}
			return report.Replay(o.stdout, rec, f)
		},
	}
	o.in.addFlags(cmd.Flags())
	o.filter.addFlags(cmd.Flags())
	return cmd
}
