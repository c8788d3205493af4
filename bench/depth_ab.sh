#!/usr/bin/env bash
# bench/depth_ab.sh SUBMITD SUBMITD_BENCH [N]: new-submission throughput with an empty queue against 1,000,000 deferred messages, the same
# server build, alternating runs (3 each), 465, 16 sessions, 50 per connection, 10 s.
set -euo pipefail
SUBMITD=$(readlink -f "$1"); BENCH=$(readlink -f "$2"); N=${3:-1000000}
BASE=23000
# shellcheck source=bench/standalone.sh
. "$(dirname "$(readlink -f "$0")")/standalone.sh"
start_sink taskset -c 1
mkdir -p q-empty
echo "filling $N" >&2
start=$(date +%s)
"$BENCH" --fill-queue "$WORK/q-deep" "$N" --size "${FILL_SIZE:-10240}" >/dev/null 2>fill.err
echo "fill took $(( $(date +%s) - start )) s" >&2
sync
run() {  # run QUEUE_DIR LABEL
  sed -i "s|^dir = .*|dir = \"$1\"|" submitd.toml
  taskset -c 0 "$SUBMITD" serve --config submitd.toml >>server.log 2>&1 </dev/null &
  local pid=$!
  local from; from=$(wc -l <server.log)
  wait_listening
  # Let the background load finish (its log line), then the memory settle.
  for _ in $(seq 1 600); do
    tail -n +"$((from + 1))" server.log | grep -q "existing messages loaded" && break
    sleep 0.5
  done
  sleep 2
  local last; last=$(awk '/^VmRSS/{print $2}' /proc/$pid/status)
  local u0 s0; read -r u0 s0 < <(awk '{print $14, $15}' /proc/$pid/stat)
  taskset -c 1 "$BENCH" --connect 127.0.0.1:$P465 --tls implicit --user bench@example.test \
    --password bench-password-1 --from bench@example.test --to sink@example.net --sessions 16 \
    --per-session 50 --size 10240 --pipelining --duration 10 --timeout 60 >run.json 2>/dev/null </dev/null || true
  local u1 s1; read -r u1 s1 < <(awk '{print $14, $15}' /proc/$pid/stat)
  local msgs; msgs=$(grep -o '"messages":[0-9]*' run.json | cut -d: -f2)
  echo "$2 $(grep -o '"msgs_per_sec":[0-9.]*' run.json) rss_kb=$last cpu_ms_per_msg=$(echo "scale=3; ($u1-$u0+$s1-$s0)*10/$msgs" | bc) user=$(echo "scale=3; ($u1-$u0)*10/$msgs" | bc) sys=$(echo "scale=3; ($s1-$s0)*10/$msgs" | bc)"
  kill $pid; wait $pid 2>/dev/null || true
}
for i in 1 2 3; do
  run "$WORK/q-empty" empty
  run "$WORK/q-deep" deep
done
