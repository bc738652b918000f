package report_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"html"
	"math"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/livetrace/livetrace/internal/report"
	"github.com/livetrace/livetrace/internal/testtarget"
	"github.com/livetrace/livetrace/internal/tracefile"
	"github.com/livetrace/livetrace/internal/tracefile/tracefiletest"
)

// TestFlameGraphSearch runs the search code of the HTML flame graph in
// node on the page's frames, and checks the share it reports for each
// query against the folded stacks: the value of the stacks that hold a
// matching frame, over the whole.
func TestFlameGraphSearch(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		testtarget.SkipOrFatal(t, "node (Debian package nodejs) is needed to run the flame graph's JavaScript")
	}
	for _, mode := range []tracefile.Mode{tracefile.ModeGraph, tracefile.ModeEntry} {
		rec := tracefiletest.Scenario(mode).Recording()
		var page, fold bytes.Buffer
		if err := report.ExportFlameGraph(&page, rec, report.Filter{}); err != nil {
			t.Fatal(err)
		}
		if err := report.ExportFolded(&fold, rec, report.Filter{}); err != nil {
			t.Fatal(err)
		}
		src := page.String()
		i, j := strings.Index(src, "// BEGIN matchedShare"), strings.Index(src, "// END matchedShare")
		if i < 0 || j < i || !strings.Contains(src, `<input id="search"`) {
			t.Fatalf("%s: the page has no search", mode)
		}
		type frame struct {
			N string  `json:"n"`
			X float64 `json:"x"`
			W float64 `json:"w"`
			D int     `json:"d"`
		}
		var frames []frame
		for _, m := range regexp.MustCompile(`<g class="f" data-n="([^"]*)" data-x="([^"]*)" data-w="([^"]*)" data-d="([^"]*)">`).FindAllStringSubmatch(src, -1) {
			x, _ := strconv.ParseFloat(m[2], 64)
			w, _ := strconv.ParseFloat(m[3], 64)
			d, _ := strconv.Atoi(m[4])
			frames = append(frames, frame{html.UnescapeString(m[1]), x, w, d})
		}
		queries := []string{"fib", "^process$", "libhash|write", "std::vector<int>", "[", "push_back(int", "nothing matches this"}
		list, _ := json.Marshal(frames)
		qs, _ := json.Marshal(queries)
		prog := src[i:j] + fmt.Sprintf("\nvar list = %s;\nconsole.log(JSON.stringify(%s.map(function (q) { return matchedShare(list, searchRE(q)); })));\n", list, qs)
		out, err := exec.Command(node, "-e", prog).CombinedOutput()
		if err != nil {
			t.Fatalf("node: %v\n%s", err, out)
		}
		var got []float64
		if err := json.Unmarshal(out, &got); err != nil {
			t.Fatalf("node said %q: %v", out, err)
		}
		// The oracle: stacks with a matching frame, from the folded output.
		var total float64
		stacks := map[string]float64{}
		for _, l := range strings.Split(strings.TrimSpace(fold.String()), "\n") {
			k := strings.LastIndexByte(l, ' ')
			v, _ := strconv.ParseFloat(l[k+1:], 64)
			stacks[l[:k]] += v
			total += v
		}
		for qi, q := range queries {
			re, err := regexp.Compile(q)
			if err != nil {
				re = regexp.MustCompile(regexp.QuoteMeta(q))
			}
			var want float64
			for stack, v := range stacks {
				for _, fr := range strings.Split(stack, ";") {
					if re.MatchString(fr) {
						want += v
						break
					}
				}
			}
			want /= total
			if math.Abs(got[qi]-want) > 1e-5 {
				t.Errorf("%s: search %q: page says %.6f, folded stacks %.6f", mode, q, got[qi], want)
			}
		}
		if got[0] == 0 || got[len(got)-1] != 0 {
			t.Errorf("%s: shares %v", mode, got)
		}
	}
}
