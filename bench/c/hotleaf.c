/*
 * hotleaf.c: the program every tracer in `make bench` is measured on.
 *
 * It waits for one line on stdin (so that a tracer can attach first), then:
 *   hotleaf calls N      calls leaf() N times in one thread and prints
 *                        "ns_per_call <ns>" (CLOCK_MONOTONIC around the loop)
 *   hotleaf rdtsc N      executes rdtsc N times, prints "rdtsc_ns <ns>"
 *   hotleaf spin S T     T threads call leaf() as fast as they can for S
 *                        seconds; prints "calls <total>"
 *   hotleaf pair N       calls leaf_nop() and leaf_reloc() N times each, in
 *                        turns, in blocks of 100000 calls with a 10 ms pause
 *                        after each pair of blocks (a tracer's consumer
 *                        catches up: no block runs with a full buffer);
 *                        prints "pair_ns <nop> <reloc>", the ns per call of
 *                        the fastest block of each
 * leaf() is a noinline leaf function: with the site build its first
 * instruction is the 5-byte NOP that livetrace patches.
 * leaf_nop() and leaf_reloc() are copies of it: leaf_nop() always starts
 * with a 5-byte NOP (its own attribute), leaf_reloc() only in the site
 * build. In the build without sites, livetrace traces leaf_reloc() by
 * relocating its first instruction into a stub: "pair" compares the two
 * kinds of site in one process, under the same load.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <x86intrin.h>

__attribute__((noinline)) uint64_t leaf(uint64_t x)
{
	__asm__ volatile("");
	return x * 2654435761u + 1;
}

__attribute__((noinline, patchable_function_entry(5, 0))) uint64_t leaf_nop(uint64_t x)
{
	__asm__ volatile("");
	return x * 2654435761u + 1;
}

__attribute__((noinline)) uint64_t leaf_reloc(uint64_t x)
{
	__asm__ volatile("");
	return x * 2654435761u + 1;
}

static double now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static volatile int stop;
static double spin_seconds;

static void *spinner(void *arg)
{
	uint64_t x = (uintptr_t)arg, n = 0;
	while (!stop) {
		for (int i = 0; i < 1024; i++)
			x = leaf(x);
		n += 1024;
	}
	*(uint64_t *)arg = n;
	return (void *)(uintptr_t)x;
}

int main(int argc, char **argv)
{
	char line[64];
	if (argc < 3) {
		fprintf(stderr, "usage: hotleaf calls N | rdtsc N | spin SECONDS THREADS\n");
		return 2;
	}
	printf("ready\n");
	fflush(stdout);
	if (!fgets(line, sizeof line, stdin))
		return 1;
	if (strcmp(argv[1], "calls") == 0) {
		long n = atol(argv[2]);
		uint64_t x = 1;
		double t0 = now_ns();
		for (long i = 0; i < n; i++)
			x = leaf(x);
		double t1 = now_ns();
		printf("ns_per_call %.3f %llu\n", (t1 - t0) / n, (unsigned long long)(x & 1));
	} else if (strcmp(argv[1], "pair") == 0) {
		const long block = 100000;
		long n = atol(argv[2]);
		uint64_t x = 1;
		double best[2] = {1e300, 1e300};
		for (long done = 0, r = 0; done < n; done += block, r++) {
			/* Alternate which goes first. */
			for (int k = 0; k < 2; k++) {
				int which = (int)((r + k) & 1);
				double t0 = now_ns();
				if (which == 0)
					for (long i = 0; i < block; i++)
						x = leaf_nop(x);
				else
					for (long i = 0; i < block; i++)
						x = leaf_reloc(x);
				double d = now_ns() - t0;
				if (d < best[which])
					best[which] = d;
			}
			struct timespec pause = {0, 10000000};
			nanosleep(&pause, NULL);
		}
		printf("pair_ns %.3f %.3f %llu\n", best[0] / block, best[1] / block, (unsigned long long)(x & 1));
	} else if (strcmp(argv[1], "rdtsc") == 0) {
		long n = atol(argv[2]);
		uint64_t s = 0;
		double t0 = now_ns();
		for (long i = 0; i < n; i++)
			s += __rdtsc();
		double t1 = now_ns();
		printf("rdtsc_ns %.3f %llu\n", (t1 - t0) / n, (unsigned long long)(s & 1));
	} else if (strcmp(argv[1], "spin") == 0 && argc >= 4) {
		spin_seconds = atof(argv[2]);
		int t = atoi(argv[3]);
		pthread_t th[64];
		uint64_t counts[64];
		if (t < 1 || t > 64)
			return 2;
		for (int i = 0; i < t; i++) {
			counts[i] = i + 1;
			pthread_create(&th[i], NULL, spinner, &counts[i]);
		}
		struct timespec ts = {(time_t)spin_seconds, (long)((spin_seconds - (time_t)spin_seconds) * 1e9)};
		nanosleep(&ts, NULL);
		stop = 1;
		uint64_t total = 0;
		for (int i = 0; i < t; i++) {
			pthread_join(th[i], NULL);
			total += counts[i];
		}
		printf("calls %llu\n", (unsigned long long)total);
	} else {
		return 2;
	}
	fflush(stdout);
	/* Stay until stdin closes, so a tracer can detach from a live process. */
	while (fgets(line, sizeof line, stdin))
		;
	return 0;
}
