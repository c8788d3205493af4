#!/usr/bin/env bash
# Messages per second over the HTTP API (POST /v1/messages) against SMTP, on the same server,
# in the same run, with the same 10 KB message, the same API key (an SMTP AUTH login too), and
# smtp-sink as the smarthost:
#   smtp1   465 implicit TLS, one connection, pipelined MAIL/RCPT/DATA, every message on it
#   http1   HTTP/1.1, one keep-alive connection, message/rfc822 bodies
#   json1   the same with JSON bodies (the server builds the MIME)
#   smtp16, http16, json16: the same with 16 connections at once
# Each line: msg/s, p50 and p99 latency, and the ratio to SMTP on as many connections.
#
#   bench/api.sh [--seconds N] [--skip-build]
#
# Needs smtp-sink (Debian package postfix; the script does not install it) and no root.
set -euo pipefail
SECONDS_EACH=10
SKIP_BUILD=0
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) SECONDS_EACH="$2"; shift ;;
    --skip-build) SKIP_BUILD=1 ;;
    *) echo "api.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
ROOT=$(cd "$(dirname "$0")/.." && pwd)
command -v smtp-sink >/dev/null || [ -x /usr/sbin/smtp-sink ] || { echo "api.sh: needs smtp-sink (apt-get install postfix)" >&2; exit 2; }
if [ "$SKIP_BUILD" = 0 ]; then
  (cd "$ROOT" && cargo build --release --locked --bins >/dev/null)
fi
SUBMITD=$ROOT/target/release/submitd
BENCH=$ROOT/target/release/submitd-bench
BASE=${BASE:-21000}
# shellcheck source=bench/standalone.sh
. "$ROOT/bench/standalone.sh"
API=$((BASE + 80))
cat >>submitd.toml <<CONF
[api]
listen = "127.0.0.1:$API"
CONF
KEY=$("$SUBMITD" key create bench --sender bench@example.test --scope smtp,api --config submitd.toml 2>/dev/null)
start_sink
"$SUBMITD" serve --config submitd.toml >server.log 2>&1 &
PIDS+=($!)
wait_listening

run() { # name, then submitd-bench arguments
  local name=$1; shift
  "$BENCH" --duration "$SECONDS_EACH" --size 10240 --from bench@example.test --to sink@example.net "$@" >"$name.json"
  wait_queue_empty
}
for n in 1 16; do
  run "smtp$n" --connect 127.0.0.1:$P465 --tls implicit --user bench --password "$KEY" --pipelining --sessions $n --per-session 0
  run "http$n" --connect 127.0.0.1:$API --tls none --http --api-key "$KEY" --sessions $n --per-session 0
  run "json$n" --connect 127.0.0.1:$API --tls none --http --http-body json --api-key "$KEY" --sessions $n --per-session 0
done
python3 - <<'PY'
import json
rows = []
for n in (1, 16):
    base = json.load(open(f"smtp{n}.json"))
    for kind in ("smtp", "http", "json"):
        d = json.load(open(f"{kind}{n}.json"))
        ratio = d["msgs_per_sec"] / base["msgs_per_sec"] if base["msgs_per_sec"] else 0
        rows.append(f"| {kind}{n} | {n} | {d['msgs_per_sec']:.0f} | {d['p50_ms']:.2f} | {d['p99_ms']:.2f} | {d['errors']} | {ratio:.2f} |")
print("| run | connections | msg/s | p50 ms | p99 ms | errors | vs SMTP |")
print("|---|---|---|---|---|---|---|")
print("\n".join(rows))
PY
