/*
 * harness.c: loads the agent blob into its own address space the way the
 * tracer does, lets the Go test (the "tracer") format the shared memory,
 * write the stubs and patch the sites through /proc/PID/mem, then runs a
 * workload and prints its ground truth. Not traced itself.
 *
 * Protocol on stdin/stdout, one line each:
 *   -> READY <base> <stubs>      then SITE <addr> <name> and GOT <sym> <addr>
 *                                lines (a function pointer the workload
 *                                calls <sym> through), then END
 *   <- SHARED <size>
 *   -> MEMFD <fd>
 *   <- RUN
 *   -> COUNT <tid> <name> <n> / RESULT <key> <value> lines, then DONE
 * layout.h (written by the Go test from the generated constants) defines
 * L_CODE_SIZE, L_CTL_OFF, L_CTL_SIZE, L_PRIV_OFF, L_PRIV_SIZE, L_SHARED_OFF.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "layout.h"
#include "workload.h"

__thread unsigned long counts[NFUNCS];

extern char __start___patchable_function_entries[];
extern char __stop___patchable_function_entries[];

static void die(const char *what)
{
	fprintf(stderr, "harness: %s: %s\n", what, strerror(errno));
	exit(2);
}

static char line[256];

static void expect(const char *word)
{
	if (!fgets(line, sizeof line, stdin) || strncmp(line, word, strlen(word)) != 0) {
		fprintf(stderr, "harness: expected %s, got %s\n", word, line);
		exit(2);
	}
}

static pthread_mutex_t out_mu = PTHREAD_MUTEX_INITIALIZER;

static void report_counts(void)
{
	pid_t tid = (pid_t)syscall(SYS_gettid);
	pthread_mutex_lock(&out_mu);
	for (int i = 0; wfuncs[i].name; i++)
		if (counts[i])
			printf("COUNT %d %s %lu\n", tid, wfuncs[i].name, counts[i]);
	fflush(stdout);
	pthread_mutex_unlock(&out_mu);
}

static void result(const char *key, long v)
{
	pthread_mutex_lock(&out_mu);
	printf("RESULT %s %ld\n", key, v);
	fflush(stdout);
	pthread_mutex_unlock(&out_mu);
}

static long iters = 20000;

static void *basic_thread(void *arg)
{
	(void)arg;
	long fib = 0, args = 0, tail = 0;
	for (long i = 0; i < iters; i++) {
		w_leaf();
		if (i % 100 == 0) {
			fib += w_fib(10);
			args += w_args(1, 2, 3, 4, 5, 6, 0.5, 0.25);
			tail += w_tailer((int)i);
		}
	}
	result("fib", fib);
	result("args", args);
	result("tail", tail);
	report_counts();
	return 0;
}

static void run_threads(void *(*fn)(void *), int n)
{
	pthread_t th[16];
	for (int i = 0; i < n; i++)
		if (pthread_create(&th[i], 0, fn, 0))
			die("pthread_create");
	for (int i = 0; i < n; i++)
		pthread_join(th[i], 0);
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts); /* not inflated by preemption */
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

__attribute__((noinline)) static void h_empty(void)
{
	__asm__ __volatile__("" ::: "memory");
}

static inline uint64_t rdtsc(void)
{
	uint32_t lo, hi;
	__asm__ __volatile__("rdtsc" : "=a"(lo), "=d"(hi));
	return ((uint64_t)hi << 32) | lo;
}

/* BENCH_REPS: the traced loops run in this many rounds, interleaved, and
 * each reports its fastest round: on a machine shared with other jobs the
 * fastest round is the one least disturbed by them (caches, frequency). */
#define BENCH_REPS 32

static void bench(void)
{
	long n = iters;
	uint64_t t0 = now_ns();
	for (long i = 0; i < n; i++)
		h_empty();
	uint64_t t1 = now_ns();
	uint64_t acc = 0;
	for (long i = 0; i < n; i++)
		acc += rdtsc();
	uint64_t t2 = now_ns();
	for (long i = 0; i < n; i++)
		__asm__ __volatile__("pushfq; popfq" ::: "memory", "cc");
	uint64_t t3 = now_ns();
	/* A capture writes 3 records: a quarter of the calls in all keeps
	 * the buffer from filling. */
	long nc = n / 4 / BENCH_REPS;
	/* A string in this frame, right above the calls' return address (at
	 * the bottom of the frame: alloca), so that it is almost always in
	 * the page the agent proves readable by its own pushes
	 * (lt_stack_pages) whatever the stack's alignment. */
	char *local = __builtin_alloca(16);
	memcpy(local, "bob", 4);
	__asm__ __volatile__("" : : "r"(local) : "memory");
	uint64_t best[4] = {~0ull, ~0ull, ~0ull, ~0ull};
	for (int r = 0; r < BENCH_REPS; r++) {
		uint64_t a = now_ns();
		for (long i = 0; i < nc; i++)
			w_empty();
		uint64_t b = now_ns();
		for (long i = 0; i < nc; i++)
			acc += w_cap_ints(r * nc + i, 2);
		uint64_t c = now_ns();
		for (long i = 0; i < nc; i++)
			acc += w_cap_str("bob");
		uint64_t d = now_ns();
		for (long i = 0; i < nc; i++)
			acc += w_cap_str(local);
		uint64_t e = now_ns();
		if (e - d < best[3])
			best[3] = e - d;
		if (b - a < best[0])
			best[0] = b - a;
		if (c - b < best[1])
			best[1] = c - b;
		if (d - c < best[2])
			best[2] = d - c;
	}
	/* A bare system call: the floor of any probe that asks the kernel. */
	long ns = n / 16;
	uint64_t f = now_ns();
	for (long i = 0; i < ns; i++)
		acc += (uint64_t)syscall(SYS_getppid);
	uint64_t g = now_ns();
	(void)acc;
	result("syscall_ps", (long)((g - f) * 1000 / ns));
	result("cap_stack_str_ps", (long)(best[3] * 1000 / nc));
	result("cap_ints_ps", (long)(best[1] * 1000 / nc));
	result("cap_str_ps", (long)(best[2] * 1000 / nc));
	result("untraced_ps", (long)((t1 - t0) * 1000 / n));
	result("traced_ps", (long)(best[0] * 1000 / nc));
	result("rdtsc_ps", (long)((t2 - t1) * 1000 / n));
	result("pushfq_popfq_ps", (long)((t3 - t2) * 1000 / n));
}

static void *jump_thread(void *arg)
{
	(void)arg;
	jmp_buf jb;
	long jumps = 0, fib = 0;
	for (long i = 0; i < iters; i++) {
		if (!setjmp(jb))
			w_jump(&jb, (int)(i % 7));
		else
			jumps++;
		fib += w_fib(5);
	}
	result("jumps", jumps);
	result("fib", fib);
	report_counts();
	return 0;
}

static void *deep_thread(void *arg)
{
	(void)arg;
	long sum = 0;
	for (long i = 0; i < iters; i++)
		sum += w_deep(1500);
	sum += w_fib(10);
	result("deep", sum);
	report_counts();
	return 0;
}

static void *fork_thread(void *arg)
{
	(void)arg;
	int pid = w_forker();
	if (pid < 0)
		die("fork");
	if (pid == 0) {
		/* Child: the frame of w_forker was hijacked in the parent;
		 * it returned here through the agent's copy of the shadow stack. */
		int r = w_fib(15) + w_tailer(1);
		printf("CHILDTID %ld\n", (long)syscall(SYS_gettid));
		fflush(stdout);
		_exit(r == 610 + 3 ? 42 : 1);
	}
	int st = 0;
	if (waitpid(pid, &st, 0) < 0)
		die("waitpid");
	result("child", WIFEXITED(st) ? WEXITSTATUS(st) : -WTERMSIG(st));
	result("fib", w_fib(10));
	report_counts();
	return 0;
}

static volatile long app_traps;

static void app_sigtrap(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)si;
	(void)uc;
	app_traps++;
}

/* install_backstop installs lt_sigtrap the way the tracer does: one
 * rt_sigaction whose old action lands in the agent's private region. */
static void install_backstop(char *base, int app_handler)
{
	if (app_handler) {
		struct sigaction sa;
		memset(&sa, 0, sizeof sa);
		sa.sa_sigaction = app_sigtrap;
		sa.sa_flags = SA_SIGINFO;
		if (sigaction(SIGTRAP, &sa, 0))
			die("sigaction");
	}
	struct {
		uint64_t handler, flags, restorer, mask;
	} act = {(uint64_t)(base + L_SIGTRAP_OFF), 0x4 | 0x04000000 | 0x08000000 | 0x10000000,
		 (uint64_t)(base + L_RESTORER_OFF), 0};
	if (syscall(SYS_rt_sigaction, SIGTRAP, &act, base + L_OLD_SIGTRAP_OFF, 8))
		die("rt_sigaction");
	/* The tracer installs the handler before the shared memory is
	 * mapped (here it is PROT_NONE): a SIGTRAP then must only chain. */
	if (app_handler) {
		raise(SIGTRAP);
		if (app_traps != 1)
			die("SIGTRAP before the shared memory did not reach the app's handler");
		app_traps = 0;
	}
}

static void *trap_thread(void *arg)
{
	(void)arg;
	for (long i = 0; i < iters; i++)
		w_leaf();
	for (long i = 0; i < 10; i++)
		raise(SIGTRAP);
	for (long i = 0; i < 10; i++)
		__asm__ __volatile__("int3");
	result("fib", w_fib(10));
	result("apptraps", app_traps);
	report_counts();
	return 0;
}

static volatile long handler_calls;

static void on_prof(int sig)
{
	(void)sig;
	int saved = errno;
	w_leaf();
	handler_calls += w_tailer(1) == 3;
	errno = saved;
}

/* signal_thread is interrupted every 20us by a handler that
 * calls traced functions, also while it runs inside the agent. */
static void *signal_thread(void *arg)
{
	(void)arg;
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_prof;
	sa.sa_flags = SA_RESTART;
	if (sigaction(SIGPROF, &sa, 0))
		die("sigaction");
	struct sigevent sev;
	memset(&sev, 0, sizeof sev);
	sev.sigev_notify = SIGEV_THREAD_ID;
	sev.sigev_signo = SIGPROF;
	sev._sigev_un._tid = (pid_t)syscall(SYS_gettid); /* sigev_notify_thread_id */
	timer_t tm;
	if (timer_create(CLOCK_MONOTONIC, &sev, &tm))
		die("timer_create");
	struct itimerspec its = {{0, 20000}, {0, 20000}};
	if (timer_settime(tm, 0, &its, 0))
		die("timer_settime");
	long fib = 0, args = 0;
	for (long i = 0; i < iters; i++) {
		fib += w_fib(10);
		args += w_args(1, 2, 3, 4, 5, 6, 0.5, 0.25);
	}
	timer_delete(tm);
	result("fib", fib);
	result("args", args);
	result("handler", handler_calls);
	report_counts();
	return 0;
}

static void *ucontext_thread(void *arg)
{
	(void)arg;
	long on_frame = 0, heap = 0;
	for (long i = 0; i < iters; i++) {
		on_frame += w_co_run(5, 1);
		heap += w_co_run(5, 0);
	}
	result("onframe", on_frame);
	result("heap", heap);
	report_counts();
	return 0;
}

/* co_start runs w_co_body(n) on a new context on stack until its first
 * yield (untraced: nothing of ours on top of the shadow stack). */
static void co_start(char *stack, size_t size, int n)
{
	if (getcontext(&co_ctx))
		die("getcontext");
	co_ctx.uc_stack.ss_sp = stack;
	co_ctx.uc_stack.ss_size = size;
	co_ctx.uc_link = &co_main;
	makecontext(&co_ctx, (void (*)(void))w_co_body, 1, n);
	swapcontext(&co_main, &co_ctx);
}

/* freed_thread abandons a coroutine suspended in traced frames, unmaps its
 * stack, and runs another on the stack right above it: the agent examines
 * the abandoned frames (within StackWindow below) and must not fault. */
static void *freed_thread(void *arg)
{
	(void)arg;
	const size_t size = 64 * 1024;
	for (long i = 0; i < iters; i++) {
		char *mem = mmap(0, 2 * size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (mem == MAP_FAILED)
			die("mmap");
		co_start(mem, size, 3); /* suspended in w_co_yield, never resumed */
		if (munmap(mem, size))
			die("munmap");
		co_start(mem + size, size, 1);
		swapcontext(&co_main, &co_ctx); /* to its end */
		if (munmap(mem + size, size))
			die("munmap");
	}
	result("freed", iters);
	report_counts();
	return 0;
}

/*
 * The hostile string pointers of TestHarnessHostileStrings: w_cap_str of
 * each, which must never fault. hs_mem is 4 pages: "xyz" without a NUL at
 * the end of page 0, page 1 PROT_NONE, page 2 unmapped, page 3 unmapped
 * and mapped again in a loop by hs_flipper.
 */
static char *hs_mem;
static volatile int hs_stop;
static ucontext_t hs_main, hs_co;
static char *hs_co_base; /* guard page, 4 stack pages, guard page */

#define HS_PG 4096

static void *hs_flipper(void *arg)
{
	(void)arg;
	char *p = hs_mem + 3 * HS_PG;
	while (!hs_stop) {
		if (munmap(p, HS_PG))
			die("munmap");
		if (mmap(p, HS_PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED)
			die("mmap");
		memcpy(p, "flip", 5);
	}
	return 0;
}

/* hs_co_body runs on a coroutine stack between two guard pages, and
 * never returns (the top of its stack is overwritten). */
static void hs_co_body(void)
{
	char local[16];
	memcpy(local, "coro", 5);
	__asm__ __volatile__("" : : "r"(local) : "memory");
	char *top = hs_co_base + 5 * HS_PG;
	char *sp = __builtin_frame_address(0);
	for (;;) {
		w_cap_str(local);           /* in the frame: the agent's own pages */
		memcpy(top - 3, "abc", 3); /* no NUL before the guard page above */
		w_cap_str(top - 3);
		w_cap_str(sp - 64);            /* just below the frame */
		w_cap_str(hs_co_base + 100);   /* the guard page below the stack */
		swapcontext(&hs_co, &hs_main);
	}
}

static void hostile(void)
{
	hs_mem = mmap(0, 4 * HS_PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	hs_co_base = mmap(0, 6 * HS_PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (hs_mem == MAP_FAILED || hs_co_base == MAP_FAILED)
		die("mmap");
	memcpy(hs_mem + HS_PG - 3, "xyz", 3);
	if (mprotect(hs_mem + HS_PG, HS_PG, PROT_NONE) || munmap(hs_mem + 2 * HS_PG, 2 * HS_PG))
		die("mprotect");
	if (mprotect(hs_co_base, HS_PG, PROT_NONE) || mprotect(hs_co_base + 5 * HS_PG, HS_PG, PROT_NONE))
		die("mprotect");
	if (getcontext(&hs_co))
		die("getcontext");
	hs_co.uc_stack.ss_sp = hs_co_base + HS_PG;
	hs_co.uc_stack.ss_size = 4 * HS_PG;
	hs_co.uc_link = 0;
	makecontext(&hs_co, hs_co_body, 0);
	char local[16];
	memcpy(local, "stack", 6);
	__asm__ __volatile__("" : : "r"(local) : "memory");
	char *sp = __builtin_frame_address(0);
	for (long i = 0; i < iters; i++) {
		w_cap_str(0);
		w_cap_str((char *)1);
		w_cap_str(hs_mem + HS_PG);       /* PROT_NONE */
		w_cap_str(hs_mem + 2 * HS_PG);   /* unmapped */
		w_cap_str(hs_mem + HS_PG - 3);   /* "xyz" against PROT_NONE */
		w_cap_str(local);
		w_cap_str(sp - 64);              /* just below the frame */
		w_cap_str(sp - 2 * HS_PG);
		swapcontext(&hs_main, &hs_co);
	}
	/* A page unmapped and mapped again by another thread meanwhile. */
	pthread_t th;
	if (pthread_create(&th, 0, hs_flipper, 0))
		die("pthread_create");
	for (long i = 0; i < 20 * iters; i++)
		w_cap_str(hs_mem + 3 * HS_PG);
	hs_stop = 1;
	pthread_join(th, 0);
	result("hostile", iters);
}

/* held: w_held_outer("held", i) then w_held_outer of a string in this
 * frame (TestHarnessCallerValues). */
static void held(void)
{
	char local[8];
	memcpy(local, "frame", 6);
	__asm__ __volatile__("" : : "r"(local) : "memory");
	long sum = 0;
	for (long i = 0; i < iters; i++) {
		sum += w_held_outer("held", i);
		sum += w_held_outer(local, i);
	}
	result("held", iters);
	(void)sum;
}

static volatile int release_flag;

static void *hold_thread(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&out_mu);
	printf("HELD\n");
	fflush(stdout);
	pthread_mutex_unlock(&out_mu);
	result("hold", w_hold(&release_flag, 10));
	report_counts();
	return 0;
}

static void *tight_thread(void *arg)
{
	(void)arg;
	for (long i = 0; i < iters; i++)
		w_leaf();
	report_counts();
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 4) {
		fprintf(stderr, "usage: harness BLOB TEST ITERS\n");
		return 2;
	}
	setvbuf(stdout, 0, _IOLBF, 0);
	iters = atol(argv[3]);

	FILE *bf = fopen(argv[1], "rb");
	if (!bf)
		die("open blob");
	static unsigned char blob[L_CODE_SIZE];
	size_t bn = fread(blob, 1, sizeof blob, bf);
	fclose(bf);

	size_t reserve = L_SHARED_OFF + (256u << 20);
	char *base = mmap(0, reserve, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (base == MAP_FAILED)
		die("reserve");
	if (mmap(base, L_CODE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED)
		die("map code");
	memcpy(base, blob, bn);
	if (mprotect(base, L_CODE_SIZE, PROT_READ | PROT_EXEC))
		die("mprotect code");
	if (mmap(base + L_CTL_OFF, L_CTL_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED)
		die("map ctl");
	if (madvise(base + L_CTL_OFF, L_CTL_SIZE, MADV_WIPEONFORK))
		die("madvise");
	if (mmap(base + L_PRIV_OFF, L_PRIV_SIZE, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0) == MAP_FAILED)
		die("map priv");

	if (!strcmp(argv[2], "trap") || !strcmp(argv[2], "trapdfl"))
		install_backstop(base, !strcmp(argv[2], "trap"));

	/* A stub page within rel32 reach of the workload's text. */
	uintptr_t text = (uintptr_t)w_leaf & ~(uintptr_t)0xfff;
	char *stubs = MAP_FAILED;
	for (uintptr_t d = 1 << 20; d < (1u << 30) && stubs == MAP_FAILED; d += 1 << 20) {
		stubs = mmap((void *)(text - d), 4096, PROT_READ | PROT_EXEC,
			     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	}
	if (stubs == MAP_FAILED)
		die("map stubs");

	printf("READY %p %p\n", (void *)base, (void *)stubs);
	for (uintptr_t *p = (uintptr_t *)__start___patchable_function_entries;
	     p < (uintptr_t *)__stop___patchable_function_entries; p++) {
		const char *name = "?";
		for (int i = 0; wfuncs[i].name; i++)
			if ((uintptr_t)wfuncs[i].addr == *p)
				name = wfuncs[i].name;
		printf("SITE %#lx %s\n", (unsigned long)*p, name);
	}
	printf("GOT longjmp %p\n", (void *)&w_longjmp);
	printf("END\n");
	fflush(stdout);

	expect("SHARED ");
	size_t shared = strtoul(line + 7, 0, 0);
	int fd = (int)syscall(SYS_memfd_create, "livetrace-test", 0);
	if (fd < 0)
		die("memfd_create");
	if (ftruncate(fd, (off_t)shared))
		die("ftruncate");
	/* The bench measures the agent in its steady state: a session
	 * fallocates the memfd (docs/DESIGN-NOTES.md, "Attach") and its
	 * chunks are reused, so the agent's records never fault there. */
	int populate = 0;
	if (!strcmp(argv[2], "bench")) {
		if (syscall(SYS_fallocate, fd, 0, 0L, (long)shared))
			die("fallocate");
		populate = MAP_POPULATE;
	}
	if (mmap(base + L_SHARED_OFF, shared, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED | populate, fd, 0) == MAP_FAILED)
		die("map shared");
	if (populate) {
		/* And a session's chunks are warm: at full speed the ring
		 * wraps every few tens of milliseconds. The bench's records
		 * never wrap it, and on a VM that shadows the guest's page
		 * tables the first store to each page traps to the hypervisor
		 * even after MAP_POPULATE (10-28 us a page on the machine of
		 * docs/DESIGN-NOTES.md, "Fresh memory"), which would be
		 * counted as the agent's: 40-110 ns a record. So every page
		 * is stored to once first. The memfd is still all zeros and
		 * the tracer formats it only after MEMFD. */
		volatile char *m = (volatile char *)(base + L_SHARED_OFF);
		for (size_t off = 0; off < shared; off += 4096)
			m[off] = 0;
	}
	printf("MEMFD %d\n", fd);
	fflush(stdout);
	expect("RUN");
	/* The shared memory is formatted: the backstop may look at it. */
	__atomic_store_n((unsigned long *)(base + L_SHARED_READY_OFF), 1, __ATOMIC_RELEASE);

	const char *test = argv[2];
	if (!strcmp(test, "basic"))
		run_threads(basic_thread, 4);
	else if (!strcmp(test, "jump"))
		run_threads(jump_thread, 1);
	else if (!strcmp(test, "deep"))
		run_threads(deep_thread, 1);
	else if (!strcmp(test, "fork"))
		run_threads(fork_thread, 1);
	else if (!strcmp(test, "freed"))
		run_threads(freed_thread, 1);
	else if (!strcmp(test, "ucontext"))
		run_threads(ucontext_thread, 2);
	else if (!strcmp(test, "tight"))
		run_threads(tight_thread, 1);
	else if (!strcmp(test, "detach")) {
		pthread_t th;
		if (pthread_create(&th, 0, hold_thread, 0))
			die("pthread_create");
		expect("RELEASE");
		release_flag = 1;
		pthread_join(th, 0);
	} else if (!strcmp(test, "retire")) {
		run_threads(tight_thread, 1);
		printf("HELD\n");
		fflush(stdout);
		expect("RELEASE");
		run_threads(tight_thread, 1);
	} else if (!strcmp(test, "signal"))
		run_threads(signal_thread, 1);
	else if (!strcmp(test, "trap"))
		run_threads(trap_thread, 1);
	else if (!strcmp(test, "trapdfl")) {
		printf("DONE\n");
		fflush(stdout);
		raise(SIGTRAP); /* chained to SIG_DFL: must kill us */
		return 3;
	} else if (!strcmp(test, "bench"))
		bench();
	else if (!strcmp(test, "hostile"))
		hostile();
	else if (!strcmp(test, "held"))
		held();
	else {
		fprintf(stderr, "harness: unknown test %s\n", test);
		return 2;
	}
	printf("DONE\n");
	fflush(stdout);
	return 0;
}
