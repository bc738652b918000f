#!/usr/bin/env bash
# bench/readers.sh BIN [EVENTS]: the reader figures. Writes a synthetic
# graph-mode recording of EVENTS events (default 250M) shaped like the
# hotleaf benchmark (bench/bigrec), then prints the wall and CPU time, the
# events/s and the peak RSS of `report` and `export --format perfetto`,
# and the size of the perfetto export against the chrome JSON of a
# 10M-event recording. Needs GNU time (/usr/bin/time).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(realpath "${1:-bin/livetrace}")
EVENTS=${2:-250000000}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
go run ./bench/bigrec -events "$EVENTS" -mode graph -o "$TMP/big.data"
go run ./bench/bigrec -events 10000000 -mode graph -o "$TMP/small.data"
measure() { # NAME CMD...
	local name=$1
	shift
	/usr/bin/time -f "%e %U %S %M" -o "$TMP/time" "$@" >/dev/null 2>&1
	read -r wall user sys rss <"$TMP/time"
	awk -v n="$name" -v e="$EVENTS" -v w="$wall" -v u="$user" -v s="$sys" -v r="$rss" 'BEGIN {
		printf "%-10s %9.2f s wall %7.2f s cpu %8.1f M events/s wall %8.1f M events/cpu-s %8.1f MiB rss\n",
			n, w, u + s, e / w / 1e6, e / (u + s) / 1e6, r / 1024 }'
}
measure report "$BIN" report -i "$TMP/big.data"
measure perfetto "$BIN" export -i "$TMP/big.data" --format perfetto -o "$TMP/big.pftrace"
"$BIN" export -i "$TMP/small.data" --format perfetto -o "$TMP/small.pftrace" 2>/dev/null
"$BIN" export -i "$TMP/small.data" --format chrome -o "$TMP/small.json" 2>/dev/null
awk -v p="$(stat -c %s "$TMP/small.pftrace")" -v j="$(stat -c %s "$TMP/small.json")" \
	'BEGIN { printf "perfetto/chrome size (10M events): %d / %d bytes = %.1f%%\n", p, j, 100 * p / j }'
