/*
 * stress_rt.c: the counting runtime of the stress fixture (see stress.c).
 *
 * This file is compiled WITHOUT site flags (it has no patchable sites, so a
 * tracer that patches every site never makes lt_count count itself) and with
 * -mgeneral-regs-only (so lt_count cannot touch the vector registers that
 * lt_counter_stub does not save).
 *
 * lt_counter_stub is what a patched site CALLs: "call lt_counter_stub" in
 * place of the site's NOP5. On entry [rsp] is site+5. It saves every
 * register it or lt_count may change, and the flags, aligns the stack to 16
 * bytes, calls lt_count(site), restores everything and returns to site+5.
 * lt_count finds the function whose site it is by binary search over the
 * functions' addresses (the site is the function's address, or the address
 * plus 4 after an ENDBR64) and increments that function's counter
 * atomically. A site that belongs to no generated function increments
 * lt_unknown_sites instead.
 */
#include <stdint.h>
#include <stdlib.h>

typedef uint64_t (*lt_fn)(uint64_t);
extern const lt_fn lt_fns[];
extern const unsigned long lt_nfns;

struct lt_entry {
	uintptr_t addr;
	unsigned long index;
};

/* lt_counts holds one counter per generated function, in function order. */
uint64_t *lt_counts;
/* lt_unknown_sites counts stub calls from sites of no generated function. */
uint64_t lt_unknown_sites;

static struct lt_entry *lt_sorted;

static int lt_cmp(const void *a, const void *b)
{
	uintptr_t x = ((const struct lt_entry *)a)->addr, y = ((const struct lt_entry *)b)->addr;
	return x < y ? -1 : x > y;
}

/* lt_init sets up the counters and the sorted address table; main calls it
 * before it creates any thread. It returns 0, or -1 when out of memory. */
int lt_init(void)
{
	lt_counts = calloc(lt_nfns, sizeof *lt_counts);
	lt_sorted = calloc(lt_nfns, sizeof *lt_sorted);
	if (!lt_counts || !lt_sorted)
		return -1;
	for (unsigned long i = 0; i < lt_nfns; i++) {
		lt_sorted[i].addr = (uintptr_t)lt_fns[i];
		lt_sorted[i].index = i;
	}
	qsort(lt_sorted, lt_nfns, sizeof *lt_sorted, lt_cmp);
	return 0;
}

__attribute__((visibility("hidden"), used)) void lt_count(uintptr_t site)
{
	unsigned long lo = 0, hi = lt_nfns;
	/* Find the last function whose address is <= site. */
	while (hi - lo > 1) {
		unsigned long mid = lo + (hi - lo) / 2;
		if (lt_sorted[mid].addr <= site)
			lo = mid;
		else
			hi = mid;
	}
	if (lt_nfns > 0 && (site == lt_sorted[lo].addr || site == lt_sorted[lo].addr + 4))
		__atomic_fetch_add(&lt_counts[lt_sorted[lo].index], 1, __ATOMIC_RELAXED);
	else
		__atomic_fetch_add(&lt_unknown_sites, 1, __ATOMIC_RELAXED);
}

/*
 * The callee-saved registers (rbx, rbp, r12-r15) are preserved by lt_count
 * under the SysV ABI; rbx is saved here too because the stub uses it to
 * remember the unaligned stack pointer. cld: the ABI wants DF clear at a
 * call; popfq restores the caller's DF.
 */
__asm__(
	"	.pushsection .text\n"
	"	.globl	lt_counter_stub\n"
	"	.type	lt_counter_stub, @function\n"
	"	.p2align 4\n"
	"lt_counter_stub:\n"
	"	pushfq\n"
	"	pushq	%rax\n"
	"	pushq	%rcx\n"
	"	pushq	%rdx\n"
	"	pushq	%rsi\n"
	"	pushq	%rdi\n"
	"	pushq	%r8\n"
	"	pushq	%r9\n"
	"	pushq	%r10\n"
	"	pushq	%r11\n"
	"	pushq	%rbx\n"
	"	movq	%rsp, %rbx\n"
	"	movq	88(%rsp), %rdi\n" /* return address = site + 5 */
	"	subq	$5, %rdi\n"
	"	andq	$-16, %rsp\n"
	"	cld\n"
	"	call	lt_count\n"
	"	movq	%rbx, %rsp\n"
	"	popq	%rbx\n"
	"	popq	%r11\n"
	"	popq	%r10\n"
	"	popq	%r9\n"
	"	popq	%r8\n"
	"	popq	%rdi\n"
	"	popq	%rsi\n"
	"	popq	%rdx\n"
	"	popq	%rcx\n"
	"	popq	%rax\n"
	"	popfq\n"
	"	ret\n"
	"	.size	lt_counter_stub, .-lt_counter_stub\n"
	"	.popsection\n");
