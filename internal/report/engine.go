package report

import (
	"slices"

	"github.com/livetrace/livetrace/internal/tracefile"
)

// The readers stream: they see one event at a time, in the order of
// [tracefile.Recording.Events], and keep only the open calls of each
// thread, so that their memory is bounded by the threads and the call
// depth, not by the number of events.
//
// The engine turns events into calls as the package documentation says.
// Whether a call is shown is known when it closes, with one exception: a
// call without an exit (exit lost, unfinished) is shown only if its
// ancestors are, and with a duration filter an ancestor is hidden when it
// completes too fast, which is known only when it closes, later. Such a
// call is then "pending" on its parent until the parent closes. (A
// completed call long enough to be shown has ancestors at least as long,
// so its own filters decide.)
//
// Outputs in the order of the entries (replay, chrome and perfetto in
// graph mode) must know at each entry how the call ends. They read the
// stream twice: the first pass remembers how every call ends whose end is
// known more than lookahead events after its entry; the second pass holds
// the output items of at most lookahead events until the call of the first
// item is known.

// lookahead is how many events the second pass may hold back (a variable
// for the tests).
var lookahead uint64 = 1 << 16

type callStatus uint8

const (
	complete   callStatus = iota
	exitLost              // closed by resync: its exit was lost
	unfinished            // still running at the end of the recording
)

// ocall is one function call of a graph-mode recording, open or closed.
type ocall struct {
	ord      uint64 // calls entered before this one (all threads)
	entryIdx uint64 // index of its entry among the events
	tid, fn  uint32
	depth    uint16
	status   callStatus
	// outermost is set when no other call of fn was active below this one
	// on the thread's stack (recursion is counted once in total times).
	outermost bool
	// own is set at close when the call passes the filters by itself.
	own        bool
	start, end int64 // ns since the first event
	visKids    int32 // children that pass the filters by themselves
	childTime  int64 // their time
	parent     *ocall
	// node and pnode are the stack nodes of the call and of its parent
	// (-1: none), when the engine builds a stack tree.
	node, pnode int32
	// pending are the calls without an exit below this one whose
	// visibility waits for this call's.
	pending []*ocall
	pinned  bool
	// args and ret are the values captured at the entry and the exit
	// (tracefile.Event.Args), "" when none.
	args, ret string
	// resolved is set once visible, folded, status and end are final.
	resolved, visible bool
}

func (c *ocall) dur() int64 { return c.end - c.start }

// folded says that the call shows as one line: it completed without a
// shown child.
func (c *ocall) folded() bool { return c.status == complete && c.visKids == 0 }

type ethread struct {
	stack []*ocall
	// active counts the calls of each function in the frames from
	// shallowFrames on; the frames below are scanned instead, which is
	// cheaper for the usual shallow stacks.
	active map[uint32]int
}

const shallowFrames = 32

// running says whether a call of fn is on the thread's stack.
func (th *ethread) running(fn uint32) bool {
	for _, c := range th.stack[:min(len(th.stack), shallowFrames)] {
		if c.fn == fn {
			return true
		}
	}
	return len(th.stack) > shallowFrames && th.active[fn] > 0
}

// engine builds the calls of a graph-mode event stream.
type engine struct {
	meta  *tracefile.Meta
	clock *tracefile.NanosConverter
	f     Filter
	first int64
	// last is the time of the last event seen, in ns since first.
	last    int64
	idx     uint64 // events seen
	ord     uint64 // calls entered
	orphans int

	threads map[uint32]*ethread
	lastTID uint32
	lastTh  *ethread
	free    []*ocall
	// recycle reuses closed calls; off when outputs keep them.
	recycle bool
	// tree, when set, gets a node for every call that passes the thread
	// and depth filters, at its entry.
	tree *stackTree

	// Callbacks, each optional.
	onEntry   func(c *ocall)
	onClose   func(c *ocall) // status and end are set
	onResolve func(c *ocall) // resolved is set
}

func newEngine(s *tracefile.Stream, f Filter) *engine {
	e := &engine{meta: &s.Meta, clock: s.Clock.Converter(), f: f, threads: map[uint32]*ethread{}}
	if s.Total > 0 {
		e.first = s.Clock.Nanos(s.FirstTSC)
	}
	return e
}

// ns returns the time of tsc in ns since the first event.
func (e *engine) ns(tsc uint64) int64 { return e.clock.Nanos(tsc) - e.first }

func (e *engine) thread(tid uint32) *ethread {
	if e.lastTh != nil && e.lastTID == tid {
		return e.lastTh
	}
	th := e.threads[tid]
	if th == nil {
		th = &ethread{active: map[uint32]int{}}
		e.threads[tid] = th
	}
	e.lastTID, e.lastTh = tid, th
	return th
}

func (th *ethread) top() *ocall {
	if n := len(th.stack); n > 0 {
		return th.stack[n-1]
	}
	return nil
}

// event processes the next event.
func (e *engine) event(ev *tracefile.Event) {
	now := e.ns(ev.TSC)
	e.last = now
	th := e.thread(ev.TID)
	switch ev.Kind {
	case tracefile.KindEntry:
		for c := th.top(); c != nil && c.depth >= ev.Depth; c = th.top() {
			e.pop(th, exitLost, now)
		}
		var c *ocall
		if n := len(e.free); n > 0 {
			c, e.free = e.free[n-1], e.free[:n-1]
		} else {
			c = &ocall{}
		}
		parent := th.top()
		*c = ocall{ord: e.ord, entryIdx: e.idx, tid: ev.TID, fn: ev.Func, depth: ev.Depth,
			outermost: !th.running(ev.Func), start: now, parent: parent, node: -1, pnode: -1, args: ev.Args}
		e.ord++
		if parent != nil {
			c.pnode = parent.node
		}
		if e.tree != nil && e.f.keepTID(c.tid) && (e.f.MaxDepth == 0 || int(c.depth) < e.f.MaxDepth) {
			if e.f.keepFunc(c.fn) {
				c.node = e.tree.node(c.pnode, c.fn)
			} else {
				// Hidden: its children hang from its parent.
				c.node = c.pnode
			}
		}
		if len(th.stack) >= shallowFrames {
			th.active[ev.Func]++
		}
		th.stack = append(th.stack, c)
		if e.onEntry != nil {
			e.onEntry(c)
		}
	case tracefile.KindExit:
		for c := th.top(); c != nil && c.depth > ev.Depth; c = th.top() {
			e.pop(th, exitLost, now)
		}
		c := th.top()
		switch {
		case c == nil || c.depth != ev.Depth:
			e.orphans++
		case c.fn != ev.Func:
			// Both the exit of c and the entry of this exit were lost.
			e.pop(th, exitLost, now)
			e.orphans++
		default:
			c.ret = ev.Args
			e.pop(th, complete, now)
		}
	}
	e.idx++
}

// run processes the events of s and finishes, calling after (if not nil)
// after every batch of events and at the end.
func (e *engine) run(s *tracefile.Stream, after func()) error {
	for {
		b, ok := s.NextBatch()
		if !ok {
			break
		}
		for i := range b {
			e.event(&b[i])
			if after != nil {
				after()
			}
		}
	}
	if err := s.Err(); err != nil {
		return err
	}
	e.finish()
	if after != nil {
		after()
	}
	return nil
}

// finish closes the calls still open as unfinished, thread by thread in
// the order of their ids.
func (e *engine) finish() {
	tids := make([]uint32, 0, len(e.threads))
	for tid := range e.threads {
		tids = append(tids, tid)
	}
	slices.Sort(tids)
	for _, tid := range tids {
		th := e.threads[tid]
		for len(th.stack) > 0 {
			e.pop(th, unfinished, e.last)
		}
	}
}

func (e *engine) pop(th *ethread, status callStatus, end int64) {
	c := th.stack[len(th.stack)-1]
	th.stack[len(th.stack)-1] = nil
	th.stack = th.stack[:len(th.stack)-1]
	c.status, c.end = status, end
	if len(th.stack) >= shallowFrames {
		if th.active[c.fn]--; th.active[c.fn] == 0 {
			delete(th.active, c.fn)
		}
	}
	f := e.f
	c.own = f.keepTID(c.tid) && f.keepFunc(c.fn) && (f.MaxDepth == 0 || int(c.depth) < f.MaxDepth) &&
		(status != complete || c.dur() >= int64(f.MinDuration))
	p := c.parent
	if p != nil && c.own {
		p.visKids++
		p.childTime += c.dur()
	}
	if e.onClose != nil {
		e.onClose(c)
	}
	switch {
	case !c.own:
		e.resolve(c, false)
	case status == complete || f.MinDuration == 0 || p == nil:
		e.resolve(c, true)
	default:
		// Shown if the parent is: see the comment at the top.
		c.pinned, p.pinned = true, true
		p.pending = append(p.pending, c)
		p.pending = append(p.pending, c.pending...)
		c.pending = nil
	}
	c.parent = nil
	if e.recycle && !c.pinned {
		e.free = append(e.free, c)
	}
}

// resolve sets the visibility of c and of the calls pending on it.
func (e *engine) resolve(c *ocall, visible bool) {
	c.resolved, c.visible = true, visible
	if e.onResolve != nil {
		e.onResolve(c)
	}
	for _, d := range c.pending {
		d.resolved, d.visible = true, visible
		if e.onResolve != nil {
			e.onResolve(d)
		}
	}
	c.pending = nil
}

// resolution is how a call ends, remembered by the first pass.
type resolution struct {
	visible, folded bool
	status          callStatus
	end             int64
}

// itemKind is the kind of an output item of the second pass.
type itemKind uint8

const (
	itemEntry itemKind = iota // the entry of a call
	itemExit                  // the exit of a completed call
	itemLost                  // the end of a call without an exit
)

type item struct {
	kind itemKind
	c    *ocall
}

// inOrder runs the two passes over s and calls emit with the items of the
// calls in the order of their events (entries, exits, and the closes of
// calls without an exit at the event that revealed it), each call resolved.
//
// If first is not nil, it is called between the passes with the sorted ids
// of the threads that have events.
func inOrder(s *tracefile.Stream, f Filter, first func(tids []uint32), emit func(it item)) error {
	// Pass 1: the calls resolved late.
	long := map[uint64]resolution{}
	e := newEngine(s, f)
	e.recycle = true
	e.onResolve = func(c *ocall) {
		if e.idx-c.entryIdx > lookahead {
			long[c.ord] = resolution{visible: c.visible, folded: c.folded(), status: c.status, end: c.end}
		}
	}
	if err := e.run(s, nil); err != nil {
		return err
	}
	s.Rewind()
	if first != nil {
		tids := make([]uint32, 0, len(e.threads))
		for tid := range e.threads {
			tids = append(tids, tid)
		}
		slices.Sort(tids)
		first(tids)
	}

	// Pass 2: output. Calls are reused once their last item is out.
	e = newEngine(s, f)
	var q []item
	head := 0
	flush := func() {
		for head < len(q) {
			it := q[head]
			c := it.c
			if !c.resolved {
				r, ok := long[c.ord]
				if !ok {
					break
				}
				c.resolved, c.visible, c.status, c.end = true, r.visible, r.status, r.end
				if r.folded {
					c.visKids = 0
				} else if r.status == complete {
					c.visKids = max(c.visKids, 1)
				}
				delete(long, c.ord)
			}
			q[head] = item{}
			head++
			emit(it)
			if it.kind != itemEntry && !c.pinned {
				// Closed, and its entry went out before: reuse it.
				*c = ocall{}
				e.free = append(e.free, c)
			}
		}
		if head == len(q) {
			q, head = q[:0], 0
		} else if head > 4096 && head > len(q)/2 {
			q = q[:copy(q, q[head:])]
			head = 0
		}
	}
	e.onEntry = func(c *ocall) { q = append(q, item{itemEntry, c}) }
	e.onClose = func(c *ocall) {
		if c.status == complete {
			q = append(q, item{itemExit, c})
		} else {
			q = append(q, item{itemLost, c})
		}
	}
	return e.run(s, flush)
}
