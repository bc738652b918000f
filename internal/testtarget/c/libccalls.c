/*
 * libccalls.c: threads that call functions of libc.so.6 a known number of
 * times, for tracing a stock libc built without tracing flags.
 *
 * Arguments: "-t N" sets the number of worker threads (default 4).
 *
 * Protocol (one command per line on stdin, replies on stdout, flushed):
 *   on start, after the worker threads exist and are parked: "ready"
 *   "run N": every worker runs N iterations of: strtol once, qsort once
 *            (8 ints, a comparator of ours), malloc once, free once,
 *            strlen once and wcsrchr once (IFUNCs; libc calls strlen
 *            itself, wcsrchr never), sigsetjmp once with a siglongjmp
 *            back to it from a function it calls, and getcontext once
 *            with a setcontext back to it (both return twice); when all
 *            are done:
 *            done {"strtol":A,"qsort":B,"malloc":C,"free":D,"strlen":E,
 *            "wcsrchr":F,"setjmp":G,"getcontext":H}
 *            the calls the workers made since the previous report, G and
 *            H counted once each came back the second time.
 *   "quit", or EOF on stdin: exit 0.
 *   anything else: "error unknown command".
 *
 * libc calls malloc and free itself (stdio, thread creation): a tracer of
 * malloc sees at least the counts reported. Nothing in libc calls the
 * exported strtol or qsort while the workers run.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>
#include <wchar.h>

static unsigned long n_strtol, n_qsort, n_malloc, n_free, n_strlen, n_wcsrchr, n_setjmp, n_getcontext;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int parked; /* workers that reached their first wait */
static long generation, iterations;
static int running;
volatile long sink;
const char *volatile number = "12345"; /* not a constant: compilers fold strtol of one */
const wchar_t *volatile wnumber = L"12345";
void *volatile sinkp; /* keeps the compiler from eliding malloc and free */

static int cmp_int(const void *a, const void *b)
{
	int x = *(const int *)a, y = *(const int *)b;
	return (x > y) - (x < y);
}

static __attribute__((noinline)) void jump_back(sigjmp_buf *b)
{
	sink++;
	siglongjmp(*b, 1);
}

/* sigsetjmp and getcontext return twice: the second time through the
 * return address they saved the first time. */
static __attribute__((noinline)) void twice(void)
{
	sigjmp_buf b;
	if (sigsetjmp(b, 0) == 0)
		jump_back(&b);
	else
		__atomic_fetch_add(&n_setjmp, 1, __ATOMIC_RELAXED);
	ucontext_t uc;
	volatile int again = 0;
	if (getcontext(&uc) != 0)
		return;
	if (!again) {
		again = 1;
		setcontext(&uc);
	}
	__atomic_fetch_add(&n_getcontext, 1, __ATOMIC_RELAXED);
}

static void pattern(void)
{
	char *end;
	int v[8] = {5, 3, 7, 1, 8, 2, 6, 4};
	sink += strtol(number, &end, 10);
	__atomic_fetch_add(&n_strtol, 1, __ATOMIC_RELAXED);
	qsort(v, 8, sizeof v[0], cmp_int);
	__atomic_fetch_add(&n_qsort, 1, __ATOMIC_RELAXED);
	char *p = malloc(32);
	__atomic_fetch_add(&n_malloc, 1, __ATOMIC_RELAXED);
	p[0] = 1;
	sinkp = p;
	sink += v[0];
	free(p);
	__atomic_fetch_add(&n_free, 1, __ATOMIC_RELAXED);
	sink += strlen(number);
	__atomic_fetch_add(&n_strlen, 1, __ATOMIC_RELAXED);
	sink += wcsrchr(wnumber, L'3') != NULL;
	__atomic_fetch_add(&n_wcsrchr, 1, __ATOMIC_RELAXED);
	twice();
}

static void *worker(void *arg)
{
	long seen = 0;
	(void)arg;
	/* Until a new thread runs, it has pthread_create's all-blocked signal
	 * mask; "ready" waits for this so that nothing sees that mask. */
	pthread_mutex_lock(&mu);
	parked++;
	pthread_cond_broadcast(&cv);
	pthread_mutex_unlock(&mu);
	for (;;) {
		pthread_mutex_lock(&mu);
		while (generation == seen)
			pthread_cond_wait(&cv, &mu);
		seen = generation;
		long n = iterations;
		pthread_mutex_unlock(&mu);
		for (long i = 0; i < n; i++)
			pattern();
		pthread_mutex_lock(&mu);
		running--;
		pthread_cond_broadcast(&cv);
		pthread_mutex_unlock(&mu);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	int nthreads = 4;
	if (argc == 3 && strcmp(argv[1], "-t") == 0)
		nthreads = atoi(argv[2]);
	if (nthreads < 1 || nthreads > 1024) {
		fprintf(stderr, "libccalls: bad thread count %d: use -t 1..1024\n", nthreads);
		return 2;
	}
	for (int i = 0; i < nthreads; i++) {
		pthread_t t;
		if (pthread_create(&t, NULL, worker, NULL) != 0) {
			fprintf(stderr, "libccalls: pthread_create failed\n");
			return 1;
		}
	}
	pthread_mutex_lock(&mu);
	while (parked < nthreads)
		pthread_cond_wait(&cv, &mu);
	pthread_mutex_unlock(&mu);
	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("ready\n");
	char line[128];
	while (fgets(line, sizeof line, stdin)) {
		long n;
		if (sscanf(line, "run %ld", &n) == 1) {
			pthread_mutex_lock(&mu);
			iterations = n;
			running = nthreads;
			generation++;
			pthread_cond_broadcast(&cv);
			while (running > 0)
				pthread_cond_wait(&cv, &mu);
			pthread_mutex_unlock(&mu);
			unsigned long a = __atomic_exchange_n(&n_strtol, 0, __ATOMIC_RELAXED);
			unsigned long b = __atomic_exchange_n(&n_qsort, 0, __ATOMIC_RELAXED);
			unsigned long c = __atomic_exchange_n(&n_malloc, 0, __ATOMIC_RELAXED);
			unsigned long d = __atomic_exchange_n(&n_free, 0, __ATOMIC_RELAXED);
			unsigned long e = __atomic_exchange_n(&n_strlen, 0, __ATOMIC_RELAXED);
			unsigned long f = __atomic_exchange_n(&n_wcsrchr, 0, __ATOMIC_RELAXED);
			unsigned long g = __atomic_exchange_n(&n_setjmp, 0, __ATOMIC_RELAXED);
			unsigned long h = __atomic_exchange_n(&n_getcontext, 0, __ATOMIC_RELAXED);
			printf("done {\"strtol\":%lu,\"qsort\":%lu,\"malloc\":%lu,\"free\":%lu,\"strlen\":%lu,\"wcsrchr\":%lu,\"setjmp\":%lu,\"getcontext\":%lu}\n", a, b, c, d, e, f, g, h);
		} else if (strcmp(line, "quit\n") == 0) {
			return 0;
		} else {
			printf("error unknown command\n");
		}
	}
	return 0;
}
