#!/usr/bin/env bash
# System calls per message, accept plus relay: `strace -f -c` on a submitd server while
# submitd-bench sends N messages over 465 (16 connections, 50 messages each, 10 KB) and the
# server relays them to smtp-sink, until its queue is empty.
#
#   bench/syscalls.sh SUBMITD_BINARY SUBMITD_BENCH_BINARY [N] [SIZE]
#
# Prints the strace summary divided by N (calls per message) to stdout. Needs strace and
# smtp-sink (Debian: strace, postfix). Loopback ports from 21000 up; a temp dir; every wait
# bounded; everything it started is killed on exit.
set -euo pipefail
SUBMITD=$(readlink -f "$1"); BENCH=$(readlink -f "$2"); N=${3:-2000}; SIZE=${4:-10240}
BASE=21000
# shellcheck source=bench/standalone.sh
. "$(dirname "$(readlink -f "$0")")/standalone.sh"
start_sink
strace -f -c -o strace.txt "$SUBMITD" serve --config submitd.toml >server.log 2>&1 </dev/null &
SPID=$!
PIDS+=($SPID)
wait_listening
timeout 600 "$BENCH" --connect 127.0.0.1:$P465 --tls implicit --user bench@example.test \
  --password bench-password-1 --from bench@example.test --to sink@example.net --sessions 16 \
  --per-session 50 --messages "$N" --size "$SIZE" --pipelining >bench.json 2>bench.err </dev/null
wait_queue_empty
sleep 1.5   # one more batched directory fsync of the removals
# Stop the server itself (strace writes its summary once its tracee is gone).
kill -TERM "$(pgrep -P "$SPID" | head -n1)" 2>/dev/null || true
wait "$SPID" 2>/dev/null || true
echo "# $(basename "$SUBMITD"): system calls per message, $N messages of $SIZE bytes accepted and relayed"
echo "# $(head -c 300 bench.json)"
awk -v n="$N" '
  /^ *[0-9.]+ +[0-9.]+ +[0-9]+ +[0-9]+/ && $NF != "total" {
    calls = $4; name = $NF
    printf "%-20s %10.2f\n", name, calls / n; total += calls
  }
  END { printf "%-20s %10.2f\n", "total", total / n }' strace.txt | sort -k2 -n -r
