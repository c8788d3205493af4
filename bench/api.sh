#!/usr/bin/env bash
# Messages per second over the HTTP API (POST /v1/messages) against SMTP, on the same server,
# in the same run, with the same 10 KB message, the same API key (an SMTP AUTH login too), and
# smtp-sink as the smarthost:
#   smtp1   465 implicit TLS, one connection, pipelined MAIL/RCPT/DATA, every message on it
#   http1   HTTP/1.1, one keep-alive connection, message/rfc822 bodies
#   json1   the same with JSON bodies (the server builds the MIME)
#   smtp16, http16, json16: the same with 16 connections at once
# (each run twice, in mirrored order; see below)
# Each line: msg/s, p50 and p99 latency, the ratio to SMTP on as many connections, and the
# server's own CPU time per message (user + system of the submitd process over the run, from
# /proc: the client shares the machine, so msg/s alone mixes in what the client spends).
#
#   [SPOOL_ROOT=DIR] bench/api.sh [--seconds N] [--skip-build]   (SPOOL_ROOT: bench/standalone.sh)
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
SERVER=$!
PIDS+=($SERVER)
wait_listening

cpu_ticks() { # user + system clock ticks of the server so far
  awk '{print $14 + $15}' "/proc/$SERVER/stat"
}
run() { # name, then submitd-bench arguments
  local name=$1; shift
  local before; before=$(cpu_ticks)
  "$BENCH" --duration "$SECONDS_EACH" --size 10240 --from bench@example.test --to sink@example.net "$@" >"$name.json"
  wait_queue_empty
  echo $(( $(cpu_ticks) - before )) >"$name.cpu"
}
# Each kind runs twice, in the order smtp http json and then json http smtp: the cost of a
# file creation on this disk drifts as a run deletes thousands of spool files (ext4 skips
# recently freed inodes), and the mirrored order cancels a steady drift instead of charging
# it to whichever kind runs last.
smtp() { run "smtp$1$2" --connect 127.0.0.1:$P465 --tls implicit --user bench --password "$KEY" --pipelining --sessions "$1" --per-session 0; }
http() { run "http$1$2" --connect 127.0.0.1:$API --tls none --http --api-key "$KEY" --sessions "$1" --per-session 0; }
json() { run "json$1$2" --connect 127.0.0.1:$API --tls none --http --http-body json --api-key "$KEY" --sessions "$1" --per-session 0; }
for n in 1 16; do
  smtp $n a; http $n a; json $n a
  json $n b; http $n b; smtp $n b
done
TICKS=$(getconf CLK_TCK) python3 - <<'PY'
import json, os
ticks = int(os.environ["TICKS"])

def both(name):
    """The two passes of one run together: messages over seconds, latency means, CPU."""
    a, b = (json.load(open(f"{name}{p}.json")) for p in "ab")
    cpu = sum(int(open(f"{name}{p}.cpu").read()) for p in "ab")
    messages = a["messages"] + b["messages"]
    seconds = a["seconds"] + b["seconds"]
    return {
        "rate": messages / seconds if seconds else 0,
        "p50": (a["p50_ms"] + b["p50_ms"]) / 2,
        "p99": (a["p99_ms"] + b["p99_ms"]) / 2,
        "errors": a["errors"] + b["errors"],
        # Delivery to the sink included: each pass waits for the queue to empty.
        "cpu": cpu * 1000 / ticks / max(messages, 1),
        "passes": (a["msgs_per_sec"], b["msgs_per_sec"]),
    }

rows = []
for n in (1, 16):
    base = both(f"smtp{n}")
    for kind in ("smtp", "http", "json"):
        d = both(f"{kind}{n}")
        ratio = d["rate"] / base["rate"] if base["rate"] else 0
        cpu_ratio = d["cpu"] / base["cpu"] if base["cpu"] else 0
        pa, pb = d["passes"]
        rows.append(f"| {kind}{n} | {n} | {d['rate']:.0f} ({pa:.0f}, {pb:.0f}) | {d['p50']:.2f} | {d['p99']:.2f} | {d['errors']} | {ratio:.2f} | {d['cpu']:.3f} | {cpu_ratio:.2f} |")
print("| run | connections | msg/s (pass a, pass b) | p50 ms | p99 ms | errors | msg/s vs SMTP | server CPU ms/msg | CPU vs SMTP |")
print("|---|---|---|---|---|---|---|---|---|")
print("\n".join(rows))
PY
