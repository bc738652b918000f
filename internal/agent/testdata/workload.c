/* workload.c: compiled with -fpatchable-function-entry=5; every function
 * here is a site. Each counts its own entries in counts[]. */
#include <unistd.h>
#include <stdlib.h>
#include <ucontext.h>
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

void (*w_longjmp)(struct __jmp_buf_tag *, int) = longjmp;

NI void w_jump(jmp_buf *jb, int n)
{
	counts[F_JUMP]++;
	if (n == 0)
		w_longjmp(*jb, 1);
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

/*
 * A coroutine on a ucontext: w_co_run makes a context whose stack is an
 * array in its own frame (on_frame) or a malloc'd block, and resumes it
 * n+1 times through the traced w_co_resume; the context runs the traced
 * w_co_body, which yields back from inside the traced w_co_yield n times
 * and then returns (to uc_link: the last w_co_resume returns). Frames of
 * both stacks are suspended in turn while the other runs.
 */
__thread ucontext_t co_main, co_ctx;
static __thread long co_sum;

NI void w_co_yield(int i)
{
	counts[F_CO_YIELD]++;
	co_sum += i;
	swapcontext(&co_ctx, &co_main);
}

NI void w_co_body(int n)
{
	counts[F_CO_BODY]++;
	for (int i = 0; i < n; i++) {
		co_sum += w_fib(3);
		w_co_yield(i);
	}
}

NI void w_co_resume(void)
{
	counts[F_CO_RESUME]++;
	swapcontext(&co_main, &co_ctx);
}

NI long w_co_run(int n, int on_frame)
{
	counts[F_CO_RUN]++;
	char frame_stack[64 * 1024];
	char *stack = on_frame ? frame_stack : malloc(sizeof frame_stack);
	if (!stack)
		abort();
	co_sum = 0;
	getcontext(&co_ctx);
	co_ctx.uc_stack.ss_sp = stack;
	co_ctx.uc_stack.ss_size = sizeof frame_stack;
	co_ctx.uc_link = &co_main;
	makecontext(&co_ctx, (void (*)(void))w_co_body, 1, n);
	for (int i = 0; i <= n; i++) {
		w_leaf();
		w_co_resume();
	}
	if (!on_frame)
		free(stack);
	long r = co_sum;
	OPAQUE(r);
	return r;
}

/* The capture benchmarks: two integer arguments, one short string. */
NI long w_cap_ints(long a, long b)
{
	counts[F_CAP_INTS]++;
	__asm__ __volatile__("" ::: "memory");
	return a + b;
}

NI long w_cap_str(const char *s)
{
	counts[F_CAP_STR]++;
	__asm__ __volatile__("" ::: "memory");
	return (long)s;
}

/* The values of held-back entries (record --caller): w_held_outer's
 * entry waits for w_held_leaf's, below it. */
NI long w_held_leaf(long n)
{
	counts[F_HELD_LEAF]++;
	__asm__ __volatile__("" ::: "memory");
	return n;
}

NI long w_held_outer(const char *s, long n)
{
	counts[F_HELD_OUTER]++;
	long r = w_held_leaf(n);
	OPAQUE(r);
	return r + (long)s;
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
	{"w_co_run", (void *)w_co_run},
	{"w_co_resume", (void *)w_co_resume},
	{"w_co_body", (void *)w_co_body},
	{"w_co_yield", (void *)w_co_yield},
	{"w_cap_ints", (void *)w_cap_ints},
	{"w_cap_str", (void *)w_cap_str},
	{"w_held_outer", (void *)w_held_outer},
	{"w_held_leaf", (void *)w_held_leaf},
	{0, 0},
};
