/*
 * simple.c: the basic livetrace fixture.
 *
 * About twenty distinctly named functions, global and static, one of them
 * recursive (simple_recurse), each kept as its own symbol with a patchable
 * site (see ltfixture.h). Every function writes to a volatile sink, so no
 * call is optimized away.
 *
 * Protocol: stdin is not read. On start the program prints "ready"
 * (flushed). Without arguments it then calls every function once and exits
 * 0. With the argument "loop" it calls every function, sleeps 10 ms, and
 * repeats forever.
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "ltfixture.h"

volatile long simple_sink;

LT_KEEP long simple_alpha(long x) { simple_sink += x; return x + 1; }
LT_KEEP long simple_beta(long x) { simple_sink ^= x; return x * 3; }
LT_KEEP long simple_gamma(long x) { simple_sink -= x; return x - 7; }
LT_KEEP long simple_delta(long x) { simple_sink += 2 * x; return x ^ 0x55; }
LT_KEEP long simple_epsilon(long x) { simple_sink |= x; return x + 11; }
LT_KEEP long simple_zeta(long x) { simple_sink += x >> 1; return x * 5 + 1; }
LT_KEEP long simple_eta(long x) { simple_sink &= ~x; return x - 3; }
LT_KEEP long simple_theta(long x) { simple_sink += x * x; return x + 13; }
LT_KEEP long simple_iota(long x) { simple_sink ^= x << 2; return x * 7; }
LT_KEEP long simple_kappa(long x) { simple_sink += 17; return x + 17; }

LT_KEEP static long simple_static_one(long x) { simple_sink += x; return x + 101; }
LT_KEEP static long simple_static_two(long x) { simple_sink -= x; return x * 9; }
LT_KEEP static long simple_static_three(long x) { simple_sink ^= x; return x - 33; }
LT_KEEP static long simple_static_four(long x) { simple_sink += 4; return simple_static_one(x) + 1; }
LT_KEEP static long simple_static_five(long x) { simple_sink += 5; return simple_static_two(x) ^ 5; }

/* simple_recurse calls itself depth times (depth+1 calls in all). */
LT_KEEP long simple_recurse(long depth)
{
	simple_sink += depth;
	if (depth <= 0)
		return 0;
	long r = simple_recurse(depth - 1);
	LT_OPAQUE(r);
	return r + 1;
}

/* simple_nested calls simple_alpha and simple_beta. */
LT_KEEP long simple_nested(long x) { simple_sink += 1; return simple_alpha(x) + simple_beta(x); }

LT_KEEP long simple_outer(long x) { simple_sink += 2; return simple_nested(x) + simple_gamma(x); }

LT_KEEP long simple_string_len(const char *s) { simple_sink += 3; return (long)strlen(s); }

/* simple_round calls every other function once (some more than once). */
LT_KEEP long simple_round(long x)
{
	long r = x;
	r += simple_alpha(r);
	r += simple_beta(r);
	r += simple_gamma(r);
	r += simple_delta(r);
	r += simple_epsilon(r);
	r += simple_zeta(r);
	r += simple_eta(r);
	r += simple_theta(r);
	r += simple_iota(r);
	r += simple_kappa(r);
	r += simple_static_one(r);
	r += simple_static_two(r);
	r += simple_static_three(r);
	r += simple_static_four(r);
	r += simple_static_five(r);
	r += simple_recurse(4);
	r += simple_outer(r);
	r += simple_string_len("livetrace");
	return r;
}

int main(int argc, char **argv)
{
	int loop = argc > 1 && strcmp(argv[1], "loop") == 0;
	printf("ready\n");
	fflush(stdout);
	long x = argc;
	do {
		x = simple_round(x) & 0xffff;
		if (loop) {
			struct timespec ts = {0, 10 * 1000 * 1000};
			nanosleep(&ts, NULL);
		}
	} while (loop);
	return 0;
}
