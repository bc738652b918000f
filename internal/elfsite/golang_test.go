package elfsite

import (
	"testing"

	"github.com/livetrace/livetrace/internal/testtarget"
)

// TestGoCode: the functions of a program linked by the Go toolchain are
// refused (goRefusal), with cgo and without; the C functions cgo links in
// are traced by relocation as in any program.
func TestGoCode(t *testing.T) {
	for _, cgo := range []bool{false, true} {
		spec, err := Open(testtarget.BuildGo(t, cgo))
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]string{}
		for i, f := range spec.Funcs {
			switch f.Name {
			case "main.leaf", "main.work", "runtime.mallocgc", "c_leaf", "c_work":
			default:
				continue
			}
			_, why, ok := spec.RelocFunc(i)
			if !ok {
				t.Errorf("cgo %v: %s is no candidate", cgo, f.Name)
			}
			seen[f.Name] = why
		}
		for _, name := range []string{"main.leaf", "main.work", "runtime.mallocgc"} {
			if why, ok := seen[name]; !ok || why != goRefusal {
				t.Errorf("cgo %v: %s: %q, want the refusal of Go code", cgo, name, why)
			}
		}
		for _, name := range []string{"c_leaf", "c_work"} {
			if why, ok := seen[name]; cgo && (!ok || why != "") {
				t.Errorf("cgo: C function %s: found %v, refused %q; want it traced", name, ok, why)
			}
		}
	}
}
