package report

import (
	"bufio"
	"fmt"
	"hash/fnv"
	"html"
	"io"

	"github.com/livetrace/livetrace/internal/tracefile"
)

const (
	flameWidth = 1200 // px
	flameRow   = 17   // px per frame
	// flameMinFrac leaves out frames narrower than this fraction of the
	// whole, so that the file stays small.
	flameMinFrac = 0.0002
)

// ExportFlameGraph writes a self-contained HTML page (no external assets)
// with a flame graph of the folded stacks of rec (see [ExportFolded]):
// frame widths are self-plus-children time in graph mode, calls in entry
// mode. Hovering a frame shows its name and value; clicking zooms into it,
// clicking the bottom frame zooms out. The search box highlights the frames
// whose name matches a regular expression (or contains the text, if it is
// not one) and shows the share of the whole they cover, a match inside
// another counted once.
func ExportFlameGraph(w io.Writer, rec *tracefile.Recording, f Filter) error {
	return ExportFlameGraphStream(w, rec.Stream(tracefile.StreamOptions{}), f)
}

// ExportFlameGraphStream is [ExportFlameGraph] of a stream.
func ExportFlameGraphStream(w io.Writer, s *tracefile.Stream, f Filter) error {
	rec := &s.Meta
	st, err := newStackTree(s, f)
	if err != nil {
		return err
	}
	var all int64
	maxDepth := 0
	for _, r := range st.roots {
		all += st.nodes[r].total
	}
	unit := func(v int64) string {
		if st.graph {
			return human(v)
		}
		return count(uint64(max(v, 0)), "call")
	}
	type frame struct {
		name     string
		x, w     float64 // fractions of the whole
		depth    int
		value    int64
		colorKey string
	}
	var frames []frame
	var place func(n int32, x float64, depth int)
	place = func(n int32, x float64, depth int) {
		node := &st.nodes[n]
		wf := float64(node.total) / float64(all)
		if wf < flameMinFrac {
			return
		}
		name := st.name(node.fn)
		frames = append(frames, frame{name: name, x: x, w: wf, depth: depth, value: node.total})
		maxDepth = max(maxDepth, depth)
		for _, k := range node.kids {
			place(k, x, depth+1)
			x += float64(st.nodes[k].total) / float64(all)
		}
	}
	if all > 0 {
		x := 0.0
		for _, r := range st.roots {
			place(r, x, 1)
			x += float64(st.nodes[r].total) / float64(all)
		}
	}
	title := fmt.Sprintf("livetrace: %s (pid %d), %s mode", Printable(rec.Comm), rec.PID, rec.Mode)
	height := (maxDepth+1)*flameRow + 40

	bw := bufio.NewWriter(w)
	fmt.Fprintf(bw, `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>%s</title>
<style>
body { font-family: sans-serif; margin: 8px; }
svg text { font: 11px monospace; pointer-events: none; fill: #000; }
g.f rect { stroke: #fff; stroke-width: 0.5; cursor: pointer; }
g.f:hover rect { stroke: #000; }
#info, #matched { height: 1.4em; font: 12px monospace; }
#bar { font: 12px monospace; }
</style></head><body>
<h3>%s</h3>
<div id="bar"><label>search <input id="search" type="search" size="40" placeholder="regular expression"></label> <span id="matched"></span></div>
<div id="info">hover a frame; click to zoom, click the bottom frame to reset</div>
<svg id="flame" width="%d" height="%d" viewBox="0 0 %d %d">
`, html.EscapeString(title), html.EscapeString(title), flameWidth, height, flameWidth, height)
	// Frames: the bottom row is "all", depth grows upwards.
	y := func(depth int) int { return height - 20 - (depth+1)*flameRow }
	writeFrame := func(name string, x, wf float64, depth int, value int64, tip string, fill string) {
		esc := html.EscapeString(name)
		fmt.Fprintf(bw, `<g class="f" data-n="%s" data-x="%.6f" data-w="%.6f" data-d="%d"><title>%s</title>`+
			`<rect x="%.2f" y="%d" width="%.2f" height="%d" fill="%s"></rect><text x="%.2f" y="%d">%s</text></g>`+"\n",
			esc, x, wf, depth, html.EscapeString(tip),
			x*flameWidth, y(depth), wf*flameWidth, flameRow-1, fill,
			x*flameWidth+3, y(depth)+12, html.EscapeString(fitLabel(name, wf*flameWidth)))
	}
	writeFrame("all", 0, 1, 0, all, "all: "+unit(all), "rgb(200,200,200)")
	for _, fr := range frames {
		tip := fmt.Sprintf("%s: %s (%.2f%%)", fr.name, unit(fr.value), 100*fr.w)
		writeFrame(fr.name, fr.x, fr.w, fr.depth, fr.value, tip, flameColor(fr.name))
	}
	fmt.Fprintf(bw, `</svg>
<script>
(function () {
  var W = %d, frames = document.querySelectorAll("g.f"), info = document.getElementById("info");
  function fit(name, px) {
    var n = Math.floor((px - 6) / 6.6);
    if (n < 3) return "";
    return name.length <= n ? name : name.slice(0, n - 2) + "..";
  }
  function zoom(g) {
    var zx = +g.dataset.x, zw = +g.dataset.w, zd = +g.dataset.d;
    frames.forEach(function (f) {
      var x = +f.dataset.x, w = +f.dataset.w, d = +f.dataset.d, nx, nw;
      if (d < zd) {
        if (x > zx + 1e-9 || x + w < zx + zw - 1e-9) { f.style.display = "none"; return; }
        nx = 0; nw = 1;
      } else {
        if (x < zx - 1e-9 || x + w > zx + zw + 1e-9) { f.style.display = "none"; return; }
        nx = (x - zx) / zw; nw = w / zw;
      }
      f.style.display = "";
      var r = f.querySelector("rect"), t = f.querySelector("text");
      r.setAttribute("x", nx * W); r.setAttribute("width", nw * W);
      t.setAttribute("x", nx * W + 3); t.textContent = fit(f.dataset.n, nw * W);
    });
  }
  // matchedShare returns the share of the whole that the frames (objects
  // {n, x, w, d}) whose name n matches re cover: the union of their
  // extents, so that a match inside another counts once.
  // BEGIN matchedShare
  function matchedShare(list, re) {
    var iv = [];
    list.forEach(function (f) { if (f.d > 0 && re.test(f.n)) iv.push([f.x, f.x + f.w]); });
    iv.sort(function (a, b) { return a[0] - b[0]; });
    var sum = 0, end = -1;
    iv.forEach(function (v) {
      var from = Math.max(v[0], end);
      if (v[1] > from) { sum += v[1] - from; end = v[1]; }
    });
    return Math.min(sum, 1);
  }
  function searchRE(q) {
    try { return new RegExp(q); } catch (e) { return new RegExp(q.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")); }
  }
  // END matchedShare
  var list = [];
  frames.forEach(function (f) {
    var r = f.querySelector("rect");
    r.dataset.c = r.getAttribute("fill");
    list.push({n: f.dataset.n, x: +f.dataset.x, w: +f.dataset.w, d: +f.dataset.d, g: f});
  });
  function search(q) {
    var out = document.getElementById("matched");
    if (q === "") {
      list.forEach(function (f) { var r = f.g.querySelector("rect"); r.setAttribute("fill", r.dataset.c); });
      out.textContent = "";
      return;
    }
    var re = searchRE(q);
    list.forEach(function (f) {
      var r = f.g.querySelector("rect");
      r.setAttribute("fill", f.d > 0 && re.test(f.n) ? "rgb(230,0,230)" : r.dataset.c);
    });
    out.textContent = "matched: " + (100 * matchedShare(list, re)).toFixed(2) + "%% of all";
  }
  document.getElementById("search").addEventListener("input", function (e) { search(e.target.value); });
  frames.forEach(function (f) {
    f.addEventListener("click", function () { zoom(f); });
    f.addEventListener("mouseover", function () { info.textContent = f.querySelector("title").textContent; });
  });
})();
</script>
</body></html>
`, flameWidth)
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write flame graph: %w", err)
	}
	return nil
}

// fitLabel shortens name to fit px pixels of 11px monospace text.
func fitLabel(name string, px float64) string {
	n := int((px - 6) / 6.6)
	if n < 3 {
		return ""
	}
	r := []rune(name)
	if len(r) <= n {
		return name
	}
	return string(r[:n-2]) + ".."
}

// flameColor picks a warm color from the name, the same for every run.
func flameColor(name string) string {
	h := fnv.New32a()
	h.Write([]byte(name))
	v := h.Sum32()
	return fmt.Sprintf("rgb(%d,%d,%d)", 205+v%50, 80+(v>>8)%130, 40+(v>>16)%50)
}
