// hostile: a target that attacks its tracer, for the security tests of
// internal/session (hostile_test.go). It runs as an unprivileged user
// while livetrace runs as root. Built with -pthread and site flags.
//
// Arguments, any of:
//   swap=PATH     open PATH with O_PATH (no permission on the file is
//                 needed for that) and, from watcher threads, dup2 that fd
//                 over livetrace's memfd as soon as it shows up in
//                 /proc/self/fd: a tracer that reopens the memfd by path
//                 opens PATH instead, as root. By default the swap waits
//                 until the memfd is mapped (the moment a tracer that
//                 reopens it by path does so); see "early".
//   grab          from watcher threads, dup livetrace's memfd as soon as it
//                 shows up, and keep the copy for "truncate".
//   seccomp=LIST  before "ready", install a seccomp filter that refuses the
//                 syscalls in LIST (comma-separated names from the table
//                 below) with EPERM; a name with the suffix ":kill" kills
//                 the process instead, and "name@N" refuses the call only
//                 when its first argument is N.
//   ctl=FIFO      no watcher threads: a control thread reads commands from
//                 FIFO instead and acts on them at once, for a test that
//                 runs them at a chosen moment of the tracer's work (the
//                 main thread may be borrowed by the tracer then):
//                   swap N  dup2 the O_PATH fd of swap=PATH over fd N;
//                   fake N  put a memfd of its own, named livetrace and
//                           of the size of fd N, at fd N;
//                   grab N  keep a copy of fd N, as "grab" does;
//                   map A   map a page at address A (hex) if it is free
//                           (MAP_FIXED_NOREPLACE): take a range the
//                           tracer chose before it maps it;
//                   unmap A unmap the page at address A (hex);
//                 each answers "ctl N R" on stdout, R the result (0 or
//                 an errno; N is 0 for map and unmap).
//   strict        start a thread that enters seccomp strict mode and
//                 blocks in read (strict mode allows only read, write,
//                 exit and sigreturn: any other call kills the process).
//   mdwe          prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN): no
//                 mapping may be writable and executable, or become
//                 executable (Linux 6.3).
//   wx            the seccomp filter of systemd's MemoryDenyWriteExecute
//                 (EPERM): mmap with PROT_WRITE|PROT_EXEC, mprotect and
//                 pkey_mprotect with PROT_EXEC, shmat with SHM_EXEC.
//
// Then it prints "ready" (with the fd numbers it watches) and a worker
// thread calls the traced functions (hot_*) in a loop. Commands on stdin,
// one per line:
//   run N         call hot_* N times on the main thread; print "done SUM".
//   grabbed       print "grabbed FD" for the memfd copy, or "grabbed -1".
//   swapped       print "swapped N", the number of dup2s that took place.
//   early, late   swap as soon as the memfd shows up, or once it is mapped
//                 (the default); print "ok".
//   truncate      ftruncate the grabbed memfd to 0 and then to 1 page;
//                 print "truncate R0 E0 R1 E1" (results and errnos).
//   trap          install its own SIGTRAP handler; print "trap installed".
//   raise         raise(SIGTRAP); print "raised N" with N the number of
//                 times its handler ran (a default SIGTRAP kills it).
// EOF on stdin: exit 0.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/select.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))

static volatile uint64_t sink;

NOINLINE uint64_t hot_leaf(uint64_t x) { return x * 2654435761u + 1; }
NOINLINE uint64_t hot_mid(uint64_t x) { return hot_leaf(x) ^ hot_leaf(x + 1); }
NOINLINE uint64_t hot_top(uint64_t x) { return hot_mid(x) + hot_leaf(x >> 1); }

static void *worker(void *arg) {
	(void)arg;
	for (uint64_t i = 0;; i++) {
		sink += hot_top(i);
		if ((i & 1023) == 0)
			usleep(100);
	}
	return NULL;
}

// Watched fd numbers: the lowest free ones when the program is ready, where
// a memfd made by the tracer's remote memfd_create lands.
#define NWATCH 4
static int watch[NWATCH];
static int opath = -1;
static int do_grab;
static volatile int grabbed = -1;
static volatile int swapped;
static volatile int early;

// memfd_mapped reports whether /proc/self/maps shows livetrace's memfd.
static int memfd_mapped(void) {
	static __thread char buf[1 << 16];
	int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	ssize_t n, len = 0;
	while (len < (ssize_t)sizeof buf - 1 && (n = read(fd, buf + len, sizeof buf - 1 - len)) > 0)
		len += n;
	close(fd);
	buf[len] = 0;
	return strstr(buf, "/memfd:livetrace") != NULL;
}

static int is_memfd(int fd) {
	char path[64], link[256];
	snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
	ssize_t n = readlink(path, link, sizeof link - 1);
	if (n <= 0)
		return 0;
	link[n] = 0;
	return strncmp(link, "/memfd:livetrace", 16) == 0;
}

// in_mmap reports whether the main thread (the one a tracer borrows for
// its remote syscalls: it sits in read) is in mmap of fd.
static int in_mmap(int fd) {
	char buf[256];
	snprintf(buf, sizeof buf, "/proc/self/task/%d/syscall", (int)getpid());
	int f = open(buf, O_RDONLY | O_CLOEXEC);
	if (f < 0)
		return 0;
	ssize_t n = read(f, buf, sizeof buf - 1);
	close(f);
	if (n <= 0)
		return 0;
	buf[n] = 0;
	unsigned long nr, a[6];
	if (sscanf(buf, "%lu %lx %lx %lx %lx %lx %lx", &nr, &a[0], &a[1], &a[2], &a[3], &a[4], &a[5]) != 7)
		return 0;
	return nr == SYS_mmap && a[4] == (unsigned long)fd;
}

// wait_mapped waits until the target has mapped the memfd at fd: the
// tracer's remote mmap of it has been seen in the main thread and is
// over, or (a few milliseconds at most) /proc/self/maps shows it.
static void wait_mapped(int fd) {
	int k;
	for (k = 0; k < 20000 && !in_mmap(fd); k++)
		if ((k & 15) == 0 && !is_memfd(fd))
			return; // gone: the tracer is done with it
	if (k < 20000) {
		while (in_mmap(fd))
			;
		return;
	}
	for (k = 0; k < 2000 && is_memfd(fd) && !memfd_mapped(); k++)
		;
}

static void *watcher(void *arg) {
	(void)arg;
	for (;;) {
		for (int i = 0; i < NWATCH; i++) {
			int fd = watch[i];
			if (!is_memfd(fd))
				continue;
			if (do_grab && grabbed < 0) {
				int g = fcntl(fd, F_DUPFD_CLOEXEC, 100);
				if (g >= 0 && __sync_bool_compare_and_swap(&grabbed, -1, g) == 0)
					close(g);
			}
			if (opath < 0)
				continue;
			if (!early)
				wait_mapped(fd);
			// Only over the memfd: a dup2 onto a closed number would
			// take it, and the next memfd would land elsewhere.
			if (is_memfd(fd) && dup2(opath, fd) == fd)
				__sync_fetch_and_add(&swapped, 1);
		}
	}
	return NULL;
}

static int strict_pipe[2];
static void *strict_thread(void *arg) {
	(void)arg;
	char c;
	if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT, 0, 0, 0) != 0)
		_exit(3);
	for (;;)
		if (read(strict_pipe[0], &c, 1) <= 0)
			syscall(SYS_exit, 0);
}

static FILE *ctl;
static void *ctl_thread(void *arg) {
	(void)arg;
	char line[128];
	int fd;
	unsigned long addr;
	for (;;) {
		/* Wait in select(2), not in read(2): livetrace prefers to
		 * borrow a thread idle in a restartable call like read for
		 * its remote syscalls, and this one must stay free to answer
		 * while the tracer injects. */
		fd_set in;
		FD_ZERO(&in);
		FD_SET(fileno(ctl), &in);
		if (select(fileno(ctl) + 1, &in, NULL, NULL, NULL) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (!fgets(line, sizeof line, ctl))
			break;
		int r = 0;
		if (sscanf(line, "swap %d", &fd) == 1) {
			if (dup2(opath, fd) != fd)
				r = errno;
		} else if (sscanf(line, "grab %d", &fd) == 1) {
			int g = fcntl(fd, F_DUPFD_CLOEXEC, 100);
			if (g < 0)
				r = errno;
			else
				grabbed = g;
		} else if (sscanf(line, "map %lx", &addr) == 1) {
			fd = 0;
			void *p = mmap((void *)addr, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
			if (p == MAP_FAILED)
				r = errno;
			else if ((unsigned long)p != addr)
				r = -2;
		} else if (sscanf(line, "unmap %lx", &addr) == 1) {
			fd = 0;
			if (munmap((void *)addr, 4096) != 0)
				r = errno;
		} else if (sscanf(line, "fake %d", &fd) == 1) {
			struct stat st;
			int m = syscall(SYS_memfd_create, "livetrace", MFD_CLOEXEC | MFD_ALLOW_SEALING);
			if (fstat(fd, &st) != 0 || m < 0 || ftruncate(m, st.st_size) != 0 || dup2(m, fd) != fd)
				r = errno;
			if (m >= 0)
				close(m);
		} else {
			r = -1;
		}
		printf("ctl %d %d\n", fd, r);
	}
	return NULL;
}

static volatile int traps;
static void on_trap(int sig) {
	(void)sig;
	traps++;
}

static const struct {
	const char *name;
	int nr;
} sysnames[] = {
    {"membarrier", SYS_membarrier},
    {"memfd_create", SYS_memfd_create},
    {"process_vm_readv", SYS_process_vm_readv},
    {"process_vm_writev", SYS_process_vm_writev},
    {"mmap", SYS_mmap},
    {"mprotect", SYS_mprotect},
    {"munmap", SYS_munmap},
    {"ftruncate", SYS_ftruncate},
    {"rt_sigaction", SYS_rt_sigaction},
    {"madvise", SYS_madvise},
    {"gettid", SYS_gettid},
};

// install_seccomp refuses each syscall of list with EPERM (or kills the
// process, with ":kill"), and allows everything else.
static void install_seccomp(char *list) {
	struct sock_filter prog[64];
	int n = 0;
	prog[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch));
	prog[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0);
	prog[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
	prog[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
	for (char *tok = strtok(list, ","); tok && n < 60; tok = strtok(NULL, ",")) {
		unsigned ret = SECCOMP_RET_ERRNO | EPERM;
		char *colon = strchr(tok, ':');
		if (colon) {
			*colon = 0;
			if (strcmp(colon + 1, "kill") == 0)
				ret = SECCOMP_RET_KILL_PROCESS;
		}
		long arg = -1;
		char *at = strchr(tok, '@');
		if (at) {
			*at = 0;
			arg = strtol(at + 1, NULL, 0);
		}
		int nr = -1;
		for (size_t i = 0; i < sizeof sysnames / sizeof sysnames[0]; i++)
			if (strcmp(sysnames[i].name, tok) == 0)
				nr = sysnames[i].nr;
		if (nr < 0) {
			fprintf(stderr, "hostile: unknown syscall %s\n", tok);
			exit(2);
		}
		if (arg < 0) {
			prog[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nr, 0, 1);
			prog[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, ret);
			continue;
		}
		// nr and the low word of args[0]; A is reloaded with nr after.
		prog[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nr, 0, 4);
		prog[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0]));
		prog[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)arg, 0, 1);
		prog[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, ret);
		prog[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
	}
	prog[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
	struct sock_fprog fprog = {.len = (unsigned short)n, .filter = prog};
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
	    syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &fprog) != 0) {
		perror("hostile: seccomp");
		exit(2);
	}
}

// install_wx installs the filter systemd installs for
// MemoryDenyWriteExecute=yes (src/shared/seccomp-util.c,
// seccomp_memory_deny_write_execute): EPERM for an mmap that asks for
// write and execute at once, for an mprotect or pkey_mprotect that asks for
// execute, and for shmat with SHM_EXEC.
static void install_wx(void) {
	struct sock_filter prog[] = {
	    /*  0 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
	    /*  1 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
	    /*  2 */ BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	    /*  3 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
	    /*  4 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_mmap, 0, 3),
	    /*  5 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[2])),
	    /*  6 */ BPF_STMT(BPF_ALU | BPF_AND | BPF_K, PROT_WRITE | PROT_EXEC),
	    /*  7 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, PROT_WRITE | PROT_EXEC, 8, 9),
	    /*  8 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_mprotect, 1, 0),
	    /*  9 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_pkey_mprotect, 0, 2),
	    /* 10 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[2])),
	    /* 11 */ BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, PROT_EXEC, 4, 5),
	    /* 12 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_shmat, 0, 4),
	    /* 13 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[2])),
	    /* 14 */ BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, SHM_EXEC, 1, 0),
	    /* 15 */ BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	    /* 16 */ BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
	    /* 17 */ BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog fprog = {.len = sizeof prog / sizeof prog[0], .filter = prog};
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
	    syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &fprog) != 0) {
		perror("hostile: seccomp wx");
		exit(2);
	}
	// Check it as systemd's own test would: an mprotect to PROT_EXEC
	// and a writable executable mapping are refused, a read-only
	// executable one is not.
	void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	void *q = mmap(NULL, 4096, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	void *x = mmap(NULL, 4096, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED || mprotect(p, 4096, PROT_READ | PROT_EXEC) == 0 || q != MAP_FAILED || x == MAP_FAILED) {
		fprintf(stderr, "hostile: the wx filter does not do what it should\n");
		exit(2);
	}
	munmap(p, 4096);
	munmap(x, 4096);
}

int main(int argc, char **argv) {
	setvbuf(stdout, NULL, _IOLBF, 0);
	char *filter = NULL;
	int strict = 0;
	for (int i = 1; i < argc; i++) {
		if (strncmp(argv[i], "swap=", 5) == 0) {
			opath = open(argv[i] + 5, O_PATH | O_CLOEXEC);
			if (opath < 0) {
				perror("hostile: open O_PATH");
				return 2;
			}
		} else if (strncmp(argv[i], "ctl=", 4) == 0) {
			ctl = fopen(argv[i] + 4, "r+");
			if (!ctl) {
				perror("hostile: open ctl");
				return 2;
			}
			// A static buffer: the control thread must not malloc (a
			// new arena would change the mappings tests compare).
			static char ctlbuf[4096];
			setvbuf(ctl, ctlbuf, _IOLBF, sizeof ctlbuf);
		} else if (strcmp(argv[i], "strict") == 0) {
			strict = 1;
		} else if (strcmp(argv[i], "grab") == 0) {
			do_grab = 1;
		} else if (strcmp(argv[i], "mdwe") == 0) {
			if (prctl(65 /* PR_SET_MDWE */, 1 /* PR_MDWE_REFUSE_EXEC_GAIN */, 0, 0, 0) != 0) {
				perror("hostile: prctl(PR_SET_MDWE)");
				return 2;
			}
		} else if (strcmp(argv[i], "wx") == 0) {
			install_wx();
		} else if (strncmp(argv[i], "seccomp=", 8) == 0) {
			filter = argv[i] + 8;
		} else {
			fprintf(stderr, "hostile: bad argument %s\n", argv[i]);
			return 2;
		}
	}
	// Before the threads, which inherit it.
	if (filter)
		install_seccomp(filter);
	pthread_t t;
	if (pthread_create(&t, NULL, worker, NULL) != 0)
		return 2;
	if (strict && (pipe(strict_pipe) != 0 || pthread_create(&t, NULL, strict_thread, NULL) != 0))
		return 2;
	if (ctl && pthread_create(&t, NULL, ctl_thread, NULL) != 0)
		return 2;
	if ((opath >= 0 || do_grab) && !ctl) {
		// The lowest free fd numbers, after the threads are made.
		int held[NWATCH];
		for (int i = 0; i < NWATCH; i++)
			held[i] = watch[i] = dup(0);
		for (int i = 0; i < NWATCH; i++)
			close(held[i]);
		for (int i = 0; i < 2; i++)
			if (pthread_create(&t, NULL, watcher, NULL) != 0)
				return 2;
	}
	printf("ready %d %d\n", watch[0], watch[NWATCH - 1]);

	char line[256];
	while (fgets(line, sizeof line, stdin)) {
		unsigned long n;
		if (sscanf(line, "run %lu", &n) == 1) {
			uint64_t sum = 0;
			for (unsigned long i = 0; i < n; i++)
				sum += hot_top(i);
			printf("done %llu\n", (unsigned long long)sum);
		} else if (strncmp(line, "grabbed", 7) == 0) {
			printf("grabbed %d\n", grabbed);
		} else if (strncmp(line, "swapped", 7) == 0) {
			printf("swapped %d\n", swapped);
		} else if (strncmp(line, "early", 5) == 0 || strncmp(line, "late", 4) == 0) {
			early = line[0] == 'e';
			printf("ok\n");
		} else if (strncmp(line, "truncate", 8) == 0) {
			int r0 = ftruncate(grabbed, 0), e0 = r0 ? errno : 0;
			int r1 = ftruncate(grabbed, 4096), e1 = r1 ? errno : 0;
			printf("truncate %d %d %d %d\n", r0, e0, r1, e1);
		} else if (strncmp(line, "trap", 4) == 0) {
			struct sigaction sa;
			memset(&sa, 0, sizeof sa);
			sa.sa_handler = on_trap;
			sigemptyset(&sa.sa_mask);
			if (sigaction(SIGTRAP, &sa, NULL) != 0)
				perror("hostile: sigaction");
			printf("trap installed\n");
		} else if (strncmp(line, "raise", 5) == 0) {
			raise(SIGTRAP);
			printf("raised %d\n", traps);
		} else {
			fprintf(stderr, "hostile: bad command %s", line);
		}
	}
	return 0;
}
