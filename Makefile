# livetrace — see README.md.
#
# Everything a fresh machine needs is installed here with apt-get when
# missing: deps-test installs every tool a test runs (see its comment),
# deps-bench adds what only the benchmarks use.

GO      ?= go
CLANG   ?= clang-16
BIN     := bin/livetrace
export LIVETRACE_CLANG := $(CLANG)

.PHONY: all build test vet demo bench soak fuzz generate deps-test deps-bench clean

all: build

# CGO_ENABLED=0: a static binary, without the dynamic loader and libc
# set-up that the net package's cgo resolver brings (livetrace resolves no
# names): 2 ms less from exec to main (docs/DESIGN-NOTES.md).
build:
	CGO_ENABLED=0 $(GO) build -o $(BIN) ./cmd/livetrace

# apt_install PROGRAM PACKAGES: install PACKAGES with apt-get when PROGRAM is
# not on PATH.
define apt_install
	@command -v $(1) >/dev/null 2>&1 || { \
	  echo "make: $(1) is missing; installing $(2) with apt-get"; \
	  if [ "$$(id -u)" != 0 ]; then echo "make: need root to apt-get install $(2)" >&2; exit 1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(2) >/dev/null; \
	  command -v $(1) >/dev/null 2>&1 || { echo "make: installing $(2) did not provide $(1)" >&2; exit 1; }; }
endef

# apt_install_file FILE PACKAGES: install PACKAGES with apt-get when FILE
# (a library or a debug file, on no PATH) does not exist.
define apt_install_file
	@test -e $(1) || { \
	  echo "make: $(1) is missing; installing $(2) with apt-get"; \
	  if [ "$$(id -u)" != 0 ]; then echo "make: need root to apt-get install $(2)" >&2; exit 1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(2) >/dev/null; \
	  test -e $(1) || { echo "make: installing $(2) did not provide $(1)" >&2; exit 1; }; }
endef

# The debug file of the installed libc.so.6 by its build ID, xx/yyyy.
LIBC_BUILD_ID = $(shell readelf -n /lib/x86_64-linux-gnu/libc.so.6 2>/dev/null | sed -n 's/.*Build ID: \(..\)\(.*\)/\1\/\2/p')

# Every program a test runs (exec.Command / exec.LookPath in *_test.go and
# internal/testtarget): the fixtures' compilers (clang-16, clang++-16, gcc,
# g++), lld-16 for the linker matrix of internal/elfsite, binutils (ld for
# the agent blob check, objdump, readelf, strip), bpftrace for the tests
# that share sites with uprobes, unshare (util-linux) for the container
# tests, and tmux for the test of top's screen. A fresh machine of this kind has gcc, g++, binutils and util-linux
# but not clang-16, lld-16 or bpftrace; checking the others costs nothing.
# Debian's own packages are traced too: the stock sqlite3 shell with its
# libsqlite3-0, redis-server under redis-benchmark (redis-tools), and
# libc.so.6 named from libc6-dbg's debug file: the file
# checked is the one of the installed libc's build ID, so a libc6-dbg that
# does not match libc6 is upgraded.
deps-test:
	$(call apt_install,$(CLANG),clang-16)
	$(call apt_install,ld.lld-16,lld-16)
	$(call apt_install,gcc,gcc)
	$(call apt_install,g++,g++)
	$(call apt_install,objdump,binutils)
	$(call apt_install,bpftrace,bpftrace)
	$(call apt_install,unshare,util-linux)
	$(call apt_install,tmux,tmux)
	$(call apt_install,sqlite3,sqlite3)
	$(call apt_install,redis-server,redis-server)
	$(call apt_install,redis-benchmark,redis-tools)
	$(call apt_install_file,/usr/lib/debug/.build-id/$(LIBC_BUILD_ID).debug,libc6-dbg)
	$(call apt_install,node,nodejs)
	$(call apt_install,python3,python3-minimal)
# Debian's own python3 (TestDlopenPython dlopens its _json through it):
	$(call apt_install_file,/usr/bin/python3,python3)

# deps-bench: uftrace to compare with, and libsqlite3.so.0, one of the stock
# binaries whose traceable fraction `make bench` measures (internal/reloc
# TestTraceable; python3, which a test traces live, comes with deps-test).
deps-bench: deps-test
	$(call apt_install,uftrace,uftrace)
	$(call apt_install_file,/usr/lib/x86_64-linux-gnu/libsqlite3.so.0,libsqlite3-0)

vet:
	$(GO) vet ./...

# The suite must never skip silently: LIVETRACE_REQUIRE_ALL makes a test
# fail instead of skipping when a tool or privilege it needs is missing.
test: deps-test vet
	LIVETRACE_REQUIRE_ALL=1 $(GO) test -count=1 -timeout 20m ./...

demo: deps-test build
	@./demo/run.sh $(BIN)

bench: deps-bench build
	@./bench/run.sh $(BIN)

soak: deps-test
	LIVETRACE_SOAK=1 $(GO) test -count=1 -timeout 60m -run 'TestStress|TestRepeatedCycles|TestGraphDetachUnderLoad|TestTracerDeath|TestSQLiteLive|TestForgedTIDs|TestMemfdSwapRace' -v ./internal/textpoke/ ./internal/session/ ./cmd/livetrace/

# Each fuzz target for a minute (go test -fuzz takes one target at a time).
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime 60s -fuzzminimizetime 2s ./internal/elfsite/
	$(GO) test -run '^$$' -fuzz '^FuzzParseMaps$$' -fuzztime 60s ./internal/proc/
	$(GO) test -run '^$$' -fuzz '^FuzzRead$$' -fuzztime 60s ./internal/tracefile/
	$(GO) test -run '^$$' -fuzz '^FuzzConsumer$$' -fuzztime 60s ./internal/agent/

generate:
	$(GO) generate ./...

clean:
	rm -rf bin
