package tracefile

import "testing"

// TestMatchModule: -m matches a module's path or file name by glob, and
// a shared library's file by the soname it extends.
func TestMatchModule(t *testing.T) {
	const stdcxx = "/usr/lib/x86_64-linux-gnu/libstdc++.so.6.0.30"
	for _, tt := range []struct {
		path string
		glob string
		want bool
	}{
		{stdcxx, "libstdc++.so.6", true},
		{stdcxx, "libstdc++.so", true},
		{stdcxx, "libstdc++.so.6.0.30", true},
		{stdcxx, "libstdc++*", true},
		{stdcxx, stdcxx, true},
		{stdcxx, "/usr/lib/*/libstdc++.so.6.0.30", true},
		{stdcxx, "libstdc++.so.60", false},
		{stdcxx, "libstdc", false},
		{stdcxx, "libstdc++.so.6.0", true},
		{stdcxx, "libstdc++.so.7", false},
		{"/lib/x86_64-linux-gnu/libc.so.6", "libc.so.6", true},
		{"/lib/x86_64-linux-gnu/libc.so.6", "libc.so", true},
		{"/lib/x86_64-linux-gnu/libc.so.6 (deleted)", "libc.so.6", true},
		{"/usr/bin/node", "node", true},
		{"/usr/bin/node.so.1", "node", false},
		{"/usr/lib/libfoo.so.1.2", "lib*.so.1", false}, // a glob is matched as written
		{"/usr/lib/libfoo.so.1.2", "/usr/lib/libfoo.so.1", false},
	} {
		if got := MatchModule(tt.path, []string{tt.glob}); got != tt.want {
			t.Errorf("MatchModule(%q, %q) = %v, want %v", tt.path, tt.glob, got, tt.want)
		}
	}
	if MatchModule(stdcxx, nil) {
		t.Error("no glob matched a module")
	}
}
