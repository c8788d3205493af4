# Sourced by bench/syscalls.sh and bench/profile.sh: one submitd server in a temp dir, a user,
# smtp-sink as its smarthost, and cleanup on exit. Before sourcing, set SUBMITD (the binary)
# and BASE (the first of three loopback ports: BASE+465, BASE+587, BASE+525). Provides WORK, P465, PIDS,
# `start_sink`, `wait_listening` and `wait_queue_empty`.
export PATH="$PATH:/usr/sbin:/sbin"
WORK=$(mktemp -d /var/tmp/submitd-standalone.XXXXXX)
P465=$((BASE + 465)) P587=$((BASE + 587)) SINK=$((BASE + 525))
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

# start_sink [taskset prefix...]: smtp-sink on the smarthost port.
start_sink() {
  "$@" smtp-sink -c -u nobody 127.0.0.1:$SINK 1000 </dev/null >/dev/null 2>&1 &
  PIDS+=($!)
}

# wait_listening: until 465 accepts (at most 20 s).
wait_listening() {
  for _ in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/$P465) 2>/dev/null && return 0; sleep 0.1; done
  echo "submitd is not listening on $P465" >&2
  return 1
}

# wait_queue_empty: until no message is queued (at most 120 s).
wait_queue_empty() {
  for _ in $(seq 1 1200); do
    [ -z "$(find queue -name '*.q' -o -name '*.env' 2>/dev/null)" ] && return 0
    sleep 0.1
  done
}
