/*
 * keepregs.c: callers that keep values in call-clobbered registers across
 * a call, as gcc's -fipa-ra lets them when the callee is known not to use
 * those registers. Built without sites, its functions are traced by
 * relocation.
 *
 * kr_touch_none is a function that touches no register and no flag (two
 * register moves onto themselves, then ret: 7 bytes, relocatable).
 * kr_check, in assembly, sets rax..r11 (every call-clobbered general
 * register) to known values and the carry flag, calls kr_touch_none, and
 * returns how many of them came back changed. kr_five returns its
 * argument plus 3; its first two instructions (lea, nop) are 5 bytes, so
 * its relocated region is exactly as long as a NOP site, a case the
 * tracer's site table must tell apart (a CALL emulated at its jmp would
 * run the rest of it twice: plus 5). ipa_callee and ipa_caller
 * are C: gcc -O2 keeps ipa_caller's loop state in rcx, rdx, rsi, r8-r11
 * across the calls of ipa_callee (see its disassembly), and ipa_caller's
 * result is compared with the one computed before any tracer came.
 *
 * Protocol (one command per line on stdin, replies on stdout, flushed):
 *   on start: "ready"
 *   "run N": N rounds of kr_check once and ipa_caller once (100 calls of
 *            ipa_callee) and kr_five once; then "done N bad B wrong W":
 *            B registers or flags that came back changed, W results that
 *            differ.
 *   "spin": starts a thread that runs kr_flags_spin forever: pushfq, 64
 *            nops, popfq, in a loop (kr_flags_region is the pushfq,
 *            kr_flags_region_end the instruction after the popfq), for
 *            single-stepping through a pushf; replies "spinning".
 *   "quit", or EOF on stdin: exit 0.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

unsigned long kr_check(void);
long kr_five(long x);

__asm__(
	".text\n"
	".globl kr_five\n"
	".type kr_five,@function\n"
	".p2align 4\n"
	"kr_five:\n"
	"	lea 1(%rdi), %rax\n"
	"	nop\n"
	"	add $2, %rax\n"
	"	ret\n"
	".size kr_five, .-kr_five\n");

__asm__(
	".text\n"
	".globl kr_touch_none\n"
	".type kr_touch_none,@function\n"
	".p2align 4\n"
	"kr_touch_none:\n"
	"	mov %rax, %rax\n"
	"	mov %rcx, %rcx\n"
	"	ret\n"
	".size kr_touch_none, .-kr_touch_none\n"
	".globl kr_check\n"
	".type kr_check,@function\n"
	".p2align 4\n"
	"kr_check:\n"
	"	push %rbx\n"
	"	push %r12\n"
	"	push %r13\n"
	"	sub $8, %rsp\n"
	"	mov $0x1111, %rax\n"
	"	mov $0x2222, %rcx\n"
	"	mov $0x3333, %rdx\n"
	"	mov $0x4444, %rsi\n"
	"	mov $0x5555, %rdi\n"
	"	mov $0x6666, %r8\n"
	"	mov $0x7777, %r9\n"
	"	mov $0x8888, %r10\n"
	"	mov $0x9999, %r11\n"
	"	stc\n"
	"	call kr_touch_none\n"
	"	setc %bl\n"
	"	xor $1, %bl\n"
	"	movzbl %bl, %ebx\n"
	"	xor %r12d, %r12d\n"
	"	cmp $0x1111, %rax\n"
	"	setne %r12b\n"
	"	add %r12, %rbx\n"
	"	cmp $0x2222, %rcx\n"
	"	setne %r12b\n"
	"	add %r12, %rbx\n"
	"	cmp $0x3333, %rdx\n"
	"	setne %r12b\n"
	"	add %r12, %rbx\n"
	"	cmp $0x4444, %rsi\n"
	"	setne %r12b\n"
	"	add %r12, %rbx\n"
	"	cmp $0x5555, %rdi\n"
	"	setne %r12b\n"
	"	add %r12, %rbx\n"
	"	cmp $0x6666, %r8\n"
	"	setne %r12b\n"
	"	add %r12, %rbx\n"
	"	cmp $0x7777, %r9\n"
	"	setne %r12b\n"
	"	add %r12, %rbx\n"
	"	cmp $0x8888, %r10\n"
	"	setne %r12b\n"
	"	add %r12, %rbx\n"
	"	cmp $0x9999, %r11\n"
	"	setne %r12b\n"
	"	add %r12, %rbx\n"
	"	mov %rbx, %rax\n"
	"	add $8, %rsp\n"
	"	pop %r13\n"
	"	pop %r12\n"
	"	pop %rbx\n"
	"	ret\n"
	".size kr_check, .-kr_check\n");

__asm__(
	".text\n"
	".globl kr_flags_spin\n"
	".type kr_flags_spin,@function\n"
	".p2align 4\n"
	"kr_flags_spin:\n"
	".globl kr_flags_region\n"
	"kr_flags_region:\n"
	"	pushfq\n"
	"	.rept 64\n"
	"	nop\n"
	"	.endr\n"
	"	popfq\n"
	".globl kr_flags_region_end\n"
	"kr_flags_region_end:\n"
	"	jmp kr_flags_spin\n"
	".size kr_flags_spin, .-kr_flags_spin\n");

void kr_flags_spin(void);

static void *spinner(void *arg)
{
	(void)arg;
	kr_flags_spin();
	return NULL;
}

__attribute__((noinline)) static unsigned ipa_callee(unsigned x)
{
	return x * 2654435761u + 7;
}

__attribute__((noinline)) unsigned long ipa_caller(const unsigned *a, unsigned n, unsigned k1, unsigned k2, unsigned k3)
{
	unsigned long s = 0;
	for (unsigned i = 0; i < n; i++)
		s += ipa_callee(a[i]) ^ (k1 + i) ^ (k2 * i) ^ (k3 - i);
	return s;
}

int main(void)
{
	static unsigned a[100];
	char line[128];
	for (int i = 0; i < 100; i++)
		a[i] = (unsigned)i * 7;
	unsigned long want = ipa_caller(a, 100, 3, 5, 9);
	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("ready\n");
	while (fgets(line, sizeof line, stdin)) {
		long n;
		if (sscanf(line, "run %ld", &n) == 1) {
			unsigned long bad = 0, wrong = 0;
			for (long i = 0; i < n; i++) {
				bad += kr_check();
				wrong += ipa_caller(a, 100, 3, 5, 9) != want;
				wrong += kr_five(i) != i + 3;
			}
			printf("done %ld bad %lu wrong %lu\n", n, bad, wrong);
		} else if (strncmp(line, "spin", 4) == 0) {
			pthread_t th;
			if (pthread_create(&th, NULL, spinner, NULL) != 0) {
				printf("error pthread_create\n");
				continue;
			}
			printf("spinning\n");
		} else if (strncmp(line, "quit", 4) == 0) {
			break;
		} else {
			printf("error unknown command\n");
		}
	}
	return 0;
}
