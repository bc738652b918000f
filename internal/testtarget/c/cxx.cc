/*
 * cxx.cc: the C++ fixture, whose symbol names must be demangled.
 *
 * It has functions in nested namespaces (shapes::geo), a class with methods
 * (shapes::Counter), a template instantiated twice (shapes::scale<int> and
 * shapes::scale<double>), an operator (shapes::operator+ on Vec), a function
 * that throws (shapes::fail_if) and one that catches (shapes::guarded).
 *
 * Protocol: like simple.c. stdin is not read. On start it prints "ready"
 * (flushed); without arguments it runs one round of calls and exits 0; with
 * "loop" it runs a round, sleeps 10 ms, and repeats forever.
 */
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <time.h>

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

int main(int argc, char **argv)
{
	bool loop = argc > 1 && std::strcmp(argv[1], "loop") == 0;
	std::printf("ready\n");
	std::fflush(stdout);
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
