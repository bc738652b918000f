/*
 * agent.S: the agent's entry points that cannot be written in C.
 *
 * lt_entry    reached from a per-site stub: r11d = site index,
 *             [rsp] = site+5, [rsp+8] = the caller's return address,
 *             rsp 16-byte aligned.
 * lt_return   reached by the ret of a traced function whose return address
 *             was hijacked in graph mode: rsp = return slot + 8.
 * lt_restorer SA_RESTORER for lt_sigtrap.
 * lt_remote   `syscall; int3`: where the tracer runs system calls in the
 *             target once the agent is in. If the tracer dies while a
 *             borrowed thread is in one, the thread reaches the int3 and
 *             lt_sigtrap gives it back its own registers (lt_priv.remote).
 *
 * lt_hook_raise, lt_hook_resume_or_rethrow
 *             run in place of libgcc's _Unwind_RaiseException and
 *             _Unwind_Resume_or_Rethrow (the tracer points the callers'
 *             GOT slots here in graph mode): they give the calling
 *             thread's hijacked return addresses back (lt_unwind_prep)
 *             and tail-jump to the real function (lt_priv.unwind).
 * lt_hook_begin_catch
 *             runs in place of __cxa_begin_catch: ends the frames an
 *             exception left, hijacks the others again (lt_catch_prep).
 * lt_hook_longjmp, lt_hook__longjmp, lt_hook_siglongjmp,
 * lt_hook_longjmp_chk
 *             run in place of longjmp, _longjmp, siglongjmp and
 *             __longjmp_chk: end the frames the jump leaves
 *             (lt_longjmp_prep).
 *
 * Argument registers: both slow paths of lt_entry call lt_on_entry with
 * sp = the address of site+5 and the registers saved below it, rax at
 * sp-8, rdx -16, rcx -24, rsi -32, rdi -40, r8 -48, r9 -56, r10 -64;
 * lt_on_entry reads the arguments there (lt_argreg in agent.c). A stub
 * whose site has a spec sets LT_CAPTURE in r11d, which sends it to the
 * slow path, so that sites without one keep the fast path's cost.
 *
 * lt_entry and lt_return each have a fast path here for the common case
 * (see doc.go, "Entry path") and fall back to lt_on_entry / lt_on_exit in
 * agent.c, the reference implementation, for everything else. A fast path
 * decides before it changes any state, so the C path always starts from
 * scratch. Both set busy before reading any per-thread state, exactly as
 * the C path does (signal handlers; the tracer's detach reads it too).
 * They must write exactly the records and shadow entries the C path would.
 *
 * Status flags are NOT preserved by lt_entry: the SysV ABI gives them no
 * role at a function entry (only DF, which must be clear and which the
 * agent never changes), so no compiled function can read them before its
 * first instruction sets them. pushfq/popfq would add about 20 cycles to
 * every traced call for no correct program's benefit.
 */
#include "agent.h"

/* THREAD_SLOT tp, t, idx: t = &lt_priv.threads[thread_hash(tp)] (the first
 * probe of lt_lookup), idx = its index << LT_A_THREAD_SHIFT. */
.macro THREAD_SLOT tp, t, idx
	movabs $LT_A_HASH_MUL, \idx
	imul \tp, \idx
	shr $LT_A_HASH_SHIFT, \idx
	shl $LT_A_THREAD_SHIFT, \idx
	lea lt_priv+LT_A_THREADS(%rip), \t
	add \idx, \t
.endm

/* CODE_KNOWN t, ret, tmp, fail: jump to fail unless the return address
 * ret lies in one of the two code table ranges thread t found last and the
 * table has not changed since (lt_code_known in agent.c, which the fail
 * path reaches, looks it up in the table). */
.macro CODE_KNOWN t, ret, tmp, fail
	mov lt_priv+LT_A_CODE_GEN(%rip), \tmp
	cmp LT_A_T_CODE_GEN(\t), \tmp
	jne \fail
	cmp LT_A_T_CODE_LO(\t), \ret
	jb 8f
	cmp LT_A_T_CODE_HI(\t), \ret
	jb 9f
8:
	cmp LT_A_T_CODE_LO1(\t), \ret
	jb \fail
	cmp LT_A_T_CODE_HI1(\t), \ret
	jae \fail
9:
.endm

/* CHUNK_ROOM t, c, pos1, fail: c = t->chunk, pos1 = t->pos + 1; jump to
 * fail unless the thread has a chunk with room for a record that does not
 * fill it (the record that fills a chunk publishes it: slow path). */
.macro CHUNK_ROOM t, c, pos1, fail
	mov LT_A_T_CHUNK(\t), \c
	test \c, \c
	jz \fail
	mov LT_A_T_POS(\t), \pos1
	inc \pos1
	cmp lt_shared+LT_A_CHUNK_RECORDS(%rip), \pos1
	jae \fail
.endm

/* CALLER_LOW delta, tmp: delta = caller's return - site (64 bits) becomes
 * the low meta word: int32(delta), or LT_CALLER_UNKNOWN if it does not fit
 * (zero-extended; the same values as caller_delta in agent.c). */
.macro CALLER_LOW delta, delta32, tmp, tmp32
	movslq \delta32, \tmp
	cmp \delta, \tmp
	mov $0x80000000, \tmp32
	cmovne \tmp32, \delta32
.endm

/* CAPARG bit, off, bits, tmp: when the argument bits have bit, store the
 * saved register at off(%rsp) at rax and advance rax. */
.macro CAPARG bit, off, bits, tmp
	test $(1 << \bit), \bits
	jz 1f
	mov \off(%rsp), \tmp
	mov \tmp, (%rax)
	add $8, %rax
1:
.endm

	.section .rodata,"a",@progbits
	.type lt_popcount6,@object
lt_popcount6:				/* bits set in 0..63 */
	.byte 0,1,1,2,1,2,2,3,1,2,2,3,2,3,3,4,1,2,2,3,2,3,3,4,2,3,3,4,3,4,4,5
	.byte 1,2,2,3,2,3,3,4,2,3,3,4,3,4,4,5,2,3,3,4,3,4,4,5,3,4,4,5,4,5,5,6
	.size lt_popcount6, .-lt_popcount6

	.text
	.section .text.lt_entry,"ax",@progbits

	.globl lt_entry
	.hidden lt_entry
	.type lt_entry,@function
	.p2align 4
lt_entry:
	cmpl $0, lt_ctl(%rip)		/* lt_ctl.enabled */
	jne 1f
	ret
1:
	cmpl $0, lt_ctl+LT_A_CTL_GRAPH(%rip)
	jne .Lgraph_entry

	/*
	 * Entry-only fast path. It saves only what it clobbers; rax is the
	 * varargs vector count and rdi..r9 may hold arguments. Anything
	 * unusual (another probe, busy set, no chunk, the record that fills
	 * its chunk) goes to lt_on_entry, before any state is changed.
	 */
	push %rax
	push %rdx
	push %rcx
	push %rsi
	push %rdi
	/* 40(%rsp): site+5, 48(%rsp): the caller's return address */
	test $LT_A_CAPTURE, %r11d
	jnz .Le_cap			/* a site with a spec */
	mov %fs:0, %rax
	THREAD_SLOT %rax, %rsi, %rcx
	cmp %rax, LT_A_T_KEY(%rsi)
	jne .Le_slow
	cmpq $0, LT_A_T_BUSY(%rsi)
	jne .Le_slow
	/* busy = sp as lt_on_entry sees it. From here on a signal handler
	 * that calls a traced function finds us busy and leaves our state
	 * alone; one that ran before this store has finished and left busy
	 * 0 again, so everything below is read after it. */
	lea 40(%rsp), %rax
	mov %rax, LT_A_T_BUSY(%rsi)
	CHUNK_ROOM %rsi, %rdi, %ecx, .Le_unbusy
	mov 48(%rsp), %rax
	lea lt_return(%rip), %rdx
	cmp %rdx, %rax
	je .Le_unbusy			/* hijacked while graph was set: the caller is in the shadow stack */
	lea lt_return_keep(%rip), %rdx
	cmp %rdx, %rax
	je .Le_unbusy
	sub 40(%rsp), %rax
	add $5, %rax			/* caller's return - site */
	CALLER_LOW %rax, %eax, %rdx, %edx
	and $LT_A_SITE_MASK, %r11d
	or $0x40000000, %r11d		/* kind ENTRY << 30, depth 0 */
	shl $32, %r11
	or %rax, %r11			/* meta */
	lea lt_shared(%rip), %rax
	add %rax, %rdi			/* the chunk header */
	rdtsc
	shl $32, %rdx
	or %rdx, %rax
	mov %ecx, %edx
	shl $4, %rdx
	add %rdi, %rdx			/* record pos is at rdx + 48 */
	mov %rax, LT_A_CHUNK_HDR-16(%rdx)
	mov %r11, LT_A_CHUNK_HDR-8(%rdx)
	mov %ecx, LT_A_T_POS(%rsi)
	mov %ecx, LT_A_C_COUNT(%rdi)	/* after the record (x86 TSO) */
	movq $0, LT_A_T_BUSY(%rsi)
.Le_pop5:
	pop %rdi
	pop %rsi
	pop %rcx
	pop %rdx
	pop %rax
	ret
.Le_unbusy:
	movq $0, LT_A_T_BUSY(%rsi)
.Le_slow:
	push %r8
	push %r9
	push %r10
.Lc_slow:
	mov %r11d, %edi
	lea 64(%rsp), %rsi
	lea 8(%rsi), %rdx		/* the return slot */
	call lt_on_entry
.Lc_pop3:
	pop %r10
	pop %r9
	pop %r8
	jmp .Le_pop5

	/*
	 * A keep site (LT_KEEP) in graph mode. Its stub saved the flags and
	 * rax..r11 and then pushed a copy of the function's return address
	 * (LT_A_KEEP_SAVE bytes in all) before its call, and after it puts
	 * the copy back into the return slot and restores the rest: in
	 * entry mode the fast paths above see the stack of a NOP site's
	 * CALL. Graph mode must hijack the real slot, LT_A_KEEP_SAVE bytes
	 * above the copy: always the C path, then the copy takes the slot's
	 * new value (lt_return_keep). The registers are saved as
	 * lt_on_entry reads them.
	 */
.Lkeep:
	push %rax
	push %rdx
	push %rcx
	push %rsi
	push %rdi
	push %r8
	push %r9
	push %r10
	mov %r11d, %edi
	lea 64(%rsp), %rsi
	lea 8+LT_A_KEEP_SAVE(%rsi), %rdx	/* the return slot */
	call lt_on_entry
	mov 64+8+LT_A_KEEP_SAVE(%rsp), %rax	/* the slot, hijacked or not */
	mov %rax, 64+8(%rsp)			/* into the copy the stub puts back */
	jmp .Lc_pop3

	/*
	 * Entry-only fast path of a site whose spec captures integer
	 * arguments only: the entry record, its DATA record and one u64
	 * per argument, as lt_emit_data writes them. The stub's index
	 * carries the spec's argument bits (<< LT_STUB_SHIFT; none: the C
	 * path), so that the site table is not read. Everything else (no
	 * such bits, no chunk, a group that would leave less than 3 records
	 * of the chunk, another probe, busy) goes to lt_on_entry before any
	 * state is changed, with the registers saved as it reads them.
	 */
.Le_cap:
	push %r8
	/* r8 0, rdi 8, rsi 16, rcx 24, rdx 32, rax 40 (%rsp); 48: site+5,
	 * 56: the caller's return address; r9 in its register */
	mov %r11d, %ecx
	shr $LT_A_STUB_SHIFT, %ecx
	and $0x3f, %ecx			/* the argument bits */
	jz .Lc_slow1
	mov %fs:0, %rax
	THREAD_SLOT %rax, %rsi, %rdx
	cmp %rax, LT_A_T_KEY(%rsi)
	jne .Lc_slow1
	cmpq $0, LT_A_T_BUSY(%rsi)
	jne .Lc_slow1
	lea 48(%rsp), %rax
	mov %rax, LT_A_T_BUSY(%rsi)
	mov LT_A_T_CHUNK(%rsi), %rdi
	test %rdi, %rdi
	jz .Lc_unbusy1
	lea lt_popcount6(%rip), %rax
	movzbl (%rax,%rcx), %r8d	/* n: arguments captured */
	lea 11(%r8), %edx
	shr $1, %edx			/* the group's records (2 + ceil(n/2)), + 3 */
	add LT_A_T_POS(%rsi), %edx
	cmp lt_shared+LT_A_CHUNK_RECORDS(%rip), %edx
	jae .Lc_unbusy1			/* keep 3 records after the group: see the payload */
	lea lt_return(%rip), %rax
	cmp %rax, 56(%rsp)
	je .Lc_unbusy1			/* hijacked while graph was set */
	lea lt_return_keep(%rip), %rax
	cmp %rax, 56(%rsp)
	je .Lc_unbusy1
	lea 0(,%r8,8), %eax		/* payload bytes */
	shl $32, %rax
	or %rax, %rcx			/* DATA tsc: spec | bytes << 32 */
	mov 56(%rsp), %rax
	sub 48(%rsp), %rax
	add $5, %rax			/* caller's return - site */
	CALLER_LOW %rax, %eax, %rdi, %edi
	and $LT_A_SITE_MASK, %r11d
	or $0x40000000, %r11d		/* kind ENTRY << 30, depth 0 */
	shl $32, %r11
	or %rax, %r11			/* meta */
	mov LT_A_T_CHUNK(%rsi), %rdi
	lea lt_shared(%rip), %rax
	add %rax, %rdi			/* the chunk header */
	rdtsc
	shl $32, %rdx
	or %rdx, %rax
	mov LT_A_T_POS(%rsi), %edx
	shl $4, %rdx
	add %rdi, %rdx			/* the group's first record is at rdx + 64 */
	mov %rax, LT_A_CHUNK_HDR(%rdx)
	mov %r11, LT_A_CHUNK_HDR+8(%rdx)
	mov %rcx, LT_A_CHUNK_HDR+16(%rdx)
	lea 0(,%r8,8), %r11d
	bts $62, %r11
	bts $63, %r11
	mov %r11, LT_A_CHUNK_HDR+24(%rdx) /* DATA meta: kind << 62 | bytes */
	lea 1(%rcx), %eax
	test %eax, %ecx
	jnz .Lc_sparse			/* not arg1..argN */
	/*
	 * Arguments 1..n: all six registers are stored, branch-free; those
	 * past the n-th land in the padding (then zeroed) or in the 3 records
	 * after the group, which count does not cover and the next event
	 * overwrites.
	 */
	mov 8(%rsp), %rax
	mov %rax, LT_A_CHUNK_HDR+32(%rdx)
	mov 16(%rsp), %rax
	mov %rax, LT_A_CHUNK_HDR+40(%rdx)
	mov 32(%rsp), %rax
	mov %rax, LT_A_CHUNK_HDR+48(%rdx)
	mov 24(%rsp), %rax
	mov %rax, LT_A_CHUNK_HDR+56(%rdx)
	mov 0(%rsp), %rax
	mov %rax, LT_A_CHUNK_HDR+64(%rdx)
	mov %r9, LT_A_CHUNK_HDR+72(%rdx)
	movq $0, LT_A_CHUNK_HDR+32(%rdx,%r8,8) /* the padding of an odd n */
.Lc_publish:
	lea 5(%r8), %ecx
	shr $1, %ecx
	add LT_A_T_POS(%rsi), %ecx	/* the position after the group */
	mov %ecx, LT_A_T_POS(%rsi)
	mov %ecx, LT_A_C_COUNT(%rdi)	/* after the group (x86 TSO) */
	movq $0, LT_A_T_BUSY(%rsi)
	pop %r8
	jmp .Le_pop5
.Lc_sparse:
	lea LT_A_CHUNK_HDR+32(%rdx), %rax
	CAPARG 0, 8, %ecx, %r11
	CAPARG 1, 16, %ecx, %r11
	CAPARG 2, 32, %ecx, %r11
	CAPARG 3, 24, %ecx, %r11
	CAPARG 4, 0, %ecx, %r11
	test $32, %ecx
	jz 1f
	mov %r9, (%rax)
	add $8, %rax
1:
	movq $0, (%rax)			/* the padding of an odd n (or past the group) */
	jmp .Lc_publish
.Lc_unbusy1:
	movq $0, LT_A_T_BUSY(%rsi)
.Lc_slow1:
	push %r9
	push %r10
	jmp .Lc_slow

.Lgraph_entry:
	test $LT_A_KEEP, %r11d
	jnz .Lkeep
	/*
	 * Graph-mode fast path: the common case of a new frame above the
	 * shadow stack's top (no stale frame to drop, no tail call from a
	 * hijacked frame, room on the shadow stack and in the chunk).
	 */
	push %rax
	push %rdx
	push %rcx
	push %rsi
	push %rdi
	push %r8
	push %r9
	/* 56(%rsp): site+5, 64(%rsp): the return slot */
	test $LT_A_CAPTURE, %r11d
	jnz .Lg_cap
	mov %fs:0, %rax
	THREAD_SLOT %rax, %rsi, %rcx
	cmp %rax, LT_A_T_KEY(%rsi)
	jne .Lg_slow
	cmpq $0, LT_A_T_BUSY(%rsi)
	jne .Lg_slow
	lea 56(%rsp), %rax
	mov %rax, LT_A_T_BUSY(%rsi)
	CHUNK_ROOM %rsi, %rdi, %ecx, .Lg_unbusy
	mov LT_A_T_DEPTH(%rsi), %r8d
	cmp $LT_A_SHADOW_DEPTH-1, %r8d
	ja .Lg_unbusy			/* full (or corrupt): drop stale or count overflow */
	mov 64(%rsp), %r9		/* the original return address */
	lea lt_return(%rip), %rax
	cmp %rax, %r9
	je .Lg_unbusy			/* a tail call from a hijacked frame */
	lea lt_return_keep(%rip), %rax
	cmp %rax, %r9
	je .Lg_unbusy
	CODE_KNOWN %rsi, %r9, %eax, .Lg_unbusy
	/* rdx = &lt_priv.shadow[thread index][depth] */
	lea lt_priv+LT_A_THREADS(%rip), %rax
	mov %rsi, %rdx
	sub %rax, %rdx
	imul $(LT_A_SHADOW_STACK >> LT_A_THREAD_SHIFT), %rdx, %rdx
	lea (%r8,%r8,2), %rax
	lea (%rdx,%rax,8), %rdx
	lea lt_priv+LT_A_SHADOW(%rip), %rax
	add %rax, %rdx
	lea 64(%rsp), %rax		/* the slot */
	test %r8d, %r8d
	jz 2f
	cmpq $0, LT_A_SH_SLOT-24(%rdx)
	je .Lg_unbusy			/* a hole on top: trim it in C */
	sub LT_A_SH_SLOT-24(%rdx), %rax
	cmp $LT_A_STACK_WINDOW, %rax
	jb .Lg_unbusy			/* the top frame is stale: drop it in C */
	lea 64(%rsp), %rax
2:
	mov %r9, LT_A_SH_ORIG(%rdx)
	mov %rax, LT_A_SH_SLOT(%rdx)
	mov %r11, LT_A_SH_SITE(%rdx)	/* site, and flags 0 (the stub zero-extended r11d) */
	lea 1(%r8), %edx
	mov %edx, LT_A_T_DEPTH(%rsi)
	lea lt_return(%rip), %rax
	mov %rax, 64(%rsp)
	sub 56(%rsp), %r9
	add $5, %r9			/* caller's return - site */
	CALLER_LOW %r9, %r9d, %rax, %eax
	and $LT_A_SITE_MASK, %r11d
	movzbl %r8b, %r8d
	shl $22, %r8d
	or %r8d, %r11d
	or $0x40000000, %r11d		/* kind ENTRY << 30 | depth << 22 | site */
	shl $32, %r11
	or %r9, %r11			/* meta */
	lea lt_shared(%rip), %rax
	add %rax, %rdi
	rdtsc
	shl $32, %rdx
	or %rdx, %rax
	mov %ecx, %edx
	shl $4, %rdx
	add %rdi, %rdx
	mov %rax, LT_A_CHUNK_HDR-16(%rdx)
	mov %r11, LT_A_CHUNK_HDR-8(%rdx)
	mov %ecx, LT_A_T_POS(%rsi)
	mov %ecx, LT_A_C_COUNT(%rdi)
	movq $0, LT_A_T_BUSY(%rsi)
	pop %r9
	pop %r8
	jmp .Le_pop5
.Lg_unbusy:
	movq $0, LT_A_T_BUSY(%rsi)
.Lg_slow:
	push %r10
	mov %r11d, %edi
	lea 64(%rsp), %rsi
	lea 8(%rsi), %rdx		/* the return slot */
	call lt_on_entry
	pop %r10
	pop %r9
	pop %r8
	jmp .Le_pop5

	/*
	 * Graph-mode fast path of a site whose spec captures integer
	 * arguments (and maybe the return value): the graph fast path's
	 * checks and shadow push, then the group of .Le_cap. The shadow
	 * entry keeps LT_CAPTURE only when the exit needs lt_on_exit (a
	 * return value), as lt_exit_idx does in C.
	 */
.Lg_cap:
	push %r10
	/* 64(%rsp): site+5, 72(%rsp): the return slot; the registers as
	 * lt_on_entry reads them */
	mov %r11d, %r10d
	shr $LT_A_STUB_SHIFT, %r10d
	and $0x7f, %r10d		/* the stub's argument bits, 0x40: LT_STUB_RET */
	test $0x3f, %r10d
	jz .Lc_slow			/* strings, filters: C */
	mov %fs:0, %rax
	THREAD_SLOT %rax, %rsi, %rcx
	cmp %rax, LT_A_T_KEY(%rsi)
	jne .Lc_slow
	cmpq $0, LT_A_T_BUSY(%rsi)
	jne .Lc_slow
	lea 64(%rsp), %rax
	mov %rax, LT_A_T_BUSY(%rsi)
	mov %r10d, %eax
	and $0x3f, %eax
	lea lt_popcount6(%rip), %rdx
	movzbl (%rdx,%rax), %eax
	lea 1(%rax), %ecx
	shr $1, %ecx
	add $2, %ecx			/* records in the group */
	mov LT_A_T_CHUNK(%rsi), %rdi
	test %rdi, %rdi
	jz .Lgc_unbusy
	add LT_A_T_POS(%rsi), %ecx	/* the position after the group */
	cmp lt_shared+LT_A_CHUNK_RECORDS(%rip), %ecx
	jae .Lgc_unbusy
	mov LT_A_T_DEPTH(%rsi), %r8d
	cmp $LT_A_SHADOW_DEPTH-1, %r8d
	ja .Lgc_unbusy
	mov 72(%rsp), %r9		/* the original return address */
	lea lt_return(%rip), %rax
	cmp %rax, %r9
	je .Lgc_unbusy
	lea lt_return_keep(%rip), %rax
	cmp %rax, %r9
	je .Lgc_unbusy
	CODE_KNOWN %rsi, %r9, %eax, .Lgc_unbusy
	lea lt_priv+LT_A_THREADS(%rip), %rax
	mov %rsi, %rdx
	sub %rax, %rdx
	imul $(LT_A_SHADOW_STACK >> LT_A_THREAD_SHIFT), %rdx, %rdx
	lea (%r8,%r8,2), %rax
	lea (%rdx,%rax,8), %rdx
	lea lt_priv+LT_A_SHADOW(%rip), %rax
	add %rax, %rdx			/* &shadow[thread index][depth] */
	lea 72(%rsp), %rax		/* the slot */
	test %r8d, %r8d
	jz 2f
	cmpq $0, LT_A_SH_SLOT-24(%rdx)
	je .Lgc_unbusy
	sub LT_A_SH_SLOT-24(%rdx), %rax
	cmp $LT_A_STACK_WINDOW, %rax
	jb .Lgc_unbusy
	lea 72(%rsp), %rax
2:
	mov %r9, LT_A_SH_ORIG(%rdx)
	mov %rax, LT_A_SH_SLOT(%rdx)
	mov %r11d, %eax
	and $(LT_A_SITE_MASK | LT_A_CAPTURE), %eax /* not the stub's bits */
	test $0x40, %r10d
	jnz 4f
	and $~LT_A_CAPTURE, %eax	/* the exit needs no C */
4:
	mov %rax, LT_A_SH_SITE(%rdx)	/* site, and flags 0 */
	lea 1(%r8), %eax
	mov %eax, LT_A_T_DEPTH(%rsi)
	lea lt_return(%rip), %rax
	mov %rax, 72(%rsp)
	sub 64(%rsp), %r9
	add $5, %r9			/* caller's return - site */
	CALLER_LOW %r9, %r9d, %rax, %eax
	and $LT_A_SITE_MASK, %r11d
	movzbl %r8b, %r8d
	shl $22, %r8d
	or %r8d, %r11d
	or $0x40000000, %r11d		/* kind ENTRY << 30 | depth << 22 | site */
	shl $32, %r11
	or %r9, %r11			/* meta */
	mov %r10d, %eax
	and $0x3f, %eax
	lea lt_popcount6(%rip), %rdx
	movzbl (%rdx,%rax), %r8d	/* n: arguments captured */
	lea 1(%r8), %eax
	shr $1, %eax
	add $2, %eax
	mov %ecx, %edx
	sub %eax, %edx			/* the group's position */
	lea lt_shared(%rip), %rax
	add %rax, %rdi			/* the chunk header */
	shl $4, %rdx
	lea LT_A_CHUNK_HDR(%rdi,%rdx), %r9 /* the group's first record */
	rdtsc
	shl $32, %rdx
	or %rdx, %rax
	mov %rax, 0(%r9)
	mov %r11, 8(%r9)
	mov %r10d, %r11d
	and $0x3f, %r11d		/* the DATA spec: the argument bits */
	lea 0(,%r8,8), %eax		/* payload bytes */
	mov %rax, %rdx
	shl $32, %rdx
	or %r11, %rdx
	mov %rdx, 16(%r9)
	mov $3, %edx
	shl $62, %rdx
	or %rax, %rdx
	mov %rdx, 24(%r9)
	lea 32(%r9), %rax
	CAPARG 0, 24, %r10d, %rdx
	CAPARG 1, 32, %r10d, %rdx
	CAPARG 2, 48, %r10d, %rdx
	CAPARG 3, 40, %r10d, %rdx
	CAPARG 4, 16, %r10d, %rdx
	CAPARG 5, 8, %r10d, %rdx
	test $1, %r8d
	jz 3f
	movq $0, (%rax)
3:
	mov %ecx, LT_A_T_POS(%rsi)
	mov %ecx, LT_A_C_COUNT(%rdi)
	movq $0, LT_A_T_BUSY(%rsi)
	jmp .Lc_pop3
.Lgc_unbusy:
	movq $0, LT_A_T_BUSY(%rsi)
	jmp .Lc_slow
	.size lt_entry, .-lt_entry

	.globl lt_return
	.hidden lt_return
	.type lt_return,@function
	.p2align 4
lt_return:
	/*
	 * rax:rdx may hold the return value (xmm0/xmm1 and st0 are never
	 * touched: the agent is built with -mgeneral-regs-only). The other
	 * registers the fast path uses are saved and restored: a caller
	 * built by gcc with -fipa-ra may keep values in call-clobbered
	 * registers across a call to a function it knows leaves them alone
	 * (docs/DESIGN-NOTES.md, "Callers that keep registers across a
	 * call"). The flags are not kept (see lt_return_keep). Fast path:
	 * the top shadow entry is this frame's; it leaves through the
	 * original return address stored below sp (in the red zone, which
	 * signal frames skip). Otherwise lt_return_keep, which keeps every
	 * register around lt_on_exit, searches and drops.
	 */
	push %rcx
	push %rsi
	push %rdi
	push %r8
	push %r9
	push %r10
	push %r11			/* sp-56 */
	mov %fs:0, %rcx
	THREAD_SLOT %rcx, %rdi, %rsi
	cmp %rcx, LT_A_T_KEY(%rdi)
	jne .Lr_slow
	cmpq $0, LT_A_T_BUSY(%rdi)
	jne .Lr_slow
	lea 56(%rsp), %r10
	mov %r10, LT_A_T_BUSY(%rdi)	/* busy = sp */
	mov LT_A_T_DEPTH(%rdi), %r9d
	dec %r9d
	cmp $LT_A_SHADOW_DEPTH-1, %r9d
	ja .Lr_unbusy			/* empty (or corrupt) */
	imul $(LT_A_SHADOW_STACK >> LT_A_THREAD_SHIFT), %rsi, %rsi
	lea (%r9,%r9,2), %r10
	lea (%rsi,%r10,8), %rsi
	lea lt_priv+LT_A_SHADOW(%rip), %r10
	add %r10, %rsi			/* e = &shadow[thread index][depth-1] */
	lea 48(%rsp), %r10		/* the return slot, sp-8 */
	cmp %r10, LT_A_SH_SLOT(%rsi)
	jne .Lr_unbusy			/* stale entries above ours */
	mov LT_A_SH_ORIG(%rsi), %r10
	cmpl $0, lt_ctl(%rip)		/* enabled */
	je .Lr_noemit
	CHUNK_ROOM %rdi, %rcx, %r8d, .Lr_unbusy
	mov LT_A_SH_SITE(%rsi), %r11d
	test $LT_A_CAPTURE, %r11d
	jnz .Lr_unbusy			/* a site with a spec: lt_on_exit captures */
	mov %r9d, LT_A_T_DEPTH(%rdi)	/* pop */
	and $LT_A_SITE_MASK, %r11d
	movzbl %r9b, %esi
	shl $22, %esi
	or %esi, %r11d
	or $0x80000000, %r11d		/* kind EXIT << 30 | depth << 22 | site */
	shl $32, %r11			/* meta */
	lea lt_shared(%rip), %rsi
	add %rsi, %rcx			/* the chunk header */
	mov %rax, %rsi
	mov %rdx, %r9
	rdtsc
	shl $32, %rdx
	or %rdx, %rax
	mov %r8d, %edx
	shl $4, %rdx
	add %rcx, %rdx
	mov %rax, LT_A_CHUNK_HDR-16(%rdx)
	mov %r11, LT_A_CHUNK_HDR-8(%rdx)
	mov %r8d, LT_A_T_POS(%rdi)
	mov %r8d, LT_A_C_COUNT(%rcx)
	mov %rsi, %rax
	mov %r9, %rdx
	movq $0, LT_A_T_BUSY(%rdi)
	jmp .Lr_out
.Lr_noemit:
	mov %r9d, LT_A_T_DEPTH(%rdi)
	movq $0, LT_A_T_BUSY(%rdi)
.Lr_out:
	mov %r10, -8(%rsp)		/* sp-64: the original return address */
	pop %r11
	pop %r10
	pop %r9
	pop %r8
	pop %rdi
	pop %rsi
	pop %rcx
	jmp *-64(%rsp)
.Lr_unbusy:
	movq $0, LT_A_T_BUSY(%rdi)
.Lr_slow:
	pop %r11
	pop %r10
	pop %r9
	pop %r8
	pop %rdi
	pop %rsi
	pop %rcx
	jmp lt_return_keep
	.size lt_return, .-lt_return

	/*
	 * lt_return_keep is lt_return for a frame of a keep site: its caller
	 * may hold values in any register across the call (gcc -fipa-ra
	 * assumes a callee clobbers only what it uses), so every register
	 * and the flags come back as the function left them. Always the C
	 * path: lt_on_exit finds rax at sp-8 and xmm0 at sp-24 as from
	 * lt_return, and returns the original return address, which goes
	 * out through memory below sp (within the red zone, which signal
	 * frames skip) so that no register carries it.
	 */
	.globl lt_return_keep
	.hidden lt_return_keep
	.type lt_return_keep,@function
	.p2align 4
lt_return_keep:
	push %rax			/* sp-8: rax */
	push %rdx			/* sp-16 */
	lea -8(%rsp), %rsp		/* not sub: the flags are not saved yet */
	movq %xmm0, (%rsp)		/* sp-24: xmm0 (movq to memory keeps rax) */
	pushfq				/* sp-32 */
	push %rcx
	push %rsi
	push %rdi
	push %r8
	push %r9
	push %r10
	push %r11			/* sp-88 */
	sub $8, %rsp			/* sp-96: 16-byte aligned (sp is) */
	lea 96(%rsp), %rdi
	call lt_on_exit
	test %rax, %rax
	jz 2f
	mov %rax, 72(%rsp)		/* sp-24: the original return address */
	add $8, %rsp
	pop %r11
	pop %r10
	pop %r9
	pop %r8
	pop %rdi
	pop %rsi
	pop %rcx
	popfq
	mov 8(%rsp), %rdx
	mov 16(%rsp), %rax
	lea 24(%rsp), %rsp		/* sp; lea keeps the flags */
	jmp *-24(%rsp)
2:
	ud2
	.size lt_return_keep, .-lt_return_keep

	.globl lt_restorer
	.hidden lt_restorer
	.type lt_restorer,@function
	.p2align 4
lt_restorer:
	mov $15, %eax			/* SYS_rt_sigreturn */
	syscall
	ud2
	.size lt_restorer, .-lt_restorer

	.globl lt_remote
	.hidden lt_remote
	.type lt_remote,@function
	.p2align 4
lt_remote:
	syscall
	int3
	.size lt_remote, .-lt_remote

/* HOOK name, off, fn: a hook that runs in place of a libc, libgcc or C++
 * runtime function. At entry rsp is 8 mod 16 and [rsp] is the caller's
 * return address; it calls fn(its return address slot, the first argument)
 * and then the real function, which must see exactly that stack and every
 * argument register. */
.macro HOOK name, off, fn
	.globl \name
	.hidden \name
	.type \name,@function
	.p2align 4
\name:
	push %rax
	push %rdi
	push %rsi
	push %rdx
	push %rcx
	push %r8
	push %r9			/* 7 pushes: rsp is 16-byte aligned */
	lea 56(%rsp), %rdi		/* the hook's return address slot */
	mov 40(%rsp), %rsi		/* the first argument */
	call \fn
	pop %r9
	pop %r8
	pop %rcx
	pop %rdx
	pop %rsi
	pop %rdi
	pop %rax
	cmpq $0, lt_priv+\off(%rip)
	je 1f
	jmp *lt_priv+\off(%rip)
1:
	ud2				/* the tracer did not say where the real function is */
	.size \name, .-\name
.endm

	.text
	HOOK lt_hook_raise, LT_A_UNWIND_RAISE, lt_unwind_prep
	HOOK lt_hook_resume_or_rethrow, LT_A_UNWIND_RESUME_OR_RETHROW, lt_unwind_prep
	HOOK lt_hook_begin_catch, LT_A_UNWIND_BEGIN_CATCH, lt_catch_prep
	HOOK lt_hook_longjmp, LT_A_UNWIND_LONGJMP, lt_longjmp_prep
	HOOK lt_hook__longjmp, LT_A_UNWIND_LONGJMP_, lt_longjmp_prep
	HOOK lt_hook_siglongjmp, LT_A_UNWIND_SIGLONGJMP, lt_longjmp_prep
	HOOK lt_hook_longjmp_chk, LT_A_UNWIND_LONGJMP_CHK, lt_longjmp_prep

	.section .note.GNU-stack,"",@progbits
