package testtarget

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// A Go program, built by the Go toolchain at test time with [BuildGo]. Its
// goroutines call Go functions that grow their stacks, and (with cgo) C
// functions, each on a fresh goroutine with a small stack, and it runs the
// collector now and then. It prints "ready" once started, then "calls N"
// every 100 ms: the rounds its goroutines have finished.
//
// The Go functions are main.leaf, main.deep and main.work; the C ones,
// with cgo, are c_leaf (called n times by c_work(n)) and c_work, called by
// main.work with n from 0 to 99.
const goSource = `package main

import (
	"fmt"
	"os"
	"runtime"
	"sync/atomic"
	"time"
)

//go:noinline
func leaf(x int) int { return x*3 + 1 }

//go:noinline
func deep(n int) int {
	var buf [64]byte
	buf[n%64] = byte(n)
	if n == 0 {
		return int(buf[0])
	}
	return deep(n-1) + int(buf[n%64])
}

//go:noinline
func work(i int) int {
	s := 0
	for j := 0; j < 10; j++ {
		s += leaf(i + j)
	}
	return s + deep(100) + cWork(i%100)
}

var rounds atomic.Int64

func main() {
	fmt.Println("ready")
	for g := 0; g < 4; g++ {
		go func() {
			for i := 0; ; i++ {
				done := make(chan int)
				go func() { done <- work(i) }()
				<-done
				rounds.Add(1)
				if i%2000 == 0 {
					runtime.GC()
				}
			}
		}()
	}
	for {
		time.Sleep(100 * time.Millisecond)
		if _, err := fmt.Println("calls", rounds.Load()); err != nil {
			os.Exit(1)
		}
	}
}
`

const goNoCgo = `package main

//go:noinline
func cWork(n int) int { return n }
`

const goCgo = `package main

/*
#include <stdint.h>
__attribute__((noinline)) uint64_t c_leaf(uint64_t x) { return x * 3 + 1; }
__attribute__((noinline)) uint64_t c_work(uint64_t n)
{
	uint64_t s = 0;
	for (uint64_t i = 0; i < n; i++)
		s += c_leaf(i);
	return s;
}
*/
import "C"

func cWork(n int) int { return int(C.c_work(C.uint64_t(n))) }
`

// BuildGo builds the Go program (see goSource) with the Go toolchain that
// runs the tests, with cgo (and gcc) or without (a static executable), and
// returns its path.
func BuildGo(tb testing.TB, cgo bool) string {
	tb.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		SkipOrFatal(tb, "the go command is not on PATH: %v", err)
	}
	dir := tb.TempDir()
	files := map[string]string{"go.mod": "module ltgofixture\n\ngo 1.21\n", "main.go": goSource, "cwork.go": goNoCgo}
	env := "CGO_ENABLED=0"
	if cgo {
		files["cwork.go"], env = goCgo, "CGO_ENABLED=1"
	}
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			tb.Fatal(err)
		}
	}
	exe := filepath.Join(dir, "gofixture")
	cmd := exec.Command(goBin, "build", "-o", exe, ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env, "GOTOOLCHAIN=local", "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("build the Go fixture (%s): %v\n%s", env, err, out)
	}
	return exe
}
