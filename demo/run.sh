#!/usr/bin/env bash
# demo/run.sh BIN: build demo/demo.c for livetrace, start it, and show what
# livetrace sees in the running process.
#
#   BIN             the livetrace binary (make demo passes bin/livetrace)
#   LIVETRACE_CLANG the C compiler (default clang-16)
#   DEMO_DIR        where to build the demo (default: a temporary directory,
#                   removed on exit)
#
# Each step is a function; to add one (record, replay...), write a step_*
# function and call it from main. The demo process is killed on every way
# out, including errors and Ctrl-C.
set -euo pipefail

usage() { echo "usage: $0 path/to/livetrace" >&2; exit 2; }
[ $# -eq 1 ] || usage
BIN=$1
CLANG=${LIVETRACE_CLANG:-clang-16}
HERE=$(cd "$(dirname "$0")" && pwd)

demo_pid=
work=
cleanup() {
	if [ -n "$demo_pid" ]; then
		kill "$demo_pid" 2>/dev/null || true
		wait "$demo_pid" 2>/dev/null || true
	fi
	if [ -n "$work" ] && [ -z "${DEMO_DIR:-}" ]; then
		rm -rf "$work"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf '\n==> %s\n' "$*"; }

check_tools() {
	if [ ! -x "$BIN" ]; then
		echo "demo: $BIN is not an executable: run \`make build\` first" >&2
		exit 1
	fi
	if ! command -v "$CLANG" >/dev/null 2>&1; then
		echo "demo: $CLANG is not installed: run \`make demo\`, which installs it" >&2
		exit 1
	fi
}

build_demo() {
	if [ -n "${DEMO_DIR:-}" ]; then
		work=$DEMO_DIR
		mkdir -p "$work"
	else
		work=$(mktemp -d "${TMPDIR:-/tmp}/livetrace-demo.XXXXXX")
	fi
	DEMO=$work/demo
	say "building $DEMO with $CLANG -O2 -g -fpatchable-function-entry=5"
	"$CLANG" -O2 -g -fpatchable-function-entry=5 -fPIE -pie -pthread \
		-o "$DEMO" "$HERE/demo.c"
}

start_demo() {
	"$DEMO" >"$work/demo.out" 2>&1 &
	demo_pid=$!
	# Wait until its threads run (it prints "ready"), for at most 5 s.
	for _ in $(seq 50); do
		if grep -q '^ready' "$work/demo.out" 2>/dev/null; then
			say "demo is running as pid $demo_pid"
			return
		fi
		if ! kill -0 "$demo_pid" 2>/dev/null; then
			echo "demo: the demo exited early:" >&2
			cat "$work/demo.out" >&2
			exit 1
		fi
		sleep 0.1
	done
	echo "demo: the demo did not print ready within 5 s" >&2
	exit 1
}

step_list() {
	say "$BIN list -p $demo_pid"
	"$BIN" list -p "$demo_pid"
}

step_record() {
	DATA=$work/livetrace.data
	say "$BIN record -f --graph -p $demo_pid -d 2s -o $DATA   (live: the demo keeps running)"
	"$BIN" record -f --graph -p "$demo_pid" -d 2s -o "$DATA"
	if ! kill -0 "$demo_pid" 2>/dev/null; then
		echo "demo: the demo died while traced" >&2
		exit 1
	fi
}

step_report() {
	say "$BIN report -i $DATA"
	"$BIN" report -i "$DATA"
	say "$BIN replay -i $DATA | head -30"
	"$BIN" replay -i "$DATA" | head -30 || true
	say "$BIN info -i $DATA"
	"$BIN" info -i "$DATA"
}

step_export() {
	OUT=${DEMO_OUT:-$PWD}
	say "$BIN export --format chrome -o $OUT/demo.json; $BIN export --format flamegraph -o $OUT/demo.html"
	"$BIN" export -i "$DATA" --format chrome -o "$OUT/demo.json"
	"$BIN" export -i "$DATA" --format flamegraph -o "$OUT/demo.html"
	printf '\nOpen the trace and the flame graph:\n'
	printf '  %s   load it at https://ui.perfetto.dev (Open trace file) or in chrome://tracing\n' "$OUT/demo.json"
	printf '  %s   open it in any browser (self-contained)\n' "$OUT/demo.html"
}

main() {
	check_tools
	build_demo
	start_demo
	step_list
	step_record
	step_report
	step_export
}

main
