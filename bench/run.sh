#!/usr/bin/env bash
# bench/run.sh BIN: run every livetrace benchmark side by side with uftrace
# and bpftrace, print one table, and write bench/results.json.
# `make bench` installs the tools and builds BIN first.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-bin/livetrace}
exec go run ./bench/ltbench -livetrace "$BIN" -o bench/results.json ${LTBENCH_FLAGS:-}
