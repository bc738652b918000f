package elfsite

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/livetrace/livetrace/internal/testtarget"
)

// TestNestedPrologue: gcc -pg -mfentry puts "push %r10" before the site of
// a nested function, so the return address is not at [rsp] there. Parse
// marks that site GraphUnsafe, by decoding the bytes from the symbol to the
// site, or by the bytes around the site in a stripped file; every other
// site (ENDBR64 or nothing before it) is safe.
func TestNestedPrologue(t *testing.T) {
	strip := needTool(t, "strip")
	for _, form := range testtarget.Forms {
		for _, cf := range []bool{false, true} {
			name := string(form)
			var opts []testtarget.Option
			if cf {
				name += "-cet"
				opts = append(opts, testtarget.CFProtection())
			}
			t.Run(name, func(t *testing.T) {
				exe := testtarget.Build(t, testtarget.Nested, form, opts...)
				stripped := filepath.Join(t.TempDir(), "nested-stripped")
				if out, err := exec.Command(strip, "--strip-all", "-o", stripped, exe).CombinedOutput(); err != nil {
					t.Fatalf("strip: %v\n%s", err, out)
				}
				spec, err := Open(exe)
				if err != nil {
					t.Fatal(err)
				}
				sspec, err := Open(stripped)
				if err != nil {
					t.Fatal(err)
				}
				unsafe := map[uint64]string{}
				for _, st := range sspec.Sites {
					if st.GraphUnsafe != "" {
						unsafe[st.Addr] = st.GraphUnsafe
					}
				}
				found := false
				for _, st := range spec.Sites {
					fn := spec.SiteName(st)
					nested := strings.HasPrefix(fn, "nested_add") && form == testtarget.GccMcount
					if !nested {
						if st.GraphUnsafe != "" || unsafe[st.Addr] != "" {
							t.Errorf("%s: GraphUnsafe %q (stripped: %q), want none", fn, st.GraphUnsafe, unsafe[st.Addr])
						}
						continue
					}
					found = true
					for _, why := range []string{st.GraphUnsafe, unsafe[st.Addr]} {
						if !strings.Contains(why, "return address not at [rsp]") || !strings.Contains(why, "push %r10") || !strings.Contains(why, "nested function") {
							t.Errorf("%s at %#x: GraphUnsafe %q, want the push %%r10 of a gcc nested function", fn, st.Addr, why)
						}
					}
					t.Logf("%s: %s", fn, st.GraphUnsafe)
				}
				if form == testtarget.GccMcount && !found {
					t.Errorf("no site of nested_add in %s", exe)
				}
			})
		}
	}
}
