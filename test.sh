#!/usr/bin/env bash
# Every test of submitd: `cargo test --locked` with the ignored tests included. Those need real
# servers and tools that the tests start themselves (Dovecot, OpenLDAP's slapd, PostgreSQL,
# Redis, swaks) and Python's dkimpy for the DKIM cross-check; this script installs what is missing
# (Debian packages as root or through sudo, dkimpy with pip) before running them.
# Extra arguments go to cargo test, e.g. `./test.sh --test backend_ldap`.
set -euo pipefail
cd "$(dirname "$0")"

missing=()
command -v dovecot >/dev/null || [ -x /usr/sbin/dovecot ] || missing+=(dovecot-core)
[ -x /usr/sbin/slapd ] || missing+=(slapd)
command -v slapadd >/dev/null || [ -x /usr/sbin/slapadd ] || missing+=(slapd)
command -v ldapsearch >/dev/null || missing+=(ldap-utils)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v swaks >/dev/null || missing+=(swaks libnet-ssleay-perl libio-socket-ssl-perl)
command -v setpriv >/dev/null || missing+=(util-linux)
# HTTP API (tests/api*.rs): curl, the README's Python (requests) and Node (fetch) examples.
command -v curl >/dev/null || missing+=(curl)
command -v node >/dev/null || missing+=(nodejs)

if [ ${#missing[@]} -gt 0 ]; then
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null; then
      sudo=(sudo)
    else
      echo "test.sh: missing Debian packages: ${missing[*]}" >&2
      echo "install them as root (apt-get install ${missing[*]}) and run again" >&2
      exit 1
    fi
  fi
  echo "test.sh: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The DKIM cross-check (tests/dkim.rs) verifies with dkimpy; pynacl for Ed25519.
if ! python3 -c 'import dkim, dns, nacl' 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check \
    dkimpy==1.1.8 dnspython==2.9.2 pynacl==1.6.2 ||
    python3 -m pip install --quiet --disable-pip-version-check --break-system-packages \
      dkimpy==1.1.8 dnspython==2.9.2 pynacl==1.6.2
fi

# The OpenAPI check (tests/api_openapi.rs, tests/clients/openapi_check.py) and the README's
# Python example (requests). With pip, not apt: `python3` may be another interpreter than
# Debian's (pyenv), which would not see python3-requests.
if ! python3 -c 'import openapi_spec_validator, jsonschema, yaml, requests' 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check \
    openapi-spec-validator==0.9.0 jsonschema==4.26.0 PyYAML==6.0.3 requests==2.32.5 ||
    python3 -m pip install --quiet --disable-pip-version-check --break-system-packages \
      openapi-spec-validator==0.9.0 jsonschema==4.26.0 PyYAML==6.0.3 requests==2.32.5
fi

# Webhooks (tests/webhooks.rs): the receiver verifies signatures with the reference library.
if ! python3 -c 'import standardwebhooks' 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check standardwebhooks==1.3.0 ||
    python3 -m pip install --quiet --disable-pip-version-check --break-system-packages \
      standardwebhooks==1.3.0
fi

exec cargo test --locked "$@" -- --include-ignored
