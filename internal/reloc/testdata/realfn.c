/*
 * realfn.c: compiled functions that internal/reloc relocates and runs
 * (TestExecuteCompiled), included by harness.c. Each rf_* function takes
 * two integers and returns one, deterministically, so that its results
 * before and after its first instructions are moved to a stub compare
 * equal. They cover what compilers put at function entries: prologues,
 * ENDBR64 (with -fcf-protection), RIP-relative globals, early branches,
 * loops that come back near the entry, calls, tail calls, jump tables,
 * stack arrays.
 */
#include <stdint.h>

#define RF __attribute__((noinline, used))
typedef uint64_t u64;

u64 rf_global = 7;
static u64 rf_table[16] = {3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3};

RF u64 rf_add(u64 a, u64 b) { return a + b; }

RF u64 rf_global_add(u64 a, u64 b)
{
	rf_global += a;
	return rf_global ^ b;
}

RF u64 rf_loop(u64 a, u64 b)
{
	u64 s = 0;
	for (u64 i = 0; i < (a & 63); i++)
		s = s * 31 + (b ^ i);
	return s;
}

RF u64 rf_switch(u64 a, u64 b)
{
	switch (a % 9) {
	case 0: return b;
	case 1: return b * 3;
	case 2: return b ^ 0x55;
	case 3: return b + 77;
	case 4: return b >> 3;
	case 5: return b << 5;
	case 6: return ~b;
	case 7: return b * b;
	default: return a - b;
	}
}

RF u64 rf_fib(u64 a, u64 b)
{
	a &= 15;
	return a < 2 ? a + b : rf_fib(a - 1, b) + rf_fib(a - 2, b);
}

RF u64 rf_gcd(u64 a, u64 b)
{
	while (b) {
		u64 t = a % b;
		a = b;
		b = t;
	}
	return a;
}

RF u64 rf_calls(u64 a, u64 b) { return rf_add(a, 1) * rf_loop(b, a); }

RF u64 rf_table_sum(u64 a, u64 b) { return rf_table[a & 15] + rf_table[b & 15]; }

RF u64 rf_clz(u64 a, u64 b) { return a ? (u64)__builtin_clzll(a) + b : b; }

RF u64 rf_tail(u64 a, u64 b)
{
	if (a & 1)
		return rf_gcd(b, a);
	return rf_fib(a, b);
}

RF u64 rf_bytes(u64 a, u64 b)
{
	unsigned char buf[32];
	for (int i = 0; i < 32; i++)
		buf[i] = (unsigned char)((a >> (i % 8)) + i);
	u64 h = b;
	for (int i = 0; i < 32; i++)
		h = h * 131 + buf[i];
	return h;
}

RF u64 rf_collatz(u64 a, u64 b)
{
	u64 n = (a & 0xffff) + 1, c = 0;
	while (n != 1) {
		n = n & 1 ? 3 * n + 1 : n / 2;
		c++;
	}
	return c + b;
}

RF u64 rf_div(u64 a, u64 b) { return b ? a / b + a % b : a; }

RF u64 rf_fptr(u64 a, u64 b)
{
	u64 (*f)(u64, u64) = (a & 1) ? rf_add : rf_div;
	return f(a, b);
}

RF u64 rf_early(u64 a, u64 b)
{
	if (a == 0)
		return b;
	return rf_global_add(a, b) + 1;
}

RF u64 rf_mix(u64 a, u64 b)
{
	u64 x = a * 0x9e3779b97f4a7c15ULL;
	x ^= x >> 29;
	x += b;
	x *= 0xbf58476d1ce4e5b9ULL;
	return x ^ (x >> 32);
}

/* A call among the first 5 bytes (Options.EmulateCalls). */
RF u64 rf_callfirst(u64 a, u64 b)
{
	u64 x = rf_mix(a, b);
	return x * 3;
}

u64 (*rf_fp)(u64, u64) = rf_mix;

/* An indirect call among the first bytes. */
RF u64 rf_callind(u64 a, u64 b) { return rf_fp(a, b) ^ 1; }

/*
 * A loop rotated the way gcc -O2 emits `while (p) { p->v = 1; p = p->next; }`
 * (libsqlite3's sqlite3BackupRestart): a 2-byte jmp to the test, NOP
 * padding that aligns the body, the body, the test. Written in assembly
 * because integer arguments do not make gcc emit it: while (a) { b += 3;
 * a >>= 1; } return b;
 */
u64 rf_jmp_padding(u64 a, u64 b);
__asm__(".text\n"
	".globl rf_jmp_padding\n"
	".type rf_jmp_padding, @function\n"
	"rf_jmp_padding:\n"
	"	.byte 0xeb, 0x0d\n"                         /* jmp 2f */
	"	.byte 0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00\n" /* nopw 0(%rax,%rax,1) */
	"1:	addq $3, %rsi\n"                            /* 4 bytes */
	"	shrq %rdi\n"                                 /* 3 bytes */
	"2:	testq %rdi, %rdi\n"
	"	jne 1b\n"
	"	movq %rsi, %rax\n"
	"	ret\n"
	".size rf_jmp_padding, .-rf_jmp_padding\n");
