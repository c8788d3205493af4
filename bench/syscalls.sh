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
export PATH="$PATH:/usr/sbin:/sbin"
WORK=$(mktemp -d /var/tmp/submitd-syscalls.XXXXXX)
P465=21465 P587=21587 SINK=21525
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
cd "$WORK"
"$SUBMITD" cert self-signed --hostname mail.example.test --out certs >/dev/null
cat >submitd.toml <<CONF
hostname = "mail.example.test"
[listen]
submission = ["127.0.0.1:$P587"]
submissions = ["127.0.0.1:$P465"]
[tls]
cert = "certs/cert.pem"
key = "certs/key.pem"
[auth]
users = "users.toml"
[limits]
max_connections = 30000
max_connections_per_ip = 30000
max_message_size = 104857600
user_messages_per_hour = 0
user_messages_per_day = 0
user_recipients_per_hour = 0
user_recipients_per_day = 0
[queue]
dir = "queue"
concurrency = 16
[relay]
mode = "smarthost"
smarthost = "127.0.0.1:$SINK"
smarthost_tls = "none"
CONF
echo bench-password-1 | "$SUBMITD" user add bench@example.test --password-stdin --config submitd.toml >/dev/null
smtp-sink -c -u nobody 127.0.0.1:$SINK 1000 </dev/null >/dev/null 2>&1 &
PIDS+=($!)
strace -f -c -o strace.txt "$SUBMITD" serve --config submitd.toml >server.log 2>&1 </dev/null &
SPID=$!
PIDS+=($SPID)
for _ in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/$P465) 2>/dev/null && break; sleep 0.1; done
timeout 600 "$BENCH" --connect 127.0.0.1:$P465 --tls implicit --user bench@example.test \
  --password bench-password-1 --from bench@example.test --to sink@example.net --sessions 16 \
  --per-session 50 --messages "$N" --size "$SIZE" --pipelining >bench.json 2>bench.err </dev/null
for _ in $(seq 1 600); do
  [ -z "$(ls queue | grep '\.q$\|\.env$' || true)" ] && break
  sleep 0.1
done
sleep 1.5   # one more batched directory fsync of the removals
# Stop the server itself (strace writes its summary once its tracee is gone).
kill -TERM "$(pgrep -P "$SPID" | head -n1)" 2>/dev/null || true
wait "$SPID" 2>/dev/null || true
echo "# $(basename "$SUBMITD"): system calls per message, $N messages of $SIZE bytes accepted and relayed"
echo "# $(head -c 300 bench.json)"
awk -v n="$N" '
  /^ *[0-9.]+ +[0-9.]+ +[0-9]+ +[0-9]+/ && $NF != "total" {
    calls = $4; name = $NF; errors = (NF == 6) ? $5 : 0
    printf "%-20s %10.2f\n", name, calls / n; total += calls
  }
  END { printf "%-20s %10.2f\n", "total", total / n }' strace.txt | sort -k2 -n -r
