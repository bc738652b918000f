/*
 * follow.c: the fixture of record --follow: children made by fork, a
 * double fork (a daemon), posix_spawn, vfork + exec, and exec from a
 * thread other than the main one.
 *
 * Every child calls fl_work(N), which calls fl_leaf N times, so a recording
 * of a child holds exactly 1 fl_work and N fl_leaf. The parent calls
 * fl_parent once per command, before it starts the child.
 *
 * Protocol: "ready" on start, then one command per line on stdin:
 *   "fork N":       fork(); the child works and exits 0. Replies
 *                   "forked <child pid> <status>".
 *   "daemon N":     fork(); the child forks again and exits at once; the
 *                   grandchild works, then writes its pid into a pipe and
 *                   exits. Replies "daemon <child> <grandchild>" once the
 *                   grandchild has written.
 *   "spawn N":      posix_spawn() of this program with "work N". Replies
 *                   "spawned <pid> <status>".
 *   "vforkexec N":  vfork(), then execv() of this program with "work N".
 *                   Replies "vforked <pid> <status>".
 *   "forkexec N":   fork(), then execv() of this program with "work N".
 *                   Replies "forkexeced <pid> <status>".
 *   "threadexec N": fork(); the child starts a thread that calls execv()
 *                   of this program with "work N" while the main thread
 *                   sleeps. Replies "threadexeced <pid> <status>".
 *   "detach N":     fork(); the child forks again and exits; the grandchild
 *                   sleeps 300 ms, works and exits. Replies "detached
 *                   <child>" at once (the grandchild outlives a parent
 *                   that exits next).
 *   "exectrue":     fork(), then execl() of /bin/true (a program where no
 *                   fl_ function exists). Replies "exectrued <pid> <status>".
 *   "forkin N":     fl_forker(N): fork() inside a traced function; the
 *                   child works, returns from fl_forker and exits 0.
 *                   Replies "forkedin <child pid> <status>".
 *   "hold N":       fork(); the child works, prints "held <its pid>" and
 *                   stays (pause) until killed; the parent goes on at once.
 *   "wait S":       sleep S ms, then "waited" (lets the tracer attach).
 *   "execstay N":   fork(), then execv() of this program with "stay N";
 *                   the parent goes on at once.
 * Run as "follow work N": fl_work(N), then exit 0. Run as "follow stay
 * N": fl_work(N), print "stayed <pid>", then wait until killed.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ltfixture.h"

extern char **environ;

volatile long fl_sink;
static char self[4096];

LT_KEEP long fl_leaf(long x)
{
	fl_sink += x;
	return x + 1;
}

LT_KEEP long fl_work(long n)
{
	long x = 0;
	for (long i = 0; i < n; i++)
		x += fl_leaf(i);
	return x;
}

/* fl_forker forks inside a traced frame: with --graph its return address
 * is hijacked, and the child returns through its copy. Returns the pid. */
LT_KEEP long fl_forker(long n)
{
	pid_t pid = fork();
	if (pid == 0)
		fl_work(n);
	return pid;
}

LT_KEEP long fl_parent(long x)
{
	fl_sink ^= x;
	return x;
}

static int status_of(pid_t pid)
{
	int st = -1;
	if (pid <= 0 || waitpid(pid, &st, 0) != pid)
		return -1;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static char nbuf[32];
static char *work_argv[4];

static void set_work_argv(long n)
{
	snprintf(nbuf, sizeof nbuf, "%ld", n);
	work_argv[0] = self;
	work_argv[1] = "work";
	work_argv[2] = nbuf;
	work_argv[3] = NULL;
}

static void *exec_thread(void *arg)
{
	(void)arg;
	execv(self, work_argv);
	_exit(127);
}

int main(int argc, char **argv)
{
	ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
	if (n <= 0)
		return 2;
	self[n] = 0;
	if (argc == 3 && !strcmp(argv[1], "work")) {
		fl_work(atol(argv[2]));
		return 0;
	}
	if (argc == 3 && !strcmp(argv[1], "stay")) {
		fl_work(atol(argv[2]));
		printf("stayed %d\n", getpid());
		fflush(stdout);
		for (;;)
			pause();
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("ready\n");
	char line[256];
	while (fgets(line, sizeof line, stdin)) {
		long arg = 0;
		char cmd[64];
		if (sscanf(line, "%63s %ld", cmd, &arg) < 1)
			continue;
		fl_parent(arg);
		if (!strcmp(cmd, "fork")) {
			pid_t pid = fork();
			if (pid == 0) {
				fl_work(arg);
				_exit(0);
			}
			int st = status_of(pid);
			printf("forked %d %d\n", pid, st);
		} else if (!strcmp(cmd, "daemon")) {
			int fds[2];
			if (pipe(fds))
				return 3;
			pid_t pid = fork();
			if (pid == 0) {
				close(fds[0]);
				pid_t g = fork();
				if (g == 0) {
					setsid();
					fl_work(arg);
					pid_t me = getpid();
					if (write(fds[1], &me, sizeof me) != sizeof me)
						_exit(1);
					_exit(0);
				}
				_exit(g > 0 ? 0 : 1);
			}
			close(fds[1]);
			status_of(pid);
			pid_t g = 0;
			if (read(fds[0], &g, sizeof g) != sizeof g)
				g = -1;
			close(fds[0]);
			printf("daemon %d %d\n", pid, g);
		} else if (!strcmp(cmd, "spawn")) {
			set_work_argv(arg);
			pid_t pid = -1;
			if (posix_spawn(&pid, self, NULL, NULL, work_argv, environ))
				pid = -1;
			int st = status_of(pid);
			printf("spawned %d %d\n", pid, st);
		} else if (!strcmp(cmd, "vforkexec")) {
			set_work_argv(arg);
			pid_t pid = vfork();
			if (pid == 0) {
				execv(self, work_argv);
				_exit(127);
			}
			int st = status_of(pid);
			printf("vforked %d %d\n", pid, st);
		} else if (!strcmp(cmd, "forkexec")) {
			set_work_argv(arg);
			pid_t pid = fork();
			if (pid == 0) {
				execv(self, work_argv);
				_exit(127);
			}
			int st = status_of(pid);
			printf("forkexeced %d %d\n", pid, st);
		} else if (!strcmp(cmd, "threadexec")) {
			set_work_argv(arg);
			pid_t pid = fork();
			if (pid == 0) {
				pthread_t t;
				if (pthread_create(&t, NULL, exec_thread, NULL))
					_exit(126);
				for (;;)
					pause();
			}
			int st = status_of(pid);
			printf("threadexeced %d %d\n", pid, st);
		} else if (!strcmp(cmd, "detach")) {
			pid_t pid = fork();
			if (pid == 0) {
				if (fork() == 0) {
					setsid();
					struct timespec ts = {0, 300000000L};
					nanosleep(&ts, NULL);
					fl_work(arg);
					_exit(0);
				}
				_exit(0);
			}
			status_of(pid);
			printf("detached %d\n", pid);
		} else if (!strcmp(cmd, "exectrue")) {
			pid_t pid = fork();
			if (pid == 0) {
				execl("/bin/true", "true", (char *)NULL);
				_exit(127);
			}
			int st = status_of(pid);
			printf("exectrued %d %d\n", pid, st);
		} else if (!strcmp(cmd, "forkin")) {
			pid_t pid = fl_forker(arg);
			if (pid == 0)
				_exit(0);
			int st = status_of(pid);
			printf("forkedin %d %d\n", pid, st);
		} else if (!strcmp(cmd, "execstay")) {
			pid_t pid = fork();
			if (pid == 0) {
				char n[32];
				snprintf(n, sizeof n, "%ld", arg);
				execl(self, self, "stay", n, (char *)NULL);
				_exit(127);
			}
		} else if (!strcmp(cmd, "hold")) {
			pid_t pid = fork();
			if (pid == 0) {
				fl_work(arg);
				printf("held %d\n", getpid());
				fflush(stdout);
				for (;;)
					pause();
			}
		} else if (!strcmp(cmd, "wait")) {
			struct timespec ts = {arg / 1000, (arg % 1000) * 1000000L};
			nanosleep(&ts, NULL);
			printf("waited\n");
		}
	}
	return 0;
}
