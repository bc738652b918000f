/*
 * workload.c: a multi-threaded program with ground-truth call counts, linked
 * with libltshared.so (also built as the "uselib" fixture).
 *
 * Arguments: "-t N" sets the number of worker threads (default 4).
 *
 * Protocol (one command per line on stdin, replies on stdout, flushed):
 *   on start, after the worker threads exist and are parked: "ready"
 *   "run N":   every worker runs N iterations of the pattern below; when all
 *              are done: done {"work_leaf":A,"work_nested":B,"work_recurse":C,"lib_add":D}
 *              with the calls counted since the previous report, then the
 *              counters are reset.
 *   "spawn N": creates N new threads that each run the pattern once and
 *              exit; after joining them: spawned {...same JSON object...},
 *              and the counters are reset.
 *   "fork":    work_fork() forks inside a traced frame; the child runs the
 *              pattern 10 times in its own process and exits with status 0
 *              if its counts are right (1 otherwise); the parent waits:
 *              forked <child exit status>, then the counters are reset
 *              (the child's calls happen in the child).
 *   "exit":    a new thread enters work_exit_thread(), which calls
 *              pthread_exit from inside a traced frame (two traced frames
 *              deep); after joining it: exited <value>, 42 when the thread
 *              exited through pthread_exit; the counters are reset.
 *   "exec":    prints "execing" and replaces itself with /bin/sleep 5 (the
 *              tracer must notice the exec and let go).
 *   "quit", or EOF on stdin: exit 0.
 *   anything else: "error unknown command".
 *
 * One iteration of the pattern calls work_leaf once, work_nested once (which
 * calls work_leaf twice), work_recurse(5) (6 calls: depth 5 down to 0) and
 * lib_add once. Each function counts its own calls in an atomic counter, so
 * the counts hold whatever tracing does.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ltfixture.h"
#include "ltshared.h"

static unsigned long calls_leaf, calls_nested, calls_recurse;
volatile long work_sink;

LT_KEEP long work_leaf(long x)
{
	__atomic_fetch_add(&calls_leaf, 1, __ATOMIC_RELAXED);
	return x + 1;
}

LT_KEEP long work_nested(long x)
{
	__atomic_fetch_add(&calls_nested, 1, __ATOMIC_RELAXED);
	long a = work_leaf(x);
	LT_OPAQUE(a);
	return a + work_leaf(x + 1);
}

LT_KEEP long work_recurse(long depth)
{
	__atomic_fetch_add(&calls_recurse, 1, __ATOMIC_RELAXED);
	if (depth <= 0)
		return 0;
	long r = work_recurse(depth - 1);
	LT_OPAQUE(r);
	return r + 1;
}

LT_KEEP long work_pattern(long x)
{
	x = work_leaf(x);
	x += work_nested(x);
	x += work_recurse(5);
	x = lib_add(x, 1);
	return x;
}

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond_work = PTHREAD_COND_INITIALIZER;
static pthread_cond_t cond_done = PTHREAD_COND_INITIALIZER;
static int parked; /* workers that reached their first wait */
static unsigned long generation; /* bumped for every "run" */
static long iterations;
static int finished;

static void *worker(void *arg)
{
	unsigned long seen = 0;
	long x = (long)(size_t)arg;
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
		long n = iterations;
		pthread_mutex_unlock(&mu);

		for (long i = 0; i < n; i++)
			x = work_pattern(x) & 0xffff;
		work_sink = x;

		pthread_mutex_lock(&mu);
		finished++;
		pthread_cond_signal(&cond_done);
		pthread_mutex_unlock(&mu);
	}
	return NULL;
}

LT_KEEP long work_fork(long n)
{
	pid_t pid = fork();
	if (pid == 0) {
		/* The child: its own copy of the counters, from zero. */
		__atomic_store_n(&calls_leaf, 0, __ATOMIC_SEQ_CST);
		for (long i = 0; i < n; i++)
			work_sink = work_pattern(i);
		_exit(__atomic_load_n(&calls_leaf, __ATOMIC_SEQ_CST) == (unsigned long)(3 * n) ? 0 : 1);
	}
	int status = -1;
	if (pid > 0)
		waitpid(pid, &status, 0);
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

LT_KEEP long work_exit_inner(long x)
{
	work_sink = work_leaf(x);
	pthread_exit((void *)42);
	return x;
}

LT_KEEP long work_exit_thread(long x)
{
	long r = work_exit_inner(x);
	LT_OPAQUE(r);
	return r + 1;
}

static void *exiting_thread(void *arg)
{
	work_sink = work_exit_thread((long)(size_t)arg);
	return (void *)7;
}

static void *spawned_thread(void *arg)
{
	work_sink = work_pattern((long)(size_t)arg);
	return NULL;
}

/* report prints the counters as a JSON object after prefix and resets them. */
static void report(const char *prefix)
{
	unsigned long leaf = __atomic_exchange_n(&calls_leaf, 0, __ATOMIC_SEQ_CST);
	unsigned long nested = __atomic_exchange_n(&calls_nested, 0, __ATOMIC_SEQ_CST);
	unsigned long recurse = __atomic_exchange_n(&calls_recurse, 0, __ATOMIC_SEQ_CST);
	unsigned long add = __atomic_exchange_n(&lt_lib_add_calls, 0, __ATOMIC_SEQ_CST);
	printf("%s {\"work_leaf\":%lu,\"work_nested\":%lu,\"work_recurse\":%lu,\"lib_add\":%lu}\n",
	       prefix, leaf, nested, recurse, add);
	fflush(stdout);
}

int main(int argc, char **argv)
{
	int nthreads = 4;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "-t") == 0 && i + 1 < argc)
			nthreads = atoi(argv[++i]);
	}
	if (nthreads < 1 || nthreads > 1024) {
		fprintf(stderr, "workload: bad thread count %d: use -t 1..1024\n", nthreads);
		return 2;
	}
	for (int i = 0; i < nthreads; i++) {
		pthread_t t;
		if (pthread_create(&t, NULL, worker, (void *)(size_t)i) != 0) {
			fprintf(stderr, "workload: pthread_create failed\n");
			return 1;
		}
		pthread_detach(t);
	}
	pthread_mutex_lock(&mu);
	while (parked < nthreads)
		pthread_cond_wait(&cond_done, &mu);
	pthread_mutex_unlock(&mu);
	printf("ready\n");
	fflush(stdout);

	char line[256];
	while (fgets(line, sizeof line, stdin)) {
		long n;
		if (sscanf(line, "run %ld", &n) == 1) {
			pthread_mutex_lock(&mu);
			finished = 0;
			iterations = n;
			generation++;
			pthread_cond_broadcast(&cond_work);
			while (finished < nthreads)
				pthread_cond_wait(&cond_done, &mu);
			pthread_mutex_unlock(&mu);
			report("done");
		} else if (sscanf(line, "spawn %ld", &n) == 1) {
			if (n < 0 || n > 4096) {
				printf("error bad spawn count\n");
				fflush(stdout);
				continue;
			}
			pthread_t *ts = calloc(n ? n : 1, sizeof *ts);
			long made = 0;
			for (; made < n; made++)
				if (pthread_create(&ts[made], NULL, spawned_thread, (void *)(size_t)made) != 0)
					break;
			for (long i = 0; i < made; i++)
				pthread_join(ts[i], NULL);
			free(ts);
			report("spawned");
		} else if (strncmp(line, "fork", 4) == 0) {
			long st = work_fork(10);
			report("counts");
			printf("forked %ld\n", st);
			fflush(stdout);
		} else if (strncmp(line, "exit", 4) == 0) {
			pthread_t t;
			void *ret = NULL;
			if (pthread_create(&t, NULL, exiting_thread, NULL) == 0)
				pthread_join(t, &ret);
			report("counts");
			printf("exited %ld\n", (long)(size_t)ret);
			fflush(stdout);
		} else if (strncmp(line, "exec", 4) == 0) {
			printf("execing\n");
			fflush(stdout);
			execl("/bin/sleep", "sleep", "5", (char *)NULL);
			printf("error exec failed\n");
			fflush(stdout);
		} else if (strncmp(line, "quit", 4) == 0) {
			break;
		} else {
			printf("error unknown command\n");
			fflush(stdout);
		}
	}
	return 0;
}
