#!/usr/bin/env bash
# submitd next to Postfix on the same workloads, on loopback, on a Debian build machine.
#
#   bench/compare.sh [--quick] [--results DIR] [--skip-build]
#
# Needs root (it installs and configures Postfix through apt-get and /etc/postfix) and no
# standard input. Both servers get the same ECDSA P-256 certificate, the same user, and relay
# every message to the same sink (Postfix's smtp-sink). Servers run on core 0, the load
# generator (submitd-bench) and the sink on core 1. Workloads, each against Postfix then
# submitd:
#   a  465 implicit TLS, a new connection per message
#   b  465 implicit TLS, 50 messages per connection
#   c  587 STARTTLS, a new connection per message
#   d  587 STARTTLS, 50 messages per connection
#   e  idle TLS connections (465): memory per connection (PSS)
#   f  queue delivery rate: N messages queued while the sink is down, then flushed to it
# Raw JSON lines, logs and a summary go under the results directory (default
# bench/results/<date>); the table is printed at the end and saved as table.md.
#
# Idempotent: /etc/postfix/main.cf and master.cf are backed up once (*.pre-submitd-bench) and
# restored on exit; Postfix's queue and submitd's temp dir are emptied on every run.
set -euo pipefail

QUICK=0
RESULTS=""
SKIP_BUILD=0
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --results) RESULTS="$2"; shift ;;
    --skip-build) SKIP_BUILD=1 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "compare.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

export PATH="$PATH:/usr/sbin:/sbin"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
[ "$(id -u)" = 0 ] || { echo "compare.sh: run as root (installs and configures Postfix)" >&2; exit 2; }
RESULTS=${RESULTS:-$ROOT/bench/results/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$RESULTS"
RESULTS=$(cd "$RESULTS" && pwd)

# Loopback ports: Postfix 10465/10587, submitd 11465/11587, the sink 12525.
P465=10465 P587=10587 S465=11465 S587=11587 SINK=12525
LOGIN=bench@example.test
PASSWORD=bench-password-1
RCPT=sink@example.net
CONC=16
SIZE=10240
PER_CONN=50
if [ "$QUICK" = 1 ]; then
  DURATION=2 QUEUE_N=200 IDLE_SUBMITD=200 IDLE_POSTFIX=20 WARMUP=20
else
  DURATION=10 QUEUE_N=3000 IDLE_SUBMITD=10000 IDLE_POSTFIX=200 WARMUP=200
fi
WORK=/var/tmp/submitd-bench          # submitd's config, queue, cert; pid files
PFDIR=/etc/postfix/submitd-bench     # Postfix's copy of the cert
CLK_TCK=$(getconf CLK_TCK)

log() { echo "[compare $(date +%H:%M:%S)] $*" >&2; }
die() { log "FAILED: $*"; exit 1; }

# --- cleanup -----------------------------------------------------------------------------
PIDS=()
cleanup() {
  set +e
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  sleep 0.5
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null; done
  postfix stop >/dev/null 2>&1
  for f in main.cf master.cf; do
    [ -f "/etc/postfix/$f.pre-submitd-bench" ] && cp "/etc/postfix/$f.pre-submitd-bench" "/etc/postfix/$f"
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Kill what a previous run left behind (our own pid files only).
if [ -d "$WORK" ]; then
  for f in "$WORK"/*.pid; do
    [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
  done
fi
postfix stop >/dev/null 2>&1 || true

ulimit -n "$(ulimit -Hn)"
[ "$(ulimit -n)" -ge $((IDLE_SUBMITD + 1000)) ] || die "ulimit -n $(ulimit -n) is too low for $IDLE_SUBMITD idle connections"

# --- install -----------------------------------------------------------------------------
if ! command -v smtp-sink >/dev/null || ! command -v saslpasswd2 >/dev/null || ! command -v pgrep >/dev/null \
   || ! ls /usr/lib/*/sasl2/libplain.so* >/dev/null 2>&1; then
  log "installing postfix, sasl2-bin, libsasl2-modules, procps"
  export DEBIAN_FRONTEND=noninteractive
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  timeout 600 apt-get update -q </dev/null
  timeout 900 apt-get install -y -q postfix sasl2-bin libsasl2-modules procps </dev/null
fi
command -v taskset >/dev/null || die "taskset (util-linux) is missing"

# --- build -------------------------------------------------------------------------------
if [ "$SKIP_BUILD" = 0 ]; then
  log "cargo build --release --locked --bins"
  (cd "$ROOT" && timeout 3600 nice cargo build --release --locked --bins) </dev/null
fi
SUBMITD=$ROOT/target/release/submitd
BENCH=$ROOT/target/release/submitd-bench
[ -x "$SUBMITD" ] && [ -x "$BENCH" ] || die "release binaries missing in $ROOT/target/release"

# --- machine -----------------------------------------------------------------------------
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "nproc: $(nproc)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
  echo "kernel: $(uname -r)"
  echo "memory: $(awk '/MemTotal/{print $2" kB"}' /proc/meminfo)"
  echo "disk: $(df -h "$WORK" 2>/dev/null | tail -1 || df -h /var/tmp | tail -1)"
  echo "postfix: $(postconf -h mail_version)"
  echo "submitd: $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "loadavg at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "quick: $QUICK duration: ${DURATION}s concurrency: $CONC size: $SIZE"
} > "$RESULTS/machine.txt"
cat "$RESULTS/machine.txt" >&2

# --- shared setup: cert, work dir --------------------------------------------------------
rm -rf "$WORK"
mkdir -p "$WORK" "$PFDIR"
"$SUBMITD" cert self-signed --hostname mail.example.test --out "$WORK/certs" >/dev/null
cp "$WORK/certs/cert.pem" "$WORK/certs/key.pem" "$PFDIR/"
chmod 600 "$PFDIR/key.pem"

# --- helpers -----------------------------------------------------------------------------
# jnum KEY FILE: a number from the last JSON line of FILE.
jnum() { tail -n1 "$2" | grep -o "\"$1\":[-0-9.e+]*" | head -n1 | cut -d: -f2; }

# wait_until SECONDS COMMAND...: poll every 0.2 s; false after SECONDS.
wait_until() {
  local limit=$1; shift
  local end=$((SECONDS + limit))
  until "$@"; do
    [ "$SECONDS" -lt "$end" ] || return 1
    sleep 0.2
  done
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
port_closed() { ! port_open "$1"; }

# CPU ticks of one process (utime+stime+cutime+cstime; fields after the "(comm)").
ticks_of() { sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | awk '{print $12+$13+$14+$15}'; }

postfix_master() { cat /var/spool/postfix/pid/master.pid 2>/dev/null | tr -d ' '; }

# Postfix: master (with its reaped children) plus every live child.
postfix_ticks() {
  local master total=0 pid t
  master=$(postfix_master)
  total=$(ticks_of "$master")
  for pid in $(pgrep -P "$master"); do
    t=$(ticks_of "$pid"); total=$((total + ${t:-0}))
  done
  echo "$total"
}

SUBMITD_PID=""
server_ticks() {
  if [ "$1" = postfix ]; then postfix_ticks; else ticks_of "$SUBMITD_PID"; fi
}

pss_of() { awk '/^Pss:/{print $2}' "/proc/$1/smaps_rollup" 2>/dev/null || echo 0; }

# PSS of the current master's smtpd children (not of any left over from an earlier master).
smtpd_pss() {
  local total=0 pid
  for pid in $(pgrep -P "$(postfix_master)" -x smtpd); do total=$((total + $(pss_of "$pid"))); done
  echo "$total"
}

SINK_PID=""
start_sink() {   # start_sink [extra smtp-sink args]
  taskset -c 1 smtp-sink -u postfix -4 -m 1000 "$@" "127.0.0.1:$SINK" 1024 \
    >>"$RESULTS/sink.log" 2>&1 </dev/null &
  SINK_PID=$!
  PIDS+=("$SINK_PID")
  wait_until 10 port_open "$SINK" || die "smtp-sink did not start"
}
stop_sink() {
  [ -n "$SINK_PID" ] && kill "$SINK_PID" 2>/dev/null || true
  [ -n "$SINK_PID" ] && wait "$SINK_PID" 2>/dev/null || true
  SINK_PID=""
  wait_until 10 port_closed "$SINK" || die "sink port $SINK still open"
}

postfix_queue_count() { postqueue -j 2>/dev/null | wc -l; }
postfix_deferred_count() { postqueue -j 2>/dev/null | grep -c '"queue_name": *"deferred"' || true; }
submitd_queue_count() { "$SUBMITD" queue list --config "$WORK/submitd.toml" 2>/dev/null | wc -l; }
submitd_deferred_count() { "$SUBMITD" queue list --config "$WORK/submitd.toml" 2>/dev/null | grep -c '(deferred)' || true; }

queue_empty() { [ "$("${1}_queue_count")" -eq 0 ]; }
all_deferred() { [ "$("${1}_deferred_count")" -ge "$2" ]; }

# --- Postfix ----------------------------------------------------------------------------
setup_postfix() {
  for f in main.cf master.cf; do
    [ -f "/etc/postfix/$f.pre-submitd-bench" ] || cp "/etc/postfix/$f" "/etc/postfix/$f.pre-submitd-bench" 2>/dev/null \
      || touch "/etc/postfix/$f.pre-submitd-bench"
  done
  cat >/etc/postfix/main.cf <<EOF
# Written by submitd's bench/compare.sh; the original is main.cf.pre-submitd-bench.
compatibility_level = 3.6
myhostname = mail.example.test
mydomain = example.test
myorigin = \$myhostname
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
biff = no
append_dot_mydomain = no
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:$SINK
# Like submitd's queue.concurrency = 16.
smtp_destination_concurrency_limit = 16
smtp_tls_security_level = none
message_size_limit = 26214400
default_process_limit = 1000
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtpd_tls_chain_files = $PFDIR/key.pem, $PFDIR/cert.pem
smtpd_tls_security_level = may
smtpd_tls_session_cache_database = btree:\${data_directory}/smtpd_scache
smtpd_sasl_type = cyrus
smtpd_sasl_path = smtpd
cyrus_sasl_config_path = /etc/postfix/sasl
smtpd_sasl_security_options = noanonymous
smtpd_relay_restrictions = permit_sasl_authenticated, reject
maillog_file_prefixes = /var, $RESULTS
maillog_file = $RESULTS/postfix.log
EOF
  # Debian's service table without the port-25 listener, every service out of the chroot
  # (the sasldb and cert paths then need no copies), plus the two submission services.
  grep -v '^smtp *inet' /usr/share/postfix/master.cf.dist >/etc/postfix/master.cf
  cat >>/etc/postfix/master.cf <<EOF
127.0.0.1:$P587 inet n - n - - smtpd
  -o syslog_name=postfix/submission
  -o smtpd_tls_security_level=encrypt
  -o smtpd_tls_auth_only=yes
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_client_restrictions=permit_sasl_authenticated,reject
  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject
127.0.0.1:$P465 inet n - n - - smtpd
  -o syslog_name=postfix/smtps
  -o smtpd_tls_wrappermode=yes
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_client_restrictions=permit_sasl_authenticated,reject
  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject
EOF
  postconf -F '*/*/chroot = n' >/dev/null
  mkdir -p /etc/postfix/sasl
  cat >/etc/postfix/sasl/smtpd.conf <<EOF
pwcheck_method: auxprop
auxprop_plugin: sasldb
mech_list: PLAIN LOGIN
EOF
  rm -f /etc/sasldb2
  echo "$PASSWORD" | saslpasswd2 -p -c -u example.test bench
  chown root:postfix /etc/sasldb2
  chmod 640 /etc/sasldb2
  postsuper -d ALL >/dev/null 2>&1 || true
  # Postfix reports to syslog (often absent) when stderr is no terminal: say where to look.
  postfix check || die "postfix check failed: try 'postfix check' on a terminal"
}

start_postfix() {
  taskset -c 0 postfix start >/dev/null 2>&1 || die "postfix start (see $RESULTS/postfix.log)"
  wait_until 20 port_open "$P465" || die "Postfix is not listening on $P465"
  wait_until 20 port_open "$P587" || die "Postfix is not listening on $P587"
}
stop_postfix() { postfix stop >/dev/null 2>&1 || true; sleep 1; }

# --- submitd -----------------------------------------------------------------------------
setup_submitd() {
  cat >"$WORK/submitd.toml" <<EOF
hostname = "mail.example.test"
[listen]
submission = ["127.0.0.1:$S587"]
submissions = ["127.0.0.1:$S465"]
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
EOF
  rm -f "$WORK/users.toml"
  echo "$PASSWORD" | "$SUBMITD" user add "$LOGIN" --password-stdin --config "$WORK/submitd.toml" >/dev/null
  "$SUBMITD" check-config --config "$WORK/submitd.toml" >/dev/null
}

start_submitd() {
  taskset -c 0 "$SUBMITD" serve --config "$WORK/submitd.toml" \
    >>"$RESULTS/submitd.log" 2>&1 </dev/null &
  SUBMITD_PID=$!
  PIDS+=("$SUBMITD_PID")
  echo "$SUBMITD_PID" >"$WORK/submitd.pid"
  wait_until 20 port_open "$S465" || die "submitd is not listening on $S465"
  wait_until 20 port_open "$S587" || die "submitd is not listening on $S587"
}
stop_submitd() {
  [ -n "$SUBMITD_PID" ] && kill "$SUBMITD_PID" 2>/dev/null || true
  [ -n "$SUBMITD_PID" ] && wait "$SUBMITD_PID" 2>/dev/null || true
  SUBMITD_PID=""
}

# --- workloads ---------------------------------------------------------------------------
SUMMARY=$RESULTS/summary.tsv
: >"$SUMMARY"

# bench_run OUT PORT TLS PER_SESSION [more submitd-bench args]: one load run, JSON in OUT.
bench_run() {
  local out=$1 port=$2 tls=$3 per=$4; shift 4
  timeout $((DURATION + 300)) taskset -c 1 "$BENCH" --connect "127.0.0.1:$port" --tls "$tls" \
    --user "$LOGIN" --password "$PASSWORD" --from "$LOGIN" --to "$RCPT" \
    --sessions "$CONC" --per-session "$per" --size "$SIZE" --pipelining --timeout 30 "$@" \
    >"$out" 2>"${out%.json}.stderr" </dev/null || true
  [ -s "$out" ] || die "no result from submitd-bench in $out (see ${out%.json}.stderr)"
}

# load_workload NAME SERVER PORT TLS PER_SESSION
load_workload() {
  local name=$1 server=$2 port=$3 tls=$4 per=$5
  local out="$RESULTS/$name-$server.json" before after msgs
  log "$name on $server: port $port, tls $tls, $per per connection, ${DURATION}s"
  before=$(server_ticks "$server")
  bench_run "$out" "$port" "$tls" "$per" --duration "$DURATION"
  # CPU until every accepted message has left for the sink: accept + deliver.
  wait_until 300 queue_empty "$server" || log "WARNING: $server queue not empty after 300 s"
  after=$(server_ticks "$server")
  msgs=$(jnum messages "$out")
  local cpu
  cpu=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v m="$msgs" \
    'BEGIN { if (m > 0) printf "%.3f", t * 1000 / hz / m; else print "nan" }')
  echo "{\"server\":\"$server\",\"workload\":\"$name\",\"cpu_ticks\":$((after - before)),\"clk_tck\":$CLK_TCK,\"cpu_ms_per_msg\":$cpu,\"loadavg1\":$(cut -d' ' -f1 /proc/loadavg)}" >>"$out"
  printf '%s\t%s\tmsgs_per_sec=%s\tp99_ms=%s\tcpu_ms=%s\terrors=%s\n' "$name" "$server" \
    "$(head -n1 "$out" | grep -o '"msgs_per_sec":[0-9.]*' | cut -d: -f2)" \
    "$(head -n1 "$out" | grep -o '"p99_ms":[0-9.]*' | cut -d: -f2)" "$cpu" \
    "$(head -n1 "$out" | grep -o '"errors":[0-9]*' | cut -d: -f2)" >>"$SUMMARY"
  tail -n2 "$out" >&2
}

# idle_workload SERVER PORT N
idle_workload() {
  local server=$1 port=$2 n=$3
  local out="$RESULTS/e-$server.json" before after pid
  log "e on $server: $n idle TLS connections on $port"
  sleep 2
  if [ "$server" = postfix ]; then before=$(smtpd_pss); else before=$(pss_of "$SUBMITD_PID"); fi
  taskset -c 1 "$BENCH" --connect "127.0.0.1:$port" --tls implicit --idle "$n" --sessions "$CONC" \
    --timeout 30 --hold 600 >"$out" 2>"$RESULTS/e-$server.stderr" </dev/null &
  pid=$!
  PIDS+=("$pid")
  wait_until 300 test -s "$out" || die "idle connections to $server not up within 300 s"
  sleep 3
  if [ "$server" = postfix ]; then after=$(smtpd_pss); else after=$(pss_of "$SUBMITD_PID"); fi
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  local up per
  up=$(jnum up "$out")
  per=$(awk -v a="$after" -v b="$before" -v n="$up" 'BEGIN { if (n > 0) printf "%.1f", (a - b) / n; else print "nan" }')
  echo "{\"server\":\"$server\",\"workload\":\"e\",\"pss_before_kb\":$before,\"pss_after_kb\":$after,\"connections\":$up,\"kb_per_connection\":$per}" >>"$out"
  printf '%s\t%s\tkb_per_conn=%s\tconnections=%s\n' e "$server" "$per" "$up" >>"$SUMMARY"
  tail -n2 "$out" >&2
}

# queue_workload SERVER: N messages queued while the sink is down, then time the flush.
queue_workload() {
  local server=$1 out="$RESULTS/f-$server.json" port t0 t1 before after
  if [ "$server" = postfix ]; then port=$P465; else port=$S465; fi
  log "f on $server: queue $QUEUE_N messages with the sink down"
  stop_sink
  bench_run "$RESULTS/f-$server-submit.json" "$port" implicit "$PER_CONN" --messages "$QUEUE_N"
  wait_until 300 all_deferred "$server" "$QUEUE_N" \
    || die "$server: $QUEUE_N messages not all deferred (see f-$server-submit.json)"
  sleep 1
  start_sink -M "$QUEUE_N"
  local sink=$SINK_PID
  before=$(server_ticks "$server")
  t0=$(date +%s.%N)
  if [ "$server" = postfix ]; then postqueue -f; else "$SUBMITD" queue retry --config "$WORK/submitd.toml" >/dev/null; fi
  local end=$((SECONDS + 600))
  while kill -0 "$sink" 2>/dev/null && [ "$SECONDS" -lt "$end" ]; do sleep 0.05; done
  t1=$(date +%s.%N)
  after=$(server_ticks "$server")
  kill -0 "$sink" 2>/dev/null && die "$server: the sink did not get $QUEUE_N messages within 600 s"
  wait "$sink" 2>/dev/null || true
  SINK_PID=""
  local secs rate cpu
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
  rate=$(awk -v s="$secs" -v n="$QUEUE_N" 'BEGIN { printf "%.1f", n / s }')
  cpu=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v m="$QUEUE_N" 'BEGIN { printf "%.3f", t * 1000 / hz / m }')
  echo "{\"server\":\"$server\",\"workload\":\"f\",\"messages\":$QUEUE_N,\"seconds\":$secs,\"msgs_per_sec\":$rate,\"cpu_ticks\":$((after - before)),\"cpu_ms_per_msg\":$cpu}" >"$out"
  printf '%s\t%s\tmsgs_per_sec=%s\tcpu_ms=%s\n' f "$server" "$rate" "$cpu" >>"$SUMMARY"
  cat "$out" >&2
  # smtp-sink -M exits on the Nth message, possibly before answering a message still in flight
  # on another connection: that one was deferred again. Flush it to the normal sink.
  start_sink
  if [ "$server" = postfix ]; then postqueue -f; else "$SUBMITD" queue retry --config "$WORK/submitd.toml" >/dev/null; fi
  wait_until 120 queue_empty "$server" || log "WARNING: $server queue not empty after the flush"
}

run_all() {   # run_all SERVER PORT465 PORT587
  local server=$1 p465=$2 p587=$3
  log "warm-up on $server"
  bench_run "$RESULTS/warmup-$server.json" "$p465" implicit "$PER_CONN" --messages "$WARMUP"
  wait_until 120 queue_empty "$server" || true
  load_workload a "$server" "$p465" implicit 1
  load_workload b "$server" "$p465" implicit "$PER_CONN"
  load_workload c "$server" "$p587" starttls 1
  load_workload d "$server" "$p587" starttls "$PER_CONN"
  queue_workload "$server"
}

# --- run ---------------------------------------------------------------------------------
start_sink

log "Postfix $(postconf -h mail_version)"
setup_postfix
start_postfix
run_all postfix "$P465" "$P587"
# Fresh processes for the memory figure: no smtpd left idle from the load runs.
stop_postfix
start_postfix
idle_workload postfix "$P465" "$IDLE_POSTFIX"
stop_postfix

log "submitd $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || true)"
setup_submitd
start_submitd
run_all submitd "$S465" "$S587"
stop_submitd
start_submitd
idle_workload submitd "$S465" "$IDLE_SUBMITD"
stop_submitd
stop_sink

# --- table -------------------------------------------------------------------------------
awk -F'\t' -v idle_p="$IDLE_POSTFIX" -v idle_s="$IDLE_SUBMITD" '
  function val(s, key,   i, kv) { for (i = 3; i <= NF; i++) { split($i, kv, "="); if (kv[1] == key) return kv[2] } return "" }
  { rate[$1, $2] = val($0, "msgs_per_sec"); p99[$1, $2] = val($0, "p99_ms"); cpu[$1, $2] = val($0, "cpu_ms");
    kb[$1, $2] = val($0, "kb_per_conn"); err[$1, $2] = val($0, "errors") }
  END {
    name["a"] = "a 465 new connection per message"; name["b"] = "b 465 50 messages per connection"
    name["c"] = "c 587 STARTTLS new connection per message"; name["d"] = "d 587 STARTTLS 50 per connection"
    name["f"] = "f queue delivery to the sink"
    print "| workload | Postfix msg/s | submitd msg/s | ratio submitd/Postfix | Postfix p99 ms | submitd p99 ms | Postfix CPU ms/msg | submitd CPU ms/msg |"
    print "|---|---:|---:|---:|---:|---:|---:|---:|"
    split("a b c d f", ws, " ")
    for (i = 1; i <= 5; i++) {
      w = ws[i]; r = (rate[w, "postfix"] > 0) ? sprintf("%.2f", rate[w, "submitd"] / rate[w, "postfix"]) : "-"
      printf "| %s | %s | %s | %s | %s | %s | %s | %s |\n", name[w], rate[w, "postfix"], rate[w, "submitd"], r,
        (p99[w, "postfix"] == "" ? "-" : p99[w, "postfix"]), (p99[w, "submitd"] == "" ? "-" : p99[w, "submitd"]),
        cpu[w, "postfix"], cpu[w, "submitd"]
    }
    r = (kb["e", "postfix"] > 0) ? sprintf("%.2f", kb["e", "submitd"] / kb["e", "postfix"]) : "-"
    printf "| e idle TLS connection, KB PSS each (Postfix: smtpd PSS at %d; submitd: process PSS at %d) | %s | %s | %s | - | - | - | - |\n", idle_p, idle_s, kb["e", "postfix"], kb["e", "submitd"], r
  }' "$SUMMARY" >"$RESULTS/table.md"
if grep -q 'errors=[1-9]' "$SUMMARY"; then
  echo "NOTE: some runs counted errors (see summary.tsv and the *.stderr files)" >>"$RESULTS/table.md"
fi
echo
cat "$RESULTS/table.md"
echo
log "results in $RESULTS"
