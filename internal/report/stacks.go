package report

import (
	"bufio"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/livetrace/livetrace/internal/tracefile"
)

// stackNode is one unique stack of traced functions (threads merged).
type stackNode struct {
	parent int32 // -1 for a root
	fn     uint32
	calls  uint64 // calls that ended in this stack
	self   int64  // ns spent in this stack's leaf (graph mode)
	total  int64  // self of this node and all below it
	kids   []int32
}

// stackTree holds the unique stacks of a recording. In graph mode the
// value of a stack is its self time (a call without an exit ends where the
// package documentation says). In entry mode stacks are rebuilt from the
// callers the entries record (see entryStacks) and valued by their number
// of calls.
//
// A node's fn is a frame id: below len(rec.Funcs) a traced function,
// from there on callers[fn-len(rec.Funcs)], an untraced function that
// called a traced one (entry mode).
type stackTree struct {
	rec   *tracefile.Meta
	graph bool
	nodes []stackNode
	roots []int32
	index map[[2]int64]int32 // (parent node, fn) -> node

	callers  []tracefile.Symbol
	callerID map[uint64]uint32 // untraced symbol address -> frame id
	funcAt   map[uint64]uint32 // traced function address -> frame id
	// pcFrame caches callerFrame: return address -> frame id + 1 (0: no
	// frame), for up to maxSymCache addresses.
	pcFrame map[uint64]uint32
}

// name returns the display name of frame id.
func (st *stackTree) name(id uint32) string {
	if k := int(id) - len(st.rec.Funcs); k >= 0 && k < len(st.callers) {
		if st.callers[k].Name == "" {
			return fmt.Sprintf("0x%x", st.callers[k].Addr)
		}
		return Printable(st.callers[k].Name)
	}
	return funcName(st.rec, id)
}

// symbol returns the address and module (index in rec.Modules, -1 if
// unknown) of frame id.
func (st *stackTree) symbol(id uint32) (addr uint64, module int) {
	if int(id) < len(st.rec.Funcs) {
		return st.rec.Funcs[id].Addr, st.rec.Funcs[id].Module
	}
	if k := int(id) - len(st.rec.Funcs); k < len(st.callers) {
		return st.callers[k].Addr, st.callers[k].Module
	}
	return 0, -1
}

// node returns the node of fn below parent (-1 for a root), adding it.
func (st *stackTree) node(parent int32, fn uint32) int32 {
	k := [2]int64{int64(parent), int64(fn)}
	if n, ok := st.index[k]; ok {
		return n
	}
	n := int32(len(st.nodes))
	st.nodes = append(st.nodes, stackNode{parent: parent, fn: fn})
	st.index[k] = n
	if parent < 0 {
		st.roots = append(st.roots, n)
	} else {
		st.nodes[parent].kids = append(st.nodes[parent].kids, n)
	}
	return n
}

func newStackTree(s *tracefile.Stream, f Filter) (*stackTree, error) {
	if err := f.check(&s.Meta); err != nil {
		return nil, err
	}
	rec := &s.Meta
	st := &stackTree{rec: rec, graph: rec.Mode == tracefile.ModeGraph, index: map[[2]int64]int32{}}
	if st.graph {
		e := newEngine(s, f)
		e.recycle, e.tree = true, st
		e.onResolve = func(c *ocall) {
			if !c.visible {
				return
			}
			n := &st.nodes[c.node]
			n.calls++
			n.self += c.dur()
			if c.pnode >= 0 {
				st.nodes[c.pnode].self -= c.dur()
			}
		}
		if err := e.run(s, nil); err != nil {
			return nil, err
		}
	} else {
		st.entryStacks(s, f)
	}
	if err := s.Err(); err != nil {
		return nil, err
	}
	// Children come after their parents: sum totals backwards.
	for i := len(st.nodes) - 1; i >= 0; i-- {
		n := &st.nodes[i]
		n.total += n.value(st.graph)
		if n.parent >= 0 {
			st.nodes[n.parent].total += n.total
		}
	}
	// Order children by name, for stable output.
	byName := func(a, b int32) int {
		return strings.Compare(st.name(st.nodes[a].fn), st.name(st.nodes[b].fn))
	}
	slices.SortFunc(st.roots, byName)
	for i := range st.nodes {
		slices.SortFunc(st.nodes[i].kids, byName)
	}
	return st, nil
}

// value is what a node weighs by itself: self ns in graph mode, calls in
// entry mode.
func (n *stackNode) value(graph bool) int64 {
	if graph {
		return max(n.self, 0)
	}
	return int64(n.calls)
}

// entryFrame is a frame of a thread's stack rebuilt in entry mode.
type entryFrame struct {
	id   uint32 // frame id
	node int32
}

// maxEntryStack bounds a rebuilt stack: a deeper one starts over.
const maxEntryStack = 1024

// entryStacks rebuilds the stacks of an entry-mode recording from the
// callers its entries record. Each thread keeps the stack of the entries
// seen so far. An entry whose caller is the function of a frame on it
// pops the frames above that one and goes on top; an entry whose caller
// is on no frame starts a new stack with its caller (the untraced
// function that called it; nothing when the caller is unknown) at the
// root.
//
// Entries say nothing of returns, so a frame on the rebuilt stack may
// have returned. When the caller's function has several frames, the
// lowest one is taken: it is live whenever any of them is, so a stack may
// skip frames (a recursion shows two levels deep) but shows none that
// were not live, unless the caller's own entry was lost or came before
// tracing began. A stack is whole when every function on the path is
// traced and none recurses, and starts at the first untraced caller
// otherwise.
func (st *stackTree) entryStacks(s *tracefile.Stream, f Filter) {
	syms := newSymbolizer(st.rec)
	st.funcAt = make(map[uint64]uint32, len(st.rec.Funcs))
	for i := len(st.rec.Funcs) - 1; i >= 0; i-- {
		st.funcAt[st.rec.Funcs[i].Addr] = uint32(i)
	}
	st.callerID = map[uint64]uint32{}
	stacks := map[uint32][]entryFrame{}
	var (
		lastTID uint32
		stk     []entryFrame
		have    bool
	)
	for {
		ev, ok := s.Next()
		if !ok {
			break
		}
		if ev.Kind != tracefile.KindEntry || !f.keep(&ev) {
			continue
		}
		if !have || ev.TID != lastTID {
			if have {
				stacks[lastTID] = stk
			}
			stk, lastTID, have = stacks[ev.TID], ev.TID, true
		}
		parent := int32(-1)
		if id, ok := st.callerFrame(syms, ev.Caller); ok {
			i := 0
			for i < len(stk) && stk[i].id != id {
				i++
			}
			if i < len(stk) {
				stk = stk[:i+1]
			} else {
				stk = append(stk[:0], entryFrame{id, st.node(-1, id)})
			}
			parent = stk[len(stk)-1].node
		} else {
			stk = stk[:0]
		}
		if len(stk) >= maxEntryStack {
			stk, parent = stk[:0], -1
		}
		n := st.node(parent, ev.Func)
		st.nodes[n].calls++
		stk = append(stk, entryFrame{ev.Func, n})
	}
}

// callerFrame returns the frame id of the function that contains the
// return address pc: a traced function's, or an untraced symbol's.
func (st *stackTree) callerFrame(syms *symbolizer, pc uint64) (uint32, bool) {
	if pc == 0 {
		return 0, false
	}
	if v, ok := st.pcFrame[pc]; ok {
		return v - 1, v != 0
	}
	id, ok := st.lookupFrame(syms, pc)
	if st.pcFrame == nil {
		st.pcFrame = map[uint64]uint32{}
	}
	if len(st.pcFrame) < maxSymCache {
		if ok {
			st.pcFrame[pc] = id + 1
		} else {
			st.pcFrame[pc] = 0
		}
	}
	return id, ok
}

func (st *stackTree) lookupFrame(syms *symbolizer, pc uint64) (uint32, bool) {
	sym, ok := syms.symbol(pc)
	if !ok {
		return 0, false
	}
	if id, ok := st.funcAt[sym.Addr]; ok {
		return id, true
	}
	if id, ok := st.callerID[sym.Addr]; ok {
		return id, true
	}
	id := uint32(len(st.rec.Funcs) + len(st.callers))
	st.callers = append(st.callers, sym)
	st.callerID[sym.Addr] = id
	return id, true
}

// frameName returns the name of frame id, safe in folded stacks.
func (st *stackTree) frameName(id uint32) string {
	return strings.NewReplacer(";", ":", "\n", " ", "\r", " ").Replace(st.name(id))
}

// walk calls visit for every node in depth-first order, with the frame
// names from the root.
func (st *stackTree) walk(visit func(n int32, stack []string)) {
	var stack []string
	var rec func(n int32)
	rec = func(n int32) {
		stack = append(stack, st.frameName(st.nodes[n].fn))
		visit(n, stack)
		for _, k := range st.nodes[n].kids {
			rec(k)
		}
		stack = stack[:len(stack)-1]
	}
	for _, r := range st.roots {
		rec(r)
	}
}

// ExportFolded writes the folded stacks of rec, one line per unique stack,
// "a;b;c value": value is the stack's self time in ns in graph mode, its
// number of calls in entry mode (where the stacks are rebuilt from the
// recorded callers, see entryStacks; their root may be an untraced
// caller).
// Threads are merged; stacks with value 0 are left out.
func ExportFolded(w io.Writer, rec *tracefile.Recording, f Filter) error {
	return ExportFoldedStream(w, rec.Stream(tracefile.StreamOptions{}), f)
}

// ExportFoldedStream is [ExportFolded] of a stream.
func ExportFoldedStream(w io.Writer, s *tracefile.Stream, f Filter) error {
	st, err := newStackTree(s, f)
	if err != nil {
		return err
	}
	bw := bufio.NewWriter(w)
	st.walk(func(n int32, stack []string) {
		if v := st.nodes[n].value(st.graph); v > 0 {
			fmt.Fprintf(bw, "%s %d\n", strings.Join(stack, ";"), v)
		}
	})
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write folded stacks: %w", err)
	}
	return nil
}
