#!/usr/bin/env bash
# A/B two submitd builds on this machine, in one run, with the same load generator:
#   bench/ab.sh OLD_SUBMITD NEW_SUBMITD [ROUNDS]
# e.g. a release build of an earlier commit (git worktree add ../old REV && cargo build
# --release there) against target/release/submitd. Needs smtp-sink (Debian package postfix)
# and taskset; the servers run on core 0, the load generator on core 1 (as bench/compare.sh).
# Workloads, 16 sessions of 10 KB messages over 465 (implicit TLS), relayed to smtp-sink:
#   a: a new connection per message, 3000 messages;   b: 50 messages per connection, 10 s.
# Prints one line per run: build, workload, submitd-bench's JSON; alternates the builds.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 OLD_SUBMITD NEW_SUBMITD [ROUNDS]" >&2; exit 2; }
cd "$(dirname "$0")/.."
declare -A BIN=([old]=$(realpath "$1") [new]=$(realpath "$2"))
ROUNDS=${3:-3}
BENCH=${BENCH:-target/release/submitd-bench}
[ -x "$BENCH" ] || cargo build --release --locked --bin submitd-bench
PW=bench-password-123
WORK=$(mktemp -d)
SINK=$((20000 + RANDOM % 1000))
SINK_USER=$([ "$(id -u)" -eq 0 ] && echo "-u nobody" || true)
# shellcheck disable=SC2086
smtp-sink $SINK_USER -c "127.0.0.1:$SINK" 1000 >/dev/null &
SINKPID=$!
trap 'kill $SINKPID 2>/dev/null || true; rm -rf "$WORK"' EXIT

run_one() {
  local which=$1 workload=$2 dir="$WORK/$1"
  rm -rf "$dir"; mkdir -p "$dir"
  local p587=$((21000 + RANDOM % 1000)) p465=$((22000 + RANDOM % 1000))
  cat >"$dir/submitd.toml" <<TOML
hostname = "mail.example.test"
[listen]
submission = ["127.0.0.1:$p587"]
submissions = ["127.0.0.1:$p465"]
[tls]
cert = "certs/cert.pem"
key = "certs/key.pem"
[auth]
users = "users.toml"
[limits]
max_connections = 30000
max_connections_per_ip = 30000
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
TOML
  "${BIN[$which]}" cert self-signed --hostname mail.example.test --out "$dir/certs" >/dev/null
  echo "$PW" | "${BIN[$which]}" user add alice@example.test --password-stdin \
    --config "$dir/submitd.toml" >/dev/null
  taskset -c 0 "${BIN[$which]}" serve --config "$dir/submitd.toml" >"$dir/log" 2>&1 </dev/null &
  local pid=$!
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$p465") 2>/dev/null && break; sleep 0.1; done
  local args=(--connect "127.0.0.1:$p465" --tls implicit --user alice@example.test
    --password "$PW" --from alice@example.test --to bob@example.net --sessions 16 --size 10240)
  case $workload in
    a) args+=(--per-session 1 --messages 3000) ;;
    b) args+=(--per-session 50 --duration 10) ;;
  esac
  local out
  out=$(taskset -c 1 "$BENCH" "${args[@]}" || true)
  kill "$pid"; wait "$pid" 2>/dev/null || true
  echo "$which $workload $out"
}

for _ in $(seq "$ROUNDS"); do
  for workload in a b; do
    run_one old "$workload"
    run_one new "$workload"
  done
done
