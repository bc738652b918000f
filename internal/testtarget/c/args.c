/*
 * args.c: the fixture for argument and return value capture.
 *
 * Functions with known arguments of every kind livetrace captures:
 * integers of each size and sign, a char, a pointer, an enum, strings
 * (short, long, NULL, unmapped, cut by the end of readable memory) and a
 * double return value; one of them is called from a signal handler.
 *
 * Protocol: prints "ready" (flushed), then reads commands from stdin:
 * "run N" makes N rounds of the calls listed in args_round and prints
 * "done N"; "storm N" calls lookup_user(42, "bob") and
 * args_str(long_str, 2) N times each while a 100 us interval timer
 * (SIGALRM) calls args_sig(7, "sig") from its handler, which interrupts
 * the agent in the middle of captures, and prints "done N SIGNALS"
 * (the handler's calls); "quit" (or EOF) exits 0.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <unistd.h>

#include "ltfixture.h"

enum args_color { ARGS_RED = 1, ARGS_GREEN = 2, ARGS_BLUE = 4 };

volatile long args_sink;

LT_KEEP long args_ints(long a, int b, unsigned c, long x, char ch, void *p)
{
	args_sink += a + b + c + x + ch + (long)p;
	return a + b;
}

LT_KEEP long args_str(const char *s, long n)
{
	args_sink += n;
	LT_OPAQUE(s);
	return n * 2;
}

LT_KEEP double args_half(long x)
{
	args_sink += x;
	return (double)x / 2.0;
}

LT_KEEP int args_enum(enum args_color c)
{
	args_sink += c;
	return c == ARGS_GREEN;
}

LT_KEEP long lookup_user(long id, const char *name)
{
	args_sink += id;
	LT_OPAQUE(name);
	return id + 5;
}

LT_KEEP long args_sig(long n, const char *who)
{
	args_sink += n;
	LT_OPAQUE(who);
	return n + 1;
}

/* A call tree for record -G and --caller: tree_top -> tree_mid ->
 * tree_leaf, and tree_other -> tree_leaf. */
LT_KEEP long tree_leaf(long x)
{
	args_sink += x;
	return x + 1;
}

LT_KEEP long tree_mid(long x)
{
	args_sink += x; /* an instruction before the call: relocatable */
	long r = tree_leaf(x) + 1;
	LT_OPAQUE(r);
	return r;
}

LT_KEEP long tree_top(long x)
{
	args_sink += x; /* an instruction before the call: relocatable */
	long r = tree_mid(x) + 1;
	LT_OPAQUE(r);
	return r;
}

LT_KEEP long tree_other(long x)
{
	args_sink += x; /* an instruction before the call: relocatable */
	long r = tree_leaf(x) + 2;
	LT_OPAQUE(r);
	return r;
}

static void on_usr1(int sig)
{
	(void)sig;
	args_sig(7, "sig");
}

static volatile long alarms;

static void on_alrm(int sig)
{
	(void)sig;
	alarms++;
	args_sig(7, "sig");
}

static char *bad_ptr;  /* an unmapped page */
static char *edge_ptr; /* "xyz" at the end of a page, the next one unmapped */
static const char long_str[] = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJ";
static char big_str[201]; /* 200 'x' */

static void storm(int n)
{
	struct itimerval on = {{0, 100}, {0, 100}}, off = {{0, 0}, {0, 0}};
	alarms = 0;
	setitimer(ITIMER_REAL, &on, NULL);
	for (int i = 0; i < n; i++) {
		lookup_user(42, "bob");
		args_str(long_str, 2);
	}
	setitimer(ITIMER_REAL, &off, NULL);
}

static void args_round(void)
{
	args_ints(-42, -16, 4000000000u, 0xbeef, 'Z', (void *)0x1234);
	args_str("bob", 3);
	args_str(NULL, 0);
	args_str(bad_ptr, 1);
	args_str(long_str, 2);
	args_str(edge_ptr, 3);
	args_str("tab\tq\"", 4);
	args_str(big_str, 5);
	args_half(5);
	args_enum(ARGS_GREEN);
	args_enum((enum args_color)3);
	lookup_user(42, "bob");
	raise(SIGUSR1);
	tree_top(1);
	tree_other(2);
}

int main(void)
{
	long pg = sysconf(_SC_PAGESIZE);
	char *m = mmap(NULL, 2 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED)
		return 1;
	memcpy(m + pg - 3, "xyz", 3);
	munmap(m + pg, pg);
	edge_ptr = m + pg - 3;
	memset(big_str, 'x', 200);
	bad_ptr = m + pg + 16;
	signal(SIGUSR1, on_usr1);
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_alrm;
	sa.sa_flags = SA_RESTART;
	sigaction(SIGALRM, &sa, NULL);
	printf("ready\n");
	fflush(stdout);
	char line[128];
	while (fgets(line, sizeof line, stdin)) {
		int n;
		if (sscanf(line, "run %d", &n) == 1) {
			for (int i = 0; i < n; i++)
				args_round();
			printf("done %d\n", n);
			fflush(stdout);
		} else if (sscanf(line, "storm %d", &n) == 1) {
			storm(n);
			printf("done %d %ld\n", n, alarms);
			fflush(stdout);
		} else if (strncmp(line, "quit", 4) == 0) {
			break;
		}
	}
	return 0;
}
