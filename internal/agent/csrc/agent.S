/*
 * agent.S: the agent's entry points that cannot be written in C.
 *
 * lt_entry    reached from a per-site stub: r11d = site index,
 *             [rsp] = site+5, [rsp+8] = the caller's return address,
 *             rsp 16-byte aligned.
 * lt_return   reached by the ret of a traced function whose return address
 *             was hijacked in graph mode: rsp = return slot + 8.
 * lt_restorer SA_RESTORER for lt_sigtrap.
 *
 * Status flags are NOT preserved by lt_entry: the SysV ABI gives them no
 * role at a function entry (only DF, which must be clear and which the
 * agent never changes), so no compiled function can read them before its
 * first instruction sets them. pushfq/popfq would add about 20 cycles to
 * every traced call for no correct program's benefit.
 */
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
	/* The registers a function may receive arguments in (rax: varargs
	 * vector count, r10: static chain); everything else lt_on_entry
	 * clobbers is scratch at a function entry. */
	push %rax
	push %rdi
	push %rsi
	push %rdx
	push %rcx
	push %r8
	push %r9
	push %r10
	mov %r11d, %edi
	lea 64(%rsp), %rsi
	call lt_on_entry
	pop %r10
	pop %r9
	pop %r8
	pop %rcx
	pop %rdx
	pop %rsi
	pop %rdi
	pop %rax
	ret
	.size lt_entry, .-lt_entry

	.globl lt_return
	.hidden lt_return
	.type lt_return,@function
	.p2align 4
lt_return:
	/* rax:rdx may hold the return value (xmm0/xmm1 and st0 are never
	 * touched: the agent is built with -mgeneral-regs-only). */
	push %rax
	push %rdx
	lea 16(%rsp), %rdi
	call lt_on_exit
	test %rax, %rax
	jz 2f
	mov %rax, %r11
	pop %rdx
	pop %rax
	jmp *%r11
2:
	/* No shadow entry for this return slot: there is no correct
	 * continuation. Cannot happen unless the agent's memory is corrupted. */
	ud2
	.size lt_return, .-lt_return

	.globl lt_restorer
	.hidden lt_restorer
	.type lt_restorer,@function
	.p2align 4
lt_restorer:
	mov $15, %eax			/* SYS_rt_sigreturn */
	syscall
	ud2
	.size lt_restorer, .-lt_restorer

	.section .note.GNU-stack,"",@progbits
