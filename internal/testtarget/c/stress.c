/*
 * stress.c: the driver of the stress fixture, for the code-patching engine.
 *
 * The fixture is generated functions fn_00000.. (in stress_fns_*.c; they are
 * the ONLY functions of the program with patchable sites), their table
 * lt_fns (stress_table.c), this driver and the counting runtime
 * (stress_rt.c: lt_counter_stub, the routine a patched site can CALL, and
 * lt_count). The driver and runtime are compiled without site flags.
 *
 * Arguments:
 *   -t N             number of worker threads (default 4)
 *   -block-sigtrap   block SIGTRAP in every thread (pthread_sigmask before
 *                    the threads are created)
 *   -ignore-sigtrap  signal(SIGTRAP, SIG_IGN)
 *   -own-sigtrap     install a SIGTRAP handler that counts; enables "trap"
 *
 * Protocol (one command per line on stdin, replies on stdout, flushed):
 *   on start, once the workers exist and are parked: "ready"
 *   "hammer":  every worker loops over all functions, pass after pass, until
 *              "stop"; once every worker has started: "hammering". Each
 *              worker measures the longest gap between the ends of two
 *              consecutive calls it made (CLOCK_MONOTONIC after every call):
 *              the longest stall.
 *   "gaps":    while hammering, every gap of over 1 ms a worker saw since
 *              the last "gaps" (or the "hammer"), one line each:
 *              "gap <end_ns> <len_ns>" (end: CLOCK_MONOTONIC), then
 *              "gaps done <lost>", lost counting gaps past a worker's log of
 *              GAPLOG entries.
 *   "stop":    the workers finish their current pass and park; then
 *              "stopped <max_stall_ns> <checksum>". Every hammer pass starts
 *              from the worker's seed, so the checksum equals the one of
 *              "run 1" whatever the number of passes.
 *   "run N":   every worker runs exactly N passes over all functions,
 *              chaining the value through them; then "done <checksum>" and
 *              "counts c0 c1 ... cN-1" (the stub counters in function
 *              order, or "counts" plus nothing for no functions); the
 *              counters are then reset to 0.
 *   "unknown": prints "unknown <n>", the stub calls from sites that are no
 *              generated function's.
 *   "trap":    with -own-sigtrap, executes int3 and prints
 *              "trapped <handler count>"; otherwise prints
 *              "error trap needs -own-sigtrap".
 *   "quit", or EOF on stdin: exit 0.
 *   anything else (or a command at the wrong time): "error <reason>".
 * The checksum is the wrapping sum over workers of their final value, each
 * worker starting from its own seed: it is the same with or without tracing.
 */
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef uint64_t (*lt_fn)(uint64_t);
extern const lt_fn lt_fns[];
extern const unsigned long lt_nfns;
extern uint64_t *lt_counts;
extern uint64_t lt_unknown_sites;
int lt_init(void);

enum mode { MODE_RUN, MODE_HAMMER };

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond_work = PTHREAD_COND_INITIALIZER;
static pthread_cond_t cond_done = PTHREAD_COND_INITIALIZER;
static unsigned long generation;
static enum mode job_mode;
static long job_passes;
static int finished, started;
static int parked; /* workers that reached their first wait */
static int stop_flag;

static int nthreads = 4;
static uint64_t *results;   /* per worker: final value */
static uint64_t *max_stall; /* per worker: longest gap in ns (hammer) */

static volatile unsigned long trap_count;

/* Per worker while hammering: the gaps of over GAPMIN ns, for "gaps". The
 * worker appends and publishes the count; the main thread reads from its
 * cursor on. */
#define GAPLOG 4096
#define GAPMIN 1000000ULL
struct gap {
	uint64_t end, len;
};
static struct gap *gaplog;     /* GAPLOG entries per worker */
static unsigned long *gapn;    /* entries written, per worker */
static unsigned long *gapseen; /* entries printed, per worker (main thread) */
static unsigned long *gaplost; /* gaps past the log, per worker */

static uint64_t seed(int t) { return 0x9e3779b97f4a7c15ULL * (uint64_t)(t + 1); }

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static uint64_t pass(uint64_t acc)
{
	for (unsigned long i = 0; i < lt_nfns; i++)
		acc = lt_fns[i](acc);
	return acc;
}

static void hammer(int t)
{
	uint64_t worst = 0, prev = now_ns(), last = 0;
	for (;;) {
		uint64_t acc = seed(t);
		for (unsigned long i = 0; i < lt_nfns; i++) {
			acc = lt_fns[i](acc);
			uint64_t tn = now_ns();
			if (tn - prev > worst)
				worst = tn - prev;
			if (tn - prev > GAPMIN) {
				unsigned long k = gapn[t];
				if (k < GAPLOG) {
					gaplog[(size_t)t * GAPLOG + k] = (struct gap){tn, tn - prev};
					__atomic_store_n(&gapn[t], k + 1, __ATOMIC_RELEASE);
				} else {
					__atomic_add_fetch(&gaplost[t], 1, __ATOMIC_RELAXED);
				}
			}
			prev = tn;
		}
		last = acc;
		if (__atomic_load_n(&stop_flag, __ATOMIC_ACQUIRE))
			break;
	}
	results[t] = last;
	max_stall[t] = worst;
}

static void *worker(void *arg)
{
	int t = (int)(size_t)arg;
	unsigned long seen = 0;
	/* Until a new thread runs, it has pthread_create's all-blocked signal
	 * mask; "ready" waits for this so that nothing sees that mask. */
	pthread_mutex_lock(&mu);
	parked++;
	pthread_cond_broadcast(&cond_done);
	pthread_mutex_unlock(&mu);
	for (;;) {
		pthread_mutex_lock(&mu);
		while (generation == seen)
			pthread_cond_wait(&cond_work, &mu);
		seen = generation;
		enum mode m = job_mode;
		long n = job_passes;
		started++;
		pthread_cond_broadcast(&cond_done);
		pthread_mutex_unlock(&mu);

		if (m == MODE_RUN) {
			uint64_t acc = seed(t);
			for (long p = 0; p < n; p++)
				acc = pass(acc);
			results[t] = acc;
		} else {
			hammer(t);
		}

		pthread_mutex_lock(&mu);
		finished++;
		pthread_cond_broadcast(&cond_done);
		pthread_mutex_unlock(&mu);
	}
	return NULL;
}

/* start_job wakes the workers; with wait_started it returns once all began. */
static void start_job(enum mode m, long passes)
{
	pthread_mutex_lock(&mu);
	job_mode = m;
	job_passes = passes;
	finished = 0;
	started = 0;
	__atomic_store_n(&stop_flag, 0, __ATOMIC_RELEASE);
	generation++;
	pthread_cond_broadcast(&cond_work);
	while (started < nthreads)
		pthread_cond_wait(&cond_done, &mu);
	pthread_mutex_unlock(&mu);
}

static void wait_job(void)
{
	pthread_mutex_lock(&mu);
	while (finished < nthreads)
		pthread_cond_wait(&cond_done, &mu);
	pthread_mutex_unlock(&mu);
}

static uint64_t checksum(void)
{
	uint64_t sum = 0;
	for (int t = 0; t < nthreads; t++)
		sum += results[t];
	return sum;
}

static void on_sigtrap(int sig)
{
	(void)sig;
	trap_count++;
}

static void reply(const char *s)
{
	fputs(s, stdout);
	fputc('\n', stdout);
	fflush(stdout);
}

int main(int argc, char **argv)
{
	int own_trap = 0;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "-t") == 0 && i + 1 < argc) {
			nthreads = atoi(argv[++i]);
		} else if (strcmp(argv[i], "-block-sigtrap") == 0) {
			sigset_t set;
			sigemptyset(&set);
			sigaddset(&set, SIGTRAP);
			pthread_sigmask(SIG_BLOCK, &set, NULL);
		} else if (strcmp(argv[i], "-ignore-sigtrap") == 0) {
			signal(SIGTRAP, SIG_IGN);
		} else if (strcmp(argv[i], "-own-sigtrap") == 0) {
			struct sigaction sa;
			memset(&sa, 0, sizeof sa);
			sa.sa_handler = on_sigtrap;
			sigemptyset(&sa.sa_mask);
			sa.sa_flags = SA_RESTART;
			sigaction(SIGTRAP, &sa, NULL);
			own_trap = 1;
		} else {
			fprintf(stderr, "stress: unknown argument %s: use -t N, -block-sigtrap, -ignore-sigtrap or -own-sigtrap\n", argv[i]);
			return 2;
		}
	}
	if (nthreads < 1 || nthreads > 1024) {
		fprintf(stderr, "stress: bad thread count %d: use -t 1..1024\n", nthreads);
		return 2;
	}
	results = calloc(nthreads, sizeof *results);
	max_stall = calloc(nthreads, sizeof *max_stall);
	gaplog = calloc((size_t)nthreads * GAPLOG, sizeof *gaplog);
	gapn = calloc(nthreads, sizeof *gapn);
	gapseen = calloc(nthreads, sizeof *gapseen);
	gaplost = calloc(nthreads, sizeof *gaplost);
	if (!results || !max_stall || !gaplog || !gapn || !gapseen || !gaplost || lt_init() != 0) {
		fprintf(stderr, "stress: out of memory\n");
		return 1;
	}
	for (int t = 0; t < nthreads; t++) {
		pthread_t th;
		if (pthread_create(&th, NULL, worker, (void *)(size_t)t) != 0) {
			fprintf(stderr, "stress: pthread_create failed\n");
			return 1;
		}
		pthread_detach(th);
	}
	pthread_mutex_lock(&mu);
	while (parked < nthreads)
		pthread_cond_wait(&cond_done, &mu);
	pthread_mutex_unlock(&mu);
	reply("ready");

	int hammering = 0;
	char line[256];
	while (fgets(line, sizeof line, stdin)) {
		long n;
		if (strncmp(line, "hammer", 6) == 0) {
			if (hammering) {
				reply("error already hammering");
				continue;
			}
			for (int t = 0; t < nthreads; t++)
				gapn[t] = gapseen[t] = gaplost[t] = 0;
			start_job(MODE_HAMMER, 0);
			hammering = 1;
			reply("hammering");
		} else if (strncmp(line, "gaps", 4) == 0) {
			if (!hammering) {
				reply("error not hammering");
				continue;
			}
			unsigned long lost = 0;
			for (int t = 0; t < nthreads; t++) {
				unsigned long n = __atomic_load_n(&gapn[t], __ATOMIC_ACQUIRE);
				for (; gapseen[t] < n; gapseen[t]++) {
					struct gap g = gaplog[(size_t)t * GAPLOG + gapseen[t]];
					printf("gap %" PRIu64 " %" PRIu64 "\n", g.end, g.len);
				}
				lost += __atomic_load_n(&gaplost[t], __ATOMIC_RELAXED);
			}
			printf("gaps done %lu\n", lost);
			fflush(stdout);
		} else if (strncmp(line, "stop", 4) == 0) {
			if (!hammering) {
				reply("error not hammering");
				continue;
			}
			__atomic_store_n(&stop_flag, 1, __ATOMIC_RELEASE);
			wait_job();
			hammering = 0;
			uint64_t worst = 0;
			for (int t = 0; t < nthreads; t++)
				if (max_stall[t] > worst)
					worst = max_stall[t];
			printf("stopped %" PRIu64 " %" PRIu64 "\n", worst, checksum());
			fflush(stdout);
		} else if (sscanf(line, "run %ld", &n) == 1) {
			if (hammering) {
				reply("error hammering: send stop first");
				continue;
			}
			start_job(MODE_RUN, n);
			wait_job();
			printf("done %" PRIu64 "\n", checksum());
			fputs("counts", stdout);
			for (unsigned long i = 0; i < lt_nfns; i++)
				printf(" %" PRIu64, __atomic_exchange_n(&lt_counts[i], 0, __ATOMIC_SEQ_CST));
			fputc('\n', stdout);
			fflush(stdout);
		} else if (strncmp(line, "unknown", 7) == 0) {
			printf("unknown %" PRIu64 "\n", __atomic_load_n(&lt_unknown_sites, __ATOMIC_SEQ_CST));
			fflush(stdout);
		} else if (strncmp(line, "trap", 4) == 0) {
			if (!own_trap) {
				reply("error trap needs -own-sigtrap");
				continue;
			}
			__asm__ volatile("int3" ::: "memory");
			printf("trapped %lu\n", trap_count);
			fflush(stdout);
		} else if (strncmp(line, "quit", 4) == 0) {
			break;
		} else {
			reply("error unknown command");
		}
	}
	return 0;
}
