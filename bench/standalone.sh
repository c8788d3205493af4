# Sourced by bench/syscalls.sh and bench/profile.sh: one submitd server in a temp dir, a user,
# smtp-sink as its smarthost, and cleanup on exit. Before sourcing, set SUBMITD (the binary)
# and BASE (the first of three loopback ports: BASE+465, BASE+587, BASE+525). Provides WORK, P465, PIDS,
# `start_sink`, `wait_listening` and `wait_queue_empty`.
#
# SPOOL_ROOT (default /var/tmp) is where the temp dir, and so the queue, goes. Put it on the
# kind of filesystem a server would run on: on ext4 *without a journal* (some VM images), every
# file creation scans past the inodes freed in the last seconds to minutes (`recently_deleted`
# in `perf`), so a run that follows thousands of deleted spool files is slowed by its
# predecessor, whatever it measures. A loop-mounted ext4 with its default journal avoids it:
#   truncate -s 4G /var/tmp/spool.img && mkfs.ext4 -q /var/tmp/spool.img
#   mkdir -p /mnt/spool && mount -o loop /var/tmp/spool.img /mnt/spool   # then SPOOL_ROOT=/mnt/spool
export PATH="$PATH:/usr/sbin:/sbin"
WORK=$(mktemp -d "${SPOOL_ROOT:-/var/tmp}/submitd-standalone.XXXXXX")
# Warn when WORK is on ext4 without a journal (its device has no /proc/fs/jbd2 entry).
spool_dev=$(basename "$(findmnt -no SOURCE --target "$WORK" 2>/dev/null || true)")
if [ -n "$spool_dev" ] && [ -d "/proc/fs/ext4/$spool_dev" ] && ! compgen -G "/proc/fs/jbd2/$spool_dev-*" >/dev/null; then
  echo "bench: $WORK is on ext4 without a journal ($spool_dev): file creation after mass deletion is slowed, and results depend on run order; set SPOOL_ROOT (see bench/standalone.sh)" >&2
fi
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
