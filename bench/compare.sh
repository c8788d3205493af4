#!/usr/bin/env bash
# submitd next to Postfix on the same workloads, on loopback, on a Debian build machine.
#
#   bench/compare.sh [--quick] [--results DIR] [--skip-build] [--only a,b,...] [--curves LIST]
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
# Scale curves (--curves size,mem,conc,rcpts,depth or all), each point against Postfix then
# submitd, into curves.tsv and SVG charts (bench/plot.py):
#   size   1 KB .. 25 MB on 465 at concurrency 16: msg/s, MB/s, server CPU per message and MB
#   mem    16 sessions sending 25 MB at once: peak memory above idle
#   conc   1, 16, 256, 2048 sessions (465, 50 per connection, 10 KB): msg/s and p99
#   rcpts  1, 10, 100 recipients per message
#   depth  10k, 100k, 1M deferred messages already queued: start to first 220, RSS, msg/s
# --only limits the table workloads (default: all of a-f without --curves, none with it).
# Raw JSON lines, logs and a summary go under the results directory (default
# bench/results/<date>); the table is printed at the end and saved as table.md.
#
# Idempotent: /etc/postfix/main.cf and master.cf are backed up once (*.pre-submitd-bench) and
# restored on exit; Postfix's queue and submitd's temp dir are emptied on every run.
set -euo pipefail

QUICK=0
RESULTS=""
SKIP_BUILD=0
ONLY=""
CURVES=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --results) RESULTS="$2"; shift ;;
    --skip-build) SKIP_BUILD=1 ;;
    --only) ONLY="$2"; shift ;;
    --curves) CURVES="$2"; shift ;;
    -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
    *) echo "compare.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

[ "$CURVES" = all ] && CURVES=size,mem,conc,rcpts,depth
for c in ${CURVES//,/ }; do
  case "$c" in size|mem|conc|rcpts|depth) ;; *) echo "compare.sh: unknown curve $c" >&2; exit 2 ;; esac
done
if [ -z "$ONLY" ]; then
  if [ -z "$CURVES" ]; then ONLY=a,b,c,d,e,f; else ONLY=none; fi
fi
for w in ${ONLY//,/ }; do
  case "$w" in a|b|c|d|e|f|none) ;; *) echo "compare.sh: unknown workload $w" >&2; exit 2 ;; esac
done
want() { [[ ",$ONLY," == *",$1,"* ]]; }
want_curve() { [[ ",$CURVES," == *",$1,"* ]]; }

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
RCPTS=1
BTIMEOUT=30
MB=1048576
BIG=$((25 * MB))         # the largest message of the size curve and of the memory run
SIZE_LIMIT=$((30 * MB))  # both servers' message size limit
# Size curve: bytes (headers included) and messages per connection.
SIZE_POINTS="1024:50 102400:50 $MB:10 $((5 * MB)):5 $((10 * MB)):2 $BIG:2"
CONC_POINTS="1 16 256 2048"
RCPT_POINTS="1 10 100"
if [ "$QUICK" = 1 ]; then
  DURATION=2 QUEUE_N=200 IDLE_SUBMITD=200 IDLE_POSTFIX=20 WARMUP=20
  DEPTH_SUBMITD="1000 10000" DEPTH_POSTFIX="1000" SETTLE=20
else
  DURATION=10 QUEUE_N=3000 IDLE_SUBMITD=10000 IDLE_POSTFIX=200 WARMUP=200
  DEPTH_SUBMITD="10000 100000 1000000" DEPTH_POSTFIX="10000 100000" SETTLE=120
fi
# Postfix's deferred queue is filled over SMTP: a further depth is skipped when the estimate
# from the previous fill (linear in the count) exceeds this many seconds.
POSTFIX_FILL_BUDGET=300
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
if want e; then
  [ "$(ulimit -n)" -ge $((IDLE_SUBMITD + 1000)) ] || die "ulimit -n $(ulimit -n) is too low for $IDLE_SUBMITD idle connections"
fi

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
  echo "workloads: $ONLY curves: ${CURVES:-none}"
  echo "ulimit -n: $(ulimit -n) (hard $(ulimit -Hn))"
  echo "sysctl: somaxconn $(cat /proc/sys/net/core/somaxconn) pid_max $(cat /proc/sys/kernel/pid_max) file-max $(cat /proc/sys/fs/file-max) threads-max $(cat /proc/sys/kernel/threads-max)"
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
# 30 MB: room for the 25 MB messages of the size curve and the memory run.
message_size_limit = $SIZE_LIMIT
mailbox_size_limit = 0
# 2048 sessions at once (the concurrency curve) are 2048 smtpd processes.
default_process_limit = 2100
# Deferred mail is retried only when flushed (workload f) or hours later: the queue-depth
# runs keep their deferred messages where they are.
minimal_backoff_time = 2h
maximal_backoff_time = 4h
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
max_message_size = $SIZE_LIMIT
max_recipients = 1000
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

start_submitd_bg() {
  taskset -c 0 "$SUBMITD" serve --config "$WORK/submitd.toml" \
    >>"$RESULTS/submitd.log" 2>&1 </dev/null &
  SUBMITD_PID=$!
  PIDS+=("$SUBMITD_PID")
  echo "$SUBMITD_PID" >"$WORK/submitd.pid"
}
start_submitd() {
  start_submitd_bg
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
# CONC, SIZE, RCPTS and BTIMEOUT may be overridden by a caller's locals.
bench_run() {
  local out=$1 port=$2 tls=$3 per=$4; shift 4
  timeout $((DURATION + 300 + 4 * BTIMEOUT)) taskset -c 1 "$BENCH" --connect "127.0.0.1:$port" --tls "$tls" \
    --user "$LOGIN" --password "$PASSWORD" --from "$LOGIN" --to "$RCPT" --rcpts "$RCPTS" \
    --sessions "$CONC" --per-session "$per" --size "$SIZE" --pipelining --timeout "$BTIMEOUT" "$@" \
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
  want a && load_workload a "$server" "$p465" implicit 1
  want b && load_workload b "$server" "$p465" implicit "$PER_CONN"
  want c && load_workload c "$server" "$p587" starttls 1
  want d && load_workload d "$server" "$p587" starttls "$PER_CONN"
  want f && queue_workload "$server"
  return 0
}

# --- curves ------------------------------------------------------------------------------
CURVES_TSV=$RESULTS/curves.tsv
: >"$CURVES_TSV"

# jfield KEY FILE: a number from the first JSON line of FILE (the submitd-bench line).
jfield() { head -n1 "$2" | grep -o "\"$1\":[-0-9.e+]*" | head -n1 | cut -d: -f2; }

# curve_point CURVE X SERVER PORT PER: one load run with the caller's CONC, SIZE, RCPTS;
# a line in curves.tsv: msg/s, MB/s, latency, server CPU per message and per MB (accept and
# deliver, as in load_workload).
curve_point() {
  local curve=$1 x=$2 server=$3 port=$4 per=$5
  local out="$RESULTS/$curve-$x-$server.json" before after msgs
  log "$curve=$x on $server: port $port, $CONC sessions, $SIZE bytes, $RCPTS rcpts, $per per connection"
  before=$(server_ticks "$server")
  bench_run "$out" "$port" implicit "$per" --duration "$DURATION"
  wait_until 600 queue_empty "$server" || log "WARNING: $server queue not empty after 600 s"
  after=$(server_ticks "$server")
  msgs=$(jnum messages "$out")
  local cpu cpu_mb
  cpu=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v m="$msgs" \
    'BEGIN { if (m > 0) printf "%.3f", t * 1000 / hz / m; else print "nan" }')
  cpu_mb=$(awk -v c="$cpu" -v s="$SIZE" -v mb="$MB" 'BEGIN { if (c != "nan") printf "%.3f", c / (s / mb); else print "nan" }')
  echo "{\"server\":\"$server\",\"curve\":\"$curve\",\"x\":$x,\"cpu_ticks\":$((after - before)),\"clk_tck\":$CLK_TCK,\"cpu_ms_per_msg\":$cpu,\"cpu_ms_per_mb\":$cpu_mb,\"loadavg1\":$(cut -d' ' -f1 /proc/loadavg)}" >>"$out"
  printf '%s\t%s\t%s\tmsgs_per_sec=%s\tmb_per_sec=%s\tp50_ms=%s\tp99_ms=%s\tcpu_ms=%s\tcpu_ms_per_mb=%s\tmessages=%s\terrors=%s\n' \
    "$curve" "$x" "$server" "$(jfield msgs_per_sec "$out")" "$(jfield mb_per_sec "$out")" \
    "$(jfield p50_ms "$out")" "$(jfield p99_ms "$out")" "$cpu" "$cpu_mb" "$msgs" "$(jfield errors "$out")" >>"$CURVES_TSV"
  tail -n2 "$out" >&2
}

curve_size() {   # curve_size SERVER PORT
  local point SIZE per
  for point in $SIZE_POINTS; do
    SIZE=${point%%:*} per=${point##*:}
    local BTIMEOUT=120
    curve_point size "$SIZE" "$1" "$2" "$per"
  done
}
curve_conc() {
  local CONC BTIMEOUT=120
  for CONC in $CONC_POINTS; do curve_point conc "$CONC" "$1" "$2" "$PER_CONN"; done
}
curve_rcpts() {
  local RCPTS
  for RCPTS in $RCPT_POINTS; do curve_point rcpts "$RCPTS" "$1" "$2" "$PER_CONN"; done
}

kb_of() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# PSS of the current master's smtpd and cleanup processes: where Postfix holds a message in
# flight (smtpd receives it, cleanup writes the queue file).
postfix_inflight_pss() {
  local total=0 pid p
  for pid in $(pgrep -P "$(postfix_master)" -x 'smtpd|cleanup'); do p=$(pss_of "$pid"); total=$((total + ${p:-0})); done
  echo "$total"
}
# PSS of Postfix as a whole: the master and every child.
postfix_total_pss() {
  local master total pid p
  master=$(postfix_master)
  total=$(pss_of "$master")
  for pid in $(pgrep -P "$master"); do p=$(pss_of "$pid"); total=$((total + ${p:-0})); done
  echo "$total"
}

# mem_run SERVER PORT: 16 sessions send one 25 MB message each, at once.
mem_run() {
  local server=$1 port=$2 out="$RESULTS/mem-$1.json" idle peak hwm=0 sampler
  local CONC=16 SIZE=$BIG BTIMEOUT=300
  log "mem on $server: 16 x $SIZE bytes at once"
  sleep 2
  if [ "$server" = postfix ]; then
    idle=$(postfix_inflight_pss)
    # No high-water mark across processes that come and go: sample the sum every 0.1 s.
    ( max=0; while :; do v=$(postfix_inflight_pss); [ "$v" -gt "$max" ] && max=$v && echo "$max" >"$RESULTS/mem-postfix.peak"; sleep 0.1; done ) &
    sampler=$!
    PIDS+=("$sampler")
  else
    idle=$(kb_of "$SUBMITD_PID" VmRSS)
  fi
  bench_run "$RESULTS/mem-$server-run.json" "$port" implicit 1 --messages 16
  wait_until 600 queue_empty "$server" || log "WARNING: $server queue not empty after 600 s"
  if [ "$server" = postfix ]; then
    kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null || true
    peak=$(cat "$RESULTS/mem-postfix.peak" 2>/dev/null || echo 0)
    local how="sum of smtpd+cleanup PSS, sampled every 0.1 s"
  else
    hwm=$(kb_of "$SUBMITD_PID" VmHWM)
    peak=$hwm
    local how="VmHWM of the process"
  fi
  local above=$((peak - idle))
  echo "{\"server\":\"$server\",\"curve\":\"mem\",\"idle_kb\":$idle,\"peak_kb\":$peak,\"above_idle_kb\":$above,\"how\":\"$how\"}" >"$out"
  printf '%s\t%s\t%s\tidle_kb=%s\tpeak_kb=%s\tabove_idle_kb=%s\terrors=%s\n' mem "$BIG" "$server" \
    "$idle" "$peak" "$above" "$(jfield errors "$RESULTS/mem-$server-run.json")" >>"$CURVES_TSV"
  cat "$out" >&2
}

# banner_time PORT LIMIT: prints the Unix time of the first 220 greeting on PORT (plain text).
banner_time() {
  python3 - "$1" "$2" <<'PY'
import socket, sys, time
port, end = int(sys.argv[1]), time.time() + float(sys.argv[2])
while time.time() < end:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.settimeout(max(1.0, end - time.time()))
            buf = b""
            while b"\n" not in buf and len(buf) < 4096:
                chunk = s.recv(512)
                if not chunk:
                    break
                buf += chunk
            if buf.startswith(b"220"):
                print("%.6f" % time.time())
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.01)
sys.exit(1)
PY
}

# settled_kb COMMAND...: sample COMMAND (a KB figure) every second until three samples in a
# row are within 1% of each other, at most SETTLE seconds; prints the last sample.
settled_kb() {
  local prev=-1 cur stable=0 end=$((SECONDS + SETTLE))
  while [ "$SECONDS" -lt "$end" ]; do
    cur=$("$@")
    if [ "$prev" -ge 0 ] && awk -v a="$cur" -v b="$prev" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= a / 100) }'; then
      stable=$((stable + 1))
      [ "$stable" -ge 3 ] && break
    else
      stable=0
    fi
    prev=$cur
    sleep 1
  done
  echo "$cur"
}

submitd_rss() { kb_of "$SUBMITD_PID" VmRSS; }
queue_files() { find "$WORK/queue" -name '*.q' -type f 2>/dev/null | wc -l; }

# loaded_since LINE: submitd logged, after line LINE of its log, that its queue is loaded.
loaded_since() { tail -n +"$(($1 + 1))" "$RESULTS/submitd.log" | grep -q "existing messages loaded"; }

# depth_point SERVER N FILL_SECONDS: restart the server over a queue of N deferred messages,
# time start to first 220, memory once settled, then new-submission msg/s on 465.
depth_point() {
  local server=$1 n=$2 fill=$3 t0 t1 rss port
  log "depth=$n on $server: restart over the queue"
  if [ "$server" = postfix ]; then
    stop_postfix
    t0=$(date +%s.%N)
    taskset -c 0 postfix start >/dev/null 2>&1 || die "postfix start (see $RESULTS/postfix.log)"
    t1=$(banner_time "$P587" 600) || die "Postfix: no 220 on $P587 within 600 s over $n deferred"
    wait_until 20 port_open "$P465" || die "Postfix is not listening on $P465"
    rss=$(settled_kb postfix_total_pss)
    port=$P465
  else
    stop_submitd
    local logged
    logged=$(wc -l <"$RESULTS/submitd.log" 2>/dev/null || echo 0)
    t0=$(date +%s.%N)
    start_submitd_bg
    t1=$(banner_time "$S587" 600) || die "submitd: no 220 on $S587 within 600 s over $n deferred"
    wait_until 60 port_open "$S465" || die "submitd is not listening on $S465"
    # The queue is loaded in the background: measure once its log line says it is in (the
    # memory would not settle before; new mail would share the core with the load).
    wait_until 600 loaded_since "$logged" || log "WARNING: submitd's queue load not done after 600 s"
    rss=$(settled_kb submitd_rss)
    port=$S465
  fi
  local banner_ms
  banner_ms=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", (b - a) * 1000 }')
  local out="$RESULTS/depth-$n-$server.json" before after
  before=$(server_ticks "$server")
  bench_run "$out" "$port" implicit "$PER_CONN" --duration "$DURATION"
  after=$(server_ticks "$server")
  local hwm=0
  [ "$server" = submitd ] && hwm=$(kb_of "$SUBMITD_PID" VmHWM)
  local cpu
  cpu=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v m="$(jnum messages "$out")" \
    'BEGIN { if (m > 0) printf "%.3f", t * 1000 / hz / m; else print "nan" }')
  echo "{\"server\":\"$server\",\"curve\":\"depth\",\"x\":$n,\"fill_seconds\":$fill,\"banner_ms\":$banner_ms,\"settled_kb\":$rss,\"hwm_kb\":$hwm,\"cpu_ms_per_msg_accept\":$cpu}" >>"$out"
  printf '%s\t%s\t%s\tbanner_ms=%s\tsettled_kb=%s\thwm_kb=%s\tmsgs_per_sec=%s\tp99_ms=%s\tcpu_ms=%s\tfill_s=%s\terrors=%s\n' \
    depth "$n" "$server" "$banner_ms" "$rss" "$hwm" "$(jfield msgs_per_sec "$out")" "$(jfield p99_ms "$out")" \
    "$cpu" "$fill" "$(jfield errors "$out")" >>"$CURVES_TSV"
  tail -n2 "$out" >&2
  # Let the new messages reach the sink before the next fill or restart.
  sleep 2
}

# Postfix: the deferred queue filled over SMTP with the sink down (as in workload f), in steps.
curve_depth_postfix() {
  local n have=0 t0 fill=0 add
  depth_point postfix 0 0
  for n in $DEPTH_POSTFIX; do
    add=$((n - have))
    if [ "$have" -gt 0 ] && [ "$((fill * add / have))" -gt "$POSTFIX_FILL_BUDGET" ]; then
      log "depth=$n on postfix skipped: filling $add more would take ~$((fill * add / have)) s"
      printf '%s\t%s\t%s\tskipped=fill estimate %ss over the %ss budget\n' depth "$n" postfix \
        "$((fill * add / have))" "$POSTFIX_FILL_BUDGET" >>"$CURVES_TSV"
      continue
    fi
    stop_sink
    t0=$SECONDS
    local CONC=16
    bench_run "$RESULTS/depth-$n-postfix-fill.json" "$P465" implicit "$PER_CONN" --messages "$add"
    wait_until 900 all_deferred postfix "$n" || die "Postfix: $n messages not all deferred"
    fill=$((fill + SECONDS - t0)) have=$n
    start_sink
    depth_point postfix "$n" "$fill"
  done
  stop_postfix
  postsuper -d ALL >/dev/null 2>&1 || true
}

# submitd: the queue filled offline through the spool API (submitd-bench --fill-queue).
curve_depth_submitd() {
  local n have=0 t0 fill=0
  depth_point submitd 0 0
  for n in $DEPTH_SUBMITD; do
    stop_submitd
    t0=$SECONDS
    log "filling submitd's queue to $n"
    timeout 7200 nice "$BENCH" --fill-queue "$WORK/queue" $((n - have)) --size 1024 \
      --from "$LOGIN" --to held@deferred.invalid --threads 16 \
      >>"$RESULTS/depth-fill-submitd.json" 2>>"$RESULTS/depth-fill-submitd.stderr" </dev/null \
      || die "filling the queue failed (see depth-fill-submitd.stderr)"
    fill=$((fill + SECONDS - t0)) have=$n
    depth_point submitd "$n" "$fill"
    log "queue files after depth=$n: $(queue_files)"
  done
  stop_submitd
  rm -rf "$WORK/queue"
}

run_curves() {   # run_curves SERVER PORT465
  local server=$1 port=$2
  want_curve size && curve_size "$server" "$port"
  want_curve rcpts && curve_rcpts "$server" "$port"
  want_curve conc && curve_conc "$server" "$port"
  return 0
}

# --- run ---------------------------------------------------------------------------------
start_sink

log "Postfix $(postconf -h mail_version)"
setup_postfix
start_postfix
run_all postfix "$P465" "$P587"
run_curves postfix "$P465"
# Fresh processes for the memory figures: no smtpd left idle from the load runs.
if want e; then
  stop_postfix
  start_postfix
  idle_workload postfix "$P465" "$IDLE_POSTFIX"
fi
if want_curve mem; then
  stop_postfix
  start_postfix
  mem_run postfix "$P465"
fi
want_curve depth && curve_depth_postfix
stop_postfix

log "submitd $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || true)"
setup_submitd
start_submitd
run_all submitd "$S465" "$S587"
run_curves submitd "$S465"
stop_submitd
if want e; then
  start_submitd
  idle_workload submitd "$S465" "$IDLE_SUBMITD"
  stop_submitd
fi
if want_curve mem; then
  start_submitd
  mem_run submitd "$S465"
  stop_submitd
fi
want_curve depth && curve_depth_submitd
stop_sink

# --- table -------------------------------------------------------------------------------
: >"$RESULTS/table.md"
[ -s "$SUMMARY" ] && awk -F'\t' -v idle_p="$IDLE_POSTFIX" -v idle_s="$IDLE_SUBMITD" '
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
      w = ws[i]
      if (rate[w, "postfix"] == "" && rate[w, "submitd"] == "") continue
      r = (rate[w, "postfix"] > 0) ? sprintf("%.2f", rate[w, "submitd"] / rate[w, "postfix"]) : "-"
      printf "| %s | %s | %s | %s | %s | %s | %s | %s |\n", name[w], rate[w, "postfix"], rate[w, "submitd"], r,
        (p99[w, "postfix"] == "" ? "-" : p99[w, "postfix"]), (p99[w, "submitd"] == "" ? "-" : p99[w, "submitd"]),
        cpu[w, "postfix"], cpu[w, "submitd"]
    }
    if (kb["e", "postfix"] == "" && kb["e", "submitd"] == "") exit
    r = (kb["e", "postfix"] > 0) ? sprintf("%.2f", kb["e", "submitd"] / kb["e", "postfix"]) : "-"
    printf "| e idle TLS connection, KB PSS each (Postfix: smtpd PSS at %d; submitd: process PSS at %d) | %s | %s | %s | - | - | - | - |\n", idle_p, idle_s, kb["e", "postfix"], kb["e", "submitd"], r
  }' "$SUMMARY" >"$RESULTS/table.md"
if grep -q 'errors=[1-9]' "$SUMMARY"; then
  echo "NOTE: some runs counted errors (see summary.tsv and the *.stderr files)" >>"$RESULTS/table.md"
fi
if [ -s "$CURVES_TSV" ]; then
  if grep -q 'errors=[1-9]' "$CURVES_TSV"; then
    echo "NOTE: some curve points counted errors (see curves.tsv and the *.stderr files)" >>"$RESULTS/table.md"
  fi
  timeout 120 python3 "$ROOT/bench/plot.py" "$RESULTS" >&2 || log "WARNING: bench/plot.py failed"
  echo >>"$RESULTS/table.md"
  cat "$RESULTS/curves.md" >>"$RESULTS/table.md" 2>/dev/null || true
fi
echo
cat "$RESULTS/table.md"
echo
log "results in $RESULTS"
