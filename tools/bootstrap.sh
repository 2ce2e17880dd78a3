#!/usr/bin/env bash
# Prepares the project's virtual environment in .venv and the system packages it needs.
# Usage: tools/bootstrap.sh [runtime|test]
# Installs python3-venv and mosquitto with apt-get when they are missing and this user may
# (root, or sudo without a password); without mosquitto the station uses its embedded broker.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FLAVOUR="${1:-runtime}"
VENV="$ROOT/.venv"
PYTHON="${PYTHON:-python3}"

say() { printf 'bootstrap: %s\n' "$*" >&2; }

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    say "python3 not found: install Python 3.11 or newer"; exit 1
fi
if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
    say "Python 3.11 or newer needed, found $("$PYTHON" --version 2>&1)"; exit 1
fi

apt_install() {
    local runner=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then runner=(sudo -n); else
            say "cannot install $* (not root, no password-less sudo)"; return 1; fi
    fi
    if ! command -v apt-get >/dev/null 2>&1; then say "no apt-get: install $* by hand"; return 1; fi
    say "installing system packages: $*"
    "${runner[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null &&
        "${runner[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

missing=()
if [ ! -x "$VENV/bin/python" ] && ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    missing+=("python3-venv")
fi
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
    missing+=("mosquitto" "mosquitto-clients")
fi
if [ "${#missing[@]}" -gt 0 ]; then
    apt_install "${missing[@]}" || say "continuing without: ${missing[*]}"
fi

if [ ! -x "$VENV/bin/python" ]; then
    say "creating virtual environment in $VENV"
    "$PYTHON" -m venv "$VENV"
fi

extras=""
[ "$FLAVOUR" = "test" ] && extras="[test]"
stamp="$VENV/.chargepoint-$FLAVOUR"
want="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    say "installing chargepoint$extras into $VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >/dev/null
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT$extras"
    echo "$want" > "$stamp"
fi

# The strict ocpp-rpc central system the tests use as a second CSMS peer (tests/test_ocpp16_ocpp_rpc.py).
PEER="$ROOT/tests/peers/ocpp-rpc"
if [ "$FLAVOUR" = "test" ]; then
    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        say "node/npm not found: the ocpp-rpc peer tests will be skipped"
    elif [ ! -d "$PEER/node_modules" ] || [ "$PEER/package-lock.json" -nt "$PEER/node_modules" ]; then
        say "installing the ocpp-rpc test peer into $PEER/node_modules"
        if npm ci --prefix "$PEER" --no-audit --no-fund >/dev/null; then
            touch "$PEER/node_modules"
        else
            say "npm ci failed: the ocpp-rpc peer tests will be skipped"
        fi
    fi
fi
