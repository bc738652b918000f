/*
 * latprobe.c: the target of `make bench`'s live latency figure.
 *
 *   latprobe RATE SECS   waits for one line on stdin (so that livetrace live
 *                        can attach first), then calls probe() RATE times a
 *                        second for SECS seconds and prints "calls <n>".
 *
 * probe()'s argument is the CLOCK_MONOTONIC time of the call in ns (at
 * high rates read every 256 calls, so at most 256 calls old): a reader of
 * `livetrace live -A 'probe@arg1/u'` subtracts it from the time it reads
 * the line. Below 1000 calls a second it sleeps between calls; above, it
 * spins, calling probe() in blocks of 256 and waiting while it is ahead
 * of RATE. It then runs until stdin closes.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static uint64_t now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

volatile uint64_t sink;

__attribute__((noinline)) void probe(uint64_t mono_ns)
{
	sink += mono_ns;
}

int main(int argc, char **argv)
{
	char line[64];
	if (argc != 3) {
		fprintf(stderr, "usage: latprobe RATE SECS\n");
		return 2;
	}
	double rate = atof(argv[1]), secs = atof(argv[2]);
	printf("ready\n");
	fflush(stdout);
	if (!fgets(line, sizeof line, stdin))
		return 1;
	uint64_t start = now(), end = start + (uint64_t)(secs * 1e9), calls = 0;
	if (rate < 1000) {
		uint64_t gap = (uint64_t)(1e9 / rate);
		for (uint64_t t = start; t < end; t = now()) {
			probe(t);
			calls++;
			uint64_t next = start + calls * gap;
			if (next > t) {
				struct timespec ts = {(time_t)((next - t) / 1000000000u), (long)((next - t) % 1000000000u)};
				nanosleep(&ts, NULL);
			}
		}
	} else {
		for (uint64_t t = start; t < end; t = now()) {
			if ((double)calls > rate * (double)(t - start) / 1e9)
				continue;
			for (int i = 0; i < 256; i++)
				probe(t);
			calls += 256;
		}
	}
	printf("calls %llu\n", (unsigned long long)calls);
	fflush(stdout);
	/* Live until stdin closes: the tracer detaches from a live process. */
	while (fgets(line, sizeof line, stdin))
		;
	return 0;
}
