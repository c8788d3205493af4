#!/bin/sh
# Prepare contrib/compose/ for `docker compose -f contrib/compose.yaml up`:
#
#   etc/certs/{cert,key}.pem   a self-signed certificate for etc/submitd.toml's hostname
#                              (skipped when cert.pem exists: put a real one there instead)
#   etc/users.toml             the first user (LOGIN, default alice@example.test) with a random
#                              password, printed once (skipped when the file exists)
#   secrets/valkey-auth.conf   `requirepass PASSWORD` for Valkey
#   secrets/state-url          redis://:PASSWORD@valkey:6379/0 for submitd (state.url_file)
#
# Usage, as root from anywhere: contrib/compose/setup.sh [LOGIN]
#
# Root, because each file goes to the containers by group, mode 0640: submitd runs as gid
# 10001, and so does Valkey (compose.yaml: user 999:10001; the image's own gid 999 is often a
# host group such as systemd-journal). The submitd commands run with the `submitd` on the
# PATH, or $SUBMITD, or else in the image (built first with `docker compose build`).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
login=${1:-alice@example.test}
gid=10001

if [ "$(id -u)" != 0 ]; then
    echo "setup.sh: run as root (the files are given to gid $gid)" >&2
    exit 1
fi
umask 077

hostname=$(sed -n 's/^hostname *= *"\([^"]*\)".*/\1/p' "$here/etc/submitd.toml")
if [ -z "$hostname" ]; then
    echo "setup.sh: no hostname in $here/etc/submitd.toml" >&2
    exit 1
fi

# submitd ARGS...: the config directory is $etc for the command.
bin=${SUBMITD:-$(command -v submitd || true)}
if [ -n "$bin" ]; then
    etc=$here/etc
    submitd() { "$bin" "$@"; }
else
    etc=/etc/submitd
    docker compose -f "$here/../compose.yaml" build submitd-1
    submitd() {
        docker run --rm -i --network none --user 0:0 -v "$here/etc:/etc/submitd" \
            submitd:latest "$@"
    }
fi

if [ ! -e "$here/etc/certs/cert.pem" ]; then
    submitd cert self-signed --hostname "$hostname" --out "$etc/certs"
fi
chgrp -R "$gid" "$here/etc"
chmod 0750 "$here/etc/certs"
chmod 0640 "$here/etc/certs/key.pem"
chmod 0644 "$here/etc/certs/cert.pem"

if [ ! -e "$here/etc/users.toml" ]; then
    password=$(head -c 18 /dev/urandom | base64 | tr '+/' '-_')
    printf '%s\n' "$password" |
        submitd user add "$login" --password-stdin --config "$etc/submitd.toml" >/dev/null
    echo "user $login, password (shown once): $password"
fi
chgrp "$gid" "$here/etc/users.toml"
chmod 0640 "$here/etc/users.toml"

mkdir -p "$here/secrets"
if [ ! -e "$here/secrets/state-url" ] || [ ! -e "$here/secrets/valkey-auth.conf" ]; then
    # Hex: nothing in it needs escaping in a URL or in valkey.conf.
    pw=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
    printf 'requirepass %s\n' "$pw" > "$here/secrets/valkey-auth.conf"
    printf 'redis://:%s@valkey:6379/0\n' "$pw" > "$here/secrets/state-url"
fi
chgrp "$gid" "$here/secrets/valkey-auth.conf" "$here/secrets/state-url"
chmod 0640 "$here/secrets/valkey-auth.conf" "$here/secrets/state-url"

echo "ready: docker compose -f $(cd "$here/.." && pwd)/compose.yaml up -d --build"
