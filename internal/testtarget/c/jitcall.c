/*
 * jitcall.c: traced functions called from code the program generated at
 * run time, as a JIT's code calls into its runtime, and a runtime that
 * reads the return address of such a call back, as HotSpot does when it
 * walks the stack from a call into the VM.
 *
 * jit_init maps an anonymous page read, write and execute and writes a
 * thunk there:
 *
 *	sub $8,%rsp; movabs $jit_vm,%rax; call *%rax; add $8,%rsp; ret
 *
 * jit_vm (traced) compares its own return address with the address after
 * that call: a tracer that replaced it (graph mode's hijack) makes the
 * "runtime" see a pc outside its code, which it counts in bad.
 *
 * Protocol: prints "ready" (flushed). For each line "run N" on stdin it
 * calls jit_vm(i) through the thunk and jit_direct(i) from its own text
 * for i = 0..N-1 (jit_direct calls jit_vm too), and prints
 * "done sum=S vm=A direct=B jit=C bad=D": a checksum, how many times
 * jit_vm and jit_direct were entered, how many of jit_vm's calls came
 * through the thunk, and how many of those saw a return address that was
 * not the thunk's. It exits 0 at end of input.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "ltfixture.h"

unsigned long n_vm, n_direct, n_jit, n_bad;
static unsigned char *thunk;
static uintptr_t thunk_ret; /* the address after the thunk's call */

LT_KEEP long jit_vm(long x)
{
	uintptr_t ra = (uintptr_t)__builtin_extract_return_addr(__builtin_return_address(0));
	n_vm++;
	if (ra >= (uintptr_t)thunk && ra < (uintptr_t)thunk + 4096) {
		n_jit++;
		if (ra != thunk_ret)
			n_bad++;
	}
	long y = x * 3 + 1;
	LT_OPAQUE(y);
	return y;
}

LT_KEEP long jit_direct(long x)
{
	n_direct++;
	return jit_vm(x) + 1;
}

static void jit_init(void)
{
	thunk = mmap(NULL, 4096, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (thunk == MAP_FAILED) {
		perror("mmap");
		exit(2);
	}
	unsigned char *p = thunk;
	static const unsigned char sub[] = {0x48, 0x83, 0xec, 0x08}; /* sub $8,%rsp */
	memcpy(p, sub, sizeof sub);
	p += sizeof sub;
	*p++ = 0x48; /* movabs $jit_vm,%rax */
	*p++ = 0xb8;
	uintptr_t target = (uintptr_t)&jit_vm;
	memcpy(p, &target, 8);
	p += 8;
	*p++ = 0xff; /* call *%rax */
	*p++ = 0xd0;
	thunk_ret = (uintptr_t)p;
	static const unsigned char add[] = {0x48, 0x83, 0xc4, 0x08, 0xc3}; /* add $8,%rsp; ret */
	memcpy(p, add, sizeof add);
}

int main(void)
{
	jit_init();
	long (*call)(long) = (long (*)(long))(void *)thunk;
	printf("ready\n");
	fflush(stdout);
	char line[256];
	while (fgets(line, sizeof line, stdin)) {
		long n;
		if (sscanf(line, "run %ld", &n) != 1)
			continue;
		unsigned long vm0 = n_vm, direct0 = n_direct, jit0 = n_jit, bad0 = n_bad;
		long sum = 0;
		for (long i = 0; i < n; i++) {
			sum += call(i);
			sum += jit_direct(i);
		}
		printf("done sum=%ld vm=%lu direct=%lu jit=%lu bad=%lu\n", sum, n_vm - vm0, n_direct - direct0, n_jit - jit0, n_bad - bad0);
		fflush(stdout);
	}
	return 0;
}
