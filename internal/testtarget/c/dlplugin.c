/*
 * dlplugin.c: libltplugin.so, the library that c/dlopen.c loads and
 * unloads over and over. Built with the site flags of the program (as
 * libltshared.so). plug_leaf is called by plug_outer, twice per call.
 * Each time it is mapped anew its constructor counts it in the program's
 * lt_plugin_loads (exported with -rdynamic).
 */
#include "ltfixture.h"

extern unsigned long lt_plugin_loads __attribute__((weak));

__attribute__((constructor)) static void counted(void)
{
	if (&lt_plugin_loads != 0)
		__atomic_fetch_add(&lt_plugin_loads, 1, __ATOMIC_RELAXED);
}

LT_KEEP long plug_leaf(long x)
{
	LT_OPAQUE(x);
	return x + 1;
}

LT_KEEP long plug_outer(long x)
{
	long r = plug_leaf(x);
	LT_OPAQUE(r);
	return plug_leaf(r) * 2;
}
