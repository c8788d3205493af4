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
export PATH="$PATH:/usr/sbin:/sbin"
WORK=$(mktemp -d /var/tmp/submitd-profile.XXXXXX)
P465=22465 P587=22587 SINK=22525
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
echo bench-password-1 | "$SUBMITD" user add bench@example.test --password-stdin --config submitd.toml >/dev/null 2>&1
taskset -c 1 smtp-sink -c -u nobody 127.0.0.1:$SINK 1000 </dev/null >/dev/null 2>&1 &
PIDS+=($!)
taskset -c 0 "$SUBMITD" serve --config submitd.toml >server.log 2>&1 </dev/null &
SPID=$!
PIDS+=($SPID)
for _ in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/$P465) 2>/dev/null && break; sleep 0.1; done
perf record -q -e cpu-clock -F 2000 -g -p "$SPID" -o perf.data >/dev/null 2>&1 &
PERF=$!
sleep 0.5
start=$(date +%s.%N)
timeout 900 taskset -c 1 "$BENCH" --connect 127.0.0.1:$P465 --tls implicit --user bench@example.test \
  --password bench-password-1 --from bench@example.test --to sink@example.net --sessions 16 \
  --per-session "$PER" --messages "$N" --size "$SIZE" --pipelining --timeout 120 >bench.json 2>bench.err </dev/null
for _ in $(seq 1 1200); do
  [ -z "$(ls queue | grep '\.q$\|\.env$' || true)" ] && break
  sleep 0.1
done
end=$(date +%s.%N)
kill -INT "$PERF"; wait "$PERF" 2>/dev/null || true
echo "# $(basename "$SUBMITD"): $N messages of $SIZE bytes accepted and relayed in $(echo "$end - $start" | bc) s"
echo "# $(head -c 260 bench.json)"
echo "## self"
perf report -i perf.data --stdio --no-children --sort sym -g none --percent-limit 1.5 2>/dev/null | grep -v '^#' | grep -v '^$' | head -25
echo "## children"
perf report -i perf.data --stdio --children --sort sym -g none --percent-limit 4 2>/dev/null | grep -v '^#' | grep -v '^$' | head -40
