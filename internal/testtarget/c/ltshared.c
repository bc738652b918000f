/*
 * ltshared.c: libltshared.so, a shared library built with the same site
 * flags as the program that uses it (-fPIC -shared). For the gcc-mcount form
 * it is built with -fpatchable-function-entry=5, because gcc refuses
 * -mnop-mcount together with -fPIC; its sites are then sleds.
 *
 * It exports lib_add (called by the workload program, counted in
 * lt_lib_add_calls), lib_mul and lib_recurse. No protocol of its own.
 */
#include "ltfixture.h"
#include "ltshared.h"

unsigned long lt_lib_add_calls;

LT_KEEP long lib_add(long a, long b)
{
	__atomic_fetch_add(&lt_lib_add_calls, 1, __ATOMIC_RELAXED);
	return a + b;
}

LT_KEEP long lib_mul(long a, long b)
{
	return a * b;
}

/* lib_recurse calls itself depth times and lib_mul at the bottom. */
LT_KEEP long lib_recurse(long depth)
{
	if (depth <= 0)
		return lib_mul(depth, 3);
	long r = lib_recurse(depth - 1);
	LT_OPAQUE(r);
	return r + 1;
}
