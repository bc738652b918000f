/*
 * ltfixture.h: helpers shared by the livetrace test fixtures.
 *
 * LT_KEEP marks a function that must survive -O2 as its own symbol with its
 * own patchable site: never inlined, never cloned (gcc's .constprop/.isra
 * clones would take the calls away from the named symbol), never folded
 * with an identical function, and kept even when unused.
 * LT_OPAQUE(x) hides the value of x from the optimizer, so that recursion is
 * not turned into a loop and results are not computed at compile time.
 */
#ifndef LTFIXTURE_H
#define LTFIXTURE_H

#if defined(__clang__)
#define LT_KEEP __attribute__((noinline, used))
#else
#define LT_KEEP __attribute__((noipa, used))
#endif

#define LT_OPAQUE(x) __asm__ volatile("" : "+r"(x))

#endif
