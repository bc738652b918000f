/*
 * dlopen.c: threads that load libltplugin.so (c/dlplugin.c) with dlopen,
 * call it and unload it with dlclose, over and over.
 *
 * Protocol: prints "ready" once started. On "run N", each of T threads
 * (argument "-t T", default 2) runs N rounds of: dlopen(RTLD_NOW), K calls
 * of plug_outer (each calls plug_leaf twice), dlclose; then the program
 * prints "done plug_outer=A plug_leaf=B loads=L bases=D" with the calls
 * made (all while the library was loaded), the dlopens that mapped the
 * library anew and how many distinct load addresses it had. To make the
 * library come back at another address, a thread reserves the address the
 * library had (PROT_NONE, MAP_FIXED_NOREPLACE) after every second dlclose of
 * its own that unmapped it, until its next dlopen is done. Each round ends with a
 * call of round_done, a function of the program. "quit" exits 0.
 * The library is found next to the executable.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <link.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "ltfixture.h"

#define K 5
#define MAXBASES 64

static char libpath[4096];
static int rounds;
static unsigned long outer_calls, leaf_calls;
unsigned long lt_plugin_loads; /* counted by the library's constructor */
static unsigned long bases[MAXBASES];
static int nbases;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;

static void note_base(unsigned long b)
{
	pthread_mutex_lock(&mu);
	for (int i = 0; i < nbases; i++)
		if (bases[i] == b)
			goto out;
	if (nbases < MAXBASES)
		bases[nbases++] = b;
out:
	pthread_mutex_unlock(&mu);
}

/* mapped reports whether the library is mapped now (it is if some handle
 * is open, or the loader keeps it). */
static int mapped(void)
{
	void *h = dlopen(libpath, RTLD_NOW | RTLD_NOLOAD);
	if (h == NULL)
		return 0;
	dlclose(h);
	return 1;
}

/* round_done is called once per round, after dlclose: a function of the
 * program itself, traced while the library is not loaded. */
LT_KEEP void round_done(long r)
{
	LT_OPAQUE(r);
}

static void *worker(void *arg)
{
	long id = (long)arg;
	void *reserved = NULL;
	size_t reserved_len = 4096; /* its first page: it cannot start there */
	for (int r = 0; r < rounds; r++) {
		void *h = dlopen(libpath, RTLD_NOW);
		if (h == NULL) {
			fprintf(stderr, "dlopen: %s\n", dlerror());
			exit(2);
		}
		if (reserved != NULL) {
			munmap(reserved, reserved_len);
			reserved = NULL;
			reserved_len = 4096;
		}
		long (*outer)(long) = (long (*)(long))dlsym(h, "plug_outer");
		if (outer == NULL) {
			fprintf(stderr, "dlsym: %s\n", dlerror());
			exit(2);
		}
		Dl_info info;
		if (dladdr((void *)outer, &info) != 0)
			note_base((unsigned long)info.dli_fbase);
		long acc = 0;
		for (int k = 0; k < K; k++) {
			acc += outer(k);
			__atomic_fetch_add(&outer_calls, 1, __ATOMIC_RELAXED);
			__atomic_fetch_add(&leaf_calls, 2, __ATOMIC_RELAXED);
		}
		LT_OPAQUE(acc);
		unsigned long base = (unsigned long)info.dli_fbase;
		if (dlclose(h) != 0) {
			fprintf(stderr, "dlclose: %s\n", dlerror());
			exit(2);
		}
		round_done(r);
		if (r % 2 == (int)(id & 1) && !mapped()) {
			void *p = mmap((void *)base, reserved_len, PROT_NONE,
				       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
			if (p == MAP_FAILED) {
				/* Something else took the start already: take
				 * the gap the kernel would give the library
				 * next (the library spans 5 pages). */
				reserved_len = 5 * 4096;
				p = mmap(NULL, reserved_len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			}
			if (p != MAP_FAILED)
				reserved = p;
		}
	}
	if (reserved != NULL)
		munmap(reserved, reserved_len);
	return NULL;
}

int main(int argc, char **argv)
{
	int threads = 2;
	for (int i = 1; i + 1 < argc; i++)
		if (strcmp(argv[i], "-t") == 0)
			threads = atoi(argv[i + 1]);
	char self[4096];
	ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
	if (n <= 0)
		return 2;
	self[n] = 0;
	char *slash = strrchr(self, '/');
	*slash = 0;
	snprintf(libpath, sizeof libpath, "%s/libltplugin.so", self);
	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("ready\n");
	char line[256];
	while (fgets(line, sizeof line, stdin)) {
		if (strncmp(line, "quit", 4) == 0)
			return 0;
		if (sscanf(line, "run %d", &rounds) != 1)
			continue;
		outer_calls = leaf_calls = 0;
		__atomic_store_n(&lt_plugin_loads, 0, __ATOMIC_RELAXED);
		nbases = 0;
		pthread_t th[64];
		if (threads > 64)
			threads = 64;
		for (long t = 0; t < threads; t++)
			pthread_create(&th[t], NULL, worker, (void *)t);
		for (int t = 0; t < threads; t++)
			pthread_join(th[t], NULL);
		printf("done plug_outer=%lu plug_leaf=%lu loads=%lu bases=%d\n", outer_calls, leaf_calls, __atomic_load_n(&lt_plugin_loads, __ATOMIC_RELAXED), nbases);
	}
	return 0;
}
