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
// package documentation says); in entry mode stacks are one function deep
// and valued by their number of calls.
type stackTree struct {
	rec   *tracefile.Meta
	graph bool
	nodes []stackNode
	roots []int32
	index map[[2]int64]int32 // (parent node, fn) -> node
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
		for {
			ev, ok := s.Next()
			if !ok {
				break
			}
			if ev.Kind == tracefile.KindEntry && f.keep(&ev) {
				n := st.node(-1, ev.Func)
				st.nodes[n].calls++
			}
		}
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
		return strings.Compare(funcName(rec, st.nodes[a].fn), funcName(rec, st.nodes[b].fn))
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

// frameName returns a function name that is safe in folded stacks.
func frameName(rec *tracefile.Meta, fn uint32) string {
	return strings.NewReplacer(";", ":", "\n", " ", "\r", " ").Replace(funcName(rec, fn))
}

// walk calls visit for every node in depth-first order, with the frame
// names from the root.
func (st *stackTree) walk(visit func(n int32, stack []string)) {
	var stack []string
	var rec func(n int32)
	rec = func(n int32) {
		stack = append(stack, frameName(st.rec, st.nodes[n].fn))
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
// number of calls in entry mode (where stacks are a single function).
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
