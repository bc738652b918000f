package main

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/livetrace/livetrace/internal/testtarget"
)

// TestStockRedis traces every function of Debian's redis-server (stripped,
// built with gcc -O2, no NOPs: all of them by relocation) under
// redis-benchmark, in graph and in entry mode, and every function of its
// libc in entry mode. The server must survive, answer correctly, and have
// its text back byte for byte. This run found that gcc's -fipa-ra callers
// keep registers across calls (keep stubs), that lt_return_keep lost the
// carry flag, and that a step over a keep stub's pushfq left the trap flag
// set after detach.
func TestStockRedis(t *testing.T) {
	testtarget.RequireRoot(t)
	server, benchmark := redisTools(t)
	bin := livetraceBinary(t)
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"graph", []string{"--graph", "-m", "redis-*"}},
		{"entry", []string{"-m", "redis-*"}},
		{"libc", []string{"-m", "libc.so*"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, c, exited, srvOut := startRedis(t, server)
			port := c.port
			load := exec.Command(benchmark, "-p", strconv.Itoa(port), "-q", "-n", "2000000", "-P", "16", "-t", "set,get,incr,lpush,lrange_100")
			if err := load.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() { load.Process.Kill(); load.Wait() }()
			time.Sleep(300 * time.Millisecond)
			out := filepath.Join(t.TempDir(), "redis.data")
			rec := exec.Command(bin, append([]string{"record", "-p", strconv.Itoa(srv.Process.Pid), "-o", out}, tc.args...)...)
			var stderr bytes.Buffer
			rec.Stderr = &stderr
			if err := rec.Start(); err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(60 * time.Second)
			for !strings.Contains(stderr.String(), "tracing ") && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			time.Sleep(time.Second)
			_ = rec.Process.Signal(syscall.SIGINT)
			if err := rec.Wait(); err != nil {
				t.Fatalf("record: %v\n%s", err, stderr.String())
			}
			select {
			case err := <-exited:
				t.Fatalf("redis-server died while traced: %v\nrecord said:\n%s\nthe server said:\n%s", err, stderr.String(), lastLinesOf(srvOut.String(), 30))
			default:
			}

			// Answers right after the detach, and its text is the file's.
			if got := c.do(t, "SET", "livetrace", "stock-redis"); got != "+OK" {
				t.Fatalf("SET: %q", got)
			}
			if got := c.do(t, "GET", "livetrace"); got != "$11\r\nstock-redis" {
				t.Fatalf("GET: %q", got)
			}
			testtarget.CheckText(t, srv.Process.Pid)
			info, _, err := runCLI(t, "info", "-i", out)
			if err != nil {
				t.Fatal(err)
			}
			var events int
			if _, err := fmt.Sscanf(info[strings.Index(info, "events:"):], "events: %d", &events); err != nil || events == 0 {
				t.Errorf("no events recorded:\n%s", info)
			}
			t.Logf("%s; %d events", strings.TrimSpace(lastLinesOf(stderr.String(), 1)), events)
		})
	}
}

// TestStockRedisLiveCtl runs livetrace live on Debian's redis-server (a
// multi-threaded program nobody here wrote) under redis-benchmark, and
// changes what is traced from another "shell" with livetrace ctl: a
// function enabled shows in live's output within a second of the enable,
// and after ctl stop live ends with status 0 and redis-server's text is
// the file's.
func TestStockRedisLiveCtl(t *testing.T) {
	testtarget.RequireRoot(t)
	server, benchmark := redisTools(t)
	bin := livetraceBinary(t)
	srv, c, exited, _ := startRedis(t, server)
	load := exec.Command(benchmark, "-p", strconv.Itoa(c.port), "-q", "-n", "5000000", "-c", "4", "-t", "set,get")
	if err := load.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { load.Process.Kill(); load.Wait() }()
	pid := strconv.Itoa(srv.Process.Pid)
	live := exec.Command(bin, "live", "-p", pid, "-m", "redis-*", "-F", "call")
	stdout, err := live.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	live.Stderr = &stderr
	if err := live.Start(); err != nil {
		t.Fatal(err)
	}
	defer live.Process.Kill()
	var mu sync.Mutex
	seen := map[string]int{}
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			l := sc.Text()
			mu.Lock()
			for _, fn := range []string{": call <- ", ": lookupKey <- ", ": lookupKeyWrite <- "} {
				if strings.Contains(l, fn) {
					seen[fn]++
				}
			}
			mu.Unlock()
		}
	}()
	waitSeen := func(fn string, what string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			mu.Lock()
			n := seen[fn]
			mu.Unlock()
			if n > 0 {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Fatalf("live never printed%s %s\nstderr:\n%s", fn, what, stderr.String())
	}
	waitSeen(": call <- ", "")
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := ctlRun("-p", pid, "status"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("live serves no control socket")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got := mustCtl(t, "-p", pid, "enable", "lookupKey*"); !strings.Contains(got, "enabled") {
		t.Fatalf("enable: %s", got)
	}
	t0 := time.Now()
	waitSeen(": lookupKey <- ", "after ctl enable lookupKey*")
	waitSeen(": lookupKeyWrite <- ", "after ctl enable lookupKey*")
	t.Logf("lookupKey* showed %v after the enable", time.Since(t0).Round(time.Millisecond))
	st := mustCtl(t, "-p", pid, "status")
	if !strings.Contains(st, "lookupKeyRead") || !strings.Contains(st, "\n  call\n") {
		t.Errorf("status after enable:\n%s", st)
	}
	if got := mustCtl(t, "-p", pid, "disable", "lookupKey*"); !strings.Contains(got, "disabled") {
		t.Fatalf("disable: %s", got)
	}
	mustCtl(t, "-p", pid, "stop")
	if err := live.Wait(); err != nil {
		t.Fatalf("live after ctl stop: %v\n%s", err, stderr.String())
	}
	<-readDone
	select {
	case err := <-exited:
		t.Fatalf("redis-server died: %v", err)
	default:
	}
	if got := c.do(t, "SET", "k", "v"); got != "+OK" {
		t.Fatalf("SET after detach: %q", got)
	}
	testtarget.CheckText(t, srv.Process.Pid)
}

// redisTools returns the paths of Debian's redis-server and
// redis-benchmark.
func redisTools(t *testing.T) (server, benchmark string) {
	t.Helper()
	server, err := exec.LookPath("redis-server")
	if err != nil {
		testtarget.SkipOrFatal(t, "redis-server is not installed: run `make deps-test` (apt-get install redis-server redis-tools)")
	}
	benchmark, err = exec.LookPath("redis-benchmark")
	if err != nil {
		testtarget.SkipOrFatal(t, "redis-benchmark is not installed: run `make deps-test` (apt-get install redis-tools)")
	}
	return server, benchmark
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startRedis starts redis-server on a free port and connects to it: exited
// gets its Wait's error, out what it printed.
func startRedis(t *testing.T, server string) (*exec.Cmd, *redisConn, chan error, *bytes.Buffer) {
	t.Helper()
	port := freePort(t)
	srv := exec.Command(server, "--port", strconv.Itoa(port), "--save", "", "--appendonly", "no", "--dir", t.TempDir(), "--bind", "127.0.0.1")
	srv.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var out bytes.Buffer
	srv.Stdout, srv.Stderr = &out, &out
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- srv.Wait() }()
	t.Cleanup(func() { srv.Process.Kill(); <-exited })
	c := redisDial(t, port)
	if got := c.do(t, "PING"); got != "+PONG" {
		t.Fatalf("PING: %q", got)
	}
	return srv, c, exited, &out
}

// redisConn speaks just enough RESP for the test.
type redisConn struct {
	c    net.Conn
	port int
}

func redisDial(t *testing.T, port int) *redisConn {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			t.Cleanup(func() { c.Close() })
			return &redisConn{c, port}
		}
		if time.Now().After(deadline) {
			t.Fatalf("redis-server does not listen on %d: %v", port, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// do sends a command and returns the reply, a bulk string's length line
// and value joined by CRLF, without the final CRLF.
func (r *redisConn) do(t *testing.T, args ...string) string {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	_ = r.c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := r.c.Write([]byte(b.String())); err != nil {
		t.Fatalf("%v: %v", args, err)
	}
	buf := make([]byte, 4096)
	var got []byte
	for {
		n, err := r.c.Read(buf)
		got = append(got, buf[:n]...)
		s := string(got)
		if strings.HasPrefix(s, "$-1\r\n") {
			return "$-1" // nil
		}
		if strings.HasPrefix(s, "$") {
			if i := strings.Index(s, "\r\n"); i > 0 {
				if l, _ := strconv.Atoi(s[1:i]); len(s) >= i+2+l+2 {
					return strings.TrimSuffix(s, "\r\n")
				}
			}
		} else if strings.HasSuffix(s, "\r\n") {
			return strings.TrimSuffix(s, "\r\n")
		}
		if err != nil {
			t.Fatalf("%v: %v (read %q)", args, err, s)
		}
	}
}

func lastLinesOf(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// TestStockRedisTop runs livetrace top in tmux on Debian's redis-server
// under redis-benchmark: rows with calls, times and p99 for the functions
// of a real server, a glob typed in enables more of them, and q detaches
// leaving the server answering and its text the file's.
func TestStockRedisTop(t *testing.T) {
	testtarget.RequireRoot(t)
	server, benchmark := redisTools(t)
	bin := livetraceBinary(t)
	srv, c, exited, _ := startRedis(t, server)
	load := exec.Command(benchmark, "-p", strconv.Itoa(c.port), "-q", "-n", "5000000", "-c", "2", "-t", "set,get")
	if err := load.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { load.Process.Kill(); load.Wait() }()
	pid := strconv.Itoa(srv.Process.Pid)
	dir := t.TempDir()
	errFile, rcFile := filepath.Join(dir, "stderr"), filepath.Join(dir, "rc")
	ts := startTmux(t, 150, 24, fmt.Sprintf("%s top -p %s -m 'redis-*' -F call -F 'lookupKey*' 2>%s; echo $? >%s", bin, pid, errFile, rcFile))
	scr := ts.waitScreen("start", "livetrace top  pid "+pid, "call", "lookupKey")
	deadline := time.Now().Add(15 * time.Second)
	for {
		r := topRow(scr, "call")
		if r != nil && r[0] != "0" && r[3] != "-" && r[5] != "-" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no calls shown for call:\n%s", scr)
		}
		time.Sleep(200 * time.Millisecond)
		scr = ts.screen()
	}
	ts.keys("e")
	ts.waitScreen("prompt", "enable GLOB: _")
	ts.keys("-l", "setKey")
	ts.keys("Enter")
	ts.waitScreen("enable", "enabled 1 function", "setKey")
	ts.keys("q")
	deadline = time.Now().Add(30 * time.Second)
	for {
		if b, err := os.ReadFile(rcFile); err == nil && len(b) > 0 {
			if rc := strings.TrimSpace(string(b)); rc != "0" {
				eb, _ := os.ReadFile(errFile)
				t.Fatalf("top exited with %s:\n%s", rc, eb)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("top did not end after q:\n%s", ts.screen())
		}
		time.Sleep(100 * time.Millisecond)
	}
	select {
	case err := <-exited:
		t.Fatalf("redis-server died: %v", err)
	default:
	}
	if got := c.do(t, "GET", "k"); !strings.HasPrefix(got, "$") {
		t.Fatalf("GET after detach: %q", got)
	}
	testtarget.CheckText(t, srv.Process.Pid)
}
