package proc

import (
	"os"
	"testing"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("LIVETRACE_REQUIRE_ALL") != "" {
			t.Fatal("this test needs root (ptrace); run it as root")
		}
		t.Skip("needs root (ptrace)")
	}
}

func readFile(name string) ([]byte, error) { return os.ReadFile(name) }
