package testtarget

// Fixtures for signals, exec and clone while traced; see the top of each
// source in c/ for its protocol.
const (
	// Signals is c/signals.c: a signal-heavy target (interval timers, a
	// realtime-signal storm, handlers on a sigaltstack, SA_RESTART on or
	// off, a thread with every signal blocked) whose checker threads,
	// blocked in nanosleep, futex, epoll_wait and read, count every EINTR
	// and short wait; the traced functions are sig_top, sig_mid, sig_leaf
	// and sig_handler_fn.
	Signals = "signals"
	// SignalsExec is c/signals_exec.c: a leader parked in nanosleep while a
	// worker calls exec, clone(CLONE_VM) or fork on command; the traced
	// function is sig_exec_fn.
	SignalsExec = "signals_exec"
)

func init() {
	fixtures[Signals] = fixture{plan: singleFile(Signals, "signals.c")}
	fixtures[SignalsExec] = fixture{plan: singleFile(SignalsExec, "signals_exec.c")}
}
