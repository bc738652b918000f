/*
 * ucontext.c: a fixture that switches stacks under traced frames.
 *
 * Protocol: like simple.c, it prints "ready" (flushed) on start; then it
 * reads commands from stdin, one a line, until EOF:
 *   run N   runs N rounds of:
 *           - a coroutine on a ucontext whose stack is an array in the
 *             frame of the traced uc_run, then one whose stack is
 *             malloc'd: uc_run resumes it through the traced uc_resume,
 *             the coroutine (uc_body, traced) yields back from inside the
 *             traced uc_yield, so the frames of each stack are suspended
 *             in turn while the other runs;
 *           - a longjmp out of 0..5 traced frames (uc_jump) back to the
 *             traced uc_jumper;
 *           - a signal handler on a sigaltstack that is an array in the
 *             frame of the traced uc_alt, interrupting traced frames
 *             (uc_alt_deep) below that array, and calling a traced
 *             function there.
 *           It prints "done sum=S run=A resume=B body=C yield=D leaf=E
 *           jumper=F jump=G alt=H alt_deep=I": a checksum and how many
 *           times each traced uc_ function was entered by this command.
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>

#include "ltfixture.h"

#define STACK_SIZE (64 * 1024)

unsigned long n_run, n_resume, n_body, n_yield, n_leaf, n_jumper, n_jump, n_alt, n_alt_deep;
volatile long uc_sink;

static ucontext_t co_main, co_ctx;
static long co_sum;

LT_KEEP long uc_leaf(long x)
{
	n_leaf++;
	uc_sink += x;
	return x + 1;
}

LT_KEEP void uc_yield(long i)
{
	n_yield++;
	co_sum += i;
	swapcontext(&co_ctx, &co_main);
}

LT_KEEP void uc_body(int n)
{
	n_body++;
	for (int i = 0; i < n; i++) {
		co_sum += uc_leaf(i);
		uc_yield(i);
	}
}

LT_KEEP void uc_resume(void)
{
	n_resume++;
	swapcontext(&co_main, &co_ctx);
}

LT_KEEP long uc_run(int n, int on_frame)
{
	n_run++;
	char frame_stack[STACK_SIZE];
	char *stack = on_frame ? frame_stack : malloc(STACK_SIZE);
	if (!stack)
		abort();
	co_sum = 0;
	if (getcontext(&co_ctx))
		abort();
	co_ctx.uc_stack.ss_sp = stack;
	co_ctx.uc_stack.ss_size = STACK_SIZE;
	co_ctx.uc_link = &co_main;
	makecontext(&co_ctx, (void (*)(void))uc_body, 1, n);
	/* n yields, then the body returns to uc_link: n+1 resumes. */
	for (int i = 0; i <= n; i++) {
		co_sum += uc_leaf(-i);
		uc_resume();
	}
	if (!on_frame)
		free(stack);
	long r = co_sum;
	LT_OPAQUE(r);
	return r;
}

static jmp_buf jb;

LT_KEEP void uc_jump(long n)
{
	n_jump++;
	LT_OPAQUE(n);
	if (n == 0)
		longjmp(jb, 1);
	uc_jump(n - 1);
	uc_sink++;
}

LT_KEEP long uc_jumper(long n)
{
	n_jumper++;
	if (!setjmp(jb)) {
		uc_jump(n);
		return -1;
	}
	return uc_leaf(n);
}

static void on_usr1(int sig)
{
	uc_sink += uc_leaf(sig);
}

LT_KEEP long uc_alt_deep(long d)
{
	n_alt_deep++;
	LT_OPAQUE(d);
	if (d == 0) {
		raise(SIGUSR1);
		return 1;
	}
	long r = uc_alt_deep(d - 1);
	LT_OPAQUE(r); /* no recursion turned into a loop */
	return r + 1;
}

LT_KEEP long uc_alt(long d)
{
	n_alt++;
	char altstack[STACK_SIZE];
	stack_t ss, old;
	memset(&ss, 0, sizeof ss);
	ss.ss_sp = altstack;
	ss.ss_size = sizeof altstack;
	if (sigaltstack(&ss, &old))
		abort();
	long r = uc_alt_deep(d);
	ss.ss_flags = SS_DISABLE;
	if (sigaltstack(&ss, 0))
		abort();
	return r;
}

int main(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_usr1;
	sa.sa_flags = SA_ONSTACK | SA_RESTART;
	if (sigaction(SIGUSR1, &sa, 0))
		abort();
	printf("ready\n");
	fflush(stdout);
	char line[128];
	while (fgets(line, sizeof line, stdin)) {
		long n = 0;
		if (sscanf(line, "run %ld", &n) != 1) {
			printf("error unknown command\n");
			fflush(stdout);
			continue;
		}
		n_run = n_resume = n_body = n_yield = n_leaf = n_jumper = n_jump = n_alt = n_alt_deep = 0;
		unsigned long sum = 0;
		for (long i = 0; i < n; i++) {
			sum = sum * 31 + (unsigned long)uc_run((int)(i % 4) + 1, 1);
			sum = sum * 31 + (unsigned long)uc_run((int)(i % 3) + 1, 0);
			sum = sum * 31 + (unsigned long)uc_jumper(i % 6);
			sum = sum * 31 + (unsigned long)uc_alt(i % 4);
		}
		printf("done sum=%lu run=%lu resume=%lu body=%lu yield=%lu leaf=%lu jumper=%lu jump=%lu alt=%lu alt_deep=%lu\n",
		       sum, n_run, n_resume, n_body, n_yield, n_leaf, n_jumper, n_jump, n_alt, n_alt_deep);
		fflush(stdout);
	}
	return 0;
}
