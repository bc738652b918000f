/*
 * harness.c: runs x86-64 code at fixed addresses under a chosen register
 * state, for the execution tests of internal/reloc (exec_test.go).
 *
 * Mappings (fixed, made at start):
 *   CODE 0x200000000  one page, RWX: the original function bytes
 *   DATA 0x200010000  one page, RW: the scratch data RIP-relative operands use
 *   NEAR 0x200020000  one page, RWX: a stub within rel32 reach of CODE
 *   FAR  0x300020000  one page, RWX: a stub 4 GiB away (absolute jumps)
 *
 * Protocol on stdin/stdout, binary, little endian, one request at a time:
 *   'L' u64 addr, u32 n, n bytes: fill the page holding addr with int3,
 *       then copy the bytes at addr. Reply: 1 byte, 0 (or 1: bad address).
 *   'R' u64 addr, 17 u64 state, 256 bytes data: copy the data to DATA,
 *       load the state (rax rcx rdx rbx rsp rbp rsi rdi r8..r15 rflags;
 *       rsp is ignored, rflags is masked to the arithmetic flags), call addr
 *       and, when the code returns, capture the state. Reply: 1 byte, 0 or
 *       the signal that stopped the code (SIGSEGV, SIGILL, SIGTRAP, SIGALRM
 *       after one second...), the 17 u64 captured, the 256 bytes of DATA.
 *   'B' u64 ignored: reply u64, the address of run_code (to find where the
 *       harness is loaded).
 *   'S' u64 ignored: reply u64, the address of a fresh RWX page within
 *       rel32 reach of the harness's own code, for the stubs of its rf_*
 *       functions (realfn.c), or 0.
 *   'W' u64 addr, u32 n, n bytes: make the pages RWX and write the bytes at
 *       addr (patch a function of the harness). Reply: 1 byte, 0 (or errno).
 * The code must leave rsp as it found it and end with ret.
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <errno.h>

#define CODE 0x200000000UL
#define DATA 0x200010000UL
#define NEAR 0x200020000UL
#define FAR 0x300020000UL
#define PAGE 4096UL
#define DATALEN 256
#define FLAGMASK 0x8d5UL /* CF PF AF ZF SF OF */

struct state {
	uint64_t r[16];
	uint64_t flags;
};

void run_code(const struct state *in, struct state *out, uint64_t code);

/* run_code(in=rdi, out=rsi, code=rdx): see the layout of struct state. */
__asm__(".text\n"
	".globl run_code\n"
	".type run_code,@function\n"
	"run_code:\n"
	"	push %rbx\n	push %rbp\n	push %r12\n	push %r13\n	push %r14\n	push %r15\n"
	"	push %rsi\n" /* out: 16(%rsp) */
	"	push %rdx\n" /* code: 8(%rsp) */
	"	sub $8,%rsp\n" /* the callee's rsp+8 is 16-byte aligned, as the ABI wants */
	"	pushq 128(%rdi)\n	popfq\n"
	"	mov 0(%rdi),%rax\n	mov 8(%rdi),%rcx\n	mov 16(%rdi),%rdx\n	mov 24(%rdi),%rbx\n"
	"	mov 40(%rdi),%rbp\n	mov 48(%rdi),%rsi\n"
	"	mov 64(%rdi),%r8\n	mov 72(%rdi),%r9\n	mov 80(%rdi),%r10\n	mov 88(%rdi),%r11\n"
	"	mov 96(%rdi),%r12\n	mov 104(%rdi),%r13\n	mov 112(%rdi),%r14\n	mov 120(%rdi),%r15\n"
	"	mov 56(%rdi),%rdi\n"
	"	call *8(%rsp)\n"
	"	pushfq\n" /* flags 8, pad 16, code 24, out 32 after the next push */
	"	push %rax\n"
	"	mov 32(%rsp),%rax\n"
	"	mov %rcx,8(%rax)\n	mov %rdx,16(%rax)\n	mov %rbx,24(%rax)\n"
	"	lea 16(%rsp),%rcx\n	mov %rcx,32(%rax)\n"
	"	mov %rbp,40(%rax)\n	mov %rsi,48(%rax)\n	mov %rdi,56(%rax)\n"
	"	mov %r8,64(%rax)\n	mov %r9,72(%rax)\n	mov %r10,80(%rax)\n	mov %r11,88(%rax)\n"
	"	mov %r12,96(%rax)\n	mov %r13,104(%rax)\n	mov %r14,112(%rax)\n	mov %r15,120(%rax)\n"
	"	pop %rcx\n	mov %rcx,0(%rax)\n"
	"	pop %rcx\n	mov %rcx,128(%rax)\n"
	"	add $24,%rsp\n"
	"	pop %r15\n	pop %r14\n	pop %r13\n	pop %r12\n	pop %rbp\n	pop %rbx\n"
	"	cld\n"
	"	ret\n"
	".size run_code,.-run_code\n");

static sigjmp_buf jb;

static void on_signal(int sig)
{
	siglongjmp(jb, sig);
}

static void readn(void *p, size_t n)
{
	if (fread(p, 1, n, stdin) != n)
		exit(0);
}

static void writen(const void *p, size_t n)
{
	if (fwrite(p, 1, n, stdout) != n)
		exit(1);
}

static void map(uint64_t addr, int prot)
{
	void *p = mmap((void *)addr, PAGE, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	if (p != (void *)addr) {
		fprintf(stderr, "harness: mmap %#lx failed\n", (unsigned long)addr);
		exit(2);
	}
}

static int slot(uint64_t addr)
{
	uint64_t page = addr & ~(PAGE - 1);
	return page == CODE || page == NEAR || page == FAR || page == DATA;
}

int main(void)
{
	int rwx = PROT_READ | PROT_WRITE | PROT_EXEC;
	map(CODE, rwx);
	map(DATA, PROT_READ | PROT_WRITE);
	map(NEAR, rwx);
	map(FAR, rwx);

	static char altstack[65536];
	stack_t ss = {.ss_sp = altstack, .ss_size = sizeof altstack};
	sigaltstack(&ss, NULL);
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_signal;
	sa.sa_flags = SA_ONSTACK | SA_NODEFER;
	int sigs[] = {SIGSEGV, SIGILL, SIGTRAP, SIGBUS, SIGFPE, SIGALRM};
	for (unsigned i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
		sigaction(sigs[i], &sa, NULL);

	for (;;) {
		int op = getchar();
		if (op == EOF)
			return 0;
		uint64_t addr;
		readn(&addr, 8);
		if (op == 'L') {
			uint32_t n;
			readn(&n, 4);
			uint8_t buf[PAGE];
			if (n > PAGE) {
				fprintf(stderr, "harness: %u bytes\n", n);
				return 2;
			}
			readn(buf, n);
			uint8_t ok = 0;
			uint64_t page = addr & ~(PAGE - 1);
			if (!slot(addr) || addr + n > page + PAGE) {
				ok = 1;
			} else {
				memset((void *)page, 0xcc, PAGE);
				memcpy((void *)addr, buf, n);
			}
			writen(&ok, 1);
		} else if (op == 'R') {
			struct state in, out;
			memset(&out, 0, sizeof out);
			readn(&in, sizeof in);
			readn((void *)DATA, DATALEN);
			in.flags = (in.flags & FLAGMASK) | 2;
			uint8_t st = 0;
			int sig = sigsetjmp(jb, 1);
			if (sig == 0) {
				alarm(1);
				run_code(&in, &out, addr);
				alarm(0);
			} else {
				alarm(0);
				st = (uint8_t)sig;
			}
			out.flags &= FLAGMASK;
			writen(&st, 1);
			writen(&out, sizeof out);
			writen((void *)DATA, DATALEN);
		} else if (op == 'B') {
			uint64_t a = (uint64_t)(uintptr_t)run_code;
			writen(&a, 8);
		} else if (op == 'S') {
			uint64_t a = 0;
			uint64_t self = (uint64_t)(uintptr_t)run_code & ~(PAGE - 1);
			/* Below the code, or above it for a position-dependent
			 * build at 0x400000. */
			for (uint64_t d = 16UL << 20; d < 1UL << 30 && a == 0; d += 16UL << 20) {
				uint64_t at[2] = {self - d, self + d};
				for (int i = 0; i < 2 && a == 0; i++) {
					if (i == 0 && d >= self)
						continue;
					void *p = mmap((void *)at[i], PAGE, rwx, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
					if (p != MAP_FAILED)
						a = (uint64_t)(uintptr_t)p;
				}
			}
			writen(&a, 8);
		} else if (op == 'W') {
			uint32_t n;
			readn(&n, 4);
			uint8_t buf[PAGE];
			if (n > PAGE) {
				fprintf(stderr, "harness: %u bytes\n", n);
				return 2;
			}
			readn(buf, n);
			uint64_t lo = addr & ~(PAGE - 1), hi = (addr + n + PAGE - 1) & ~(PAGE - 1);
			uint8_t st = 0;
			if (mprotect((void *)lo, hi - lo, rwx) != 0)
				st = (uint8_t)errno;
			else
				memcpy((void *)addr, buf, n);
			writen(&st, 1);
		} else {
			fprintf(stderr, "harness: bad request %d\n", op);
			return 2;
		}
		fflush(stdout);
	}
}

/* The compiled functions the tests relocate: see realfn.c. */
#include "realfn.c"
