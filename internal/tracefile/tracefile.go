// Package tracefile reads and writes livetrace recordings (livetrace.data).
//
// A recording is self-contained: besides the events it holds everything a
// report needs after the target is gone (modules, traced functions, symbols
// for naming callers, threads, the TSC calibration and lost-event counts).
// The byte layout is documented in docs/FORMAT.md.
//
// The live side streams events into a [Writer] while it consumes them from
// the agent, and hands over the metadata (known only at the end) to
// [Writer.Close]. Readers call [Read] or [ReadFrom], which treat the file as
// hostile input: every length and count is capped and checked, and every
// failure is one of [ErrNotRecording], [ErrTruncated], [ErrCorrupt] or a
// [*VersionError].
package tracefile

import (
	"errors"
	"fmt"
	"math"
	"math/bits"
	"time"
)

// Version is the format version this package writes, and the newest it
// reads. Version 2 added the block index (docs/FORMAT.md); version 1 files
// read the same, with the index computed by a first pass.
const Version = 2

// Mode says which events a recording holds.
type Mode uint8

const (
	// ModeEntry recordings hold only function entries.
	ModeEntry Mode = 1
	// ModeGraph recordings hold function entries and exits.
	ModeGraph Mode = 2
)

// String returns "entry", "graph" or "mode(N)".
func (m Mode) String() string {
	switch m {
	case ModeEntry:
		return "entry"
	case ModeGraph:
		return "graph"
	}
	return fmt.Sprintf("mode(%d)", uint8(m))
}

// MarshalText encodes the mode as "entry" or "graph".
func (m Mode) MarshalText() ([]byte, error) {
	if m != ModeEntry && m != ModeGraph {
		return nil, fmt.Errorf("marshal mode: unknown mode %d", uint8(m))
	}
	return []byte(m.String()), nil
}

// UnmarshalText decodes "entry" or "graph".
func (m *Mode) UnmarshalText(b []byte) error {
	switch string(b) {
	case "entry":
		*m = ModeEntry
	case "graph":
		*m = ModeGraph
	default:
		return fmt.Errorf("unknown mode %.20q", b)
	}
	return nil
}

// Kind is the kind of an [Event].
type Kind uint8

const (
	// KindEntry is a function entry.
	KindEntry Kind = 1
	// KindExit is a function exit (graph mode only).
	KindExit Kind = 2
)

// String returns "entry", "exit" or "kind(N)".
func (k Kind) String() string {
	switch k {
	case KindEntry:
		return "entry"
	case KindExit:
		return "exit"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Event is one recorded function entry or exit.
type Event struct {
	// TSC is the raw timestamp (rdtsc); convert it with [Clock.Nanos].
	TSC uint64
	// TID is the thread that ran the function.
	TID uint32
	// Kind is KindEntry or KindExit.
	Kind Kind
	// Func indexes Meta.Funcs: the traced function of the site.
	Func uint32
	// Depth is the call depth reported by the agent in graph mode, counted
	// in traced frames (0 = outermost traced frame of the thread). An exit
	// carries the same Depth as its entry. It is 0 in entry mode.
	Depth uint16
	// Caller is the runtime return address into the caller (entry events),
	// or 0 if unknown.
	Caller uint64
	// Args holds the values captured with the event (the arguments of an
	// entry, the return value of an exit) of a function with a spec
	// (Func.Args, Func.Ret), encoded as docs/FORMAT.md says; "" when none.
	// Decode it with [DecodeArgs].
	Args string
}

// Clock converts raw TSC values to CLOCK_MONOTONIC nanoseconds. The tracer
// takes one (rdtsc, CLOCK_MONOTONIC) pair when tracing starts and one when
// it ends.
type Clock struct {
	TSC0  uint64 `json:"tsc0"`
	Mono0 uint64 `json:"mono0_ns"`
	TSC1  uint64 `json:"tsc1"`
	Mono1 uint64 `json:"mono1_ns"`
	// TSCHz is the TSC frequency, used when the two pairs cannot be
	// interpolated (a recording cut short has no end pair). 0 if unknown.
	TSCHz uint64 `json:"tsc_hz,omitempty"`
}

// Nanos converts a TSC value to CLOCK_MONOTONIC nanoseconds.
//
// It interpolates (or extrapolates) linearly between the two pairs. When
// they cannot be used (TSC1 <= TSC0 or Mono1 < Mono0) it counts TSCHz
// ticks per second from the first pair, and without TSCHz it takes one tick
// for one nanosecond. The result saturates instead of overflowing, so any
// Clock read from a file is safe to use.
func (c Clock) Nanos(tsc uint64) int64 {
	num, den := uint64(1), uint64(1)
	switch {
	case c.TSC1 > c.TSC0 && c.Mono1 >= c.Mono0:
		num, den = c.Mono1-c.Mono0, c.TSC1-c.TSC0
	case c.TSCHz > 0:
		num, den = 1e9, c.TSCHz
	}
	base := satInt(c.Mono0)
	if tsc >= c.TSC0 {
		return satAdd(base, satInt(mulDiv(tsc-c.TSC0, num, den)))
	}
	return satAdd(base, -satInt(mulDiv(c.TSC0-tsc, num, den)))
}

// mulDiv returns a*b/c, saturated to MaxUint64. c must not be 0.
func mulDiv(a, b, c uint64) uint64 {
	hi, lo := bits.Mul64(a, b)
	if hi >= c {
		return math.MaxUint64
	}
	q, _ := bits.Div64(hi, lo, c)
	return q
}

func satInt(v uint64) int64 {
	if v > math.MaxInt64 {
		return math.MaxInt64
	}
	return int64(v)
}

func satAdd(a, b int64) int64 {
	s := a + b
	if b > 0 && s < a {
		return math.MaxInt64
	}
	if b < 0 && s > a {
		return math.MinInt64
	}
	return s
}

// Module is an ELF object mapped in the target (the executable or a shared
// library).
type Module struct {
	Path string `json:"path"`
	// Base is the lowest runtime address the module maps.
	Base uint64 `json:"base"`
	// Limit is the end (exclusive) of the highest mapping, 0 if unknown.
	Limit uint64 `json:"limit,omitempty"`
	// Bias is the load bias: runtime address minus ELF virtual address.
	Bias    uint64 `json:"bias"`
	BuildID string `json:"build_id,omitempty"`
}

// Func is a traced function: one patched site.
type Func struct {
	Name string `json:"name"`
	// Module indexes Meta.Modules, or is -1 if unknown.
	Module int `json:"module"`
	// Addr is the runtime address of the function's first byte.
	Addr uint64 `json:"addr"`
	Size uint64 `json:"size,omitempty"`
	// Site is the runtime address of the patched NOP.
	Site uint64 `json:"site"`
	// Args says how to print the arguments captured at entry, in order
	// (record -A, -a); empty when none were captured.
	Args []ArgSpec `json:"args,omitempty"`
	// Ret is the format of the captured return value (record -R, -a), ""
	// when none was captured.
	Ret *ArgSpec `json:"ret,omitempty"`
}

// Symbol is a function symbol of a module, used to name callers. Recordings
// hold the symbols of every module, traced or not.
type Symbol struct {
	Name string `json:"name"`
	// Module indexes Meta.Modules, or is -1 if unknown.
	Module int `json:"module"`
	// Addr is the runtime address.
	Addr uint64 `json:"addr"`
	Size uint64 `json:"size,omitempty"`
}

// Thread is a thread of the target seen while recording.
type Thread struct {
	TID  uint32 `json:"tid"`
	Name string `json:"name,omitempty"`
	// Lost counts the events the agent dropped for this thread.
	Lost uint64 `json:"lost,omitempty"`
	// PID is the process the thread belongs to; 0 means Meta.PID (every
	// recording made without --follow, and every older one).
	PID int `json:"pid,omitempty"`
}

// Process is a process of a recording made with --follow: the target, and
// each child it forked while followed.
type Process struct {
	PID int `json:"pid"`
	// PPID is the followed process it was forked from, 0 for the target.
	PPID    int      `json:"ppid,omitempty"`
	Comm    string   `json:"comm,omitempty"`
	Cmdline []string `json:"cmdline,omitempty"`
	Exe     string   `json:"exe,omitempty"`
	// ForkTSC is when the tracer took the child over (rdtsc, on the
	// events' clock), 0 for the target. For a new image (ExecFrom set),
	// when it called exec.
	ForkTSC uint64 `json:"fork_tsc,omitempty"`
	// ExecFrom, when not 0, says this is a new image: the process PID
	// called exec, from thread ExecFrom (PID itself unless another thread
	// called it). The events of PID after ForkTSC are the new image's.
	ExecFrom int `json:"exec_from,omitempty"`
	// Untraced says why nothing of this process was recorded (a new
	// image where no function matches, say); "" when it was traced.
	Untraced string `json:"untraced,omitempty"`
}

// RecordFilters describes what the tracer was asked to record.
type RecordFilters struct {
	// Patterns are the function patterns that selected the traced sites.
	Patterns []string `json:"patterns,omitempty"`
	// Exclude are the patterns of functions left out (record -N).
	Exclude []string `json:"exclude,omitempty"`
	// Modules are the module patterns that restricted the selection
	// (record -m).
	Modules []string `json:"modules,omitempty"`
	// MaxDepth limits recording to this call depth (0 = no limit).
	MaxDepth int `json:"max_depth,omitempty"`
	// MinDuration keeps only calls at least this long (0 = all).
	MinDuration time.Duration `json:"min_duration_ns,omitempty"`
	// TIDs limits recording to these threads (empty = all).
	TIDs []uint32 `json:"tids,omitempty"`
}

// Meta is everything in a recording but the events.
type Meta struct {
	// Version is the format version; [Writer.Close] sets it.
	Version int      `json:"version"`
	Mode    Mode     `json:"mode"`
	PID     int      `json:"pid"`
	Comm    string   `json:"comm,omitempty"`
	Cmdline []string `json:"cmdline,omitempty"`
	Exe     string   `json:"exe,omitempty"`
	Host    string   `json:"host,omitempty"`
	// Start and End are wall-clock times of the start and end of tracing.
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
	Clock Clock     `json:"clock"`

	Modules []Module `json:"modules"`
	Funcs   []Func   `json:"funcs"`
	Symbols []Symbol `json:"symbols,omitempty"`
	Threads []Thread `json:"threads,omitempty"`
	// Processes lists the target and the children followed (record
	// --follow), in the order they were seen; empty in a recording of
	// one process.
	Processes []Process `json:"processes,omitempty"`

	// Lost counts all events the agent dropped (the sum over threads, plus
	// drops not attributed to a thread).
	Lost uint64 `json:"lost,omitempty"`
	// ShadowOverflow counts calls whose exit could not be traced because a
	// thread's shadow return stack was full.
	ShadowOverflow uint64 `json:"shadow_overflow,omitempty"`
	// JITCalls counts calls graph mode did not trace because their return
	// address was in no module: in code a runtime compiled (a JVM's, a
	// JIT's), which may read it back. Entry mode traces them.
	JITCalls uint64        `json:"jit_calls,omitempty"`
	Filters  RecordFilters `json:"filters"`
	// Changes lists, in order, the changes of what was traced made while
	// attached (livetrace ctl): a function of Funcs is traced from the
	// first enable that names it (from Start if none does) until a
	// disable, and so on. Old recordings have none.
	Changes []Change `json:"changes,omitempty"`
}

// Change is one change of what is traced, made while attached: one patch
// batch that enabled or disabled functions.
type Change struct {
	// Time and TSC are when the batch was done: every site of the change
	// was rewritten by then (some may be earlier).
	Time time.Time `json:"time"`
	TSC  uint64    `json:"tsc"`
	// Op is "enable" or "disable" (livetrace ctl), "load" (a module the
	// target loaded while attached: its matching functions are traced
	// from then on) or "unload" (a module it unloaded: its functions are
	// traced no more).
	Op string `json:"op"`
	// Globs are the shell globs the change was asked for with; for
	// "load" and "unload", the module's path.
	Globs []string `json:"globs"`
	// Funcs are the indexes in Meta.Funcs of the functions whose state
	// changed.
	Funcs []uint32 `json:"funcs"`
}

// Recording is a whole recording in memory.
type Recording struct {
	Meta
	// Events are sorted by TSC, then TID (see [CompareEvents]); the events
	// of one thread keep the order the writer got them in.
	Events []Event
	// Recovered is set when the recording was read with
	// ReadOptions.Recover from a file the writer did not finish: the
	// metadata is the last checkpoint and Events holds the complete blocks.
	Recovered bool
	// Dropped counts events a recovered recording left out because the
	// metadata checkpoint did not know their function.
	Dropped uint64
}

// ErrNotRecording means the input is not a livetrace recording at all.
var ErrNotRecording = errors.New("not a livetrace recording")

// ErrTruncated means the recording ends early: the writer did not finish
// (killed, disk full). ReadOptions.Recover may still read its complete
// blocks.
var ErrTruncated = errors.New("truncated recording")

// ErrCorrupt means the recording is damaged; errors wrapping it say where.
var ErrCorrupt = errors.New("corrupt recording")

// ErrUnsupportedVersion is matched (with errors.Is) by every [*VersionError].
var ErrUnsupportedVersion = errors.New("unsupported version")

// VersionError reports a recording written in a format version this
// package does not read.
type VersionError struct {
	Version int
}

func (e *VersionError) Error() string {
	return fmt.Sprintf("unsupported version %d: this livetrace reads versions up to %d; use a newer livetrace", e.Version, Version)
}

// Is makes errors.Is(err, ErrUnsupportedVersion) true.
func (e *VersionError) Is(target error) bool { return target == ErrUnsupportedVersion }

func corruptf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrCorrupt, fmt.Sprintf(format, args...))
}

// NanosConverter is [Clock.Nanos] for timestamps that mostly increase a
// little from one call to the next, as those of a recording's events do:
// it works from the last result, without a 128-bit division. Its results
// equal Clock.Nanos's. The zero value is not usable; see
// [Clock.Converter].
type NanosConverter struct {
	c        Clock
	num, den uint64
	inv      float64 // 1 / den
	base     int64
	// The last timestamp converted from the cache: d = tsc - TSC0, and
	// d*num = q*den + r.
	tsc  uint64
	q, r uint64
	ok   bool
	// magic and shift divide by den with a multiplication: for x < 2^52,
	// x/den = (x*magic) >> (64+shift) (Granlund and Montgomery,
	// "Division by Invariant Integers using Multiplication", 1994,
	// theorem 4.2, with N = 52: magic*den - 2^(64+shift) < den <=
	// 2^(64+shift-52)). maxStep is the largest step of tsc from the cache
	// whose d*num + r stays below 2^52; 0 without magic (den < 4 or den
	// >= 2^51).
	magic, maxStep uint64
	shift          uint
	// qmax is the largest q whose result base+q needs no saturation (and
	// below 2^62, as the other paths keep it).
	qmax uint64
}

// Converter returns a converter for c.
func (c Clock) Converter() *NanosConverter {
	num, den := uint64(1), uint64(1)
	switch {
	case c.TSC1 > c.TSC0 && c.Mono1 >= c.Mono0:
		num, den = c.Mono1-c.Mono0, c.TSC1-c.TSC0
	case c.TSCHz > 0:
		num, den = 1e9, c.TSCHz
	}
	n := &NanosConverter{c: c, num: num, den: den, inv: 1 / float64(den), base: satInt(c.Mono0)}
	n.qmax = min(1<<62-1, uint64(math.MaxInt64-n.base)) // base >= 0
	if den >= 4 && den < 1<<51 {
		l := uint(bits.Len64(den - 1)) // ceil(log2(den)), 2..51
		s := max(64, 52+l)
		// magic = floor((2^s - 1)/den) + 1; the high word of 2^s - 1,
		// below 2^(l-12), is below den.
		q, _ := bits.Div64(1<<(s-64)-1, math.MaxUint64, den)
		n.magic, n.shift = q+1, s-64
		n.maxStep = math.MaxUint64
		if num > 0 {
			n.maxStep = (1<<52 - den) / num
		}
	}
	return n
}

// Nanos converts tsc to CLOCK_MONOTONIC nanoseconds, as [Clock.Nanos].
func (n *NanosConverter) Nanos(tsc uint64) int64 {
	if d := tsc - n.tsc; tsc >= n.tsc && d <= n.maxStep && n.ok {
		// Divided with magic (without magic, maxStep is 0: the same
		// tsc, x = r < den, q = 0).
		x := d*n.num + n.r
		hi, _ := bits.Mul64(x, n.magic)
		q := hi >> n.shift
		if nq := n.q + q; nq <= n.qmax {
			n.tsc, n.q, n.r = tsc, nq, x-q*n.den
			return n.base + int64(nq)
		}
	}
	return n.nanos(tsc)
}

// nanos is Nanos without its magic path.
func (n *NanosConverter) nanos(tsc uint64) int64 {
	if n.ok && tsc >= n.tsc {
		delta := tsc - n.tsc
		if hi, x := bits.Mul64(delta, n.num); hi == 0 && x < 1<<52 {
			x += n.r
			if x < 1<<52 {
				// x < 2^52: the float quotient is off by at most one.
				q := uint64(float64(x) * n.inv)
				rem := int64(x) - int64(q*n.den)
				for rem < 0 {
					q--
					rem += int64(n.den)
				}
				for rem >= int64(n.den) {
					q++
					rem -= int64(n.den)
				}
				n.tsc, n.q, n.r = tsc, n.q+q, uint64(rem)
				if n.q < 1<<62 {
					return satAdd(n.base, int64(n.q))
				}
				n.ok = false
			}
		}
	}
	if tsc >= n.c.TSC0 {
		d := tsc - n.c.TSC0
		hi, lo := bits.Mul64(d, n.num)
		if hi < n.den {
			q, r := bits.Div64(hi, lo, n.den)
			if q < 1<<62 {
				n.tsc, n.q, n.r, n.ok = tsc, q, r, true
			}
		}
	}
	return n.c.Nanos(tsc)
}

// ThreadPIDs maps every thread of the recording to its process: Thread.PID,
// or m.PID for a thread without one.
func (m *Meta) ThreadPIDs() map[uint32]int {
	out := make(map[uint32]int, len(m.Threads))
	for _, th := range m.Threads {
		if th.PID != 0 {
			out[th.TID] = th.PID
		} else {
			out[th.TID] = m.PID
		}
	}
	return out
}

// PIDOf returns the process of thread tid: its Thread.PID, else m.PID.
func (m *Meta) PIDOf(tid uint32) int {
	for _, th := range m.Threads {
		if th.TID == tid && th.PID != 0 {
			return th.PID
		}
	}
	return m.PID
}

// MultiProcess reports whether the recording holds more than one process
// (record --follow with children): the readers then show each event's pid.
func (m *Meta) MultiProcess() bool {
	for _, th := range m.Threads {
		if th.PID != 0 && th.PID != m.PID {
			return true
		}
	}
	return len(m.Processes) > 1
}
