package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/livetrace/livetrace/internal/report"
	"github.com/livetrace/livetrace/internal/session"
	"github.com/livetrace/livetrace/internal/textpoke"
)

// The control socket (docs/DESIGN-NOTES.md, "Changing what is traced while
// attached"). A running record or live serves a unix socket named after the
// target's pid in a runtime directory of the tracer's user, mode 0700:
// /run/livetrace for root, $XDG_RUNTIME_DIR/livetrace otherwise. Only root
// and the tracer's uid may use it: the directory keeps others out, and the
// server checks each peer's credentials (SO_PEERCRED) too. The protocol is
// one JSON request per connection, one JSON reply.

// ctlRequest is what `livetrace ctl` sends.
type ctlRequest struct {
	Cmd   string   `json:"cmd"` // enable, disable, status, stop
	Globs []string `json:"globs,omitempty"`
	// Args and Rets are enable's -A and -R specs, as typed: the server
	// parses them as record does (args.go).
	Args []string `json:"args,omitempty"`
	Rets []string `json:"rets,omitempty"`
}

// ctlReply is the server's answer.
type ctlReply struct {
	Error   string                `json:"error,omitempty"`
	Changed []string              `json:"changed,omitempty"`
	Already int                   `json:"already,omitempty"`
	Refused []session.RefusedSite `json:"refused,omitempty"`
	Status  *ctlStatus            `json:"status,omitempty"`
}

// ctlStatus is the answer to status.
type ctlStatus struct {
	PID      int      `json:"pid"`
	Mode     string   `json:"mode"`     // entry or graph
	Protocol string   `json:"protocol"` // live or stop
	Traced   []string `json:"traced"`
	Off      []string `json:"off,omitempty"` // prepared, disabled now
	Events   uint64   `json:"events"`
	Lost     uint64   `json:"lost"`
	Threads  int      `json:"threads"`
	Seconds  float64  `json:"seconds"`
	Output   string   `json:"output,omitempty"`
	Changes  int      `json:"changes"`
}

// ctlDir returns the runtime directory of the control sockets for the
// current user.
func ctlDir() (string, error) {
	if os.Geteuid() == 0 {
		return rootCtlDir, nil
	}
	rt := os.Getenv("XDG_RUNTIME_DIR")
	if rt == "" {
		return "", errors.New("XDG_RUNTIME_DIR is not set: livetrace keeps its control sockets there (in livetrace/); set it to your runtime directory (e.g. /run/user/$UID)")
	}
	return filepath.Join(rt, "livetrace"), nil
}

// rootCtlDir is the runtime directory of root's control sockets.
const rootCtlDir = "/run/livetrace"

// ctlPaths returns where the control socket of a session tracing pid may
// be, for a client: in the user's own directory, then in root's.
func ctlPaths(pid int) []string {
	name := strconv.Itoa(pid) + ".sock"
	var out []string
	if dir, err := ctlDir(); err == nil && dir != rootCtlDir {
		out = append(out, filepath.Join(dir, name))
	}
	return append(out, filepath.Join(rootCtlDir, name))
}

// ctlServer serves one session's control socket.
type ctlServer struct {
	pid      int
	s        *session.Session
	ln       *net.UnixListener
	path     string
	stop     chan struct{} // closed by a stop request
	stopOnce sync.Once
	onChange func() // after each change (live refreshes its function names)
	wg       sync.WaitGroup
}

// serveCtl starts serving the control socket of s.
func serveCtl(s *session.Session, onChange func()) (*ctlServer, error) {
	dir, err := ctlDir()
	if err != nil {
		return nil, err
	}
	return serveCtlIn(dir, s.Pid(), s, onChange)
}

// serveCtlIn serves the control socket of s (tracing pid) in dir.
func serveCtlIn(dir string, pid int, s *session.Session, onChange func()) (*ctlServer, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create control socket directory: %w", err)
	}
	// The directory is what keeps other users out: it must be ours, 0700.
	var st unix.Stat_t
	if err := unix.Lstat(dir, &st); err != nil {
		return nil, fmt.Errorf("check control socket directory: %w", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR || int(st.Uid) != os.Geteuid() || st.Mode&0o077 != 0 {
		return nil, fmt.Errorf("control socket directory %s must be a directory owned by uid %d with mode 0700 (it has uid %d, mode %#o): remove it, livetrace makes it again", dir, os.Geteuid(), st.Uid, st.Mode&0o7777)
	}
	path := filepath.Join(dir, strconv.Itoa(pid)+".sock")
	if _, err := os.Lstat(path); err == nil {
		// Left by a tracer that was killed, or served by one that runs.
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("another livetrace serves %s for pid %d", path, pid)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale control socket: %w", err)
		}
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("serve control socket: %w", err)
	}
	ln.SetUnlinkOnClose(true)
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("serve control socket: %w", err)
	}
	c := &ctlServer{pid: pid, s: s, ln: ln, path: path, stop: make(chan struct{}), onChange: onChange}
	c.wg.Add(1)
	go c.accept()
	return c, nil
}

// Stopped is closed when a client asked to stop.
func (c *ctlServer) Stopped() <-chan struct{} {
	if c == nil {
		return nil
	}
	return c.stop
}

// Close stops serving and removes the socket; it waits for a request
// under way.
func (c *ctlServer) Close() {
	if c == nil {
		return
	}
	c.ln.Close()
	c.wg.Wait()
}

func (c *ctlServer) accept() {
	defer c.wg.Done()
	for {
		conn, err := c.ln.AcceptUnix()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		c.serve(conn) // one at a time: changes are serialized anyway
	}
}

func (c *ctlServer) serve(conn *net.UnixConn) {
	defer conn.Close()
	// Requests are served one at a time: a client that sends nothing must
	// not hold the others for long. The reply may wait for a batch.
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	_ = conn.SetWriteDeadline(time.Now().Add(time.Minute))
	enc := json.NewEncoder(conn)
	uid, err := peerUID(conn)
	if err != nil {
		_ = enc.Encode(ctlReply{Error: err.Error()})
		return
	}
	if uid != 0 && uid != os.Geteuid() {
		_ = enc.Encode(ctlReply{Error: fmt.Sprintf("permission denied: the session of pid %d belongs to uid %d; only it and root may control it", c.pid, os.Geteuid())})
		return
	}
	var req ctlRequest
	if err := json.NewDecoder(io.LimitReader(conn, 1<<20)).Decode(&req); err != nil {
		_ = enc.Encode(ctlReply{Error: "bad request: " + err.Error()})
		return
	}
	_ = enc.Encode(c.handle(req))
}

// peerUID returns the uid of the process at the other end of conn.
func peerUID(conn *net.UnixConn) (int, error) {
	raw, err := conn.SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, err
	}
	if cerr != nil {
		return 0, fmt.Errorf("read the peer's credentials: %w", cerr)
	}
	return int(cred.Uid), nil
}

func (c *ctlServer) handle(req ctlRequest) ctlReply {
	switch req.Cmd {
	case "enable", "disable":
		var res session.ChangeResult
		var err error
		if req.Cmd == "enable" {
			var rules []session.ArgRule
			rules, err = ctlArgRules(req.Args, req.Rets)
			if err == nil {
				res, err = c.s.EnableArgs(req.Globs, rules)
			}
		} else if len(req.Args) > 0 || len(req.Rets) > 0 {
			err = errors.New("-A and -R go with enable only")
		} else {
			res, err = c.s.Disable(req.Globs)
		}
		if err != nil {
			return ctlReply{Error: err.Error()}
		}
		if len(res.Changed) > 0 && c.onChange != nil {
			c.onChange()
		}
		return ctlReply{Changed: res.Changed, Already: res.Already, Refused: res.Refused}
	case "status":
		return ctlReply{Status: c.status()}
	case "stop":
		c.stopOnce.Do(func() { close(c.stop) })
		return ctlReply{}
	}
	return ctlReply{Error: fmt.Sprintf("unknown command %q: use enable, disable, status or stop", req.Cmd)}
}

func (c *ctlServer) status() *ctlStatus {
	sum := c.s.Summary()
	st := &ctlStatus{PID: c.s.Pid(), Mode: "entry", Events: sum.Events, Lost: sum.Lost, Threads: sum.Threads,
		Seconds: sum.Duration.Seconds(), Output: sum.Output, Changes: len(c.s.Changes())}
	if c.s.Graph() {
		st.Mode = "graph"
	}
	st.Protocol = "live"
	if m, _ := c.s.Mode(); m == textpoke.ModeStop {
		st.Protocol = "stop"
	}
	st.Traced = []string{}
	for _, f := range c.s.Funcs() {
		if f.Traced {
			st.Traced = append(st.Traced, f.Name)
		} else {
			st.Off = append(st.Off, f.Name)
		}
	}
	return st
}

// ctlArgRules parses enable's -A and -R specs.
func ctlArgRules(args, rets []string) ([]session.ArgRule, error) {
	var out []session.ArgRule
	for _, a := range args {
		r, err := parseArgRule(a, false)
		if err != nil {
			return nil, fmt.Errorf("parse -A %q: %w", a, err)
		}
		out = append(out, r)
	}
	for _, a := range rets {
		r, err := parseArgRule(a, true)
		if err != nil {
			return nil, fmt.Errorf("parse -R %q: %w", a, err)
		}
		out = append(out, r)
	}
	return out, nil
}

// ctlOptions holds the flags of `livetrace ctl`.
type ctlOptions struct {
	pid    int
	args   []string // enable -A
	rets   []string // enable -R
	stdout io.Writer
}

func newCtlCmd(stdout, stderr io.Writer) *cobra.Command {
	o := &ctlOptions{stdout: stdout}
	cmd := &cobra.Command{
		Use:   "ctl -p PID (enable GLOB... | disable GLOB... | status | stop)",
		Short: "Change what a running record, live or top traces, without detaching",
		Long: `Talk to the livetrace that traces process PID (record, live or top), through
its control socket (/run/livetrace/PID.sock for root, else
$XDG_RUNTIME_DIR/livetrace/PID.sock); only root and the user running that
livetrace may.

  enable GLOB...   start tracing the functions matching the shell globs, in
                   one patch batch; a function not selected at the start is
                   prepared now (-m still bounds the modules, -N does not)
                   and captures what record's -A, -R and -a give it, plus
                   the -A and -R specs given here; a function traced
                   before keeps what it captured
  disable GLOB...  stop tracing the traced functions matching the globs;
                   their entries get their original bytes back
  status           the functions traced, events, lost events and mode
  stop             end the recording, as Ctrl-C does

A glob that matches nothing is an error, and nothing changes. The recording
keeps the time of every change (livetrace info lists them).`,
		Example: `  livetrace ctl -p 1234 enable 'parse_*' lib_add
  livetrace ctl -p 1234 -A 'lookup_*@arg1,arg2/s' -R 'lookup_*' enable 'lookup_*'
  livetrace ctl -p 1234 disable 'parse_*'
  livetrace ctl -p 1234 status
  livetrace ctl -p 1234 stop`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return errors.New("ctl: say what to do: enable GLOB..., disable GLOB..., status or stop")
			}
			switch args[0] {
			case "enable", "disable":
				if len(args) < 2 {
					return fmt.Errorf("ctl %s: name the functions with one or more shell globs", args[0])
				}
			case "status", "stop":
				if len(args) > 1 {
					return fmt.Errorf("ctl %s takes no arguments", args[0])
				}
			default:
				return fmt.Errorf("ctl: unknown command %q: use enable, disable, status or stop", args[0])
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.pid <= 0 {
				return errors.New("ctl: -p PID is required: the pid of the process a livetrace traces")
			}
			if (len(o.args) > 0 || len(o.rets) > 0) && args[0] != "enable" {
				return fmt.Errorf("ctl %s: -A and -R go with enable only (the values a function it adds captures)", args[0])
			}
			if _, err := ctlArgRules(o.args, o.rets); err != nil {
				return fmt.Errorf("ctl enable: %w", err)
			}
			return o.run(ctlRequest{Cmd: args[0], Globs: args[1:], Args: o.args, Rets: o.rets})
		},
	}
	cmd.Flags().IntVarP(&o.pid, "pid", "p", 0, "the `PID` of the traced process")
	cmd.Flags().StringArrayVarP(&o.args, "argument", "A", nil, "enable: record arguments of the added functions matching GLOB: `GLOB@arg1,arg2/s,...` (as record -A)")
	cmd.Flags().StringArrayVarP(&o.rets, "retval", "R", nil, "enable: record the return value of the added functions matching GLOB (graph mode): `GLOB[@retval/FMT]` (as record -R)")
	return cmd
}

func (o *ctlOptions) run(req ctlRequest) error {
	rep, err := ctlCall(o.pid, req)
	if err != nil {
		return err
	}
	if rep.Error != "" {
		return fmt.Errorf("ctl %s: %s", req.Cmd, rep.Error)
	}
	w := o.stdout
	switch req.Cmd {
	case "enable", "disable":
		verb := map[string]string{"enable": "enabled", "disable": "disabled"}[req.Cmd]
		fmt.Fprintf(w, "%s %s", verb, plural(len(rep.Changed), "function"))
		if len(rep.Changed) > 0 {
			names := rep.Changed
			more := ""
			if len(names) > 10 {
				more = fmt.Sprintf(" and %d more", len(names)-10)
				names = names[:10]
			}
			for i := range names {
				names[i] = report.Printable(names[i])
			}
			fmt.Fprintf(w, ": %s%s", strings.Join(names, " "), more)
		}
		fmt.Fprintln(w)
		if rep.Already > 0 {
			fmt.Fprintf(w, "%s already %s\n", plural(rep.Already, "function"), verb)
		}
		for _, r := range rep.Refused {
			fmt.Fprintf(w, "%s cannot be traced: %s\n", report.Printable(r.Name), report.Printable(r.Reason))
		}
	case "status":
		st := rep.Status
		if st == nil {
			return errors.New("ctl status: the tracer sent no status")
		}
		fmt.Fprintf(w, "pid %d, %s mode, %s protocol, %s for %.1fs\n", st.PID, st.Mode, st.Protocol, plural(st.Threads, "thread"), st.Seconds)
		fmt.Fprintf(w, "%s, %d lost", plural(int(st.Events), "event"), st.Lost)
		if st.Output != "" {
			fmt.Fprintf(w, ", recording to %s", st.Output)
		}
		fmt.Fprintf(w, ", %s\n", plural(st.Changes, "change"))
		fmt.Fprintf(w, "%s traced:\n", plural(len(st.Traced), "function"))
		for _, n := range st.Traced {
			fmt.Fprintf(w, "  %s\n", report.Printable(n))
		}
		if len(st.Off) > 0 {
			fmt.Fprintf(w, "%s disabled:\n", plural(len(st.Off), "function"))
			for _, n := range st.Off {
				fmt.Fprintf(w, "  %s\n", report.Printable(n))
			}
		}
	case "stop":
		fmt.Fprintf(w, "stopped the recording of pid %d\n", o.pid)
	}
	return nil
}

// errNoSession says no livetrace serves a control socket for a pid.
var errNoSession = errors.New("no livetrace session")

// ctlCall sends req to the session tracing pid and returns its reply.
func ctlCall(pid int, req ctlRequest) (*ctlReply, error) {
	paths := ctlPaths(pid)
	var conn net.Conn
	var err error
	var path string
	for _, path = range paths {
		conn, err = net.DialTimeout("unix", path, 5*time.Second)
		if !errors.Is(err, syscall.ENOENT) {
			break
		}
	}
	if err != nil {
		switch {
		case errors.Is(err, syscall.ENOENT):
			return nil, fmt.Errorf("%w for pid %d (no %s): start one with livetrace record -p %d or livetrace live -p %d", errNoSession, pid, strings.Join(paths, " nor "), pid, pid)
		case errors.Is(err, syscall.ECONNREFUSED):
			return nil, fmt.Errorf("%w for pid %d: %s is left by a livetrace that died; if the process is still patched, run livetrace restore -p %d", errNoSession, pid, path, pid)
		case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
			return nil, fmt.Errorf("permission denied: %s belongs to another user; only that user and root may control the session", path)
		}
		return nil, fmt.Errorf("connect to the session of pid %d: %w", pid, err)
	}
	defer conn.Close()
	// A batch on a busy target takes milliseconds; a huge selection longer.
	_ = conn.SetDeadline(time.Now().Add(2 * time.Minute))
	if err := json.NewEncoder(conn).Encode(req); err != nil {
		return nil, fmt.Errorf("send to the session of pid %d: %w", pid, err)
	}
	var rep ctlReply
	if err := json.NewDecoder(bufio.NewReader(io.LimitReader(conn, 64<<20))).Decode(&rep); err != nil {
		return nil, fmt.Errorf("read the reply of the session of pid %d: %w", pid, err)
	}
	return &rep, nil
}
