/*
 * signals_exec.c: a target that calls exec from one thread while another
 * thread, the leader, is parked in nanosleep, for testing that a tracer
 * which holds the leader (for a remote syscall, say) writes none of its
 * saved registers into the new program.
 *
 * Protocol (stdin/stdout, flushed):
 *   on start: "ready <leader tid> <worker tid>"; the leader then sleeps in
 *             nanosleep forever and the worker reads stdin with read(2).
 *   "exec":   the worker calls execve on /proc/self/exe with the argument
 *             "execd"; the new program prints "execd <pid>" and exits 0.
 *   "clonevm N": the worker starts a child with clone(CLONE_VM | SIGCHLD)
 *             (an address-space sharer that is not a thread) which calls
 *             sig_exec_fn N times and exits, and waits for it; then the
 *             worker calls sig_exec_fn N times itself and prints
 *             "clonevm <child status>".
 *   "fork N": the same with fork(): "fork <child status>".
 *   "call N": the worker calls sig_exec_fn N times; "called N".
 *   EOF:      exit 0.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ltfixture.h"

static volatile uint64_t sink;

LT_KEEP uint64_t sig_exec_fn(uint64_t x)
{
	LT_OPAQUE(x);
	sink += x;
	return x + 1;
}

static void calls(long n)
{
	for (long i = 0; i < n; i++)
		sig_exec_fn((uint64_t)i);
}

static long child_n;

static int child_main(void *arg)
{
	(void)arg;
	calls(child_n);
	return 0;
}

static void *worker(void *arg)
{
	char *self = arg;
	printf("ready %d %ld\n", getpid(), (long)syscall(SYS_gettid));
	fflush(stdout);
	char line[128];
	while (fgets(line, sizeof line, stdin)) {
		line[strcspn(line, "\n")] = 0;
		if (!strcmp(line, "exec")) {
			char *args[] = {self, "execd", NULL};
			execv("/proc/self/exe", args);
			perror("execv");
			exit(3);
		} else if (!strncmp(line, "clonevm ", 8) || !strncmp(line, "fork ", 5)) {
			int vm = line[0] == 'c';
			child_n = atol(strchr(line, ' ') + 1);
			pid_t pid;
			if (vm) {
				size_t sz = 256 * 1024;
				char *stack = malloc(sz);
				pid = clone(child_main, stack + sz, CLONE_VM | SIGCHLD, NULL);
			} else {
				pid = fork();
				if (pid == 0)
					_exit(child_main(NULL));
			}
			int st = -1;
			if (pid > 0)
				waitpid(pid, &st, __WALL);
			calls(child_n);
			printf("%s %d\n", vm ? "clonevm" : "fork", st);
			fflush(stdout);
		} else if (!strncmp(line, "call ", 5)) {
			long n = atol(line + 5);
			calls(n);
			printf("called %ld\n", n);
			fflush(stdout);
		} else {
			printf("error unknown command\n");
			fflush(stdout);
		}
	}
	exit(0);
}

int main(int argc, char **argv)
{
	if (argc > 1 && !strcmp(argv[1], "execd")) {
		printf("execd %d\n", getpid());
		fflush(stdout);
		return 0;
	}
	pthread_t th;
	if (pthread_create(&th, NULL, worker, argv[0]) != 0)
		return 2;
	for (;;) {
		struct timespec ts = {1000, 0};
		nanosleep(&ts, NULL);
	}
}
