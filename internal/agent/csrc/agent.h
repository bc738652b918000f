/*
 * agent.h: data structures shared between the livetrace agent (which runs
 * inside the traced process) and the tracer.
 *
 * The Go side never parses this file: `go generate` compiles the agent with
 * -g and reads every struct layout and enumerator below from DWARF, so the
 * generated layout_generated.go cannot drift from the C code. Keep every
 * field a fixed-width integer and every padding explicit.
 */
#ifndef LIVETRACE_AGENT_H
#define LIVETRACE_AGENT_H

/*
 * Offsets and constants the assembly fast paths (agent.S) need. agent.c
 * checks every one against the C layout below with _Static_assert.
 */
#define LT_A_THREADS 4096          /* offsetof(struct lt_priv, threads) */
#define LT_A_SHADOW 528384         /* offsetof(struct lt_priv, shadow) */
#define LT_A_THREAD_SHIFT 7        /* sizeof(struct lt_thread) == 1 << 7 */
#define LT_A_HASH_SHIFT 52         /* 64 - log2(LT_MAX_THREADS) */
#define LT_A_HASH_MUL 0x9e3779b97f4a7c15
#define LT_A_T_KEY 0
#define LT_A_T_DEPTH 12
#define LT_A_T_CHUNK 16
#define LT_A_T_POS 24
#define LT_A_T_BUSY 32
#define LT_A_T_CODE_LO 40
#define LT_A_T_CODE_HI 48
#define LT_A_T_CODE_GEN 56
#define LT_A_T_CODE_LO1 64
#define LT_A_T_CODE_HI1 72
#define LT_A_CODE_GEN 0x148        /* offsetof(struct lt_priv, code_gen) */
#define LT_A_SHADOW_STACK 12288    /* LT_SHADOW_DEPTH * sizeof(struct lt_shadow) */
#define LT_A_SH_ORIG 0
#define LT_A_SH_SLOT 8
#define LT_A_SH_SITE 16
#define LT_A_SHADOW_DEPTH 512
#define LT_A_STACK_WINDOW 0x100000
#define LT_A_SITE_MASK 0x3fffff    /* LT_MAX_SITES - 1 */
#define LT_A_CHUNK_RECORDS 12      /* offsetof(struct lt_shared_hdr, chunk_records) */
#define LT_A_C_COUNT 16            /* offsetof(struct lt_chunk_hdr, count) */
#define LT_A_CHUNK_HDR 64          /* LT_CHUNK_HDR_SIZE */
#define LT_A_CTL_GRAPH 4           /* offsetof(struct lt_ctl, graph) */
#define LT_A_UNWIND_RAISE 256      /* offsetof(struct lt_priv, unwind.raise) */
#define LT_A_UNWIND_RESUME_OR_RETHROW 264 /* offsetof(struct lt_priv, unwind.resume_or_rethrow) */
#define LT_A_UNWIND_BEGIN_CATCH 272 /* offsetof(struct lt_priv, unwind.begin_catch) */
#define LT_A_UNWIND_LONGJMP 280    /* offsetof(struct lt_priv, unwind.longjmp) */
#define LT_A_UNWIND_LONGJMP_ 288   /* offsetof(struct lt_priv, unwind.longjmp_u) */
#define LT_A_UNWIND_SIGLONGJMP 296 /* offsetof(struct lt_priv, unwind.siglongjmp) */
#define LT_A_UNWIND_LONGJMP_CHK 304 /* offsetof(struct lt_priv, unwind.longjmp_chk) */
#define LT_A_CAPTURE 0x40000000    /* LT_CAPTURE: the stub's site index flag */
#define LT_A_KEEP 0x20000000       /* LT_KEEP: the stub's site index flag */
#define LT_A_KEEP_SAVE 88          /* LT_KEEP_SAVE */
#define LT_A_SITE_OFF 24           /* offsetof(struct lt_shared_hdr, site_off) */
#define LT_A_NSITES 32             /* offsetof(struct lt_shared_hdr, nsites) */
#define LT_A_SIZEOF_SITE 56        /* sizeof(struct lt_site) */
#define LT_A_SITE_SPEC 52          /* offsetof(struct lt_site, spec) */
#define LT_A_SPEC_RET 0x10000      /* LT_SPEC_RET */
#define LT_A_SPEC_SLOW 0xfffcffc0  /* spec bits other than LT_SPEC_ARGS, LT_SPEC_RET, LT_SPEC_RET_FLOAT */
#define LT_A_STUB_SHIFT 22         /* LT_STUB_SHIFT */

#ifndef __ASSEMBLER__

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long s64;

/* Constants exported to Go (each LT_FOO becomes agent.Foo). */
enum lt_const {
	LT_MAGIC = 0x4c544147,          /* "GATL" little endian: shared header magic */
	LT_VERSION = 6,                 /* shared memory format version (3: site specs, DATA records; 4: LT_SITE_JMP; 5: the owner record on a page a forked child keeps; 6: the code table, 128-byte thread slots) */
	LT_MAX_THREADS = 4096,          /* thread table slots (power of two) */
	LT_SHADOW_DEPTH = 512,          /* shadow stack entries per thread */
	LT_MAX_PROBES = 64,             /* thread table probes per lookup */
	LT_CHUNK_PROBES = 16,           /* chunk pool probes per round */
	LT_CHUNK_ROUNDS = 3,            /* rounds per chunk allocation */
	LT_MAX_SITES = 1 << 22,         /* site indexes are 22 bits */
	LT_STACK_WINDOW = 1 << 20,      /* stale-frame window on one stack (1 MiB) */
	LT_SHARED_HDR_PAGE = 4096,      /* bytes reserved for the shared header */
	LT_CHUNK_FREE = 0,              /* chunk state: in the pool */
	LT_CHUNK_OWNED = 1,             /* chunk state: a thread is writing it */
	LT_CHUNK_FULL = 2,              /* chunk state: published, for the tracer */
	LT_KEY_EMPTY = 0,               /* thread slot key: never used */
	LT_KEY_RETIRED = 1,             /* thread slot key: retired by the tracer */
	LT_KIND_ENTRY = 1,              /* record kind: function entry */
	LT_KIND_EXIT = 2,               /* record kind: function exit */
	LT_OWNER_MAGIC = 0x574f544c,    /* "LTOW" little endian: control page owner record */
	LT_OWNER_VERSION = 4,           /* owner record format version (2: rbrk, 3: rbrk_pad, 4: at Ctl + 4096, kept on fork) */
	LT_MAX_STUB_REGIONS = 64,       /* stub regions an owner record lists */
	LT_MAX_HOOKS = 64,              /* GOT hooks an owner record lists */
	LT_SITE_ORIG = 32,              /* bytes of struct lt_site.orig: a relocated region at most */
	LT_SITE_JMP = 1 << 30,          /* struct lt_site.len flag: a relocated region, its target jumped to */
	LT_SHADOW_RESTORED = 1,         /* shadow entry flag: its slot holds orig again */
	LT_KIND_DATA = 3,               /* record kind: the payload of the record before it */
	LT_CAPTURE = 1 << 30,           /* site index flag (stub, shadow entry): the site has a spec */
	LT_SPEC_ARGS = 0x3f,            /* spec bits 0-5: capture argument 1..6 (rdi rsi rdx rcx r8 r9) */
	LT_SPEC_STR_SHIFT = 8,          /* spec bits 8-13: that argument is a char * read as a string */
	LT_SPEC_RET = 1 << 16,          /* spec bit: capture the return value (graph mode) */
	LT_SPEC_RET_FLOAT = 1 << 17,    /* spec bit: the return value is in xmm0, not rax */
	LT_STRING_MAX = 126,            /* most string bytes one argument records (126 | LT_STR_TRUNC is not LT_STR_BAD) */
	LT_STR_BAD = 0xff,              /* string length byte: the pointer was not readable */
	LT_STR_TRUNC = 0x80,            /* string length flag: no NUL within string_max bytes */
	LT_MAX_PAYLOAD = 6 * 8 + 6 * (1 + 126), /* bytes of the largest payload */
	LT_SPEC_TRIGGER = 1 << 18,      /* spec bit (record -G): calls below this one are recorded */
	LT_SPEC_UNDER = 1 << 19,        /* spec bit (record -G): recorded only below a TRIGGER call */
	LT_SPEC_CALLER = 1 << 20,       /* spec bit (--caller): records the pending calls it is below */
	LT_SPEC_DEFER = 1 << 21,        /* spec bit (--caller): entry held back until a CALLER call */
	LT_SHADOW_UNDER = 2,            /* shadow entry flag: this frame or one below is a TRIGGER */
	LT_SHADOW_PENDING = 4,          /* shadow entry flag: its entry record is held back (lt_priv.pend) */
	LT_KEEP = 1 << 29,              /* site index flag (stub): every register is kept; the stub passes a copy of the return slot, the slot is LT_KEEP_SAVE higher */
	LT_KEEP_SAVE = 88,              /* bytes a keep stub pushes before its call (flags, 9 registers, the copy) */
	LT_SHADOW_KEEP = 8,             /* shadow entry flag: its slot holds lt_return_keep, not lt_return */
	LT_STUB_SHIFT = 22,             /* stub index bits 22-27: the argument bits of a spec the fast paths take */
	LT_STUB_RET = 1 << 28,          /* stub index bit: that spec captures the return value too */
	LT_HELD_BYTES = 16384,          /* bytes per thread for the values of held-back entries (lt_priv.held) */
	LT_MAX_CODE = 200,              /* address ranges the code table (lt_priv.code) holds */
};

#define LT_CHUNK_HDR_SIZE 64

/* LT_CALLER_UNKNOWN is the caller delta of an entry whose caller did not fit. */
#define LT_CALLER_UNKNOWN 0x80000000u

/* struct lt_range is a mapping the tracer made in the target. */
struct lt_range {
	u64 addr;
	u64 size;
};

/* struct lt_span is an address range [lo, hi). */
struct lt_span {
	u64 lo;
	u64 hi;
};

/* struct lt_hook is a GOT slot the tracer pointed at an agent hook. */
struct lt_hook {
	u64 slot; /* address of the GOT slot */
	u64 orig; /* the value it held before */
	u64 hook; /* the value the tracer wrote (an agent hook) */
};

/*
 * struct lt_owner is what a later tracer needs to undo the agent if the
 * one that injected it dies (internal/session/orphan.go): who owns the
 * agent, until when it promises to consume, and every mapping and GOT slot
 * it made. The site table with each site's original bytes is in the
 * shared memory (struct lt_site). The tracer writes it through
 * /proc/PID/mem before it changes what each part describes; magic last.
 * The agent itself reads only lease.
 */
struct lt_owner {
	u32 magic;       /* LT_OWNER_MAGIC once the record is valid */
	u32 version;     /* LT_OWNER_VERSION */
	u64 lease;       /* rdtsc value after which nobody consumes; 0: no lease */
	u64 pid;         /* the tracer's pid */
	u64 start;       /* its start time (field 22 of /proc/PID/stat) */
	u64 base;        /* the agent region's base */
	u64 shared_size; /* bytes of the shared memfd mapping (0: not mapped yet) */
	u32 nstubs;
	u32 nhooks;
	struct lt_range stubs[LT_MAX_STUB_REGIONS];
	struct lt_hook hooks[LT_MAX_HOOKS];
	u64 rbrk;        /* the INT3 the tracer wrote over the `ret` of the
	                  * loader's r_brk (internal/session/dlopen.go), 0: none */
	u64 rbrk_pad;    /* 0x100 | the original byte at rbrk + 1, alignment
	                  * padding the tracer made a second `ret`; 0: none */
};

/*
 * struct lt_ctl is the control area: a first page (MADV_WIPEONFORK: reads
 * as zero in a forked child) with enabled and graph, then the owner record
 * on a page of its own that a forked child keeps, so that restore finds
 * the agent in a child forked after its tracer died. The tracer writes it
 * through /proc/PID/mem. The agent clears enabled itself when the owner's
 * lease has expired (lt_drop).
 */
struct lt_ctl {
	u32 enabled; /* nonzero: record events */
	u32 graph;   /* nonzero: hijack returns and record exits */
	u8 pad[4096 - 8]; /* the tracer stages short strings at its end */
	struct lt_owner owner;
};

/* struct lt_ksigaction is the kernel's struct sigaction on x86-64. */
struct lt_ksigaction {
	u64 handler;
	u64 flags;
	u64 restorer;
	u64 mask;
};

/*
 * struct lt_thread is one slot of the open-addressing thread table in
 * private memory. Only its owner thread writes it, except key (CAS by a
 * claiming thread; LT_KEY_RETIRED written by the tracer at thread exit).
 */
struct lt_thread {
	u64 key;   /* thread pointer (%fs:0), LT_KEY_EMPTY or LT_KEY_RETIRED */
	u32 tid;   /* gettid() of the owner */
	u32 depth; /* shadow stack entries in use */
	u64 chunk; /* offset of the current chunk from the shared base, 0: none */
	u32 pos;   /* records written in the current chunk */
	u32 lost;  /* events dropped since the current chunk was taken */
	u64 busy;  /* nonzero while the agent runs for this thread: its sp */
	/* The two ranges of the code table this thread found a return
	 * address in last (the newest first), valid while code_gen is
	 * lt_priv.code_gen (lt_code_known). */
	u64 code_lo;
	u64 code_hi;
	u32 code_gen;
	u32 inflight;  /* exceptions thrown and not caught yet (see lt_unwind_prep) */
	u64 code_lo1;
	u64 code_hi1;
	u64 unwind_lo; /* lowest sp of a throw since the last outermost catch, 0: none */
	u64 pad[5];
};

/*
 * struct lt_shadow is one shadow stack entry (a hijacked return). An entry
 * whose slot is 0 is a hole: a frame that ended while entries above it were
 * still in use (doc.go, "Graph mode"); holes keep the depth of the others.
 */
struct lt_shadow {
	u64 orig;  /* original return address */
	u64 slot;  /* address of the return address slot on the stack, 0: hole */
	u32 site;  /* site index */
	u32 flags; /* LT_SHADOW_* */
};

/*
 * struct lt_priv is the private anonymous region (copied, not wiped, on
 * fork). The thread table and the shadow stacks; only touched pages cost.
 */
/*
 * struct lt_remote_save holds, while the tracer runs a system call on a
 * borrowed thread through lt_remote, the registers that thread must get
 * back, in the order of the kernel's struct user_regs_struct (the ptrace
 * GETREGS layout). tid is the borrowed thread, 0 when none.
 */
struct lt_remote_save {
	u64 tid;
	u64 regs[27];
};

/*
 * struct lt_unwind_real holds the real functions that the hooks (lt_hook_*
 * in agent.S: the unwinder's entry points, __cxa_begin_catch and the
 * longjmp family) jump to (the tracer writes them before it points any GOT
 * slot at a hook). It lives in the private
 * region, not in the wipe-on-fork control page: a forked child keeps the
 * hooked GOT slots and must still reach the real functions.
 */
struct lt_unwind_real {
	u64 raise;             /* _Unwind_RaiseException */
	u64 resume_or_rethrow; /* _Unwind_Resume_or_Rethrow */
	u64 begin_catch;       /* __cxa_begin_catch */
	u64 longjmp;           /* longjmp */
	u64 longjmp_u;         /* _longjmp */
	u64 siglongjmp;        /* siglongjmp */
	u64 longjmp_chk;       /* __longjmp_chk */
};

/*
 * struct lt_pend is an entry record held back (record --caller). Its
 * values, when its site captures arguments, are in the thread's
 * lt_priv.held at [off, off+len): the spec (u32), then the payload as
 * lt_args wrote it. len 0: none (no spec, or no room left: the entry is
 * then recorded without its values).
 */
struct lt_pend {
	u64 tsc;
	u32 low; /* its caller delta (the low meta word) */
	u16 off;
	u16 len;
};

struct lt_priv {
	struct lt_ksigaction old_sigtrap; /* previous SIGTRAP action (tracer writes) */
	struct lt_remote_save remote;     /* see lt_remote (tracer writes) */
	struct lt_unwind_real unwind;     /* see lt_hook_raise (tracer writes) */
	u64 shared_ready;                 /* lt_shared is mapped and formatted (tracer writes) */
	u64 rbrk;                         /* the INT3 over r_brk's `ret`, 0: none (tracer writes;
	                                   * private, so a forked child keeps it) */
	/*
	 * The code table (tracer writes): the address ranges of the
	 * process's modules, sorted, disjoint, [lo, hi). Graph mode hijacks
	 * only a return address in one of them (lt_code_known): code outside
	 * every module is JIT-compiled code, whose runtime may read the
	 * return address back (HotSpot walks its frames from it). A
	 * seqlock: the tracer makes code_gen odd, writes ncode and code,
	 * then makes it even and new; 0: no table yet. Private, so a forked
	 * child keeps the table of the address space it copied.
	 */
	u32 code_gen;
	u32 ncode;
	struct lt_span code[LT_MAX_CODE];
	u8 pad[4096 - sizeof(struct lt_ksigaction) - sizeof(struct lt_remote_save) - sizeof(struct lt_unwind_real) - 2 * sizeof(u64) - 2 * sizeof(u32) - LT_MAX_CODE * 16];
	struct lt_thread threads[LT_MAX_THREADS];
	struct lt_shadow shadow[LT_MAX_THREADS][LT_SHADOW_DEPTH];
	/* The held-back entry of each shadow entry with LT_SHADOW_PENDING. */
	struct lt_pend pend[LT_MAX_THREADS][LT_SHADOW_DEPTH];
	/* The values of the held-back entries, each thread's a stack in
	 * the order of its shadow stack (lt_hold_args). */
	u8 held[LT_MAX_THREADS][LT_HELD_BYTES];
};

/* struct lt_site is one entry of the site table: sorted by addr up to the
 * sites chosen at attach; sites added later are appended. */
struct lt_site {
	u64 addr;                /* runtime address of the patched site */
	u64 target;              /* its CALL target (the site's stub) */
	u8 orig[LT_SITE_ORIG];   /* the bytes it held before (the first len) */
	u32 len;                 /* the bytes it covers (at most
	                          * LT_SITE_ORIG), | LT_SITE_JMP for a
	                          * relocated region, whose target (the
	                          * relocation stub) is jumped to; without
	                          * it a NOP site, 5 bytes, its target
	                          * CALLed. The length alone cannot tell:
	                          * a region's instructions may add up to
	                          * 5 bytes too. */
	u32 spec;                /* LT_SPEC_* bits: what the agent captures at
	                          * this site (its stub sets LT_CAPTURE); 0: none */
};

/*
 * struct lt_shared_hdr is the first page of the shared memfd. The tracer
 * formats it before the agent runs; the agent trusts it.
 */
struct lt_shared_hdr {
	u32 magic;
	u32 version;
	u32 hdr_size;      /* LT_SHARED_HDR_SIZE */
	u32 chunk_records; /* records per chunk */
	u64 total_size;    /* bytes of the whole shared region */
	u64 site_off;      /* offset of the site table */
	u64 nsites;
	u64 chunk_off;     /* offset of chunk 0 */
	u64 nchunks;
	u64 chunk_size;    /* bytes per chunk, header included */
	u64 tsc_hz;        /* informational, written by the tracer */
	u64 string_max;    /* string bytes an argument records (<= LT_STRING_MAX) */
	u64 pad0[6];
	/* Counters, each on its own cache line pair, written by the agent. */
	u64 seq;           /* last published chunk sequence number */
	u64 pad1[7];
	u64 hint;          /* where the next chunk search starts */
	u64 pad2[7];
	u64 lost;          /* events dropped: no free chunk */
	u64 overflow;      /* frames not traced: shadow stack full */
	u64 table_full;    /* events dropped: thread table full */
	u64 reentered;     /* events dropped: agent re-entered by a signal */
	u64 threads;       /* thread slots claimed */
	u64 traps;         /* SIGTRAPs emulated by the backstop */
	u64 unwound;       /* hijacked frames given back before a C++ exception unwound */
	u64 jit_calls;     /* calls graph mode left alone: their return address is in no module */
};

/* struct lt_chunk_hdr heads every chunk. */
struct lt_chunk_hdr {
	u32 state; /* LT_CHUNK_* */
	u32 tid;   /* owner's tid */
	u64 seq;   /* publication order, valid when FULL */
	u32 count; /* records written (release-stored after each record) */
	u32 lost;  /* events the owner dropped before taking this chunk */
	u32 slot;  /* owner's thread slot index */
	u32 pad[9];
};

_Static_assert(sizeof(struct lt_chunk_hdr) == 64, "chunk header is 64 bytes");
_Static_assert(sizeof(struct lt_thread) == 128, "thread slot is 128 bytes");
_Static_assert(sizeof(struct lt_shared_hdr) <= LT_SHARED_HDR_PAGE, "shared header fits");
/* Only the first page is wiped on fork: the owner record starts the second.
 * The tracer stages a struct sigaction in the second page's last bytes. */
_Static_assert(__builtin_offsetof(struct lt_ctl, owner) == 4096, "the owner record starts the page a forked child keeps");
_Static_assert(sizeof(struct lt_owner) <= 4096 - 64, "the owner page has room for the staging area");

/*
 * struct lt_record is one event. An event of a site with a spec is its
 * ENTRY or EXIT record followed, in the same chunk, by a DATA record
 * (kind 3; tsc = spec | payload bytes << 32, meta = kind << 62 | payload
 * bytes) and by the payload itself in ceil(bytes / 16) more records (see
 * lt_emit_data); chunk count covers the whole group at once.
 */
struct lt_record {
	u64 tsc;
	u64 meta; /* kind:2 depth:8 site:22 caller_delta:32 */
};

_Static_assert(sizeof(struct lt_record) == 16, "record is 16 bytes");

#endif /* __ASSEMBLER__ */
#endif
