/* workload.h: the traced functions of the agent test harness. */
#include <setjmp.h>

enum {
	F_LEAF,
	F_FIB,
	F_DEEP,
	F_JUMP,
	F_FORKER,
	F_TAILER,
	F_TAILEE,
	F_EMPTY,
	F_ARGS,
	F_HOLD,
	F_CO_RUN,
	F_CO_RESUME,
	F_CO_BODY,
	F_CO_YIELD,
	F_CAP_INTS,
	F_CAP_STR,
	F_HELD_OUTER,
	F_HELD_LEAF,
	NFUNCS
};

extern __thread unsigned long counts[NFUNCS];

void w_leaf(void);
int w_fib(int n);
long w_deep(int n);
void w_jump(jmp_buf *jb, int n);
int w_forker(void);
int w_tailer(int x);
int w_tailee(int x);
void w_empty(void);
long w_args(long a, long b, long c, long d, long e, long f, double x, double y);
long w_cap_ints(long a, long b);
long w_cap_str(const char *s);
long w_held_outer(const char *s, long n);
long w_held_leaf(long n);
long w_hold(volatile int *release, int n);
long w_co_run(int n, int on_frame);
void w_co_body(int n);

/* The contexts w_co_body and w_co_yield switch between. */
#include <ucontext.h>
extern __thread ucontext_t co_main, co_ctx;

/* w_longjmp is how w_jump calls longjmp: a GOT slot of our own, which the
 * test points at the agent's longjmp hook as the tracer does a real one. */
extern void (*w_longjmp)(struct __jmp_buf_tag *, int);

struct wfunc {
	const char *name;
	void *addr;
};
extern const struct wfunc wfuncs[];
