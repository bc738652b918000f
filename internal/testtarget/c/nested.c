/*
 * nested.c: gcc nested functions (a GNU C extension). clang has none: built
 * with clang, nested_add is an ordinary function that gets base from a
 * global, with the same results.
 *
 * nested_outer defines nested_add, which reads a variable of nested_outer's
 * frame through the static chain (%r10), and calls it through a function
 * pointer, so gcc builds a trampoline on the stack. Built with -pg -mfentry
 * -mnop-mcount, gcc keeps %r10 around the site of nested_add:
 *
 *	push %r10; nopl 0x0(%rax,%rax,1); pop %r10
 *
 * so [rsp] at the site is the saved static chain, not the return address.
 *
 * Protocol: prints "ready" (flushed). For each line "run N" on stdin it
 * calls nested_outer(i) for i = 0..N-1 and prints "done SUM CALLS": the sum
 * of their results and the number of calls of nested_add. Each
 * nested_outer(i) calls nested_add three times and returns 9*i + 6, so
 * SUM = 6*N + 9*N*(N-1)/2 and CALLS = 3*N. It exits 0 at end of input.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ltfixture.h"

volatile long nested_calls;

LT_KEEP static long nested_apply(long (*f)(long), long x) { return f(x); }

#if defined(__clang__)
static long nested_base;
LT_KEEP static long nested_add(long x)
{
	nested_calls++;
	return x + nested_base;
}
#endif

LT_KEEP long nested_outer(long k)
{
	long base = 3 * k + 1;
#if defined(__clang__)
	nested_base = base;
#else
	LT_KEEP long nested_add(long x)
	{
		nested_calls++;
		return x + base;
	}
#endif
	long r = 0;
	for (long j = 0; j < 3; j++)
		r += nested_apply(nested_add, j);
	return r;
}

int main(void)
{
	char line[128];
	printf("ready\n");
	fflush(stdout);
	while (fgets(line, sizeof line, stdin)) {
		long n;
		if (sscanf(line, "run %ld", &n) != 1)
			continue;
		long sum = 0;
		long calls0 = nested_calls;
		for (long i = 0; i < n; i++)
			sum += nested_outer(i);
		printf("done %ld %ld\n", sum, nested_calls - calls0);
		fflush(stdout);
	}
	return 0;
}
