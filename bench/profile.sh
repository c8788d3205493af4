#!/usr/bin/env bash
# Where a submitd server's CPU goes while it accepts and relays N messages of SIZE bytes:
# `perf record -e cpu-clock -g` on the server (465, 16 connections, pipelined, relay to
# smtp-sink over plain SMTP), then the top symbols, self and with children.
#
#   bench/profile.sh SUBMITD_BINARY SUBMITD_BENCH_BINARY SIZE N [PER_SESSION]
#
# Needs perf and smtp-sink (Debian: linux-perf, postfix). Loopback ports from 22000 up; a
# temp dir; every wait bounded; everything it started is killed on exit.
set -euo pipefail
SUBMITD=$(readlink -f "$1"); BENCH=$(readlink -f "$2"); SIZE=$3; N=$4; PER=${5:-5}
BASE=22000
# shellcheck source=bench/standalone.sh
. "$(dirname "$(readlink -f "$0")")/standalone.sh"
start_sink taskset -c 1
taskset -c 1 taskset -c 0 "$SUBMITD" serve --config submitd.toml >server.log 2>&1 </dev/null &
SPID=$!
PIDS+=($SPID)
wait_listening
perf record -q -e cpu-clock -F 2000 -g -p "$SPID" -o perf.data >/dev/null 2>&1 &
PERF=$!
sleep 0.5
start=$(date +%s.%N)
timeout 900 taskset -c 1 "$BENCH" --connect 127.0.0.1:$P465 --tls implicit --user bench@example.test \
  --password bench-password-1 --from bench@example.test --to sink@example.net --sessions 16 \
  --per-session "$PER" --messages "$N" --size "$SIZE" --pipelining --timeout 120 >bench.json 2>bench.err </dev/null
wait_queue_empty
end=$(date +%s.%N)
kill -INT "$PERF"; wait "$PERF" 2>/dev/null || true
echo "# $(basename "$SUBMITD"): $N messages of $SIZE bytes accepted and relayed in $(echo "$end - $start" | bc) s"
echo "# $(head -c 260 bench.json)"
echo "## self"
perf report -i perf.data --stdio --no-children --sort sym -g none --percent-limit 1.5 2>/dev/null | grep -v '^#' | grep -v '^$' | head -25
echo "## children"
perf report -i perf.data --stdio --children --sort sym -g none --percent-limit 4 2>/dev/null | grep -v '^#' | grep -v '^$' | head -40
