#!/usr/bin/env bash
# Real mail clients against a real submitd, relaying to a real receiving SMTP server.
#
# The receiver is aiosmtpd (pip, pinned, in a private venv) writing every message to a file.
# submitd (release build by default; SUBMITD_BIN overrides) relays to it in smarthost mode.
# One user, then one message per client and port: swaks, msmtp, curl, Python smtplib and
# (when npm reaches its registry) nodemailer, each over 587 with STARTTLS and over 465 with
# implicit TLS. Every message carries a unique marker, UTF-8 text, a 900-octet line and lines
# starting with dots (SMTP dot-stuffing). For each one the receiver must get, within a bounded
# wait, the submitted bytes exactly, preceded only by header lines submitd added (Received
# first), from alice to bob.
#
# Needs: swaks msmtp curl python3 (python3-venv), node/npm optional. Exits 1 with a per-client
# report when any client or check failed. Ports are picked free at run time.
set -euo pipefail
cd "$(dirname "$0")/../.."

AIOSMTPD_VERSION=1.4.6
NODEMAILER_VERSION=10.6.1
WAIT_SECONDS=60

say() { printf 'clients: %s\n' "$*"; }
fail() { printf 'clients: FAIL: %s\n' "$*" >&2; exit 1; }

for tool in swaks msmtp curl python3; do
  command -v "$tool" >/dev/null || fail "$tool is missing (apt-get install swaks msmtp curl python3 python3-venv)"
done

if [ -z "${SUBMITD_BIN:-}" ]; then
  cargo build --release --locked
  SUBMITD_BIN=target/release/submitd
fi
SUBMITD_BIN=$(realpath "$SUBMITD_BIN")
here=$(realpath tests/clients)

work=$(mktemp -d)
receiver_pid=""
server_pid=""
cleanup() {
  for pid in "$server_pid" "$receiver_pid"; do
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  if [ -n "${KEEP_WORK:-}" ]; then say "work dir kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_port() { # PORT PID NAME LOG
  for _ in $(seq 1 120); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    kill -0 "$2" 2>/dev/null || fail "$3 exited: $(cat "$4")"
    sleep 0.25
  done
  fail "$3 not listening on $1 within 30 s: $(cat "$4")"
}

# --- Receiver ----------------------------------------------------------------------------------
python3 -m venv "$work/venv" || fail "python3 -m venv (apt-get install python3-venv)"
timeout 300 "$work/venv/bin/pip" install --quiet --disable-pip-version-check \
  "aiosmtpd==$AIOSMTPD_VERSION" || fail "pip install aiosmtpd==$AIOSMTPD_VERSION"
mkdir -p "$work/received"
sink_port=$(free_port)
"$work/venv/bin/python" "$here/receiver.py" 127.0.0.1 "$sink_port" "$work/received" \
  >"$work/receiver.log" 2>&1 &
receiver_pid=$!
wait_port "$sink_port" "$receiver_pid" receiver "$work/receiver.log"

# --- submitd -----------------------------------------------------------------------------------
p587=$(free_port)
p465=$(free_port)
password="clients-$RANDOM-$RANDOM-pw"
"$SUBMITD_BIN" cert self-signed --hostname mail.example.test --out "$work/certs" >/dev/null
cat >"$work/submitd.toml" <<EOF
hostname = "mail.example.test"

[listen]
submission = ["127.0.0.1:$p587"]
submissions = ["127.0.0.1:$p465"]

[tls]
cert = "certs/cert.pem"
key = "certs/key.pem"

[auth]
users = "users.toml"

[queue]
dir = "queue"
retry = ["1s"]

[relay]
mode = "smarthost"
smarthost = "127.0.0.1:$sink_port"
smarthost_tls = "none"
EOF
printf '%s\n' "$password" | "$SUBMITD_BIN" user add alice@example.test --password-stdin \
  --config "$work/submitd.toml" 2>/dev/null
RUST_LOG=info "$SUBMITD_BIN" serve --config "$work/submitd.toml" >"$work/submitd.log" 2>&1 &
server_pid=$!
healthy=""
for _ in $(seq 1 60); do
  if "$SUBMITD_BIN" health --config "$work/submitd.toml" >/dev/null 2>&1; then healthy=yes; break; fi
  kill -0 "$server_pid" 2>/dev/null || fail "submitd exited: $(cat "$work/submitd.log")"
  sleep 0.5
done
[ -n "$healthy" ] || fail "submitd not healthy within 30 s: $(cat "$work/submitd.log")"
say "receiver on $sink_port, submitd on $p587 (STARTTLS) and $p465 (TLS)"

# --- Messages ----------------------------------------------------------------------------------
mkdir -p "$work/msgs"
make_message() { # MARKER -> path of a CRLF message
  python3 - "$1" "$work/msgs/$1.eml" <<'PY'
import sys, email.utils
marker, path = sys.argv[1], sys.argv[2]
lines = [
    "From: Alice <alice@example.test>",
    "To: Bob <bob@example.net>",
    f"Subject: client test {marker}",
    f"Date: {email.utils.formatdate(localtime=False)}",
    f"Message-ID: <{marker}@example.test>",
    "MIME-Version: 1.0",
    "Content-Type: text/plain; charset=utf-8",
    "Content-Transfer-Encoding: 8bit",
    "",
    f"marker: {marker}",
    "Grüße aus Köln, naïve café, 日本語のテキスト, ✉ 📨",
    ".a line starting with one dot",
    "..and one with two",
    ".",
    "x" * 880 + f" {marker} " + "y" * 5,
    "last line",
]
with open(path, "wb") as f:
    f.write(("\r\n".join(lines) + "\r\n").encode("utf-8"))
PY
  printf '%s' "$work/msgs/$1.eml"
}

npm_ok=""
if command -v npm >/dev/null && command -v node >/dev/null; then
  mkdir -p "$work/node"
  if timeout 180 npm install --prefix "$work/node" --no-audit --no-fund --silent \
       "nodemailer@$NODEMAILER_VERSION" >"$work/npm.log" 2>&1; then
    npm_ok=yes
    cat >"$work/node/send.mjs" <<'JS'
import fs from "node:fs";
import nodemailer from "nodemailer";
const [port, implicit, user, pass, file] = process.argv.slice(2);
const transport = nodemailer.createTransport({
  host: "127.0.0.1",
  port: Number(port),
  secure: implicit === "1",
  requireTLS: implicit !== "1",
  tls: { rejectUnauthorized: false },
  auth: { user, pass },
  connectionTimeout: 20000,
  greetingTimeout: 20000,
  socketTimeout: 20000,
});
const info = await transport.sendMail({
  envelope: { from: "alice@example.test", to: ["bob@example.net"] },
  raw: fs.readFileSync(file),
});
console.log(info.response);
JS
  else
    say "note: nodemailer skipped, npm install failed: $(tail -3 "$work/npm.log")"
  fi
else
  say "note: nodemailer skipped, no node/npm"
fi

send() { # CLIENT PORTKIND FILE
  local client=$1 kind=$2 file=$3 port
  if [ "$kind" = starttls ]; then port=$p587; else port=$p465; fi
  case "$client:$kind" in
    swaks:*)
      # swaks always sends CRLF before the final dot: give it the message without its last
      # CRLF, or the receiver gets one empty line more than the file has.
      local tls=--tls
      [ "$kind" = tls ] && tls=--tlsc
      head -c -2 "$file" | swaks --server 127.0.0.1 --port "$port" "$tls" --auth PLAIN \
        --auth-user alice@example.test --auth-password "$password" \
        --from alice@example.test --to bob@example.net --data - ;;
    msmtp:*)
      local starttls=on
      [ "$kind" = tls ] && starttls=off
      : >"$work/msmtprc"; chmod 600 "$work/msmtprc"
      msmtp --file="$work/msmtprc" --host=127.0.0.1 --port="$port" --tls=on \
        --tls-starttls="$starttls" --tls-certcheck=off --auth=plain \
        --user=alice@example.test --passwordeval="printf %s '$password'" \
        --from=alice@example.test -- bob@example.net <"$file" ;;
    curl:starttls)  curl -sS --ssl-reqd -k --url "smtp://127.0.0.1:$port" \
                      --user "alice@example.test:$password" --mail-from alice@example.test \
                      --mail-rcpt bob@example.net -T "$file" ;;
    curl:tls)       curl -sS --ssl-reqd -k --url "smtps://127.0.0.1:$port" \
                      --user "alice@example.test:$password" --mail-from alice@example.test \
                      --mail-rcpt bob@example.net -T "$file" ;;
    smtplib:*)
      python3 - "$kind" "$port" "$password" "$file" <<'PY'
import smtplib, ssl, sys
kind, port, password, path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
data = open(path, "rb").read()
if kind == "tls":
    s = smtplib.SMTP_SSL("127.0.0.1", port, context=ctx, timeout=20)
else:
    s = smtplib.SMTP("127.0.0.1", port, timeout=20)
    s.starttls(context=ctx)
s.login("alice@example.test", password)
refused = s.sendmail("alice@example.test", ["bob@example.net"], data)
assert not refused, refused
s.quit()
PY
      ;;
    nodemailer:*)
      local implicit=0
      [ "$kind" = tls ] && implicit=1
      (cd "$work/node" && node send.mjs "$port" "$implicit" alice@example.test "$password" "$file") ;;
    *) echo "unknown client $client"; return 2 ;;
  esac
}

clients=(swaks msmtp curl smtplib)
[ -n "$npm_ok" ] && clients+=(nodemailer)
declare -A result
markers=()
for client in "${clients[@]}"; do
  for kind in starttls tls; do
    marker="m-$client-$kind-$RANDOM$RANDOM"
    file=$(make_message "$marker")
    if timeout 60 bash -c "$(declare -f send); $(declare -p work p587 p465 password); send $client $kind $file" \
         >"$work/$marker.client.log" 2>&1; then
      result[$marker]="submitted"
      markers+=("$marker")
    else
      result[$marker]="FAIL: client exited non-zero: $(tail -3 "$work/$marker.client.log" | tr '\n' ' ')"
      markers+=("$marker")
    fi
  done
done

# --- Wait (bounded) and check every message at the receiver ------------------------------------
"$work/venv/bin/python" - "$work" "$WAIT_SECONDS" "${markers[@]}" >"$work/check.out" <<'PY'
import json, os, sys, time
work, wait = sys.argv[1], float(sys.argv[2])
markers = sys.argv[3:]
recv = os.path.join(work, "received")
deadline = time.monotonic() + wait
found = {}
while time.monotonic() < deadline and len(found) < len(markers):
    for name in sorted(os.listdir(recv)):
        if not name.endswith(".json"):
            continue
        eml = open(os.path.join(recv, name[:-5] + ".eml"), "rb").read()
        meta = json.load(open(os.path.join(recv, name)))
        for m in markers:
            if m not in found and f"<{m}@example.test>".encode() in eml:
                found[m] = (eml, meta)
    time.sleep(0.2)
for m in markers:
    if m not in found:
        print(f"{m}\tFAIL: not received within {wait:.0f} s")
        continue
    eml, meta = found[m]
    sent = open(os.path.join(work, "msgs", m + ".eml"), "rb").read()
    problems = []
    if not eml.endswith(sent):
        i = next((k for k in range(min(len(eml), len(sent))) if eml[-1 - k] != sent[-1 - k]), None)
        problems.append(f"body not byte-exact (differs {i} octets from the end; got {len(eml)} octets, sent {len(sent)})")
    else:
        added = eml[: len(eml) - len(sent)]
        lines = added.split(b"\r\n")
        if not added.startswith(b"Received: "):
            problems.append(f"added part does not start with Received: {added[:60]!r}")
        if not added.endswith(b"\r\n") or b"" in lines[:-1]:
            problems.append("added part is not a run of header lines")
        for line in lines[:-1]:
            if not (line[:1] in (b" ", b"\t") or b":" in line):
                problems.append(f"added line is not a header: {line[:60]!r}")
        if b"with ESMTPSA" not in added:
            problems.append("Received has no 'with ESMTPSA'")
    if meta["mail_from"] != "alice@example.test" or meta["rcpt_tos"] != ["bob@example.net"]:
        problems.append(f"envelope {meta}")
    print(f"{m}\t" + ("ok" if not problems else "FAIL: " + "; ".join(problems)))
PY

failed=0
printf '\n%-44s %s\n' "client/port" "result"
for marker in "${markers[@]}"; do
  line=$(grep -P "^$marker\t" "$work/check.out" | cut -f2- || true)
  status=${result[$marker]}
  if [ "$status" = submitted ]; then status=${line:-"FAIL: no check result"}; fi
  label=$(printf '%s' "$marker" | sed -E 's/^m-([a-z]+)-([a-z]+)-.*/\1 \2/')
  printf '%-44s %s\n' "$label" "$status"
  case "$status" in ok) ;; *) failed=$((failed + 1)) ;; esac
done
if [ "$failed" -ne 0 ]; then
  say "$failed of ${#markers[@]} failed; submitd log tail:"
  tail -20 "$work/submitd.log" >&2
  exit 1
fi
say "PASS: ${#markers[@]} messages from ${#clients[@]} clients arrived byte-exact"
