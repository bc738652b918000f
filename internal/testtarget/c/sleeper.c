/*
 * sleeper.c: threads blocked in system calls, for testing remote syscalls
 * that the tracer injects into a thread that is blocked in one of its own.
 *
 * The main thread reads commands from stdin with read(2), so between
 * commands it sits blocked in read. Each timed command runs on a fresh
 * worker thread, so several can be blocked at once.
 *
 * With the argument "exit-main" the main thread starts a thread that does
 * all this, and calls pthread_exit; with "commands-thread" it does so on
 * the command "exit-main" (answered "exiting main").
 *
 * Protocol (one command per line on stdin, replies on stdout, flushed):
 *   on start: "ready"
 *   "sleep MS": a worker calls nanosleep for MS ms, then prints
 *               "slept <elapsed_ms> <ret> <errno>"
 *   "futex MS": a worker calls futex(FUTEX_WAIT) on a word nobody wakes, with
 *               an MS ms timeout, then prints "futex <elapsed_ms> <ret> <errno>"
 *               (normally ret -1, errno 110 ETIMEDOUT)
 *   "epoll MS": a worker calls epoll_wait on an idle pipe with an MS ms
 *               timeout, then prints "epoll <elapsed_ms> <ret> <errno>"
 *               (normally ret 0, errno 0)
 *   "echo TEXT": prints "echo TEXT" (checks that the main thread's read
 *               returned the data intact)
 *   "stats": prints "stats read_eintr <n>", the number of times the main
 *               thread's read failed with EINTR (and was retried); a tracer
 *               that restarts syscalls correctly leaves it at 0.
 *   "quit", or EOF on stdin: exit 0.
 *   anything else: "error unknown command".
 * elapsed_ms is whole milliseconds measured with CLOCK_MONOTONIC; errno is 0
 * when the call succeeded. No call is retried on EINTR: an interrupted call
 * shows up as ret -1 errno 4, which is what the tests look for.
 */
#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "ltfixture.h"

static unsigned long read_eintr; /* reads of the main thread that failed with EINTR */

static pthread_mutex_t out_mu = PTHREAD_MUTEX_INITIALIZER;

static void say(const char *fmt, long a, long b, long c)
{
	pthread_mutex_lock(&out_mu);
	printf(fmt, a, b, c);
	fflush(stdout);
	pthread_mutex_unlock(&out_mu);
}

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

struct job {
	char kind;
	long ms;
};

LT_KEEP long sleeper_nanosleep(long ms)
{
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
	return nanosleep(&ts, NULL);
}

LT_KEEP long sleeper_futex(long ms)
{
	static uint32_t word; /* nobody ever wakes it */
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
	return syscall(SYS_futex, &word, FUTEX_WAIT_PRIVATE, 0, &ts, NULL, 0);
}

LT_KEEP long sleeper_epoll(long ms)
{
	int p[2];
	if (pipe(p) != 0)
		return -1;
	int ep = epoll_create1(0);
	if (ep < 0) {
		close(p[0]);
		close(p[1]);
		return -1;
	}
	struct epoll_event ev = {.events = EPOLLIN};
	epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &ev);
	struct epoll_event out;
	long r = epoll_wait(ep, &out, 1, (int)ms);
	int saved = errno;
	close(ep);
	close(p[0]);
	close(p[1]);
	errno = saved;
	return r;
}

static void *run_job(void *arg)
{
	struct job j = *(struct job *)arg;
	free(arg);
	double t0 = now_ms();
	long r;
	errno = 0;
	const char *fmt;
	switch (j.kind) {
	case 's':
		r = sleeper_nanosleep(j.ms);
		fmt = "slept %ld %ld %ld\n";
		break;
	case 'f':
		r = sleeper_futex(j.ms);
		fmt = "futex %ld %ld %ld\n";
		break;
	default:
		r = sleeper_epoll(j.ms);
		fmt = "epoll %ld %ld %ld\n";
		break;
	}
	int e = r < 0 ? errno : 0;
	say(fmt, (long)(now_ms() - t0), r, e);
	return NULL;
}

static void start_job(char kind, long ms)
{
	struct job *j = malloc(sizeof *j);
	if (!j) {
		say("error out of memory\n", 0, 0, 0);
		return;
	}
	j->kind = kind;
	j->ms = ms;
	pthread_t t;
	if (pthread_create(&t, NULL, run_job, j) != 0) {
		free(j);
		say("error pthread_create failed\n", 0, 0, 0);
		return;
	}
	pthread_detach(t);
}

/* handle runs one command line (without its newline); it returns 0 on quit. */
/* Written by the command "exit-main": the main thread waits for it. */
static int main_pipe[2];

static int handle(char *line)
{
	long ms;
	if (sscanf(line, "sleep %ld", &ms) == 1 && ms >= 0)
		start_job('s', ms);
	else if (sscanf(line, "futex %ld", &ms) == 1 && ms >= 0)
		start_job('f', ms);
	else if (sscanf(line, "epoll %ld", &ms) == 1 && ms >= 0 && ms <= 0x7fffffff)
		start_job('e', ms);
	else if (strncmp(line, "echo ", 5) == 0 || strcmp(line, "echo") == 0) {
		pthread_mutex_lock(&out_mu);
		printf("%s\n", line);
		fflush(stdout);
		pthread_mutex_unlock(&out_mu);
	} else if (strcmp(line, "stats") == 0)
		say("stats read_eintr %ld\n", (long)__atomic_load_n(&read_eintr, __ATOMIC_RELAXED), 0, 0);
	else if (strcmp(line, "exit-main") == 0 && main_pipe[1] > 0) {
		say("exiting main\n", 0, 0, 0);
		if (write(main_pipe[1], "x", 1) != 1)
			say("error write\n", 0, 0, 0);
	} else if (strcmp(line, "quit") == 0)
		return 0;
	else
		say("error unknown command\n", 0, 0, 0);
	return 1;
}

static void *commands(void *arg);

/*
 * With the argument "exit-main", the commands are read by a second thread
 * and the main thread calls pthread_exit: the process runs on with a
 * zombie thread-group leader, whose /proc/PID/maps and mem are empty.
 * With "commands-thread", the main thread waits instead, and calls
 * pthread_exit on the command "exit-main".
 */
int main(int argc, char **argv)
{
	int now = argc > 1 && strcmp(argv[1], "exit-main") == 0;
	if (now || (argc > 1 && strcmp(argv[1], "commands-thread") == 0)) {
		pthread_t t;
		if (pipe(main_pipe) != 0 || pthread_create(&t, NULL, commands, NULL) != 0)
			return 2;
		char c;
		while (!now && read(main_pipe[0], &c, 1) < 0 && errno == EINTR)
			;
		pthread_exit(NULL);
	}
	commands(NULL);
	return 0;
}

static void *commands(void *arg)
{
	(void)arg;
	say("ready\n", 0, 0, 0);
	char buf[4096];
	size_t len = 0;
	for (;;) {
		ssize_t n = read(0, buf + len, sizeof buf - 1 - len);
		if (n < 0 && errno == EINTR) {
			/* Not expected: the tracer must make read restart. */
			__atomic_fetch_add(&read_eintr, 1, __ATOMIC_RELAXED);
			continue;
		}
		if (n <= 0)
			exit(0);
		len += (size_t)n;
		char *start = buf, *nl;
		while ((nl = memchr(start, '\n', buf + len - start)) != NULL) {
			*nl = 0;
			if (!handle(start))
				exit(0);
			start = nl + 1;
		}
		len -= (size_t)(start - buf);
		memmove(buf, start, len);
		if (len == sizeof buf - 1)
			len = 0; /* an overlong line: drop it */
	}
}
