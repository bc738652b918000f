/*
 * vforkchild.c: a vfork child that runs the program's text, as glibc's
 * posix_spawn child does: on its parent's memory, with SIGTRAP at its
 * default action (posix_spawn resets every handled signal before it calls
 * anything).
 *
 * Protocol: prints "ready TARGET" (the address of vf_target, flushed).
 * For each line "go MS" on stdin it vforks a child that sets SIGTRAP to
 * its default action, spins MS milliseconds, calls vf_target and exits
 * 7; the parent waits for it and prints "child exit=7", or "child
 * signal=S" if a signal ended it. It exits 0 at end of input.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ltfixture.h"

volatile long vf_sink;

LT_KEEP long vf_target(long x)
{
	vf_sink += x;
	return x + 1;
}

static long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int main(void)
{
	printf("ready %p\n", (void *)&vf_target);
	fflush(stdout);
	char line[128];
	while (fgets(line, sizeof line, stdin)) {
		long ms;
		if (sscanf(line, "go %ld", &ms) != 1)
			continue;
		pid_t pid = vfork();
		if (pid == 0) {
			/* What posix_spawn's child does first: no handler runs
			 * in it. */
			struct sigaction sa = {.sa_handler = SIG_DFL};
			sigaction(SIGTRAP, &sa, NULL);
			long end = now_ms() + ms;
			while (now_ms() < end)
				;
			vf_target(1);
			_exit(7);
		}
		int st;
		if (pid < 0 || waitpid(pid, &st, 0) != pid) {
			printf("child error\n");
		} else if (WIFSIGNALED(st)) {
			printf("child signal=%d\n", WTERMSIG(st));
		} else {
			printf("child exit=%d\n", WEXITSTATUS(st));
		}
		fflush(stdout);
	}
	return 0;
}
