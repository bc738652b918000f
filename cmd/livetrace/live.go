package main

import (
	"io"
	"sync"
	"time"

	"github.com/livetrace/livetrace/internal/report"
	"github.com/livetrace/livetrace/internal/session"
	"github.com/livetrace/livetrace/internal/tracefile"
	"github.com/spf13/cobra"
)

func newLiveCmd(stdout, stderr io.Writer) *cobra.Command {
	cmd, o := recordCommand(stdout, stderr)
	o.live = true
	o.output = ""
	cmd.Flags().Lookup("output").DefValue = ""
	cmd.Flags().Lookup("output").Usage = "record the events to `FILE` as well"
	cmd.Use = "live (-p PID | -- CMD [ARGS...]) [-m GLOB]... [-F GLOB]... [-N GLOB]... [--graph] [-d DURATION] [-o FILE]"
	cmd.Short = "Print the calls of a running process as they happen"
	cmd.Long = `Attach to the running process PID (or start CMD) as record does, with the
same selection flags, and print every call to standard output as it
happens, in replay's format, until Ctrl-C, -d, or the process's exit.
An event shows within about 50 ms of the call, at any call rate: a
thread's partly filled buffer chunk is read while the thread runs on.
With -o FILE the events are recorded as well.

In entry mode each line is an ftrace function-tracer line; with --graph,
calls nest by depth as in function_graph, a call with no traced call inside
is folded into one line, and each closing brace carries the call's
duration. Threads interleave in the order their events reach livetrace,
within 50 ms of time order.`
	cmd.Example = `  livetrace live -p 1234 -F 'parse_*'
  livetrace live --graph -p 1234 -m libc.so.6 -F malloc -F free -d 2s
  livetrace live -p 1234 -o run.data`
	return cmd
}

// liveOutput prints a live session's events (livetrace live).
type liveOutput struct {
	o      *recordOptions
	filter report.Filter

	mu       sync.Mutex // events arrive on the goroutine that polls, or at Close
	s        *session.Session
	printer  *report.Live
	pending  bool
	fullSync time.Time
	early    map[uint32]int // thread pids told before the printer exists
}

// threadPID is the session's OnThreadPID (live --follow).
func (l *liveOutput) threadPID(tid uint32, pid int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.printer == nil {
		if l.early == nil {
			l.early = map[uint32]int{}
		}
		l.early[tid] = pid
		return
	}
	l.printer.SetThreadPID(tid, pid)
}

// start makes the printer once the session knows its functions.
func (l *liveOutput) start(s *session.Session) {
	meta := s.Meta() // before l.mu: events hold the session's lock, then l.mu
	l.mu.Lock()
	defer l.mu.Unlock()
	l.s = s
	l.printer = report.NewLive(l.o.stdout, meta, l.filter)
	if l.o.follow {
		l.printer.ShowPIDs()
		for tid, pid := range l.early {
			l.printer.SetThreadPID(tid, pid)
		}
	}
	l.printer.Header()
	_ = l.printer.Flush(false)
}

// events is the session's OnEvents: one thread's batch.
func (l *liveOutput) events(evs []tracefile.Event, thread string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.printer == nil || len(evs) == 0 {
		return
	}
	l.printer.SetThreadName(evs[0].TID, thread)
	l.printer.Events(evs)
	l.pending = true
}

// tick writes out what was printed: at once, and every half second the
// calls of threads whose exit has not come yet.
func (l *liveOutput) tick() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.printer == nil {
		return
	}
	all := time.Since(l.fullSync) >= 500*time.Millisecond
	if l.pending || all {
		_ = l.printer.Flush(all)
		l.pending = false
		if all {
			l.fullSync = time.Now()
		}
	}
}

// refresh gives the printer the functions a change added.
func (l *liveOutput) refresh() {
	l.mu.Lock()
	s := l.s
	l.mu.Unlock()
	if s == nil {
		return // not started: start takes the functions as they are then
	}
	meta := s.Meta() // before l.mu, as in start
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.printer != nil {
		l.printer.SetFuncs(meta.Funcs)
	}
}

func (l *liveOutput) finish() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.printer != nil {
		_ = l.printer.Flush(true)
	}
}
