/*
 * cxx.cc: the C++ fixture, whose symbol names must be demangled.
 *
 * It has functions in nested namespaces (shapes::geo), a class with methods
 * (shapes::Counter), a template instantiated twice (shapes::scale<int> and
 * shapes::scale<double>), an operator (shapes::operator+ on Vec), a function
 * that throws (shapes::fail_if) and one that catches (shapes::guarded).
 *
 * Protocol: like simple.c. On start it prints "ready" (flushed); without
 * arguments it runs one round of calls and exits 0 (stdin is not read);
 * with "loop" it runs a round, sleeps 10 ms, and repeats forever.
 *
 * With "serve" it throws nothing before its first command, and reads
 * commands from stdin, one a line, until EOF:
 *   throw N   runs exc::top(0..N-1): exceptions thrown through several
 *             traced frames (exc::deep recursing 0..5 deep, with a
 *             destructor to run in each frame), caught at various depths
 *             (exc::mid catches the even ones, exc::top the others after
 *             a `throw;` rethrow), and every fifth one caught, kept in a
 *             std::exception_ptr and rethrown with std::rethrow_exception
 *             from 0..3 traced frames deep (exc::rethrow_at). A second
 *             destructor in each exc::deep frame calls exc::inner, which
 *             throws and catches an exception of its own every other
 *             call, also while another exception unwinds that frame. It
 *             prints "done sum=S cleanups=C deep=D mid=M top=T
 *             rethrow_at=R inner=I": a checksum, the destructors run, and
 *             how many times each traced exc:: function was entered by
 *             this command.
 *   fork N    exc::forked forks; the child runs what "throw N" runs,
 *             throws the checksum out through exc::forked (a frame it
 *             inherited), prints "child sum=S" with the same checksum and
 *             exits; the parent waits for it and prints "forked ok=1"
 *             (ok=0 if the child failed).
 */
#include <cstdio>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ltfixture.h"

volatile long cxx_sink;

namespace shapes {

struct Vec {
	long x, y;
};

LT_KEEP Vec operator+(Vec a, Vec b)
{
	cxx_sink += 1;
	return Vec{a.x + b.x, a.y + b.y};
}

class Counter {
public:
	explicit Counter(long start) : n_(start) {}
	LT_KEEP void add(long d);
	LT_KEEP long value() const;

private:
	long n_;
};

LT_KEEP void Counter::add(long d)
{
	cxx_sink += d;
	n_ += d;
}

LT_KEEP long Counter::value() const
{
	cxx_sink += 2;
	return n_;
}

template <typename T>
LT_KEEP T scale(T v, T by)
{
	cxx_sink += 3;
	return v * by;
}

template int scale<int>(int, int);
template double scale<double>(double, double);

namespace geo {

LT_KEEP long area(Vec v)
{
	cxx_sink += 4;
	return v.x * v.y;
}

LT_KEEP long perimeter(Vec v)
{
	cxx_sink += 5;
	return 2 * (v.x + v.y);
}

} // namespace geo

LT_KEEP long fail_if(long v)
{
	cxx_sink += 6;
	if (v % 2 == 0)
		throw std::runtime_error("even");
	return v;
}

LT_KEEP long guarded(long v)
{
	cxx_sink += 7;
	try {
		return fail_if(v);
	} catch (const std::runtime_error &) {
		return -1;
	}
}

LT_KEEP long round(long seed)
{
	Counter c(seed);
	Vec v = Vec{seed, 3} + Vec{1, 2};
	c.add(geo::area(v));
	c.add(geo::perimeter(v));
	c.add(scale<int>(static_cast<int>(seed & 0xff), 3));
	c.add(static_cast<long>(scale<double>(1.5, static_cast<double>(seed & 0xff))));
	c.add(guarded(seed));
	c.add(guarded(seed + 1));
	return c.value();
}

} // namespace shapes

namespace exc {

struct Err {
	long v;
};

unsigned long n_deep, n_mid, n_top, n_rethrow_at, n_inner;
long cleanups;

struct Cleanup {
	long *n;
	~Cleanup() { ++*n; }
};

/* inner throws and catches its own exception every other call: from a
 * destructor, while another exception unwinds the frames above. */
LT_KEEP long inner(long n)
{
	n_inner++;
	try {
		if (n % 2)
			throw Err{n};
		return n;
	} catch (Err &e) {
		return e.v + 1;
	}
}

struct Nested {
	long n;
	~Nested() { cleanups += inner(n); }
};

LT_KEEP long deep(long n, long d)
{
	n_deep++;
	Cleanup c{&cleanups};
	Nested z{d};
	LT_OPAQUE(d);
	if (d == 0) {
		if (n % 3 != 2)
			throw Err{n};
		return n;
	}
	return deep(n, d - 1) + 1;
}

LT_KEEP long mid(long n)
{
	n_mid++;
	try {
		return deep(n, n % 6);
	} catch (Err &e) {
		if (n % 2)
			throw;
		return e.v * 2;
	}
}

LT_KEEP long rethrow_at(std::exception_ptr p, long d)
{
	n_rethrow_at++;
	LT_OPAQUE(d);
	if (d <= 0) {
		if (p)
			std::rethrow_exception(p);
		return 0;
	}
	return rethrow_at(p, d - 1) + 1;
}

LT_KEEP long top(long n)
{
	n_top++;
	try {
		if (n % 5 == 0) {
			std::exception_ptr p;
			try {
				return mid(n);
			} catch (...) {
				p = std::current_exception();
			}
			try {
				return rethrow_at(p, n % 4);
			} catch (Err &e) {
				return e.v + 7;
			}
		}
		return mid(n);
	} catch (Err &e) {
		return -e.v;
	}
}

unsigned long run(long n)
{
	unsigned long sum = 0;
	for (long i = 0; i < n; i++)
		sum = sum * 31 + (unsigned long)top(i);
	return sum;
}

LT_KEEP unsigned long forked(long n, bool *child)
{
	pid_t pid = fork();
	if (pid < 0)
		return 0;
	if (pid == 0) {
		/* Out through this frame, which the child inherited. */
		*child = true;
		throw Err{(long)run(n)};
	}
	int st = 0;
	if (waitpid(pid, &st, 0) != pid)
		return 0;
	return WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

} // namespace exc

static int serve()
{
	char line[128];
	while (std::fgets(line, sizeof line, stdin)) {
		long n = 0;
		if (std::sscanf(line, "fork %ld", &n) == 1) {
			bool child = false;
			unsigned long r;
			try {
				r = exc::forked(n, &child);
			} catch (exc::Err &e) {
				r = (unsigned long)e.v;
			}
			if (child) {
				std::printf("child sum=%lu\n", r);
				std::fflush(stdout);
				_exit(0);
			}
			std::printf("forked ok=%lu\n", r);
			std::fflush(stdout);
			continue;
		}
		if (std::sscanf(line, "throw %ld", &n) != 1) {
			std::printf("error unknown command\n");
			std::fflush(stdout);
			continue;
		}
		exc::n_deep = exc::n_mid = exc::n_top = exc::n_rethrow_at = exc::n_inner = 0;
		exc::cleanups = 0;
		unsigned long sum = exc::run(n);
		std::printf("done sum=%lu cleanups=%ld deep=%lu mid=%lu top=%lu rethrow_at=%lu inner=%lu\n", sum,
			    exc::cleanups, exc::n_deep, exc::n_mid, exc::n_top, exc::n_rethrow_at, exc::n_inner);
		std::fflush(stdout);
	}
	return 0;
}

int main(int argc, char **argv)
{
	bool loop = argc > 1 && std::strcmp(argv[1], "loop") == 0;
	std::printf("ready\n");
	std::fflush(stdout);
	if (argc > 1 && std::strcmp(argv[1], "serve") == 0)
		return serve();
	long x = argc;
	do {
		x = shapes::round(x) & 0xffff;
		if (loop) {
			struct timespec ts = {0, 10 * 1000 * 1000};
			nanosleep(&ts, nullptr);
		}
	} while (loop);
	return 0;
}
