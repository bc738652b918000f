package session

import (
	"errors"
	"path/filepath"
	"testing"

	"github.com/livetrace/livetrace/internal/testtarget"
)

// TestBeforeInject checks that Options.BeforeInject runs once, after the
// attach and before anything in the target changes (record waits there
// for its signal handlers): at that moment the target's mappings, file
// descriptors and text are those it had before Start; and that a Start
// that fails in discover never calls it.
func TestBeforeInject(t *testing.T) {
	testtarget.RequireRoot(t)
	tp := startWorkload(t, testtarget.ClangNop5)
	before := testtarget.TakeSnapshot(t, tp.Pid())
	calls := 0
	opts := Options{Funcs: []string{"work_*", "lib_*"}, Output: filepath.Join(t.TempDir(), "rec.data")}
	opts.BeforeInject = func() {
		calls++
		before.CheckSame(t, tp.Pid())
		testtarget.CheckText(t, tp.Pid())
	}
	s, err := Start(tp.Pid(), opts)
	check(t, err)
	check(t, s.Close())
	if calls != 1 {
		t.Errorf("BeforeInject called %d times, want 1", calls)
	}
	before.CheckSame(t, tp.Pid())

	calls = 0
	opts.Funcs = []string{"no_such_function_*"}
	if _, err := Start(tp.Pid(), opts); !errors.Is(err, ErrNoMatch) {
		t.Fatalf("Start with a glob that matches nothing: %v, want ErrNoMatch", err)
	}
	if calls != 0 {
		t.Errorf("BeforeInject called %d times by a Start that failed in discover", calls)
	}
	before.CheckSame(t, tp.Pid())
	alive(t, tp)
}
