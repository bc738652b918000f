package tracefile

import (
	"path"
	"strings"
)

// MatchModule is -m, in record and in the readers: whether a glob
// matches the module's path or its file name, or, without wildcards, is
// the soname its file name extends (libstdc++.so.6 names
// libstdc++.so.6.0.30, the file ldd's soname points to; libc.so names
// libc.so.6).
func MatchModule(p string, globs []string) bool {
	p = strings.TrimSuffix(p, " (deleted)")
	base := path.Base(p)
	for _, g := range globs {
		if ok, _ := path.Match(g, p); ok {
			return true
		}
		if ok, _ := path.Match(g, base); ok {
			return true
		}
		if strings.Contains(g, ".so") && !strings.ContainsAny(g, `*?[\/`) && strings.HasPrefix(base, g+".") {
			return true
		}
	}
	return false
}
