/*
 * signals.c: a signal-heavy target, for testing that remote syscalls,
 * patch batches, stop mode and agent removal survive a storm of signals,
 * and that threads blocked in system calls notice nothing.
 *
 * Threads:
 *   main       reads commands from stdin with read(2) (blocked in read
 *              between commands); it takes process-wide signals like any
 *              thread that does not block them, and retries a read that a
 *              handler without SA_RESTART interrupted (counted in main_eintr,
 *              which is legitimate).
 *   workers    -t N (default 4): call the traced functions sig_leaf,
 *              sig_mid and sig_top on "run N", or in a loop between "hammer"
 *              and "stop". With -blocked, worker 0 blocks every signal
 *              (SIGTRAP too: a patching engine must then use stop mode).
 *   checkers   with every signal but SIGTRAP blocked, so that nothing but a tracer could
 *              ever interrupt them: one loops in nanosleep(5 ms), one in
 *              FUTEX_WAIT with a 5 ms timeout, one in epoll_wait(5 ms) on an
 *              idle pipe, one in read(2) on a pipe a feeder thread writes a
 *              byte to every 2 ms. Each counts EINTRs and short waits (a
 *              sleep that returned before its time): both must stay 0.
 *   tickers    with -many N: N more threads (64 KiB stacks), each calling
 *              the traced function sig_tick every 1/H s (-manyhz H, default
 *              50) with clock_nanosleep on an absolute deadline; "ready"
 *              comes once all of them run.
 *   rt storm   with -rt: two threads that send each other SIGRTMIN+1 with
 *              pthread_sigqueue, each one every -rtus microseconds (default
 *              200), so that queued realtime signals pile up on threads the
 *              tracer holds.
 * Signals (all handlers count, check that the alternate stack is used when
 * asked, and call the traced function sig_handler_fn once):
 *   -prof US     ITIMER_PROF every US microseconds (SIGPROF, SA_RESTART)
 *   -alrm US     ITIMER_REAL every US microseconds (SIGALRM)
 *   -norestart   SIGALRM and SIGRTMIN+1 without SA_RESTART (default: with)
 *   -altstack    every handler runs on a sigaltstack (SA_ONSTACK)
 *   -seccomp     a seccomp filter traps getppid (SECCOMP_RET_TRAP: SIGSYS);
 *                the SIGSYS handler counts in sigsys (the program itself
 *                never calls getppid)
 *
 * Protocol (one command per line on stdin, replies on stdout, flushed):
 *   on start, once every thread runs: "ready"
 *   "run N":   every worker runs N iterations; each calls sig_top once,
 *              which calls sig_mid twice, which calls sig_leaf once each:
 *              then "done <checksum> <iterations>", the same with or
 *              without tracing.
 *   "hammer":  workers call the traced functions in a loop; "hammering"
 *   "stop":    ends hammer; "stopped"
 *   "stats":   "stats prof=N alrm=N rt=N handler_fn=N offstack=N
 *               main_eintr=N sleep=N sleep_eintr=N sleep_short=N futex=N
 *               futex_eintr=N futex_short=N epoll=N epoll_eintr=N
 *               epoll_short=N read=N read_eintr=N rt_sent=N sigsys=N"
 *              (offstack: handlers that ran off the alternate stack with
 *              -altstack; handler_fn: calls of sig_handler_fn)
 *   "quit", or EOF on stdin: exit 0.
 *   anything else: "error <reason>".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "ltfixture.h"

#define SIGSTORM (SIGRTMIN + 1)

static volatile unsigned long n_prof, n_alrm, n_rt, n_handler_fn, n_offstack, n_main_eintr, n_sigsys;
static int use_seccomp;
static int use_altstack, restart = 1, nworkers = 4, blocked0, rt_storm;
static long rt_us = 200;
static long prof_us, alrm_us;

struct checker {
	const char *name;
	volatile unsigned long iter, eintr, shortw;
};
static struct checker ck_sleep = {"sleep"}, ck_futex = {"futex"}, ck_epoll = {"epoll"}, ck_read = {"read"};

static pthread_mutex_t out_mu = PTHREAD_MUTEX_INITIALIZER;

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
#include <stdarg.h>
static void say(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	pthread_mutex_lock(&out_mu);
	vprintf(fmt, ap);
	fflush(stdout);
	pthread_mutex_unlock(&out_mu);
	va_end(ap);
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* The traced functions. */
LT_KEEP uint64_t sig_leaf(uint64_t x)
{
	LT_OPAQUE(x);
	return x * 0x9e3779b97f4a7c15ULL + 1;
}

LT_KEEP uint64_t sig_mid(uint64_t x)
{
	x = sig_leaf(x);
	LT_OPAQUE(x);
	return x ^ (x >> 17);
}

LT_KEEP uint64_t sig_top(uint64_t x)
{
	x = sig_mid(x);
	x = sig_mid(x);
	LT_OPAQUE(x);
	return x + 3;
}

LT_KEEP uint64_t sig_tick(uint64_t x)
{
	LT_OPAQUE(x);
	return x + 1;
}

LT_KEEP uint64_t sig_handler_fn(uint64_t x)
{
	LT_OPAQUE(x);
	__atomic_add_fetch(&n_handler_fn, 1, __ATOMIC_RELAXED);
	return x + 1;
}

/* Alternate stacks: one per thread that takes signals. */
#define ALTSZ (64 * 1024)
static __thread char *alt_lo;

static void setup_altstack(void)
{
	if (!use_altstack)
		return;
	stack_t ss = {.ss_sp = malloc(ALTSZ), .ss_size = ALTSZ, .ss_flags = 0};
	if (!ss.ss_sp || sigaltstack(&ss, NULL) != 0) {
		perror("sigaltstack");
		exit(2);
	}
	alt_lo = ss.ss_sp;
}

static void check_stack(void)
{
	char here;
	if (use_altstack && !(alt_lo && &here >= alt_lo && &here < alt_lo + ALTSZ))
		__atomic_add_fetch(&n_offstack, 1, __ATOMIC_RELAXED);
}

static void on_signal(int sig, siginfo_t *si, void *uc)
{
	(void)si;
	(void)uc;
	int saved = errno;
	check_stack();
	if (sig == SIGPROF)
		__atomic_add_fetch(&n_prof, 1, __ATOMIC_RELAXED);
	else if (sig == SIGALRM)
		__atomic_add_fetch(&n_alrm, 1, __ATOMIC_RELAXED);
	else if (sig == SIGSTORM)
		__atomic_add_fetch(&n_rt, 1, __ATOMIC_RELAXED);
	else if (sig == SIGSYS)
		__atomic_add_fetch(&n_sigsys, 1, __ATOMIC_RELAXED);
	sig_handler_fn((uint64_t)sig);
	errno = saved;
}

static void install(int sig, int with_restart)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_sigaction = on_signal;
	sa.sa_flags = SA_SIGINFO | (with_restart ? SA_RESTART : 0) | (use_altstack ? SA_ONSTACK : 0);
	sigemptyset(&sa.sa_mask);
	if (sigaction(sig, &sa, NULL) != 0) {
		perror("sigaction");
		exit(2);
	}
}

/* block_all blocks every signal but SIGTRAP (which nobody sends, and which
 * a tracer's INT3 must be able to raise); block_everything blocks that too. */
static void block_all(void)
{
	sigset_t all;
	sigfillset(&all);
	sigdelset(&all, SIGTRAP);
	pthread_sigmask(SIG_SETMASK, &all, NULL);
}

/* Threads start with the application signals blocked (main blocks them
 * before creating any), and unblock them once their alternate stack is set
 * up: a signal must never find a thread without one. */
static volatile int threads_up; /* threads past their set-up */

static void up(void) { __atomic_add_fetch(&threads_up, 1, __ATOMIC_RELEASE); }

static void unblock_app(void)
{
	sigset_t none;
	sigemptyset(&none);
	pthread_sigmask(SIG_SETMASK, &none, NULL);
}

static void block_everything(void)
{
	sigset_t all;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, NULL);
}

/* Checkers. The wait is 5 ms; a wait that returns before that is short. */
#define WAIT_NS 5000000ULL

static void count(struct checker *c, long ret, int err, uint64_t t0, int timed)
{
	uint64_t el = now_ns() - t0;
	__atomic_add_fetch(&c->iter, 1, __ATOMIC_RELAXED);
	if (ret < 0 && err == EINTR)
		__atomic_add_fetch(&c->eintr, 1, __ATOMIC_RELAXED);
	else if (timed && el < WAIT_NS)
		__atomic_add_fetch(&c->shortw, 1, __ATOMIC_RELAXED);
}

static void *sleep_checker(void *arg)
{
	(void)arg;
	block_all();
	up();
	for (;;) {
		struct timespec ts = {0, WAIT_NS};
		uint64_t t0 = now_ns();
		long r = nanosleep(&ts, NULL);
		count(&ck_sleep, r, errno, t0, 1);
	}
	return NULL;
}

static int futex_word;

static void *futex_checker(void *arg)
{
	(void)arg;
	block_all();
	up();
	for (;;) {
		struct timespec ts = {0, WAIT_NS};
		uint64_t t0 = now_ns();
		long r = syscall(SYS_futex, &futex_word, FUTEX_WAIT_PRIVATE, 0, &ts, NULL, 0);
		int err = errno;
		/* Nobody wakes the word: anything but ETIMEDOUT is wrong. */
		if (r == 0 || (r < 0 && err != ETIMEDOUT && err != EINTR))
			__atomic_add_fetch(&ck_futex.shortw, 1, __ATOMIC_RELAXED);
		count(&ck_futex, r, err, t0, 1);
	}
	return NULL;
}

static void *epoll_checker(void *arg)
{
	(void)arg;
	block_all();
	up();
	int fds[2];
	if (pipe(fds) != 0)
		exit(2);
	int ep = epoll_create1(0);
	struct epoll_event ev = {.events = EPOLLIN};
	epoll_ctl(ep, EPOLL_CTL_ADD, fds[0], &ev);
	for (;;) {
		struct epoll_event out;
		uint64_t t0 = now_ns();
		long r = epoll_wait(ep, &out, 1, (int)(WAIT_NS / 1000000));
		count(&ck_epoll, r, errno, t0, 1);
	}
	return NULL;
}

static int feed[2];

static void *feeder(void *arg)
{
	(void)arg;
	block_all();
	up();
	for (;;) {
		struct timespec ts = {0, 2000000};
		nanosleep(&ts, NULL);
		if (write(feed[1], "x", 1) != 1)
			exit(2);
	}
	return NULL;
}

static void *read_checker(void *arg)
{
	(void)arg;
	block_all();
	up();
	for (;;) {
		char c;
		uint64_t t0 = now_ns();
		long r = read(feed[0], &c, 1);
		int err = errno;
		if (r == 0)
			exit(2);
		count(&ck_read, r, err, t0, 0);
	}
	return NULL;
}

/* The realtime storm: two threads queue SIGSTORM to each other. */
static pthread_t storm[2];
static volatile int storm_go; /* both storm[] are set */
static volatile unsigned long storm_sent;

static void *storm_thread(void *arg)
{
	int me = (int)(intptr_t)arg;
	setup_altstack();
	unblock_app();
	up();
	while (!__atomic_load_n(&storm_go, __ATOMIC_ACQUIRE)) {
		struct timespec ts = {0, 100000};
		nanosleep(&ts, NULL);
	}
	for (;;) {
		struct timespec ts = {rt_us / 1000000, (rt_us % 1000000) * 1000};
		nanosleep(&ts, NULL); /* EINTR is fine here: the storm's own */
		union sigval v = {.sival_int = me};
		if (pthread_sigqueue(storm[1 - me], SIGSTORM, v) == 0)
			__atomic_add_fetch(&storm_sent, 1, __ATOMIC_RELAXED);
		else
			sched_yield();
	}
	return NULL;
}

/* Tickers. */
static int nmany;
static long many_hz = 50;
static volatile int many_started;

static void *ticker(void *arg)
{
	uint64_t x = (uint64_t)(intptr_t)arg;
	struct timespec next;
	clock_gettime(CLOCK_MONOTONIC, &next);
	long period = 1000000000L / many_hz;
	__atomic_add_fetch(&many_started, 1, __ATOMIC_RELAXED);
	for (;;) {
		x = sig_tick(x);
		next.tv_nsec += period;
		while (next.tv_nsec >= 1000000000L) {
			next.tv_nsec -= 1000000000L;
			next.tv_sec++;
		}
		while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL) == EINTR)
			;
	}
	return NULL;
}

/* Workers. */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond_work = PTHREAD_COND_INITIALIZER;
static pthread_cond_t cond_done = PTHREAD_COND_INITIALIZER;
static unsigned long generation;
static long job_iters; /* -1: hammer */
static int finished;
static volatile int stop_flag;
static uint64_t *results;

static void *worker(void *arg)
{
	int t = (int)(intptr_t)arg;
	setup_altstack();
	if (t == 0 && blocked0)
		block_everything();
	else
		unblock_app();
	up();
	unsigned long seen = 0;
	for (;;) {
		pthread_mutex_lock(&mu);
		while (generation == seen)
			pthread_cond_wait(&cond_work, &mu);
		seen = generation;
		long n = job_iters;
		pthread_mutex_unlock(&mu);
		uint64_t acc = (uint64_t)(t + 1) * 0x12345;
		if (n >= 0) {
			for (long i = 0; i < n; i++)
				acc = sig_top(acc);
		} else {
			while (!__atomic_load_n(&stop_flag, __ATOMIC_ACQUIRE))
				for (int i = 0; i < 64; i++)
					acc = sig_top(acc);
		}
		pthread_mutex_lock(&mu);
		results[t] = acc;
		finished++;
		pthread_cond_broadcast(&cond_done);
		pthread_mutex_unlock(&mu);
	}
	return NULL;
}

static void start_job(long n)
{
	pthread_mutex_lock(&mu);
	finished = 0;
	job_iters = n;
	stop_flag = 0;
	generation++;
	pthread_cond_broadcast(&cond_work);
	pthread_mutex_unlock(&mu);
}

static uint64_t wait_job(void)
{
	pthread_mutex_lock(&mu);
	while (finished < nworkers)
		pthread_cond_wait(&cond_done, &mu);
	uint64_t sum = 0;
	for (int i = 0; i < nworkers; i++)
		sum += results[i];
	pthread_mutex_unlock(&mu);
	return sum;
}

/* main's stdin, read with read(2). */
static char inbuf[4096];
static size_t inlen;

static int read_line(char *line, size_t max)
{
	for (;;) {
		char *nl = memchr(inbuf, '\n', inlen);
		if (nl) {
			size_t n = (size_t)(nl - inbuf);
			if (n >= max)
				n = max - 1;
			memcpy(line, inbuf, n);
			line[n] = 0;
			inlen -= (size_t)(nl - inbuf) + 1;
			memmove(inbuf, nl + 1, inlen);
			return 1;
		}
		if (inlen == sizeof inbuf)
			inlen = 0;
		ssize_t r = read(0, inbuf + inlen, sizeof inbuf - inlen);
		if (r < 0 && errno == EINTR) {
			__atomic_add_fetch(&n_main_eintr, 1, __ATOMIC_RELAXED);
			continue;
		}
		if (r <= 0)
			return 0;
		inlen += (size_t)r;
	}
}

static void spawn(void *(*fn)(void *), void *arg)
{
	pthread_t th;
	if (pthread_create(&th, NULL, fn, arg) != 0) {
		perror("pthread_create");
		exit(2);
	}
}

int main(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "-t") && i + 1 < argc)
			nworkers = atoi(argv[++i]);
		else if (!strcmp(argv[i], "-prof") && i + 1 < argc)
			prof_us = atol(argv[++i]);
		else if (!strcmp(argv[i], "-alrm") && i + 1 < argc)
			alrm_us = atol(argv[++i]);
		else if (!strcmp(argv[i], "-rtus") && i + 1 < argc)
			rt_us = atol(argv[++i]);
		else if (!strcmp(argv[i], "-many") && i + 1 < argc)
			nmany = atoi(argv[++i]);
		else if (!strcmp(argv[i], "-manyhz") && i + 1 < argc)
			many_hz = atol(argv[++i]);
		else if (!strcmp(argv[i], "-norestart"))
			restart = 0;
		else if (!strcmp(argv[i], "-seccomp"))
			use_seccomp = 1;
		else if (!strcmp(argv[i], "-altstack"))
			use_altstack = 1;
		else if (!strcmp(argv[i], "-blocked"))
			blocked0 = 1;
		else if (!strcmp(argv[i], "-rt"))
			rt_storm = 1;
		else {
			fprintf(stderr, "usage: signals [-t N] [-prof US] [-alrm US] [-norestart] [-altstack] [-blocked] [-rt] [-rtus US] [-many N] [-manyhz H] [-seccomp]\n");
			return 2;
		}
	}
	if (nworkers < 1)
		nworkers = 1;
	results = calloc((size_t)nworkers, sizeof *results);
	setup_altstack();
	sigset_t app;
	sigemptyset(&app);
	sigaddset(&app, SIGPROF);
	sigaddset(&app, SIGALRM);
	sigaddset(&app, SIGSTORM);
	pthread_sigmask(SIG_BLOCK, &app, NULL);
	install(SIGPROF, 1);
	install(SIGALRM, restart);
	install(SIGSTORM, restart);
	if (pipe(feed) != 0)
		return 2;
	if (use_seccomp) {
		install(SIGSYS, 1);
		struct sock_filter f[] = {
			BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
			BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_getppid, 0, 1),
			BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_TRAP),
			BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		};
		struct sock_fprog prog = {.len = sizeof f / sizeof f[0], .filter = f};
		if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0) {
			perror("seccomp");
			return 2;
		}
	}

	spawn(sleep_checker, NULL);
	spawn(futex_checker, NULL);
	spawn(epoll_checker, NULL);
	spawn(read_checker, NULL);
	spawn(feeder, NULL);
	for (int i = 0; i < nworkers; i++)
		spawn(worker, (void *)(intptr_t)i);
	if (rt_storm) {
		for (int i = 0; i < 2; i++)
			if (pthread_create(&storm[i], NULL, storm_thread, (void *)(intptr_t)i) != 0)
				return 2;
		__atomic_store_n(&storm_go, 1, __ATOMIC_RELEASE);
	}
	if (nmany > 0) {
		pthread_attr_t attr;
		pthread_attr_init(&attr);
		pthread_attr_setstacksize(&attr, 64 * 1024);
		if (many_hz < 1)
			many_hz = 1;
		for (int i = 0; i < nmany; i++) {
			pthread_t th;
			if (pthread_create(&th, &attr, ticker, (void *)(intptr_t)i) != 0) {
				perror("pthread_create");
				return 2;
			}
		}
		while (__atomic_load_n(&many_started, __ATOMIC_RELAXED) < nmany) {
			struct timespec ts = {0, 1000000};
			nanosleep(&ts, NULL);
		}
	}
	/* Every thread (and its malloc arena, its alternate stack) exists
	 * before "ready", so that a snapshot taken then stays valid. */
	int want_up = 5 + nworkers + (rt_storm ? 2 : 0);
	while (__atomic_load_n(&threads_up, __ATOMIC_ACQUIRE) < want_up) {
		struct timespec ts = {0, 1000000};
		nanosleep(&ts, NULL);
	}
	unblock_app();
	if (prof_us > 0) {
		struct itimerval it = {{prof_us / 1000000, prof_us % 1000000}, {prof_us / 1000000, prof_us % 1000000}};
		setitimer(ITIMER_PROF, &it, NULL);
	}
	if (alrm_us > 0) {
		struct itimerval it = {{alrm_us / 1000000, alrm_us % 1000000}, {alrm_us / 1000000, alrm_us % 1000000}};
		setitimer(ITIMER_REAL, &it, NULL);
	}
	say("ready\n");

	char line[256];
	int hammering = 0;
	while (read_line(line, sizeof line)) {
		if (!strncmp(line, "run ", 4)) {
			long n = atol(line + 4);
			if (hammering || n < 0) {
				say("error bad run\n");
				continue;
			}
			start_job(n);
			uint64_t sum = wait_job();
			say("done %llu %ld\n", (unsigned long long)sum, n);
		} else if (!strcmp(line, "hammer")) {
			if (hammering) {
				say("error already hammering\n");
				continue;
			}
			start_job(-1);
			hammering = 1;
			say("hammering\n");
		} else if (!strcmp(line, "stop")) {
			if (!hammering) {
				say("error not hammering\n");
				continue;
			}
			__atomic_store_n(&stop_flag, 1, __ATOMIC_RELEASE);
			wait_job();
			hammering = 0;
			say("stopped\n");
		} else if (!strcmp(line, "stats")) {
			say("stats prof=%lu alrm=%lu rt=%lu handler_fn=%lu offstack=%lu main_eintr=%lu"
			    " sleep=%lu sleep_eintr=%lu sleep_short=%lu futex=%lu futex_eintr=%lu futex_short=%lu"
			    " epoll=%lu epoll_eintr=%lu epoll_short=%lu read=%lu read_eintr=%lu rt_sent=%lu sigsys=%lu\n",
			    n_prof, n_alrm, n_rt, n_handler_fn, n_offstack, n_main_eintr,
			    ck_sleep.iter, ck_sleep.eintr, ck_sleep.shortw,
			    ck_futex.iter, ck_futex.eintr, ck_futex.shortw,
			    ck_epoll.iter, ck_epoll.eintr, ck_epoll.shortw,
			    ck_read.iter, ck_read.eintr, storm_sent, n_sigsys);
		} else if (!strcmp(line, "quit")) {
			break;
		} else {
			say("error unknown command\n");
		}
	}
	/* Stop the timers before exiting: exit must not race a handler. */
	struct itimerval zero = {{0, 0}, {0, 0}};
	setitimer(ITIMER_PROF, &zero, NULL);
	setitimer(ITIMER_REAL, &zero, NULL);
	exit(0);
}
