#!/usr/bin/env bash
# The container image's runtime contract, checked without a container engine (none here):
#
#   - the binary built with the Dockerfile's command (`cargo build --release --locked`), with
#     the file capability the Dockerfile sets (cap_net_bind_service=+ep);
#   - the image's layout (/etc/submitd with config, certs, users; /var/spool/submitd owned by
#     uid 10001), recreated under a temporary root; the config is the image's
#     (config/submitd.toml) with only the paths, listen ports and relay rewritten;
#   - run as uid/gid 10001 with no supplementary groups, like `USER 10001:10001`;
#   - a port below 1024 is bound by uid 10001 through the capability (465 or 587 when free,
#     else another free port below 1024), and a copy without the capability cannot;
#   - the HEALTHCHECK command passes; a mail submitted with curl lands in the spool owned by
#     uid 10001; SIGTERM stops the server cleanly (exit 0).
#
# Not tested: the image build itself (no Docker engine; podman is tried only when a local
# rust:1.95-bookworm and debian:bookworm-slim image exist, since there is no registry).
#
# Needs root (setcap, setpriv), curl, python3, libcap2-bin. SUBMITD_BIN overrides the binary.
set -euo pipefail
cd "$(dirname "$0")/../.."

say() { printf 'container: %s\n' "$*"; }
fail() { printf 'container: FAIL: %s\n' "$*" >&2; exit 1; }

if [ "$(id -u)" -ne 0 ]; then
  say "SKIP: needs root for setcap and setpriv"
  exit 0
fi
for tool in setcap getcap setpriv curl python3; do
  command -v "$tool" >/dev/null || fail "$tool is missing (apt-get install libcap2-bin util-linux curl python3)"
done

if [ -z "${SUBMITD_BIN:-}" ]; then
  # The Dockerfile's build command, verbatim.
  cargo build --release --locked
  SUBMITD_BIN=target/release/submitd
fi

UID_=10001
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
# A free port below 1024 on 127.0.0.1: 465, 587, then 1023 downwards.
low_port() {
  python3 - <<'PY'
import socket
for p in [465, 587] + list(range(1023, 900, -1)):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", p))
    except OSError:
        continue
    finally:
        s.close()
    print(p)
    break
PY
}

root=$(mktemp -d)
server_pid=""
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -KILL "$server_pid" 2>/dev/null || true
  fi
  if [ -n "${KEEP_WORK:-}" ]; then say "kept $root"; else rm -rf "$root"; fi
}
trap cleanup EXIT
chmod 0755 "$root"

# --- The image's layout ------------------------------------------------------------------------
etc="$root/etc/submitd"
spool="$root/var/spool/submitd"
bin="$root/usr/local/bin/submitd"
install -d -m 0755 "$root/etc" "$root/var" "$root/var/spool" "$root/usr/local/bin"
install -d -m 0750 -o 0 -g "$UID_" "$etc" "$etc/certs"
install -d -m 0700 -o "$UID_" -g "$UID_" "$spool"
install -m 0755 "$SUBMITD_BIN" "$bin"
setcap cap_net_bind_service=+ep "$bin"
getcap "$bin" | grep -q cap_net_bind_service || fail "setcap did not take on $bin"

"$bin" cert self-signed --hostname mail.example.test --out "$etc/certs" >/dev/null
chown 0:"$UID_" "$etc/certs/cert.pem" "$etc/certs/key.pem"
chmod 0640 "$etc/certs/cert.pem" "$etc/certs/key.pem"

low=$(low_port)
[ -n "$low" ] || fail "no free port below 1024 on 127.0.0.1"
high=$(free_port)
dead=$(free_port)   # nothing listens there: deliveries defer, the mail stays in the spool
# The image's config, with the container paths moved under $root and loopback ports. The
# submission (587) side gets the high port, the submissions (465) side the privileged one.
sed -e "s|^dir = \"/var/spool/submitd\"|dir = \"$spool\"|" \
    -e "s|^submission  = \[\"0.0.0.0:587\"\]|submission  = [\"127.0.0.1:$high\"]|" \
    -e "s|^submissions = \[\"0.0.0.0:465\"\]|submissions = [\"127.0.0.1:$low\"]|" \
    -e "s|^mode = \"mx\"|mode = \"smarthost\"|" \
    -e "s|^smarthost = \"\"|smarthost = \"127.0.0.1:$dead\"|" \
    -e "s|^smarthost_tls = \"starttls\"|smarthost_tls = \"none\"|" \
    config/submitd.toml > "$etc/submitd.toml"
for want in "dir = \"$spool\"" "127.0.0.1:$high" "127.0.0.1:$low" "127.0.0.1:$dead"; do
  grep -qF "$want" "$etc/submitd.toml" || fail "config rewrite missed $want (config/submitd.toml changed?)"
done
chown 0:"$UID_" "$etc/submitd.toml"
chmod 0640 "$etc/submitd.toml"

password="container-test-pw"
printf '%s\n' "$password" | "$bin" user add alice@example.test --password-stdin \
  --config "$etc/submitd.toml" 2>/dev/null
chown 0:"$UID_" "$etc/users.toml"
chmod 0640 "$etc/users.toml"

as_submitd() {
  setpriv --reuid="$UID_" --regid="$UID_" --clear-groups \
    env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/var/spool/submitd "$@"
}

as_submitd "$bin" check-config --config "$etc/submitd.toml" >/dev/null \
  || fail "check-config as uid $UID_"

# --- The capability is what lets uid 10001 bind below 1024 -------------------------------------
unprivileged_start=$(sysctl -n net.ipv4.ip_unprivileged_port_start 2>/dev/null || echo 1024)
if [ "$unprivileged_start" -le "$low" ]; then
  say "note: net.ipv4.ip_unprivileged_port_start=$unprivileged_start here: port $low needs no capability, the negative check is skipped"
else
  nocap="$root/usr/local/bin/submitd-nocap"
  install -m 0755 "$SUBMITD_BIN" "$nocap"
  log="$root/nocap.log"
  set +e
  as_submitd timeout 20 "$nocap" serve --config "$etc/submitd.toml" >"$log" 2>&1
  rc=$?
  set -e
  [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] || fail "without the capability uid $UID_ started on port $low (exit $rc)"
  grep -qi "permission denied" "$log" || fail "without the capability: expected 'permission denied', got: $(cat "$log")"
  say "ok: without the capability uid $UID_ cannot bind port $low"
fi

# --- Run it as the image does ------------------------------------------------------------------
log="$root/server.log"
# Not through the as_submitd function: `&` on a function forks a subshell, and $! would be
# that shell's pid, not the server's.
setpriv --reuid="$UID_" --regid="$UID_" --clear-groups \
  env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/var/spool/submitd \
  "$bin" serve --config "$etc/submitd.toml" >"$log" 2>&1 &
server_pid=$!

healthy=""
for _ in $(seq 1 60); do
  if as_submitd "$bin" health --config "$etc/submitd.toml" >/dev/null 2>&1; then
    healthy=yes
    break
  fi
  kill -0 "$server_pid" 2>/dev/null || fail "server exited: $(cat "$log")"
  sleep 0.5
done
[ -n "$healthy" ] || fail "health did not pass within 30 s: $(cat "$log")"
say "ok: HEALTHCHECK command passes ($(as_submitd "$bin" health --config "$etc/submitd.toml"))"

[ "$(ps -o uid= -p "$server_pid" | tr -d ' ')" = "$UID_" ] || fail "server not running as uid $UID_"
[ "$(ps -o gid= -p "$server_pid" | tr -d ' ')" = "$UID_" ] || fail "server not running as gid $UID_"
capeff=$(awk '/^CapEff:/ {print $2}' "/proc/$server_pid/status")
[ "$capeff" = "0000000000000400" ] || fail "effective capabilities $capeff, want only cap_net_bind_service (0x400)"
say "ok: running as uid/gid $UID_ with only cap_net_bind_service, listening on 127.0.0.1:$low"

# Implicit TLS on the privileged port, then STARTTLS on the other.
marker="container-$(date +%s)-$$"
mail="$root/mail.eml"
printf 'From: alice@example.test\r\nTo: bob@example.net\r\nSubject: %s\r\n\r\nHello from the container test.\r\n' \
  "$marker" >"$mail"
timeout 30 curl -sS --ssl-reqd -k --url "smtps://127.0.0.1:$low" \
  --user "alice@example.test:$password" --mail-from alice@example.test \
  --mail-rcpt bob@example.net -T "$mail" || fail "curl submission over implicit TLS"
timeout 30 curl -sS --ssl-reqd -k --url "smtp://127.0.0.1:$high" \
  --user "alice@example.test:$password" --mail-from alice@example.test \
  --mail-rcpt bob@example.net -T "$mail" || fail "curl submission over STARTTLS"

found=0
# The smarthost is unreachable, so a message may already wait in deferred/XY/.
while IFS= read -r f; do
  grep -q "$marker" "$f" || continue
  head -c 8 "$f" | grep -q SUBMITDQ || fail "$f is not a version 2 queue file"
  [ "$(stat -c %u:%g "$f")" = "$UID_:$UID_" ] || fail "$f owned by $(stat -c %u:%g "$f")"
  found=$((found + 1))
done < <(find "$spool" -name '*.q' -type f -not -path "$spool/quarantine/*")
[ "$found" -eq 2 ] || fail "expected 2 queued messages with $marker, found $found: $(ls -lR "$spool")"
if [ -d "$spool/deferred" ]; then
  while IFS= read -r d; do
    [ "$(stat -c %u:%g:%a "$d")" = "$UID_:$UID_:700" ] || fail "$d is $(stat -c %u:%g:%a "$d"), want $UID_:$UID_:700"
  done < <(find "$spool/deferred" -type d)
fi
say "ok: both submissions queued in the spool, files owned by $UID_:$UID_"

# --- SIGTERM: a clean stop ---------------------------------------------------------------------
kill -TERM "$server_pid"
stopped=""
for _ in $(seq 1 80); do
  if ! kill -0 "$server_pid" 2>/dev/null; then
    stopped=yes
    break
  fi
  sleep 0.5
done
[ -n "$stopped" ] || fail "server still running 40 s after SIGTERM"
set +e
wait "$server_pid"
rc=$?
set -e
server_pid=""
[ "$rc" -eq 0 ] || fail "exit status $rc after SIGTERM: $(tail -5 "$log")"
grep -q "shutting down" "$log" || fail "no shutdown line in the log"
say "ok: SIGTERM stopped it with exit 0"

# --- The image build, only where it can work offline -------------------------------------------
if command -v podman >/dev/null \
   && podman image exists docker.io/library/rust:1.95-bookworm 2>/dev/null \
   && podman image exists docker.io/library/debian:bookworm-slim 2>/dev/null; then
  podman build --pull=never -t submitd:ci . || fail "podman build"
  say "ok: podman build"
else
  say "note: image build not tested (no podman with local rust:1.95-bookworm and debian:bookworm-slim images; no registry)"
fi
say "PASS"
