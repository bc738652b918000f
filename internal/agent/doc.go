// Package agent holds the livetrace agent: a freestanding blob of C and
// assembly (csrc/) that the tracer maps into the target process, its
// generated memory layout (layout_generated.go, agent.bin), and the Go side
// of the protocol: stub encoding, shared-memory formatting, the record
// [Consumer], and decoders for the agent's private state.
//
// # Memory layout
//
// The tracer reserves one contiguous region at a page-aligned base B
// ([RegionSize] bytes) and maps, at fixed offsets from B ([AddrsAt]):
//
//   - [0, CodeSize): the code, private anonymous R+X: copy [Blob] to B
//     through /proc/PID/mem (the rest of the region stays zero). It is
//     never writable in the target, nor made executable by mprotect,
//     which MemoryDenyWriteExecute and PR_SET_MDWE refuse.
//   - [CtlOff, +CtlSize): the control area, private anonymous. Its first
//     page (up to CtlOwnerOff) is madvise(MADV_WIPEONFORK): it holds
//     enabled and graph ([Ctl]), which read as zero in a forked child,
//     which therefore records nothing. The next page, which a child keeps
//     (so that restore finds the agent of a child forked after its tracer
//     died), holds at [Addrs.Owner] the owner record ([Owner]): the
//     tracer's pid and start time, the regions it mapped and the GOT slots
//     it hooked, so that a later tracer can undo an agent whose tracer
//     died, and a lease (a TSC deadline the tracer renews). When an event
//     finds no free chunk and the lease has expired, the agent clears
//     enabled itself: an orphaned agent costs a traced call about what a
//     disabled one does, within a second of its tracer's death.
//   - [PrivOff, +PrivSize): private anonymous (MAP_NORESERVE advised),
//     NOT wipe-on-fork: the saved SIGTRAP action, the code table
//     ([CodeTable]), the thread table (MaxThreads slots) and the shadow
//     stacks (ShadowDepth entries each).
//     A forked child keeps a copy, so hijacked frames it inherits still
//     return. Only touched pages cost memory.
//   - [SharedOff, +SharedSize(cfg)): a memfd created in the target, mapped
//     MAP_SHARED both there and in the tracer; close the target's fd once
//     mapped. The tracer formats it with [InitShared] BEFORE the agent can
//     run (before any site is patched and before enabled is set).
//
// The code reaches the three data regions RIP-relatively, so they must be
// at exactly these offsets. The generator refuses any relocation.
//
// Deviation from the brief: the saved SIGTRAP action lives in the private
// region, not in the control page, because a forked child keeps
// lt_sigtrap installed and must chain to the application's handler too;
// a wiped copy would turn its SIGTRAPs into SIG_DFL.
//
// # Entry path
//
// Each site gets a 16-byte stub ([StubCode]): `mov $idx,%r11d; jmp
// lt_entry`, or `jmp springboard` when lt_entry is out of rel32 reach, the
// springboard ([Springboard]) being an absolute jmp placed near the stubs.
// The site's NOP5 becomes `call stub`. Site index idx is the index of the
// site in the site table, below [MaxSites]: sorted by address up to the
// sites of the attach, then the sites added while attached ([AppendSites]).
//
// A function without a NOP (a relocating site, package reloc) gets a
// relocation stub too, placed by the tracer after the slots: `call slot;
// the displaced first instructions, relocated; jmp back`, and its first
// instructions become `jmp relocation stub`. lt_entry then sees the same
// stack as from a NOP site: [rsp] the address to return to (in the
// relocation stub), [rsp+8] the function's return address. The caller
// delta in the records is measured from the relocation stub.
//
// lt_entry returns at once when enabled is 0 (about 3 ns). Otherwise an
// assembly fast path (agent.S) handles the common case: the thread's slot
// is at its first probe, busy is 0, its chunk has room for a record that
// does not fill it, and in graph mode the return address is not lt_return,
// the shadow stack has room and its top frame is not stale. It saves only
// the registers it clobbers (rax, rdx, rcx, rsi, rdi; r8 and r9 too in
// graph mode; r11 is free at a function entry), sets busy, reads the
// clock and appends the record with plain stores, as agent.c would. Any
// other case (a new thread, a full chunk, a tail call, stale frames,
// overflow, re-entry) goes to the C path lt_on_entry before the fast path
// has changed any state, after also saving r8, r9 and r10 (static chain);
// rax is the varargs vector count. lt_return has the same split: its fast
// path handles a return whose frame is the top shadow entry. The agent is
// built with -mgeneral-regs-only: no xmm or x87 state is touched. Status flags are
// NOT preserved: the SysV ABI gives them no role at a function entry (DF
// must be clear, and the agent never changes it), so no compiled function
// reads them before setting them. pushfq/popfq measured 5-6 ns per pair
// here, 20-25% of the whole traced call, for no correct program's benefit.
//
// # Keeping every register
//
// That reasoning holds for NOP sites only. gcc's -fipa-ra (on at -O2)
// lets a caller keep values in call-clobbered registers, and the flags,
// across a call to a function of its own unit that it knows does not touch
// them; gcc turns it off for functions built with -pg or
// -fpatchable-function-entry, and clang has no such optimization by
// default, but a stock gcc build traced by relocation has no such
// guarantee. Its relocation stub is then a keep stub (the tracer decides
// per module, internal/session/keepregs.go): `pushfq; push rax, rcx, rdx,
// rsi, rdi, r8, r9, r10, r11; push a copy of the return address; call
// slot; pop the copy into the return slot; pop them; popfq; relocated
// instructions; jmp back`, and its slot loads idx with [Keep]. In entry
// mode lt_entry's fast paths see the stack of a NOP site's CALL. In graph
// mode lt_entry sends such a site to lt_on_entry with the real return slot
// [KeepSave] bytes above the copy, copies the slot's new value into the
// copy, and a frame hijacked in graph mode returns through
// lt_return_keep instead of lt_return (the shadow entry's
// LT_SHADOW_KEEP), which saves and restores every register and the
// flags around lt_on_exit and leaves through the original return address
// stored below sp, in the red zone. Every check of a slot for "our"
// address compares with the entry's own trampoline (lt_tramp).
//
// Records are 16 bytes ([Record], [DecodeRecord]): u64 rdtsc, u64 meta
// with kind in bits 63..62, depth mod 256 in 61..54, site index in 53..32
// and, for entries, int32(caller return address - site address) in 31..0,
// or [CallerUnknown]. Each thread appends to its own chunk with no atomics;
// a full chunk is published (release store of FULL after a seq from a
// global counter) and the next event takes a FREE chunk by CAS, probing at
// most ChunkRounds times ChunkProbes chunks from a shared hint. No free chunk: the event is
// dropped and counted in the thread's next chunk header (lost) and in the
// shared Lost counter ([Counters]); exits keep working.
//
// Threads are identified by their thread pointer (%fs:0; the target must
// have one, as every libc program does). A new thread claims a slot in the
// open-addressing table by CAS (at most MaxProbes probes) with all signals
// blocked, and calls gettid once. A full table drops the event (TableFull).
// A signal handler that interrupts the agent and calls a traced function
// is not traced (Reentered) -- the only way to keep the per-thread state
// consistent without atomics. The fast paths keep this protocol: they
// store busy (two plain stores to a line they write anyway) before they
// read any per-thread state, and a handler that ran before that store has
// finished and left busy 0. Busy also tells the tracer that a thread was
// interrupted inside the agent (detach keeps the code mapped then), so it
// is set on every path, not only the slow one.
//
// Page faults: a first-touched page of the shared memfd costs a fault per
// 4 KiB (256 records), measured at 1-2.5 us here, more than the whole
// traced call. Every page is therefore allocated before the agent is
// enabled (by [InitShared], which zeroes the whole region, or by the
// tracer's fallocate of a fresh memfd, [Config.Zeroed]), and the agent
// reads one byte of every page of a chunk
// when it takes it: the first read fault maps the pages around it that
// are present (fault-around, 64 KiB) writable, as shmem needs no write
// notification. No syscall is involved. A tracer that maps the memfd with
// MAP_POPULATE in the target avoids even those faults.
//
// # Graph mode
//
// With graph set, an entry pushes {original return address, its stack
// slot, site} on the thread's shadow stack and overwrites the slot with
// lt_return. The depth recorded for a frame is the index of its entry, and
// its exit record carries the same depth.
//
// Only a return address in the code table (the process's modules, written
// by the tracer, [CodeTable]) is hijacked. A call from anywhere else comes
// from JIT-compiled code, whose runtime may read the return address back
// (HotSpot takes the pc of a Java frame from it): it is not recorded, and
// counted in the shared header's jit_calls. Each thread slot keeps the two
// ranges of the table it found last, valid for one generation of the
// table; the fast paths compare those (CODE_KNOWN in agent.S), C searches
// the table (lt_code_known).
//
// One shadow stack per thread holds the frames of every stack the thread
// runs on (its own, a sigaltstack, ucontext and coroutine stacks), in the
// order they were entered. A frame that ends without returning through
// lt_return leaves a stale entry; dropping a live entry instead would send
// its return to lt_return with no entry (ud2), so the agent ends an entry
// only when it can tell the frame is gone:
//
//   - longjmp, _longjmp, siglongjmp and __longjmp_chk are hooked ([Hook],
//     like the unwinder below): the hook ends every entry whose slot lies
//     between its own stack pointer and the one saved in the jmp_buf (glibc
//     layout, pointer-guard mangled), without exit records; a slot that
//     still holds lt_return gets its original address back first, so a
//     misread jmp_buf costs exit records, never a crash.
//   - At an entry at slot n, the entries on top whose slot is at or below n
//     and within [StackWindow] are examined, newest first: an entry is
//     ended when its slot is n itself, lies in the agent's own frame, no
//     longer holds lt_return (read through the futex probe below), or was
//     given back to an exception (it gets its exit record then). An entry whose slot still holds lt_return is
//     kept: on an address basis alone, a frame left by a longjmp that was
//     not hooked cannot be told from a live frame of a stack the thread
//     switched away from, such as the caller of swapcontext when the new
//     context's stack is an array in a frame above it.
//   - At a return (lt_return), the frame's entry is the newest one whose
//     slot is the returning frame's (sp-8); the entries above it whose slots
//     lie below that slot are examined the same way, and those above it are
//     kept (frames of another stack).
//   - An entry ended below others becomes a hole (slot 0) and the others
//     keep their index; holes on top are trimmed. The entry fast path
//     leaves a hole on top to the C path.
//   - Every read of an entry's slot goes through the futex probe (about
//     0.6 us; the fast paths never need one), so that a stale entry on a
//     stack unmapped since (a coroutine freed while suspended) cannot
//     fault. The throw and longjmp paths load the slot when futex cannot
//     tell (refused by seccomp); the others then keep the entry.
//
// Consequently:
//
//   - A frame that finds the shadow stack full is not hijacked and has
//     neither an entry nor an exit record (Overflow counts it).
//   - Frames abandoned by longjmp have an entry and no exit; the consumer
//     sees the next record of that thread at a smaller depth. Without the
//     hook (a static libc, __builtin_longjmp, a jump down to another stack)
//     such frames stay on the shadow stack, and the depth of later calls
//     includes them, until their slots are overwritten.
//   - With several stacks (ucontext, coroutines, handlers on a
//     sigaltstack) every frame gets its exit record, at the depth of its
//     entry, but the calls of the stacks interleave: they do not nest.
//   - A sibling (tail) call from a hijacked frame finds lt_return as its
//     return address: the agent records the exit of the caller and the
//     entry of the callee at the same depth, and the callee inherits the
//     shadow entry.
//   - C++ exceptions: see "Unwinder hooks" below.
//
// lt_return (reached by the traced function's ret) keeps rax and rdx, finds
// the frame's entry as above (the fast path only looks at the top entry
// and leaves anything else to lt_on_exit), records the exit when enabled,
// and jumps to the original address. It works with enabled 0 and in a
// forked child. If no entry matches it executes ud2: this cannot happen
// unless the agent's memory was corrupted or the tracer removed a frame
// still in use.
//
// # Unwinder hooks
//
// The unwinder finds no unwind information for lt_return, so an exception
// unwinding through a hijacked frame would end in std::terminate. In graph
// mode the tracer therefore points the GOT slots through which the C++
// runtime calls _Unwind_RaiseException (__cxa_throw,
// std::rethrow_exception) and _Unwind_Resume_or_Rethrow (__cxa_rethrow) at
// lt_hook_raise ([Addrs.HookRaise]) and lt_hook_resume_or_rethrow
// ([Addrs.HookResumeOrRethrow]), and those of __cxa_begin_catch (every
// catch calls it) at lt_hook_begin_catch, after writing the real
// functions' addresses into the private region ([Addrs.Hooks]: a forked
// child keeps the hooked GOT and must reach them; a hook whose real
// address is 0 executes ud2). A hook keeps every argument register and
// the stack as it found them.
//
// At a throw, the hook walks the calling thread's shadow stack: every
// entry whose slot still holds lt_return gets its original return address
// back, except slots less than StackWindow below the hook's own stack
// pointer (frames the unwinder does not walk), and is marked restored
// (counted in [SharedHdrUnwoundOff]). The entries stay. The thread notes
// the lowest stack pointer of a throw and one more exception in flight.
// At the catch, the stack pointer of the handler's frame is known: the
// restored entries whose slots lie between the lowest throw and it are the
// frames the exception left; they get their exit records, stamped with the
// time of the catch, and are ended. When no other exception is in flight on the
// thread (a destructor may throw and catch during an unwind, while the
// outer exception's unwinder still has frames to walk), the restored
// frames that still hold their original return address are hijacked
// again, in graph mode only: the frames from the handler up to main keep
// their exits, and later calls their depth. (A frame that returns while
// another exception is in flight, such as one that threw and caught inside
// a destructor, returns directly: its exit is recorded late, when a later
// event ends its entry.) A catch that the hook does not
// see (a module whose GOT was not hooked) leaves the frames restored: they
// lose their exits, nothing else. _Unwind_Resume needs no hook: no frame
// is hijacked again while an exception is in flight, and hijacking happens
// at entry, below the landing pad. The hooks work with enabled 0 and in a
// forked child. A thread that a signal handler interrupted inside the
// agent and that throws from the handler gets its return addresses back
// but keeps its entries unmarked; later events end them. At detach the
// tracer puts the GOT slots back while every thread is stopped, before
// the agent is unmapped.
//
// # Detaching in graph mode
//
// The tracer must, in this order:
//
//  1. Clear enabled and graph (write [Ctl]{} at [Addrs.Ctl]).
//  2. Stop every thread. For any thread whose rip is inside the agent
//     ([Addrs.Base], +CodeSize) or in the stubs, single-step it until it
//     is out (lt_entry and lt_return both leave within a bounded number of
//     instructions, syscalls excepted in the claim path).
//  3. For every slot i whose key is in use ([DecodeThreadSlot] on the
//     SizeofThread bytes at [Addrs.ThreadSlotAddr]), read Frames() entries
//     at [Addrs.ShadowStackAddr] ([DecodeShadowStack]) and walk them newest
//     to oldest: if the 8 bytes at entry.Slot still hold [Addrs.Return],
//     write entry.Orig there; otherwise skip it (already returned, or
//     stale). A thread stopped inside lt_return after its ret (step 2
//     prevents this) would lose its frame.
//  4. Only then unpatch, remove the handler, and unmap the agent.
//
// Forked children that inherited hijacked frames keep the agent mapped
// (the tracer does not unmap it in them) so they stay correct.
//
// # Threads that exit
//
// At PTRACE_EVENT_EXIT of a thread, find its slot: the key is its thread
// pointer, which glibc and musl keep at %fs:0, i.e. the fs_base register;
// probe MaxProbes slots from [ThreadHash](fs_base), or scan the table for
// the key or the tid. Hand its OWNED chunk to
// [Consumer.RetireChunk] (its ThreadSlot.Chunk), then write [RetiredKey]
// at ThreadSlotAddr(i)+ThreadKeyOff through /proc/PID/mem. A retired slot
// is reused by a later thread, which reinitializes it; it never breaks
// another thread's probe chain (unlike an empty key). Retiring is
// required, not an optimization: glibc reuses cached thread stacks, so the
// next thread commonly gets the same thread pointer and would inherit an
// unretired slot, recording under the dead thread's tid (TestHarnessRetire
// shows it).
//
// # SIGTRAP backstop
//
// Install lt_sigtrap with one rt_sigaction(SIGTRAP, act, oldact) where
// act is [Addrs.SigtrapAction] and oldact points at [Addrs.OldSigtrap]. On
// a SIGTRAP whose rip-1 is a site of the shared site table it emulates the
// site's CALL (push site+5, rip = target), or for a relocated region
// ([Site].Region, a function without a NOP whose first instructions moved
// into a stub) its jmp (rip = target: the stub runs the displaced
// instructions). Any other SIGTRAP goes to the
// saved action: SIG_IGN ignores it, a handler is called (with siginfo and
// ucontext if it had SA_SIGINFO; its sa_mask and SA_RESETHAND are not
// emulated), and SIG_DFL restores the default action and re-raises the
// signal with tgkill, so it kills the process once the handler returns,
// as it would have without the agent. (An int3 leaves rip after itself, so
// returning alone would not re-execute it.) Keep the stubs and the site
// table intact until no INT3 can be left in the text. Counters().Traps
// counts the emulations.
//
// # Remote syscalls that survive the tracer
//
// lt_remote ([Addrs.Remote]) is `syscall; int3`. Once the backstop is
// installed, the tracer runs its remote syscalls there, and before each one
// writes into struct lt_remote_save ([Addrs.RemoteSave]) the registers the
// borrowed thread must get back, then its tid. If the tracer dies while the
// thread is in the call, the kernel lets the thread go, it executes the
// int3, and lt_sigtrap, seeing rip just past lt_remote's int3 and its own
// tid in the save area, copies the registers into the signal frame: the
// thread returns from the handler exactly where the tracer found it. The
// tracer clears the tid when it gives the thread back normally.
//
// # Captured values and filters
//
// A site with a spec ([Site.Spec]) has a stub that sets [Capture] in the
// site index ([StubIndex]), which the fast paths of lt_entry and lt_return
// test first. Argument bits make lt_on_entry write the event, a DATA
// record and the payload as one group in one chunk ([DataRecord];
// docs/FORMAT.md documents the payload); SpecRet makes lt_on_exit do the
// same with rax or xmm0. A spec of integer arguments only (a return value
// allowed) also puts its argument bits and [StubRet] in the stub's index,
// and the assembly fast paths (.Le_cap, .Lg_cap) write its entry group
// without reading the site table. Strings are copied by the kernel
// (process_vm_readv on the thread itself), except those in the pages the
// agent's own call touched on the thread's stack, which are read with
// plain loads (docs/DESIGN-NOTES.md, "Reading strings").
//
// # Filters
//
// record -G and --caller need graph mode and give every site a spec.
// -G: a SpecTrigger site is always recorded, and its shadow entry, and
// every one pushed above it, has LT_SHADOW_UNDER; a SpecUnder site whose
// caller's entry (the top of the shadow stack) does not have it is
// neither recorded nor hijacked. --caller: a SpecDefer site is hijacked
// but its entry record is held back (LT_SHADOW_PENDING, with its time and
// caller in lt_priv.pend, and its values, read at the call, on the
// thread's stack of held values, lt_priv.held); a SpecCaller site first
// emits the held-back entries below it, oldest first, each with its
// values. A frame whose entry was never emitted
// gets no exit either. Events are decided in the agent, so that the
// calls not kept cost no buffer space.
//
// # Building
//
// agent.bin and layout_generated.go are committed; `go build` needs no C
// compiler. `go generate ./internal/agent` rebuilds them with clang-16
// ($LIVETRACE_CLANG) and ld ($LIVETRACE_LD) and pinned flags, reading all
// struct offsets and constants from the agent's DWARF; TestBlobUpToDate
// fails when they are stale.
package agent

//go:generate go run ./gen -src csrc -out .
