/*
 * sqlite_driver.c: the driver of the sqlite fixture, a multi-threaded
 * program on SQLite's amalgamation (sqlite3-binding.c of the Go module
 * github.com/mattn/go-sqlite3, compiled with sites next to this file; see
 * internal/testtarget/sqlite.go). It is real C code nobody here wrote,
 * with thousands of functions, hammered by threads while livetrace
 * attaches and detaches.
 *
 * Arguments:
 *   -w N       writer threads (default 2)
 *   -r N       reader threads (default 2)
 *   -d PATH    the database file (required; created, WAL mode)
 *
 * Every thread has its own connection. Writer k owns table wk: one writer
 * unit is a transaction (BEGIN IMMEDIATE) that empties wk, inserts 40
 * rows, updates some, reads them back joined with the static table items,
 * and commits. One reader unit is a read transaction over items and every
 * writer table. Each unit folds the rows it read into a 64-bit value. A
 * writer unit always leaves wk in the same state, and each writer ran one
 * unit before "ready", so every committed state a reader can see is the
 * same: every unit of a thread gives the same value, its reference,
 * whatever the interleaving of the threads.
 *
 * All SQLite memory comes from a static heap (SQLITE_CONFIG_HEAP,
 * memsys5), so that SQLite does not change the mappings of the process.
 *
 * Protocol (one command per line on stdin, replies on stdout, flushed):
 *   on start, once the database is set up and the threads are parked:
 *              "ready"
 *   "run N":   every thread runs exactly N units; then
 *              "done <checksum> <steps> <bad>": the wrapping sum over
 *              threads of their unit values folded in order, the number of
 *              calls this driver made to sqlite3_step during the run, and
 *              the number of units whose value differed from the thread's
 *              reference (0 unless something corrupted SQLite).
 *   "hammer":  every thread runs units in a loop until "stop"; once every
 *              thread has started: "hammering".
 *   "stop":    the threads finish their current unit and park; then
 *              "stopped <units> <bad> <checksum>": the units run, the bad
 *              ones, and the checksum of the last unit of each thread,
 *              which equals the one of "run 1".
 *   "progress": "progress <u0> <u1> ...": the units each thread (writers
 *              first) has finished since the start; also while hammering.
 *   "quit", or EOF on stdin: exit 0.
 *   anything else (or a command at the wrong time): "error <reason>".
 * Any unexpected SQLite error is printed on stderr and aborts the program.
 * The driver calls sqlite3_step only through step(), which counts, and
 * never calls sqlite3_exec (whose internal calls to sqlite3_step would not
 * be counted) after "ready".
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sqlite3-binding.h"

#define ROWS_ITEMS 2000
#define GROUPS 97
#define ROWS_W 40
#define MAX_WRITERS 16
#define MAX_THREADS 64

enum mode { MODE_RUN, MODE_HAMMER };

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond_work = PTHREAD_COND_INITIALIZER;
static pthread_cond_t cond_done = PTHREAD_COND_INITIALIZER;
static int parked; /* workers that reached their first wait */
static unsigned long generation;
static enum mode job_mode;
static long job_units;
static int finished, started;
static int stop_flag;

static int nwriters = 2, nreaders = 2, nthreads;
static const char *dbpath;

static uint64_t steps;          /* calls to sqlite3_step, atomic */
static uint64_t units_run, bad; /* atomic */

/* SQLite's whole heap (memsys5 needs no more than this here). */
static char heap[64 << 20] __attribute__((aligned(64)));

struct thread {
	int id, writer; /* writer: index of its table, or -1 for a reader */
	sqlite3 *db;
	sqlite3_stmt *begin, *commit, *del, *ins, *upd, *sel, *join, *groups, *sums, *names;
	uint64_t ref;    /* the value of each of its units */
	uint64_t result; /* units of the last run folded */
	uint64_t last;   /* the value of its last unit */
	uint64_t units;  /* units run since the start, atomic */
};

static struct thread threads[MAX_THREADS];

static void die(sqlite3 *db, const char *what, int rc)
{
	fprintf(stderr, "sqlite_driver: %s: %s (%d, %s)\n", what, sqlite3_errstr(rc), rc, db ? sqlite3_errmsg(db) : "");
	abort();
}

static int step(struct thread *t, sqlite3_stmt *s)
{
	__atomic_add_fetch(&steps, 1, __ATOMIC_RELAXED);
	int rc = sqlite3_step(s);
	if (rc != SQLITE_ROW && rc != SQLITE_DONE)
		die(t->db, sqlite3_sql(s), rc);
	return rc;
}

/* finish steps s to its end and resets it. */
static void finish(struct thread *t, sqlite3_stmt *s)
{
	while (step(t, s) == SQLITE_ROW)
		;
	sqlite3_reset(s);
}

static sqlite3_stmt *prepare(struct thread *t, const char *sql)
{
	sqlite3_stmt *s;
	int rc = sqlite3_prepare_v2(t->db, sql, -1, &s, NULL);
	if (rc != SQLITE_OK)
		die(t->db, sql, rc);
	return s;
}

static void exec(sqlite3 *db, const char *sql)
{
	int rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
	if (rc != SQLITE_OK)
		die(db, sql, rc);
}

static uint64_t mix(uint64_t h, uint64_t v)
{
	h ^= v;
	h *= 0x100000001b3ULL;
	return h ^ (h >> 29);
}

/* fold folds every column of the rows of s into h, then resets s. */
static uint64_t fold(struct thread *t, sqlite3_stmt *s, uint64_t h)
{
	while (step(t, s) == SQLITE_ROW) {
		for (int c = 0; c < sqlite3_column_count(s); c++) {
			if (sqlite3_column_type(s, c) == SQLITE_TEXT) {
				const unsigned char *p = sqlite3_column_text(s, c);
				for (int i = 0; i < sqlite3_column_bytes(s, c); i++)
					h = mix(h, p[i]);
			} else {
				h = mix(h, (uint64_t)sqlite3_column_int64(s, c));
			}
		}
	}
	sqlite3_reset(s);
	return h;
}

static uint64_t writer_unit(struct thread *t)
{
	uint64_t h = 0xcbf29ce484222325ULL;
	char name[64];
	finish(t, t->begin);
	finish(t, t->del);
	for (int i = 0; i < ROWS_W; i++) {
		int a = (int)((i * 7919 + t->writer * 104729) % GROUPS);
		snprintf(name, sizeof name, "w%d-row-%d-%x", t->writer, i, a * 2654435761u);
		sqlite3_bind_int(t->ins, 1, i);
		sqlite3_bind_int(t->ins, 2, a);
		sqlite3_bind_text(t->ins, 3, name, -1, SQLITE_TRANSIENT);
		finish(t, t->ins);
	}
	finish(t, t->upd);
	h = fold(t, t->sel, h);
	h = fold(t, t->join, h);
	finish(t, t->commit);
	return h;
}

static uint64_t reader_unit(struct thread *t)
{
	uint64_t h = 0x84222325cbf29ce4ULL;
	finish(t, t->begin);
	h = fold(t, t->groups, h);
	h = fold(t, t->sums, h);
	for (int g = 0; g < 4; g++) {
		sqlite3_bind_int(t->names, 1, (t->id * 13 + g * 31) % GROUPS);
		h = fold(t, t->names, h);
	}
	finish(t, t->commit);
	return h;
}

static uint64_t unit(struct thread *t)
{
	return t->writer >= 0 ? writer_unit(t) : reader_unit(t);
}

static void run_unit(struct thread *t)
{
	uint64_t v = unit(t);
	if (v != t->ref)
		__atomic_add_fetch(&bad, 1, __ATOMIC_RELAXED);
	__atomic_add_fetch(&units_run, 1, __ATOMIC_RELAXED);
	t->result = mix(t->result, v);
	t->last = v;
	__atomic_add_fetch(&t->units, 1, __ATOMIC_RELEASE);
}

static void *worker(void *arg)
{
	struct thread *t = arg;
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
		long n = job_units;
		started++;
		pthread_cond_broadcast(&cond_done);
		pthread_mutex_unlock(&mu);

		t->result = 0;
		if (m == MODE_RUN) {
			for (long i = 0; i < n; i++)
				run_unit(t);
		} else {
			while (!__atomic_load_n(&stop_flag, __ATOMIC_ACQUIRE))
				run_unit(t);
		}

		pthread_mutex_lock(&mu);
		finished++;
		pthread_cond_broadcast(&cond_done);
		pthread_mutex_unlock(&mu);
	}
	return NULL;
}

static void start_job(enum mode m, long n)
{
	pthread_mutex_lock(&mu);
	job_mode = m;
	job_units = n;
	finished = started = 0;
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
	for (int i = 0; i < nthreads; i++)
		sum += threads[i].result;
	return sum;
}

static void open_thread(struct thread *t)
{
	int rc = sqlite3_open_v2(dbpath, &t->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, NULL);
	if (rc != SQLITE_OK)
		die(t->db, dbpath, rc);
	sqlite3_busy_timeout(t->db, 120000);
	exec(t->db, "PRAGMA synchronous=OFF");
	char sql[4096];
	if (t->writer >= 0) {
		int k = t->writer;
		t->begin = prepare(t, "BEGIN IMMEDIATE");
		snprintf(sql, sizeof sql, "DELETE FROM w%d", k);
		t->del = prepare(t, sql);
		snprintf(sql, sizeof sql, "INSERT INTO w%d(id, a, b) VALUES(?1, ?2, ?3)", k);
		t->ins = prepare(t, sql);
		snprintf(sql, sizeof sql, "UPDATE w%d SET a = (a * 3 + 1) %% %d, b = upper(b) WHERE id %% 3 = 0", k, GROUPS);
		t->upd = prepare(t, sql);
		snprintf(sql, sizeof sql, "SELECT id, a, b, length(b) FROM w%d ORDER BY a, id", k);
		t->sel = prepare(t, sql);
		snprintf(sql, sizeof sql,
			 "SELECT w.a, count(*), sum(i.v), min(i.name), max(i.name) FROM w%d w JOIN items i ON i.grp = w.a "
			 "GROUP BY w.a ORDER BY w.a",
			 k);
		t->join = prepare(t, sql);
	} else {
		t->begin = prepare(t, "BEGIN");
		t->groups = prepare(t, "SELECT grp, count(*), sum(v), max(name), total(v * 0.5) FROM items GROUP BY grp ORDER BY grp");
		size_t n = 0;
		for (int k = 0; k < nwriters; k++)
			n += snprintf(sql + n, sizeof sql - n, "%sSELECT %d, count(*), sum(a), group_concat(b, ',') FROM (SELECT a, b FROM w%d ORDER BY id)",
				      k ? " UNION ALL " : "", k, k);
		t->sums = prepare(t, sql);
		t->names = prepare(t, "SELECT id, name, v FROM items WHERE grp = ?1 ORDER BY v DESC, id LIMIT 7");
	}
	t->commit = prepare(t, "COMMIT");
}

static void setup(void)
{
	int rc = sqlite3_config(SQLITE_CONFIG_HEAP, heap, (int)sizeof heap, 64);
	if (rc == SQLITE_OK)
		rc = sqlite3_initialize();
	if (rc != SQLITE_OK)
		die(NULL, "configure the heap", rc);

	sqlite3 *db;
	rc = sqlite3_open_v2(dbpath, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL);
	if (rc != SQLITE_OK)
		die(db, dbpath, rc);
	exec(db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=OFF;"
		 "DROP TABLE IF EXISTS items;"
		 "CREATE TABLE items(id INTEGER PRIMARY KEY, grp INTEGER NOT NULL, name TEXT NOT NULL, v INTEGER NOT NULL);"
		 "CREATE INDEX items_grp ON items(grp, v)");
	char sql[256];
	for (int k = 0; k < nwriters; k++) {
		snprintf(sql, sizeof sql, "DROP TABLE IF EXISTS w%d; CREATE TABLE w%d(id INTEGER PRIMARY KEY, a INTEGER, b TEXT); CREATE INDEX w%d_a ON w%d(a)", k, k, k, k);
		exec(db, sql);
	}
	exec(db, "BEGIN");
	sqlite3_stmt *ins;
	rc = sqlite3_prepare_v2(db, "INSERT INTO items(id, grp, name, v) VALUES(?1, ?2, ?3, ?4)", -1, &ins, NULL);
	if (rc != SQLITE_OK)
		die(db, "prepare insert", rc);
	for (int i = 0; i < ROWS_ITEMS; i++) {
		char name[64];
		uint32_t x = (uint32_t)i * 2654435761u;
		snprintf(name, sizeof name, "item-%05d-%08x", i, x);
		sqlite3_bind_int(ins, 1, i);
		sqlite3_bind_int(ins, 2, (int)(x % GROUPS));
		sqlite3_bind_text(ins, 3, name, -1, SQLITE_TRANSIENT);
		sqlite3_bind_int64(ins, 4, (int64_t)(x >> 7) - 1000000);
		rc = sqlite3_step(ins);
		if (rc != SQLITE_DONE)
			die(db, "insert item", rc);
		sqlite3_reset(ins);
	}
	sqlite3_finalize(ins);
	exec(db, "COMMIT");
	sqlite3_close(db);

	nthreads = nwriters + nreaders;
	for (int i = 0; i < nthreads; i++) {
		threads[i].id = i;
		threads[i].writer = i < nwriters ? i : -1;
		open_thread(&threads[i]);
	}
	/* One unit per writer first, so that readers only ever see that state;
	 * then the references. */
	for (int i = 0; i < nthreads; i++)
		unit(&threads[i]);
	for (int i = 0; i < nthreads; i++)
		threads[i].ref = unit(&threads[i]);
	for (int i = 0; i < nwriters; i++)
		if (unit(&threads[i]) != threads[i].ref)
			die(NULL, "a writer unit is not repeatable", SQLITE_INTERNAL);
}

static void reply(const char *s)
{
	fputs(s, stdout);
	fputc('\n', stdout);
	fflush(stdout);
}

int main(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "-w") == 0 && i + 1 < argc) {
			nwriters = atoi(argv[++i]);
		} else if (strcmp(argv[i], "-r") == 0 && i + 1 < argc) {
			nreaders = atoi(argv[++i]);
		} else if (strcmp(argv[i], "-d") == 0 && i + 1 < argc) {
			dbpath = argv[++i];
		} else {
			fprintf(stderr, "sqlite_driver: unknown argument %s: use -w N, -r N and -d PATH\n", argv[i]);
			return 2;
		}
	}
	if (!dbpath || nwriters < 1 || nwriters > MAX_WRITERS || nreaders < 0 || nwriters + nreaders > MAX_THREADS) {
		fprintf(stderr, "sqlite_driver: need -d PATH, -w 1..%d and -r 0..%d\n", MAX_WRITERS, MAX_THREADS - MAX_WRITERS);
		return 2;
	}
	setup();
	for (int i = 0; i < nthreads; i++) {
		pthread_t th;
		if (pthread_create(&th, NULL, worker, &threads[i]) != 0) {
			fprintf(stderr, "sqlite_driver: pthread_create failed\n");
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
			__atomic_store_n(&units_run, 0, __ATOMIC_SEQ_CST);
			__atomic_store_n(&bad, 0, __ATOMIC_SEQ_CST);
			start_job(MODE_HAMMER, 0);
			hammering = 1;
			reply("hammering");
		} else if (strncmp(line, "stop", 4) == 0) {
			if (!hammering) {
				reply("error not hammering");
				continue;
			}
			__atomic_store_n(&stop_flag, 1, __ATOMIC_RELEASE);
			wait_job();
			hammering = 0;
			uint64_t sum = 0;
			for (int i = 0; i < nthreads; i++)
				sum += mix(0, threads[i].last);
			printf("stopped %" PRIu64 " %" PRIu64 " %" PRIu64 "\n", __atomic_load_n(&units_run, __ATOMIC_SEQ_CST),
			       __atomic_load_n(&bad, __ATOMIC_SEQ_CST), sum);
			fflush(stdout);
		} else if (sscanf(line, "run %ld", &n) == 1) {
			if (hammering) {
				reply("error hammering: send stop first");
				continue;
			}
			if (n < 0) {
				reply("error bad unit count");
				continue;
			}
			__atomic_store_n(&steps, 0, __ATOMIC_SEQ_CST);
			__atomic_store_n(&bad, 0, __ATOMIC_SEQ_CST);
			start_job(MODE_RUN, n);
			wait_job();
			printf("done %" PRIu64 " %" PRIu64 " %" PRIu64 "\n", checksum(), __atomic_load_n(&steps, __ATOMIC_SEQ_CST),
			       __atomic_load_n(&bad, __ATOMIC_SEQ_CST));
			fflush(stdout);
		} else if (strncmp(line, "progress", 8) == 0) {
			fputs("progress", stdout);
			for (int i = 0; i < nthreads; i++)
				printf(" %" PRIu64, __atomic_load_n(&threads[i].units, __ATOMIC_ACQUIRE));
			fputc('\n', stdout);
			fflush(stdout);
		} else if (strncmp(line, "quit", 4) == 0) {
			break;
		} else {
			reply("error unknown command");
		}
	}
	return 0;
}
