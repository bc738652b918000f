/*
 * agent.c: the livetrace agent, a freestanding blob that runs inside the
 * traced process. No libc, no relocations: every reference is RIP-relative
 * to a hidden symbol placed by agent.ld. See doc.go for the contract with
 * the tracer.
 */
#include "agent.h"

#define HIDDEN __attribute__((visibility("hidden")))
#define barrier() __asm__ __volatile__("" ::: "memory")

/* The three data regions; agent.ld places them after the code. */
HIDDEN struct lt_ctl lt_ctl __attribute__((section(".bss.lt_ctl"), aligned(4096)));
HIDDEN struct lt_priv lt_priv __attribute__((section(".bss.lt_priv"), aligned(4096)));
HIDDEN struct lt_shared_hdr lt_shared __attribute__((section(".bss.lt_shared"), aligned(4096)));

#define OFF(t, f) __builtin_offsetof(struct t, f)
_Static_assert(OFF(lt_priv, threads) == LT_A_THREADS, "LT_A_THREADS");
_Static_assert(LT_STUB_SHIFT == LT_A_STUB_SHIFT, "LT_A_STUB_SHIFT");
_Static_assert((LT_SPEC_ARGS << LT_STUB_SHIFT | LT_STUB_RET) < LT_CAPTURE && (LT_MAX_SITES - 1) < 1u << LT_STUB_SHIFT, "stub index bits");
_Static_assert(LT_STUB_RET == 1 << (LT_STUB_SHIFT + 6), "LT_STUB_RET follows the argument bits (agent.S, .Lg_cap)");
_Static_assert(OFF(lt_priv, shadow) == LT_A_SHADOW, "LT_A_SHADOW");
_Static_assert(sizeof(struct lt_thread) == 1 << LT_A_THREAD_SHIFT, "LT_A_THREAD_SHIFT");
_Static_assert(1ull << (64 - LT_A_HASH_SHIFT) == LT_MAX_THREADS, "LT_A_HASH_SHIFT");
_Static_assert(OFF(lt_thread, key) == LT_A_T_KEY, "LT_A_T_KEY");
_Static_assert(OFF(lt_thread, depth) == LT_A_T_DEPTH, "LT_A_T_DEPTH");
_Static_assert(OFF(lt_thread, chunk) == LT_A_T_CHUNK, "LT_A_T_CHUNK");
_Static_assert(OFF(lt_thread, pos) == LT_A_T_POS, "LT_A_T_POS");
_Static_assert(OFF(lt_thread, busy) == LT_A_T_BUSY, "LT_A_T_BUSY");
_Static_assert(OFF(lt_thread, code_lo) == LT_A_T_CODE_LO, "LT_A_T_CODE_LO");
_Static_assert(OFF(lt_thread, code_hi) == LT_A_T_CODE_HI, "LT_A_T_CODE_HI");
_Static_assert(OFF(lt_thread, code_gen) == LT_A_T_CODE_GEN, "LT_A_T_CODE_GEN");
_Static_assert(OFF(lt_thread, code_lo1) == LT_A_T_CODE_LO1, "LT_A_T_CODE_LO1");
_Static_assert(OFF(lt_thread, code_hi1) == LT_A_T_CODE_HI1, "LT_A_T_CODE_HI1");
_Static_assert(OFF(lt_priv, code_gen) == LT_A_CODE_GEN, "LT_A_CODE_GEN");
_Static_assert(LT_SHADOW_DEPTH * sizeof(struct lt_shadow) == LT_A_SHADOW_STACK, "LT_A_SHADOW_STACK");
_Static_assert(OFF(lt_shadow, orig) == LT_A_SH_ORIG, "LT_A_SH_ORIG");
_Static_assert(OFF(lt_shadow, slot) == LT_A_SH_SLOT, "LT_A_SH_SLOT");
_Static_assert(OFF(lt_shadow, site) == LT_A_SH_SITE, "LT_A_SH_SITE");
_Static_assert(sizeof(struct lt_shadow) == 24, "shadow entry is 24 bytes (agent.S scales by 3*8)");
_Static_assert(LT_SHADOW_DEPTH == LT_A_SHADOW_DEPTH, "LT_A_SHADOW_DEPTH");
_Static_assert(LT_STACK_WINDOW == LT_A_STACK_WINDOW, "LT_A_STACK_WINDOW");
_Static_assert(LT_MAX_SITES - 1 == LT_A_SITE_MASK, "LT_A_SITE_MASK");
_Static_assert(OFF(lt_shared_hdr, chunk_records) == LT_A_CHUNK_RECORDS, "LT_A_CHUNK_RECORDS");
_Static_assert(OFF(lt_chunk_hdr, count) == LT_A_C_COUNT, "LT_A_C_COUNT");
_Static_assert(LT_CHUNK_HDR_SIZE == LT_A_CHUNK_HDR, "LT_A_CHUNK_HDR");
_Static_assert(OFF(lt_ctl, graph) == LT_A_CTL_GRAPH, "LT_A_CTL_GRAPH");
_Static_assert(OFF(lt_priv, unwind.raise) == LT_A_UNWIND_RAISE, "LT_A_UNWIND_RAISE");
_Static_assert(OFF(lt_priv, unwind.resume_or_rethrow) == LT_A_UNWIND_RESUME_OR_RETHROW, "LT_A_UNWIND_RESUME_OR_RETHROW");
_Static_assert(OFF(lt_priv, unwind.begin_catch) == LT_A_UNWIND_BEGIN_CATCH, "LT_A_UNWIND_BEGIN_CATCH");
_Static_assert(OFF(lt_priv, unwind.longjmp) == LT_A_UNWIND_LONGJMP, "LT_A_UNWIND_LONGJMP");
_Static_assert(OFF(lt_priv, unwind.longjmp_u) == LT_A_UNWIND_LONGJMP_, "LT_A_UNWIND_LONGJMP_");
_Static_assert(OFF(lt_priv, unwind.siglongjmp) == LT_A_UNWIND_SIGLONGJMP, "LT_A_UNWIND_SIGLONGJMP");
_Static_assert(OFF(lt_priv, unwind.longjmp_chk) == LT_A_UNWIND_LONGJMP_CHK, "LT_A_UNWIND_LONGJMP_CHK");
_Static_assert(OFF(lt_shadow, flags) == LT_A_SH_SITE + 4, "agent.S writes site and flags as one u64");
_Static_assert(LT_CAPTURE == LT_A_CAPTURE, "LT_A_CAPTURE");
_Static_assert(OFF(lt_shared_hdr, site_off) == LT_A_SITE_OFF, "LT_A_SITE_OFF");
_Static_assert(OFF(lt_shared_hdr, nsites) == LT_A_NSITES, "LT_A_NSITES");
_Static_assert(sizeof(struct lt_site) == LT_A_SIZEOF_SITE, "LT_A_SIZEOF_SITE");
_Static_assert(OFF(lt_site, spec) == LT_A_SITE_SPEC, "LT_A_SITE_SPEC");
_Static_assert(LT_SPEC_RET == LT_A_SPEC_RET, "LT_A_SPEC_RET");
_Static_assert((u32)LT_A_SPEC_SLOW == ~(u32)(LT_SPEC_ARGS | LT_SPEC_RET | LT_SPEC_RET_FLOAT), "LT_A_SPEC_SLOW");
_Static_assert(LT_CAPTURE >= LT_MAX_SITES, "the capture flag is above the site index");
_Static_assert(LT_KEEP == LT_A_KEEP && LT_KEEP >= LT_MAX_SITES && LT_KEEP != LT_CAPTURE, "LT_A_KEEP");
_Static_assert(LT_KEEP_SAVE == LT_A_KEEP_SAVE, "LT_A_KEEP_SAVE");

HIDDEN extern char lt_return[];
HIDDEN extern char lt_return_keep[];
HIDDEN extern char lt_restorer[];

/*
 * lt_tramp is the address a hijacked slot of entry e holds: lt_return, or
 * lt_return_keep for a frame whose caller may keep values in
 * caller-saved registers across the call (LT_KEEP, doc.go "Keeping every
 * register").
 */
static inline u64 lt_tramp(const struct lt_shadow *e)
{
	return e->flags & LT_SHADOW_KEEP ? (u64)lt_return_keep : (u64)lt_return;
}

static inline int is_tramp(u64 a)
{
	return a == (u64)lt_return || a == (u64)lt_return_keep;
}


void lt_on_entry(u32 idx, u64 *sp, u64 *slotp) HIDDEN;
u64 lt_on_exit(u64 sp) HIDDEN;
void lt_unwind_prep(u64 sp, u64 arg) HIDDEN;
void lt_catch_prep(u64 sp, u64 arg) HIDDEN;
void lt_longjmp_prep(u64 sp, u64 env) HIDDEN;
void lt_sigtrap(int sig, void *si, void *uc) HIDDEN;

#define SYS_rt_sigaction 13
#define SYS_rt_sigprocmask 14
#define SYS_getpid 39
#define SYS_gettid 186
#define SYS_tgkill 234
#define SYS_futex 202
#define FUTEX_WAIT_PRIVATE 128
#define EAGAIN 11
#define EFAULT 14
#define SYS_process_vm_readv 310
#define ETIMEDOUT 110
#define SIGTRAP 5
#define SI_KERNEL 0x80
#define SIG_BLOCK 0
#define SIG_SETMASK 2
#define SA_SIGINFO 4

static inline long sys2(long n, long a, long b)
{
	long r;
	__asm__ __volatile__("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b) : "rcx", "r11", "memory");
	return r;
}

static inline long sys4(long n, long a, long b, long c, long d)
{
	long r;
	register long r10 __asm__("r10") = d;
	__asm__ __volatile__("syscall"
			     : "=a"(r)
			     : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10)
			     : "rcx", "r11", "memory");
	return r;
}

static inline u64 rdtsc(void)
{
	u32 lo, hi;
	__asm__ __volatile__("rdtsc" : "=a"(lo), "=d"(hi));
	return ((u64)hi << 32) | lo;
}

static inline u64 thread_pointer(void)
{
	u64 tp;
	__asm__("mov %%fs:0, %0" : "=r"(tp));
	return tp;
}

static inline u32 thread_hash(u64 tp)
{
	return (u32)((tp * (u64)LT_A_HASH_MUL) >> LT_A_HASH_SHIFT);
}

/* lt_lookup finds the slot of thread pointer tp, or returns 0. */
static struct lt_thread *lt_lookup(u64 tp)
{
	u32 h = thread_hash(tp);
	for (u32 n = 0; n < LT_MAX_PROBES; n++) {
		struct lt_thread *t = &lt_priv.threads[(h + n) & (LT_MAX_THREADS - 1)];
		u64 k = __atomic_load_n(&t->key, __ATOMIC_ACQUIRE);
		if (k == tp)
			return t;
		if (k == LT_KEY_EMPTY)
			return 0;
	}
	return 0;
}

/*
 * lt_claim registers the calling thread. It runs once per thread, with all
 * signals blocked so that a handler cannot see a half-initialized slot.
 */
static struct lt_thread *lt_claim(u64 tp)
{
	u64 all = ~0ull, old = 0;
	struct lt_thread *t = 0;
	sys4(SYS_rt_sigprocmask, SIG_BLOCK, (long)&all, (long)&old, 8);
	for (int tries = 0; tries < 8; tries++) {
		/* A handler may have registered us before signals were blocked. */
		t = lt_lookup(tp);
		if (t)
			break;
		struct lt_thread *c = 0;
		u64 k = 0;
		u32 h = thread_hash(tp);
		for (u32 n = 0; n < LT_MAX_PROBES && !c; n++) {
			struct lt_thread *x = &lt_priv.threads[(h + n) & (LT_MAX_THREADS - 1)];
			k = __atomic_load_n(&x->key, __ATOMIC_ACQUIRE);
			if (k == LT_KEY_EMPTY || k == LT_KEY_RETIRED)
				c = x;
		}
		if (!c)
			break; /* table full along our probe sequence */
		if (!__atomic_compare_exchange_n(&c->key, &k, tp, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
			continue; /* lost a race: rescan */
		c->tid = (u32)sys2(SYS_gettid, 0, 0);
		c->depth = 0;
		c->chunk = 0;
		c->pos = 0;
		c->lost = 0;
		c->busy = 0;
		__atomic_fetch_add(&lt_shared.threads, 1, __ATOMIC_RELAXED);
		t = c;
		break;
	}
	sys4(SYS_rt_sigprocmask, SIG_SETMASK, (long)&old, 0, 8);
	return t;
}

static inline struct lt_chunk_hdr *chunk_at(u64 off)
{
	return (struct lt_chunk_hdr *)((char *)&lt_shared + off);
}

/*
 * lt_prefault reads one byte of every page of the chunk at c. A page not
 * yet mapped in this process then takes a read fault, and the kernel maps
 * the pages around it that the memfd already holds up to date
 * (fault-around, 64 KiB by default) in the same fault, writable since
 * shmem needs no write notification: about 16 times fewer faults than the
 * record stores would take one page at a time. The tracer allocates every
 * page and brings it up to date soon after the attach (startFill in
 * internal/session/inject.go). It costs a few loads once the pages are
 * mapped.
 */
static void lt_prefault(struct lt_chunk_hdr *c, u64 size)
{
	const volatile u8 *p = (const volatile u8 *)c;
	for (u64 off = 0; off < size; off += 4096)
		(void)p[off];
	(void)p[size - 1];
}

/*
 * lt_take takes a FREE chunk for t. It probes LT_CHUNK_PROBES chunks from
 * the shared hint, up to LT_CHUNK_ROUNDS times: a thread preempted after
 * reading the hint may find the chunks after it all taken, and must look
 * again from where the others are now. A full pool costs a bounded
 * LT_CHUNK_PROBES * LT_CHUNK_ROUNDS probes per event.
 */
static u64 lt_take(struct lt_thread *t)
{
	u64 n = lt_shared.nchunks;
	if (n == 0)
		return 0;
	for (u32 round = 0; round < LT_CHUNK_ROUNDS; round++) {
		u64 h = __atomic_load_n(&lt_shared.hint, __ATOMIC_RELAXED);
		for (u32 i = 0; i < LT_CHUNK_PROBES && i < n; i++) {
			u64 idx = (h + i) % n;
			u64 off = lt_shared.chunk_off + idx * lt_shared.chunk_size;
			struct lt_chunk_hdr *c = chunk_at(off);
			u32 st = __atomic_load_n(&c->state, __ATOMIC_RELAXED);
			if (st != LT_CHUNK_FREE)
				continue;
			if (!__atomic_compare_exchange_n(&c->state, &st, LT_CHUNK_OWNED, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
				continue;
			__atomic_store_n(&lt_shared.hint, idx + 1, __ATOMIC_RELAXED);
			lt_prefault(c, lt_shared.chunk_size);
			c->tid = t->tid;
			c->seq = 0;
			c->lost = t->lost;
			c->slot = (u32)(t - lt_priv.threads);
			__atomic_store_n(&c->count, 0, __ATOMIC_RELEASE);
			t->lost = 0;
			t->pos = 0;
			return off;
		}
		/* Move the hint past the busy chunks, unless someone moved it. */
		__atomic_compare_exchange_n(&lt_shared.hint, &h, h + LT_CHUNK_PROBES, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
	}
	return 0;
}

/*
 * lt_lease_check runs when an event finds no free chunk. The tracer renews
 * lt_ctl.owner.lease (a TSC deadline about a second ahead) while it
 * consumes; a tracer that died (SIGKILL, OOM) renews nothing, and without
 * this every traced call would go on scanning a full pool for nothing.
 * Once the lease has expired the agent turns itself off: every traced call
 * then returns at the first instruction of lt_entry, until a tracer adopts
 * the agent (livetrace restore, see internal/session/orphan.go). Only the
 * slow path pays for the clock read.
 */
static void lt_lease_check(void)
{
	u64 lease = __atomic_load_n(&lt_ctl.owner.lease, __ATOMIC_RELAXED);
	if (lease != 0 && (s64)(rdtsc() - lease) > 0)
		__atomic_store_n(&lt_ctl.enabled, 0, __ATOMIC_RELAXED);
}

static void lt_drop(struct lt_thread *t)
{
	if (t->lost != ~0u)
		t->lost++;
	__atomic_fetch_add(&lt_shared.lost, 1, __ATOMIC_RELAXED);
	lt_lease_check();
}

/* lt_publish hands t's current chunk to the tracer, however full it is. */
static void lt_publish(struct lt_thread *t)
{
	struct lt_chunk_hdr *c = chunk_at(t->chunk);
	c->seq = __atomic_add_fetch(&lt_shared.seq, 1, __ATOMIC_RELAXED);
	__atomic_store_n(&c->state, LT_CHUNK_FULL, __ATOMIC_RELEASE);
	t->chunk = 0;
	t->pos = 0;
}

/* lt_chunk returns t's chunk, taking a free one if it has none; 0 (the
 * event counted as lost) when none is free. */
static inline u64 lt_chunk(struct lt_thread *t)
{
	u64 off = t->chunk;
	if (!off) {
		off = lt_take(t);
		if (!off) {
			lt_drop(t);
			return 0;
		}
		t->chunk = off;
	}
	return off;
}

/* lt_emit appends one record to t's chunk, publishing it when full. */
static void lt_emit(struct lt_thread *t, u64 tsc, u64 meta)
{
	u64 off = lt_chunk(t);
	if (!off)
		return;
	struct lt_chunk_hdr *c = chunk_at(off);
	struct lt_record *r = (struct lt_record *)((char *)c + LT_CHUNK_HDR_SIZE) + t->pos;
	r->tsc = tsc;
	r->meta = meta;
	u32 pos = ++t->pos;
	/* x86 TSO: a release store is a plain store after the record's. */
	__atomic_store_n(&c->count, pos, __ATOMIC_RELEASE);
	if (pos >= lt_shared.chunk_records)
		lt_publish(t);
}

/*
 * lt_emit_data appends the record (tsc, meta), a DATA record and the
 * len bytes of payload p as one group in one chunk: the chunk's count
 * covers all of them at once, so the tracer never sees a part of it. A
 * chunk without room for the group is published first. A group larger
 * than a whole chunk is dropped (one lost event).
 */
static void lt_emit_data(struct lt_thread *t, u64 tsc, u64 meta, u32 spec, const u8 *p, u32 len)
{
	u32 n = 2 + (len + 15) / 16;
	if (n > lt_shared.chunk_records) {
		lt_drop(t);
		return;
	}
	if (t->chunk && t->pos + n > lt_shared.chunk_records)
		lt_publish(t);
	u64 off = lt_chunk(t);
	if (!off)
		return;
	struct lt_chunk_hdr *c = chunk_at(off);
	struct lt_record *r = (struct lt_record *)((char *)c + LT_CHUNK_HDR_SIZE) + t->pos;
	r[0].tsc = tsc;
	r[0].meta = meta;
	r[1].tsc = (u64)spec | (u64)len << 32;
	r[1].meta = (u64)LT_KIND_DATA << 62 | len;
	u8 *d = (u8 *)&r[2];
	u32 i = 0;
	for (; i + 8 <= len; i += 8) {
		u64 w;
		__builtin_memcpy(&w, p + i, 8);
		__builtin_memcpy(d + i, &w, 8);
	}
	for (; i < len; i++)
		d[i] = p[i];
	for (; i % 16; i++)
		d[i] = 0;
	u32 pos = t->pos += n;
	__atomic_store_n(&c->count, pos, __ATOMIC_RELEASE);
	if (pos >= lt_shared.chunk_records)
		lt_publish(t);
}

static inline u64 meta(u64 kind, u32 depth, u32 idx, u32 low)
{
	return kind << 62 | (u64)(depth & 0xff) << 54 | (u64)(idx & (LT_MAX_SITES - 1)) << 32 | low;
}

static inline u32 caller_delta(u64 ret, u64 site)
{
	s64 d = (s64)(ret - site);
	if (d <= -0x80000000ll || d > 0x7fffffffll)
		return LT_CALLER_UNKNOWN;
	return (u32)d;
}

struct lt_timespec {
	s64 sec, nsec;
};

/* lt_spec returns the spec of site idx (with its LT_CAPTURE flag), 0: none. */
static u32 lt_spec(u32 idx)
{
	if (!(idx & LT_CAPTURE))
		return 0;
	idx &= LT_MAX_SITES - 1;
	if (idx >= lt_shared.nsites)
		return 0;
	const struct lt_site *s = (const struct lt_site *)((char *)&lt_shared + lt_shared.site_off);
	return s[idx].spec;
}

/* struct lt_iovec is the kernel's struct iovec. */
struct lt_iovec {
	u64 base;
	u64 len;
};

/*
 * lt_copy copies up to n bytes from src to dst through the kernel:
 * process_vm_readv on the calling thread itself (same thread group: no
 * ptrace check applies). It returns the bytes copied, fewer when src runs
 * into a page that is not readable, or a negative errno (EFAULT: src is
 * not readable; anything else, a seccomp policy for one, counts as not
 * readable too). The kernel takes the faults: a page another thread
 * unmaps meanwhile can never fault the target, which a check followed by
 * a plain load cannot promise (docs/DESIGN-NOTES.md, "Reading strings").
 */
static long lt_vm_read(long tid, u8 *dst, u64 src, u32 n)
{
	struct lt_iovec l = {(u64)dst, n}, r = {src, n};
	register long r10 __asm__("r10") = (long)&r;
	register long r8 __asm__("r8") = 1;
	register long r9 __asm__("r9") = 0;
	long ret;
	__asm__ __volatile__("syscall"
			     : "=a"(ret)
			     : "a"(SYS_process_vm_readv), "D"(tid), "S"((long)&l), "d"(1L), "r"(r10), "r"(r8), "r"(r9)
			     : "rcx", "r11", "memory");
	return ret;
}

static long lt_copy(const struct lt_thread *t, u8 *dst, u64 src, u32 n)
{
	return lt_vm_read((long)t->tid, dst, src, n);
}

/*
 * lt_readstr copies the string at ptr, at most max bytes, to dst (which
 * has room for max) and returns its length byte: the bytes before the
 * NUL, with LT_STR_TRUNC when there was no NUL within them (or the string
 * runs into a page that is not readable: it is cut there), or LT_STR_BAD
 * when ptr is not readable.
 *
 * [lo, hi) are pages this very call of the agent has touched: those of
 * the registers lt_entry pushed and of the return address it read
 * (lt_stack_pages). They cannot be gone without this thread faulting on
 * its own stack first, so a string in them (a buffer in the caller's
 * frame, near the call) is read with plain loads. Any other byte is
 * copied by the kernel (lt_copy), one system call per string.
 */
static u8 lt_readstr(const struct lt_thread *t, u64 ptr, u8 *dst, u32 max, u64 lo, u64 hi)
{
	if (max == 0 || ptr < 4096)
		return LT_STR_BAD;
	u32 n = 0;
	if (ptr >= lo && ptr < hi) {
		const volatile u8 *src = (const volatile u8 *)ptr;
		u32 lim = hi - ptr < max ? (u32)(hi - ptr) : max;
		for (; n < lim; n++) {
			u8 c = src[n];
			if (c == 0)
				return (u8)n;
			dst[n] = c;
		}
		if (n == max)
			return (u8)max | LT_STR_TRUNC;
	}
	long got = lt_copy(t, dst + n, ptr + n, max - n);
	if (got <= 0)
		return n ? (u8)n | LT_STR_TRUNC : LT_STR_BAD;
	u32 end = n + (u32)got;
	for (u32 i = n; i < end; i++)
		if (dst[i] == 0)
			return (u8)i;
	return (u8)end | LT_STR_TRUNC;
}

/*
 * lt_stack_pages sets [*lo, *hi) to the pages from what lt_entry pushed
 * below sp (8 registers, then lt_on_entry's return address: 9 words) to
 * the two words at sp (site+5, the return address): this call has just
 * written or read each of them, and the pages between are this stack's.
 */
static inline void lt_stack_pages(const u64 *sp, u64 *lo, u64 *hi)
{
	*lo = ((u64)sp - 9 * 8) & ~4095ull;
	*hi = (((u64)sp + 2 * 8 - 1) | 4095) + 1;
}

/*
 * The argument registers as lt_entry saved them, relative to the sp it
 * passes to lt_on_entry (agent.S, "Argument registers"): rdi, rsi, rdx,
 * rcx, r8, r9.
 */
static const signed char lt_argreg[6] = {-5, -4, -2, -3, -6, -7};

/*
 * lt_args writes the payload of an entry with the argument bits of spec
 * to buf and returns its length: one u64 per captured argument, in
 * order, then for each string argument in order its length byte
 * (lt_readstr) and the bytes.
 */
static u32 lt_args(const struct lt_thread *t, u32 spec, const u64 *sp, u8 *buf)
{
	u32 o = 0;
	u32 max = (u32)lt_shared.string_max;
	if (max > LT_STRING_MAX)
		max = LT_STRING_MAX;
	u64 lo, hi;
	lt_stack_pages(sp, &lo, &hi);
	for (int i = 0; i < 6; i++) {
		if (!(spec & (1u << i)))
			continue;
		u64 v = sp[lt_argreg[i]];
		__builtin_memcpy(buf + o, &v, 8);
		o += 8;
	}
	for (int i = 0; i < 6; i++) {
		if (!(spec & (1u << i)) || !(spec & (1u << (LT_SPEC_STR_SHIFT + i))))
			continue;
		u8 n = lt_readstr(t, sp[lt_argreg[i]], buf + o + 1, max, lo, hi);
		buf[o] = n;
		o += 1 + (n == LT_STR_BAD ? 0 : (n & ~LT_STR_TRUNC));
	}
	return o;
}

/* lt_emit_entry emits the entry record m of site idx, with its arguments
 * when the site has a spec for them. */
static void lt_emit_entry(struct lt_thread *t, u64 tsc, u64 m, u32 idx, const u64 *sp)
{
	u32 spec = lt_spec(idx) & (LT_SPEC_ARGS | LT_SPEC_ARGS << LT_SPEC_STR_SHIFT);
	if (!(spec & LT_SPEC_ARGS)) {
		lt_emit(t, tsc, m);
		return;
	}
	u8 buf[LT_MAX_PAYLOAD];
	u32 len = lt_args(t, spec, sp, buf);
	lt_emit_data(t, tsc, m, spec, buf, len);
}

/* busy_live reports whether t's agent frame at busy is still running below sp. */
static inline int busy_live(u64 busy, u64 sp)
{
	if (!busy)
		return 0;
	/* Stale when the stack has unwound above it (siglongjmp out of a
	 * handler that interrupted the agent). Live when we are deeper on the
	 * same stack, or far away (a sigaltstack). */
	return !(sp >= busy && sp - busy < LT_STACK_WINDOW);
}

/* LT_PROBES bounds the lt_holds calls of one event (each is two system calls). */
#define LT_PROBES 8

/*
 * lt_holds reports whether the 8 bytes at addr hold val: 1 yes, 0 no (or
 * addr is not readable), -1 unknown. Every read of a shadow entry's slot
 * goes through it: addr may lie on a stack that was unmapped since its
 * frame was hijacked (a coroutine freed while suspended, a thread's stack
 * another thread unmaps right now), where a load would fault. The kernel
 * copies the word (process_vm_readv on this thread, as lt_copy does; the
 * tid is asked for, not taken from the thread slot, which a forked child
 * inherits with its parent's tid): a page unmapped meanwhile is an EFAULT,
 * never a fault of the target. A check followed by a plain load (futex,
 * then a load) left a window between the two. When a seccomp filter
 * refuses process_vm_readv, the futex check is the fallback: it fails
 * with EFAULT on an unreadable word, and is given the complement of val's
 * low word so that it returns EAGAIN at once when the word is readable
 * (FUTEX_WAIT on an equal word sleeps for the timer slack even with a zero
 * timeout, 30-200 us measured here); only then does a load follow.
 */
static int lt_holds(u64 addr, u64 val)
{
	u64 v = 0;
	long n = lt_vm_read(sys2(SYS_gettid, 0, 0), (u8 *)&v, addr, 8);
	if (n == 8)
		return v == val;
	if (n == -EFAULT || (n >= 0 && n < 8))
		return 0;
	struct lt_timespec zero = {0, 0};
	long f = sys4(SYS_futex, (long)addr, FUTEX_WAIT_PRIVATE, (long)(u32)~val, (long)&zero);
	if (f == -EFAULT)
		return 0;
	if (f != -EAGAIN && f != -ETIMEDOUT)
		return -1; /* woken, interrupted, or futex refused (seccomp) */
	return *(const volatile u64 *)addr == val;
}

/* lt_holds_or_read is lt_holds, but loads the slot when futex cannot tell:
 * for the paths that must not leave lt_return where it would be found
 * (the unwinder would end in std::terminate). */
static int lt_holds_or_read(u64 addr, u64 val)
{
	int h = lt_holds(addr, val);
	if (h < 0)
		h = *(const volatile u64 *)addr == val;
	return h;
}

static inline void make_hole(struct lt_shadow *e)
{
	e->slot = 0;
	e->orig = 0;
	e->flags = 0;
}

/* trim returns depth d less the holes on top of the shadow stack. */
static inline u32 trim(const struct lt_shadow *ss, u32 d)
{
	while (d > 0 && ss[d - 1].slot == 0)
		d--;
	return d;
}

/*
 * lt_prune ends the frames of the shadow stack ss[0..d) that are gone
 * without returning through lt_return, before a frame at slot n is pushed
 * (or, with tail set, before the frame at n hands its entry to a tail
 * callee), and returns the new depth. own is the address of the agent's
 * own frame: everything from there up to n was written by this call.
 *
 * The rule (doc.go, "Graph mode"): only the entries on top of ss whose
 * slot is at or below n and within LT_STACK_WINDOW of it can be stale. Of
 * those, an entry is ended when its slot is n itself (this call's return
 * address is there now), lies in the agent's own frame, no longer holds
 * lt_return (lt_holds), or was given back to an exception that has left
 * its frame (LT_SHADOW_RESTORED: it gets its exit record now). An entry
 * whose slot still holds lt_return is kept: it is a live frame on a stack
 * the thread switched away from (swapcontext, a coroutine, a signal
 * handler on an alternate stack), which will return through lt_return
 * later; dropping it would leave that return with no entry. A frame that
 * longjmp abandoned is ended by the longjmp hook (lt_longjmp_prep); here
 * only once its slot is overwritten when the hook could not run. Ended
 * entries in the middle become holes, so that the depth of the others,
 * recorded at their entry, stays the same.
 */
static u32 lt_prune(struct lt_thread *t, struct lt_shadow *ss, u32 d, u64 n, int tail, u64 own, u64 tsc)
{
	int probes = LT_PROBES;
	for (u32 j = d; j > 0; j--) {
		struct lt_shadow *e = &ss[j - 1];
		if (e->slot == 0)
			continue;
		if (e->slot > n || n - e->slot >= LT_STACK_WINDOW)
			break;
		if (e->flags & LT_SHADOW_RESTORED) {
			if (!(e->flags & LT_SHADOW_PENDING))
				lt_emit(t, tsc, meta(LT_KIND_EXIT, j - 1, e->site, 0));
			make_hole(e);
			continue;
		}
		if (e->slot == n) {
			if (tail)
				break; /* the caller whose entry the tail callee takes */
			make_hole(e);
			continue;
		}
		int dead = e->slot >= own;
		if (!dead && probes > 0) {
			probes--;
			dead = lt_holds(e->slot, lt_tramp(e)) == 0;
		}
		if (dead)
			make_hole(e);
	}
	return trim(ss, d);
}

/*
 * lt_exit_idx is the site index a shadow entry of site idx keeps: with
 * LT_CAPTURE (lt_return's fast path then leaves it to lt_on_exit) only
 * when its exit needs the C path: a return value to capture, or an entry
 * that may be held back.
 */
static inline u32 lt_exit_idx(u32 idx, u32 spec)
{
	if (spec & (LT_SPEC_RET | LT_SPEC_DEFER))
		return idx;
	return idx & ~(u32)LT_CAPTURE;
}

/*
 * lt_flush emits the entry records held back (LT_SHADOW_PENDING) of the
 * frames ss[0..n) of t, oldest first, with the time and caller of their
 * entries: a --caller function was entered above them. They then get
 * their exits as any other frame.
 */
static void lt_flush(struct lt_thread *t, struct lt_shadow *ss, u32 n)
{
	const struct lt_pend *pd = lt_priv.pend[t - lt_priv.threads];
	const u8 *held = lt_priv.held[t - lt_priv.threads];
	for (u32 j = 0; j < n; j++) {
		if (ss[j].slot == 0 || !(ss[j].flags & LT_SHADOW_PENDING))
			continue;
		u64 m = meta(LT_KIND_ENTRY, j, ss[j].site, pd[j].low);
		if (pd[j].len > 4 && (u32)pd[j].off + pd[j].len <= LT_HELD_BYTES) {
			u32 spec;
			__builtin_memcpy(&spec, held + pd[j].off, 4);
			lt_emit_data(t, pd[j].tsc, m, spec, held + pd[j].off + 4, pd[j].len - 4u);
		} else {
			lt_emit(t, pd[j].tsc, m);
		}
		ss[j].flags &= ~(u32)LT_SHADOW_PENDING;
	}
}

/*
 * lt_hold holds back the entry of site idx at shadow depth d of t (record
 * --caller): its time, caller and, when the site captures arguments, its
 * values, read now as lt_emit_entry would read them (a string may be
 * gone or changed by the time a --caller function is entered). The
 * values go on the thread's stack of held values (lt_priv.held), after
 * those of the nearest held-back entry below d: held-back entries above d
 * are gone, so the stack is in the order of the shadow stack, except
 * after a tail call (d < top), where the entries of a suspended stack may
 * sit above d: the values then stop below theirs. When the values could
 * not fit, the entry is held without them.
 */
static void lt_hold(struct lt_thread *t, const struct lt_shadow *ss, u32 d, u32 top, u64 tsc, u32 low, u32 idx, const u64 *sp)
{
	u32 ti = (u32)(t - lt_priv.threads);
	struct lt_pend *pd = lt_priv.pend[ti];
	pd[d].tsc = tsc;
	pd[d].low = low;
	pd[d].off = 0;
	pd[d].len = 0;
	u32 spec = lt_spec(idx) & (LT_SPEC_ARGS | LT_SPEC_ARGS << LT_SPEC_STR_SHIFT);
	if (!(spec & LT_SPEC_ARGS))
		return;
	u32 off = 0;
	for (u32 j = d; j > 0; j--) {
		const struct lt_shadow *e = &ss[j - 1];
		if (e->slot != 0 && (e->flags & LT_SHADOW_PENDING) && pd[j - 1].len != 0) {
			off = ((u32)pd[j - 1].off + pd[j - 1].len + 7) & ~7u;
			break;
		}
	}
	/* The most lt_args can write for spec. */
	u32 max = (u32)lt_shared.string_max;
	if (max > LT_STRING_MAX)
		max = LT_STRING_MAX;
	u32 need = 4 + 8 * (u32)__builtin_popcount(spec & LT_SPEC_ARGS) +
		   (1 + max) * (u32)__builtin_popcount(spec >> LT_SPEC_STR_SHIFT & spec & LT_SPEC_ARGS);
	u32 limit = LT_HELD_BYTES;
	for (u32 j = d + 1; j < top; j++) {
		const struct lt_shadow *e = &ss[j];
		if (e->slot != 0 && (e->flags & LT_SHADOW_PENDING) && pd[j].len != 0) {
			limit = pd[j].off;
			break;
		}
	}
	if (off + need > limit)
		return;
	u8 *h = lt_priv.held[ti] + off;
	__builtin_memcpy(h, &spec, 4);
	u32 len = lt_args(t, spec, sp, h + 4);
	pd[d].off = (u16)off;
	pd[d].len = (u16)(4 + len);
}

/*
 * lt_on_entry is called by lt_entry with the site index, a pointer to
 * site+5 (the argument registers saved below it) and a pointer to the
 * traced function's return address slot: sp+1, or for a keep site
 * (LT_KEEP) LT_KEEP_SAVE bytes higher, above what its stub saved. Only
 * when tracing is enabled.
 */
/*
 * lt_code_known says whether graph mode may hijack the return address ret
 * of a call on thread t: whether ret is in the code table (lt_priv.code),
 * the ranges of the process's modules. A return address anywhere else is
 * in code a runtime compiled, and runtimes read such return addresses
 * back: HotSpot takes the pc of the frame that called into the VM from
 * it when it walks the stack (at a safepoint, for a GC) and dies on
 * lt_return. The table is a seqlock (see lt_priv.code_gen); a thread keeps
 * the two ranges it found last, which the fast paths in agent.S check
 * first. During a change of the table (code_gen odd) nothing is known:
 * the call is left alone.
 */
static int lt_code_known(struct lt_thread *t, u64 ret)
{
	u32 g = __atomic_load_n(&lt_priv.code_gen, __ATOMIC_ACQUIRE);
	if (g == 0 || (g & 1))
		return 0;
	if (t->code_gen == g) {
		if (ret >= t->code_lo && ret < t->code_hi)
			return 1;
		if (ret >= t->code_lo1 && ret < t->code_hi1)
			return 1;
	}
	u32 n = *(volatile u32 *)&lt_priv.ncode;
	if (n > LT_MAX_CODE)
		n = LT_MAX_CODE;
	u32 lo = 0, hi = n; /* the first range whose lo is above ret */
	while (lo < hi) {
		u32 mid = lo + (hi - lo) / 2;
		if (*(volatile u64 *)&lt_priv.code[mid].lo <= ret)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo == 0)
		return 0;
	u64 rlo = *(volatile u64 *)&lt_priv.code[lo - 1].lo;
	u64 rhi = *(volatile u64 *)&lt_priv.code[lo - 1].hi;
	__atomic_thread_fence(__ATOMIC_ACQUIRE);
	if (__atomic_load_n(&lt_priv.code_gen, __ATOMIC_RELAXED) != g)
		return 0; /* the table changed meanwhile */
	if (ret < rlo || ret >= rhi)
		return 0;
	if (t->code_gen == g) {
		t->code_lo1 = t->code_lo;
		t->code_hi1 = t->code_hi;
	} else {
		t->code_lo1 = t->code_hi1 = 0;
	}
	t->code_lo = rlo;
	t->code_hi = rhi;
	t->code_gen = g;
	return 1;
}

void lt_on_entry(u32 idx, u64 *sp, u64 *slotp)
{
	int keep = (idx & LT_KEEP) != 0;
	idx &= (LT_MAX_SITES - 1) | LT_CAPTURE; /* not the fast paths' bits (LT_STUB_SHIFT), not LT_KEEP */
	u64 tp = thread_pointer();
	struct lt_thread *t = lt_lookup(tp);
	if (!t) {
		t = lt_claim(tp);
		if (!t) {
			__atomic_fetch_add(&lt_shared.table_full, 1, __ATOMIC_RELAXED);
			return;
		}
	}
	if (busy_live(t->busy, (u64)sp)) {
		if (t->lost != ~0u)
			t->lost++;
		__atomic_fetch_add(&lt_shared.reentered, 1, __ATOMIC_RELAXED);
		return;
	}
	t->busy = (u64)sp;
	barrier();

	u64 tsc = rdtsc();
	u64 site = sp[0] - 5;
	u64 ret = *slotp;
	u64 slot = (u64)slotp;
	struct lt_shadow *ss = lt_priv.shadow[t - lt_priv.threads];
	u32 d = t->depth;
	if (d > LT_SHADOW_DEPTH)
		d = LT_SHADOW_DEPTH;

	u64 own = (u64)__builtin_frame_address(0);
	if (is_tramp(ret)) {
		/* A tail call from a hijacked frame: the frame at this slot is
		 * the caller's, whose entry the callee takes over (and its
		 * trampoline: the registers its caller keeps are the frame's
		 * caller's business). */
		d = lt_prune(t, ss, d, slot, 1, own, tsc);
		t->depth = d;
		u32 i = d;
		while (i > 0 && ss[i - 1].slot != slot)
			i--;
		if (i > 0) {
			struct lt_shadow *e = &ss[i - 1];
			ret = e->orig;
			if (lt_ctl.graph) {
				/* The caller's frame ends here; the callee takes it over. */
				if (!(e->flags & LT_SHADOW_PENDING))
					lt_emit(t, tsc, meta(LT_KIND_EXIT, i - 1, e->site, 0));
				u32 spec = lt_spec(idx);
				e->site = lt_exit_idx(idx, spec);
				if (spec & LT_SPEC_TRIGGER)
					e->flags |= LT_SHADOW_UNDER;
				if (spec & LT_SPEC_DEFER) {
					lt_hold(t, ss, i - 1, d, tsc, caller_delta(ret, site), idx, sp);
					e->flags |= LT_SHADOW_PENDING;
					goto out;
				}
				if (spec & LT_SPEC_CALLER)
					lt_flush(t, ss, i - 1);
				e->flags &= ~(u32)LT_SHADOW_PENDING;
				lt_emit_entry(t, tsc, meta(LT_KIND_ENTRY, i - 1, idx, caller_delta(ret, site)), idx, sp);
				goto out;
			}
		} else {
			ret = site + 0x100000000ull; /* cannot happen: caller unknown */
		}
		lt_emit_entry(t, tsc, meta(LT_KIND_ENTRY, 0, idx, caller_delta(ret, site)), idx, sp);
		goto out;
	}

	if (!lt_ctl.graph) {
		lt_emit_entry(t, tsc, meta(LT_KIND_ENTRY, 0, idx, caller_delta(ret, site)), idx, sp);
		goto out;
	}

	d = lt_prune(t, ss, d, slot, 0, own, tsc);
	if (!lt_code_known(t, ret)) {
		/* Called from code outside every module: not recorded, not
		 * hijacked. */
		t->depth = d;
		__atomic_fetch_add(&lt_shared.jit_calls, 1, __ATOMIC_RELAXED);
		goto out;
	}
	if (d >= LT_SHADOW_DEPTH) {
		t->depth = d;
		__atomic_fetch_add(&lt_shared.overflow, 1, __ATOMIC_RELAXED);
		goto out;
	}
	u32 flags = 0;
	u32 spec = lt_spec(idx);
	if (spec & (LT_SPEC_TRIGGER | LT_SPEC_UNDER | LT_SPEC_CALLER | LT_SPEC_DEFER)) {
		/* record -G and --caller (doc.go, "Filters"). */
		int under = d > 0 && (ss[d - 1].flags & LT_SHADOW_UNDER);
		if ((spec & LT_SPEC_UNDER) && !(spec & LT_SPEC_TRIGGER) && !under) {
			t->depth = d; /* not recorded, not hijacked */
			goto out;
		}
		if (under || (spec & LT_SPEC_TRIGGER))
			flags |= LT_SHADOW_UNDER;
		if (spec & LT_SPEC_DEFER) {
			lt_hold(t, ss, d, d, tsc, caller_delta(ret, site), idx, sp);
			flags |= LT_SHADOW_PENDING;
		} else if (spec & LT_SPEC_CALLER) {
			lt_flush(t, ss, d);
		}
	}
	ss[d].orig = ret;
	ss[d].slot = slot;
	ss[d].site = lt_exit_idx(idx, spec);
	ss[d].flags = flags | (keep ? LT_SHADOW_KEEP : 0);
	barrier();
	t->depth = d + 1;
	barrier();
	*slotp = lt_tramp(&ss[d]);
	if (!(flags & LT_SHADOW_PENDING))
		lt_emit_entry(t, tsc, meta(LT_KIND_ENTRY, d, idx, caller_delta(ret, site)), idx, sp);
out:
	barrier();
	t->busy = 0;
}

/*
 * lt_on_exit is called by lt_return with sp = the stack pointer after the
 * traced function's ret (its return slot + 8). It returns the original
 * return address, or 0 when there is none (lt_return then executes ud2).
 *
 * The frame's entry is the newest one whose slot is sp-8 (a newer frame at
 * the same address can only exist once the older one is gone). The entries
 * pushed after it whose slots lie below that slot and within
 * LT_STACK_WINDOW are the frames it called: those that no longer hold
 * lt_return are gone (longjmp without the hook, a frame left by a signal
 * handler) and are ended. The others are kept: frames of another stack
 * that a context switch left suspended (doc.go, "Graph mode").
 */
u64 lt_on_exit(u64 sp)
{
	u64 slot = sp - 8;
	struct lt_thread *t = lt_lookup(thread_pointer());
	if (!t)
		return 0;
	struct lt_shadow *ss = lt_priv.shadow[t - lt_priv.threads];
	u32 d = t->depth;
	if (d > LT_SHADOW_DEPTH)
		d = LT_SHADOW_DEPTH;
	int live = busy_live(t->busy, sp);
	u32 i = d;
	while (i > 0 && ss[i - 1].slot != slot)
		i--;
	if (i == 0)
		return 0;
	struct lt_shadow *e = &ss[i - 1];
	u64 orig = e->orig;
	if (live) {
		/* Re-entered from a signal handler that interrupted the agent:
		 * leave the shadow stack alone; a later entry drops the frame. */
		__atomic_fetch_add(&lt_shared.reentered, 1, __ATOMIC_RELAXED);
		return orig;
	}
	t->busy = sp;
	barrier();
	/* Read the clock only now: a handler running before busy was set
	 * records later events, and this one must not go back in time. */
	u64 tsc = rdtsc();
	u32 site = e->site;
	int pending = (e->flags & LT_SHADOW_PENDING) != 0;
	make_hole(e);
	u64 own = (u64)__builtin_frame_address(0);
	int probes = LT_PROBES;
	for (u32 j = d; j > i; j--) {
		struct lt_shadow *a = &ss[j - 1];
		if (a->slot == 0 || a->slot > slot || slot - a->slot >= LT_STACK_WINDOW)
			continue;
		if (a->flags & LT_SHADOW_RESTORED) {
			if (lt_ctl.enabled && !(a->flags & LT_SHADOW_PENDING))
				lt_emit(t, tsc, meta(LT_KIND_EXIT, j - 1, a->site, 0));
			make_hole(a);
			continue;
		}
		int dead = a->slot >= own;
		if (!dead && probes > 0) {
			probes--;
			dead = lt_holds(a->slot, lt_tramp(a)) == 0;
		}
		if (dead)
			make_hole(a);
	}
	barrier();
	t->depth = trim(ss, d);
	if (lt_ctl.enabled && !pending) {
		u32 spec = lt_spec(site) & (LT_SPEC_RET | LT_SPEC_RET_FLOAT);
		if (spec & LT_SPEC_RET) {
			/* lt_return saved rax at sp-8 and xmm0 at sp-24. */
			u64 v = ((const u64 *)sp)[spec & LT_SPEC_RET_FLOAT ? -3 : -1];
			lt_emit_data(t, tsc, meta(LT_KIND_EXIT, i - 1, site, 0), spec, (const u8 *)&v, 8);
		} else {
			lt_emit(t, tsc, meta(LT_KIND_EXIT, i - 1, site, 0));
		}
	}
	barrier();
	t->busy = 0;
	return orig;
}

/*
 * lt_unwind_prep is called by lt_hook_raise and lt_hook_resume_or_rethrow
 * (agent.S), which run in place of the unwinder's entry points, with sp =
 * the hook's stack pointer at entry (its return address slot). Before the
 * unwinder walks the stack, every hijacked return address of the calling
 * thread goes back into its slot: the unwinder has no unwind information
 * for lt_return. A slot just below sp (within LT_STACK_WINDOW) belongs to
 * a frame the unwinder will not walk (gone, or on a stack the thread
 * switched away from) and may now be part of the hook's own frame: it is
 * not touched. The entries stay, marked LT_SHADOW_RESTORED, and the
 * thread notes the lowest sp of a throw (unwind_lo) and one more exception
 * in flight; lt_catch_prep ends the frames the exception left and hijacks
 * the others again. It works whatever enabled and graph say (a forked
 * child, a detaching tracer).
 */
void lt_unwind_prep(u64 sp, u64 arg)
{
	(void)arg;
	struct lt_thread *t = lt_lookup(thread_pointer());
	if (!t)
		return;
	struct lt_shadow *ss = lt_priv.shadow[t - lt_priv.threads];
	u32 d = t->depth;
	if (d > LT_SHADOW_DEPTH)
		d = LT_SHADOW_DEPTH;
	/* Interrupted inside the agent by a signal handler that throws (and
	 * catches): the interrupted code still owns the shadow stack. Give
	 * the return addresses back but leave the entries as they are; they
	 * no longer hold lt_return, so later events end them. */
	int live = busy_live(t->busy, sp);
	if (!live) {
		t->busy = sp;
		barrier();
	}
	u64 n = 0;
	for (u32 i = d; i > 0; i--) {
		struct lt_shadow *e = &ss[i - 1];
		if (e->slot == 0 || (e->slot < sp && sp - e->slot < LT_STACK_WINDOW))
			continue;
		if (lt_holds_or_read(e->slot, lt_tramp(e))) {
			*(volatile u64 *)e->slot = e->orig;
			if (!live)
				e->flags |= LT_SHADOW_RESTORED;
			n++;
		}
	}
	if (n)
		__atomic_fetch_add(&lt_shared.unwound, n, __ATOMIC_RELAXED);
	if (!live) {
		if (t->unwind_lo == 0 || sp < t->unwind_lo)
			t->unwind_lo = sp;
		t->inflight++;
		barrier();
		t->busy = 0;
	}
}

/*
 * lt_catch_prep is called by lt_hook_begin_catch, which runs in place of
 * __cxa_begin_catch: a handler has caught an exception, and sp + 8 is its
 * frame's stack pointer. The frames between the throw and the handler are
 * gone: the entries the throws gave back whose slots lie from unwind_lo
 * (the lowest throw) up to that stack pointer get their exit records, with
 * the time of the catch, and are ended. Every other entry is a live frame. When no other
 * exception is in flight on the thread (one thrown by a destructor during
 * an unwind and caught inside it leaves the outer one in flight, whose
 * unwinder must still not see lt_return), the frames the throw gave back
 * are hijacked again, so that their exits are recorded; only in graph mode
 * (never while the tracer detaches or in a forked child).
 */
void lt_catch_prep(u64 sp, u64 arg)
{
	(void)arg;
	struct lt_thread *t = lt_lookup(thread_pointer());
	if (!t || t->inflight == 0 || busy_live(t->busy, sp))
		return;
	t->busy = sp;
	barrier();
	u64 tsc = rdtsc();
	u64 c = sp + 8;
	u64 lo = t->unwind_lo;
	struct lt_shadow *ss = lt_priv.shadow[t - lt_priv.threads];
	u32 d = t->depth;
	if (d > LT_SHADOW_DEPTH)
		d = LT_SHADOW_DEPTH;
	for (u32 j = d; j > 0; j--) {
		struct lt_shadow *e = &ss[j - 1];
		/* Only entries a throw gave back: a hijacked one may be a live
		 * frame of another stack if a catch was missed (lo too low). */
		if (e->slot == 0 || e->slot >= c || e->slot < lo || !(e->flags & LT_SHADOW_RESTORED))
			continue;
		if (lt_ctl.enabled && !(e->flags & LT_SHADOW_PENDING))
			lt_emit(t, tsc, meta(LT_KIND_EXIT, j - 1, e->site, 0));
		make_hole(e);
	}
	if (--t->inflight == 0) {
		t->unwind_lo = 0;
		int graph = lt_ctl.graph != 0;
		for (u32 j = d; j > 0; j--) {
			struct lt_shadow *e = &ss[j - 1];
			if (e->slot == 0 || !(e->flags & LT_SHADOW_RESTORED) || !graph)
				continue;
			if (lt_holds(e->slot, e->orig) == 1) {
				*(volatile u64 *)e->slot = lt_tramp(e);
				e->flags &= ~(u32)LT_SHADOW_RESTORED;
			}
		}
	}
	barrier();
	t->depth = trim(ss, d);
	barrier();
	t->busy = 0;
}

/*
 * lt_jmp_sp returns the stack pointer that a glibc x86-64 jmp_buf at env
 * jumps to: word 6, mangled with the thread's pointer guard (%fs:0x30) as
 * rol(sp ^ guard, 0x11).
 */
static u64 lt_jmp_sp(u64 env)
{
	u64 guard, v = ((const volatile u64 *)env)[6];
	__asm__("mov %%fs:0x30, %0" : "=r"(guard));
	v = (v >> 0x11) | (v << (64 - 0x11));
	return v ^ guard;
}

/*
 * lt_longjmp_prep is called by the longjmp hooks (lt_hook_longjmp and
 * friends, in place of longjmp, _longjmp, siglongjmp, __longjmp_chk) with
 * sp = the hook's stack pointer and env = the jmp_buf. The jump leaves
 * every frame between sp and the stack pointer saved in env: their entries
 * are ended, without exit records, and any of their slots that still holds
 * lt_return gets its original return address back, so that a wrong target
 * (a jmp_buf not laid out as glibc's) can only cost exit records, never a
 * return with no entry. A jump down, or to another stack below, changes
 * nothing here: lt_prune and lt_on_exit end those frames once their slots
 * are overwritten.
 */
void lt_longjmp_prep(u64 sp, u64 env)
{
	struct lt_thread *t = lt_lookup(thread_pointer());
	if (!t || busy_live(t->busy, sp))
		return;
	u64 to = lt_jmp_sp(env);
	if (to <= sp || to - sp >= (1ull << 32))
		return;
	t->busy = sp;
	barrier();
	struct lt_shadow *ss = lt_priv.shadow[t - lt_priv.threads];
	u32 d = t->depth;
	if (d > LT_SHADOW_DEPTH)
		d = LT_SHADOW_DEPTH;
	for (u32 j = d; j > 0; j--) {
		struct lt_shadow *e = &ss[j - 1];
		if (e->slot < sp || e->slot >= to)
			continue;
		if (lt_holds_or_read(e->slot, lt_tramp(e)))
			*(volatile u64 *)e->slot = e->orig;
		make_hole(e);
	}
	barrier();
	t->depth = trim(ss, d);
	barrier();
	t->busy = 0;
}

/* ucontext_t on x86-64: uc_mcontext.gregs starts at byte 40. */
#define UC_GREGS 5 /* ucontext_t: uc_flags, uc_link, uc_stack (3 words), then gregs */
/* The gregs indices of glibc's <sys/ucontext.h> (x86-64). */
#define REG_R8 0
#define REG_R9 1
#define REG_R10 2
#define REG_R11 3
#define REG_R12 4
#define REG_R13 5
#define REG_R14 6
#define REG_R15 7
#define REG_RDI 8
#define REG_RSI 9
#define REG_RBP 10
#define REG_RBX 11
#define REG_RDX 12
#define REG_RAX 13
#define REG_RCX 14
#define REG_RSP 15
#define REG_RIP 16
#define REG_EFL 17

typedef void (*handler1)(int);
typedef void (*handler3)(int, void *, void *);

/*
 * lt_sigtrap is the SIGTRAP backstop: it emulates the CALL of a site whose
 * INT3 the tracer left behind (the jmp of a relocated region), and chains
 * any other SIGTRAP.
 */
extern char lt_remote[] HIDDEN;

/*
 * lt_remote_rescue gives a thread that the tracer borrowed for a system
 * call, and then abandoned (it died), its own registers back: the thread ran
 * the call at lt_remote and trapped on the int3 after it. It reports whether
 * it did.
 */
static int lt_remote_rescue(u64 *g)
{
	/* user_regs_struct order -> ucontext gregs order */
	static const signed char to_greg[27] = {
		/* r15 */ REG_R15, /* r14 */ REG_R14, /* r13 */ REG_R13, /* r12 */ REG_R12,
		/* rbp */ REG_RBP, /* rbx */ REG_RBX, /* r11 */ REG_R11, /* r10 */ REG_R10,
		/* r9 */ REG_R9, /* r8 */ REG_R8, /* rax */ REG_RAX, /* rcx */ REG_RCX,
		/* rdx */ REG_RDX, /* rsi */ REG_RSI, /* rdi */ REG_RDI, /* orig_rax */ -1,
		/* rip */ REG_RIP, /* cs */ -1, /* eflags */ REG_EFL, /* rsp */ REG_RSP,
		/* ss */ -1, /* fs_base */ -1, /* gs_base */ -1, /* ds */ -1, /* es */ -1,
		/* fs */ -1, /* gs */ -1,
	};
	struct lt_remote_save *rs = &lt_priv.remote;
	if (g[REG_RIP] != (u64)lt_remote + 3) /* just past `syscall; int3` */
		return 0;
	if (rs->tid == 0 || rs->tid != (u64)sys2(SYS_gettid, 0, 0))
		return 0;
	for (int i = 0; i < 27; i++)
		if (to_greg[i] >= 0)
			g[to_greg[i]] = rs->regs[i];
	rs->tid = 0;
	return 1;
}

void lt_sigtrap(int sig, void *si, void *uc)
{
	u64 *g = (u64 *)uc + UC_GREGS;
	int rescued = lt_remote_rescue(g);
	/*
	 * The INT3 the tracer put over the `ret` of the loader's r_brk, to
	 * learn of dlopen and dlclose (internal/session/dlopen.go): with no
	 * tracer to handle it (it died, or this is a child forked meanwhile),
	 * do what the `ret` would have done. A thread the tracer borrowed
	 * while it was stopped there gets its registers back just past the
	 * INT3: it returns too. A thread the tracer held at the breakpoint
	 * has its rip on the INT3 itself (internal/proc/breakpoint.go).
	 */
	u64 rbrk = __atomic_load_n(&lt_priv.rbrk, __ATOMIC_ACQUIRE);
	if (rbrk != 0 && (g[REG_RIP] - 1 == rbrk || g[REG_RIP] == rbrk) &&
	    (rescued || ((const int *)si)[2] == SI_KERNEL)) {
		u64 rsp = g[REG_RSP];
		g[REG_RIP] = *(const u64 *)rsp;
		g[REG_RSP] = rsp + 8;
		return;
	}
	if (rescued)
		return;
	/*
	 * The handler is in before the shared memory is mapped (the tracer
	 * installs it right after the code, see internal/session/inject.go):
	 * until the tracer says lt_shared is there, no site can be ours and
	 * the signal only chains.
	 */
	if (__atomic_load_n(&lt_priv.shared_ready, __ATOMIC_ACQUIRE) == 1 && lt_shared.magic == LT_MAGIC) {
		u64 site = g[REG_RIP] - 1;
		const struct lt_site *s = (const struct lt_site *)((char *)&lt_shared + lt_shared.site_off);
		u64 n = __atomic_load_n(&lt_shared.nsites, __ATOMIC_ACQUIRE);
		u64 lo = 0, hi = n;
		while (lo < hi) {
			u64 mid = lo + (hi - lo) / 2;
			if (s[mid].addr < site)
				lo = mid + 1;
			else
				hi = mid;
		}
		if (lo >= n || s[lo].addr != site) {
			/*
			 * Sites added while attached (internal/session/ctl.go)
			 * are appended, out of address order: the table is
			 * sorted only up to the sites chosen at attach. Scan.
			 */
			for (lo = 0; lo < n && s[lo].addr != site; lo++)
				;
		}
		if (lo < n && s[lo].addr == site) {
			if (!(s[lo].len & LT_SITE_JMP)) {
				u64 rsp = g[REG_RSP] - 8;
				*(u64 *)rsp = site + 5;
				g[REG_RSP] = rsp;
			}
			/* A region's jmp: its stub runs the displaced
			 * instructions, the same as the original bytes. */
			g[REG_RIP] = s[lo].target;
			__atomic_fetch_add(&lt_shared.traps, 1, __ATOMIC_RELAXED);
			return;
		}
	}
	struct lt_ksigaction old = lt_priv.old_sigtrap;
	if (old.handler == 1) /* SIG_IGN */
		return;
	if (old.handler == 0) {
		/* SIG_DFL: restore the default action and re-raise; the signal
		 * stays blocked until this handler returns, then kills. */
		struct lt_ksigaction dfl = {0, 0, 0, 0};
		sys4(SYS_rt_sigaction, SIGTRAP, (long)&dfl, 0, 8);
		long pid = sys2(SYS_getpid, 0, 0);
		long tid = sys2(SYS_gettid, 0, 0);
		sys4(SYS_tgkill, pid, tid, SIGTRAP, 0);
		return;
	}
	if (old.flags & SA_SIGINFO)
		((handler3)old.handler)(sig, si, uc);
	else
		((handler1)old.handler)(sig);
}
