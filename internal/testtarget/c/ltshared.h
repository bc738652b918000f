/*
 * ltshared.h: the interface of libltshared.so (ltshared.c), the shared
 * library fixture that the workload program is linked with.
 */
#ifndef LTSHARED_H
#define LTSHARED_H

long lib_add(long a, long b);
long lib_mul(long a, long b);
long lib_recurse(long depth);

/* lt_lib_add_calls counts the calls of lib_add (ground truth). */
extern unsigned long lt_lib_add_calls;

#endif
