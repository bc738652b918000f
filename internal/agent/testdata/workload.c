/* workload.c: compiled with -fpatchable-function-entry=5; every function
 * here is a site. Each counts its own entries in counts[]. */
#include <unistd.h>
#include <stdlib.h>
#include "workload.h"

#define NI __attribute__((noinline))
#define OPAQUE(x) __asm__ __volatile__("" : "+r"(x))

NI void w_leaf(void)
{
	counts[F_LEAF]++;
	__asm__ __volatile__("" ::: "memory");
}

NI int w_fib(int n)
{
	counts[F_FIB]++;
	if (n < 2)
		return n;
	int a = w_fib(n - 1);
	OPAQUE(a);
	int b = w_fib(n - 2);
	OPAQUE(b);
	return a + b;
}

NI long w_deep(int n)
{
	counts[F_DEEP]++;
	if (n == 0)
		return 0;
	long r = w_deep(n - 1);
	OPAQUE(r);
	return r + 1;
}

NI void w_jump(jmp_buf *jb, int n)
{
	counts[F_JUMP]++;
	if (n == 0)
		longjmp(*jb, 1);
	w_jump(jb, n - 1);
	__asm__ __volatile__("" ::: "memory");
}

NI int w_forker(void)
{
	counts[F_FORKER]++;
	int pid = fork();
	OPAQUE(pid);
	return pid;
}

NI int w_tailee(int x)
{
	counts[F_TAILEE]++;
	OPAQUE(x);
	return x + 1;
}

/* Compiled as a sibling call (jmp w_tailee) at -O2. */
NI int w_tailer(int x)
{
	counts[F_TAILER]++;
	return w_tailee(x * 2);
}

NI void w_empty(void)
{
	__asm__ __volatile__("" ::: "memory");
}

/* Checks that the entry path preserves every argument register. */
NI long w_args(long a, long b, long c, long d, long e, long f, double x, double y)
{
	counts[F_ARGS]++;
	return a + 2 * b + 3 * c + 4 * d + 5 * e + 6 * f + (long)(x * 10) + (long)(y * 100);
}

/* Recurses n deep, then spins until *release is set. */
NI long w_hold(volatile int *release, int n)
{
	counts[F_HOLD]++;
	if (n == 0) {
		while (!*release)
			;
		return 0;
	}
	long r = w_hold(release, n - 1);
	OPAQUE(r);
	return r + 1;
}

const struct wfunc wfuncs[] = {
	{"w_leaf", (void *)w_leaf},
	{"w_fib", (void *)w_fib},
	{"w_deep", (void *)w_deep},
	{"w_jump", (void *)w_jump},
	{"w_forker", (void *)w_forker},
	{"w_tailer", (void *)w_tailer},
	{"w_tailee", (void *)w_tailee},
	{"w_empty", (void *)w_empty},
	{"w_args", (void *)w_args},
	{"w_hold", (void *)w_hold},
	{0, 0},
};
