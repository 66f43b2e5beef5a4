#!/usr/bin/env bash
# Runs the demo on a fresh Debian machine: python3-venv if missing (apt-get), a
# virtualenv with the exporter at the dependency versions CI tests, then
# `lemondata-exporter demo` (simulator, task feeder and exporter; no API key).
# Extra arguments go to `demo`, e.g. `bash scripts/demo.sh --web.listen-address :9900`.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! python3 -c "import venv, ensurepip" 2>/dev/null; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    echo "installing Debian package: python3-venv"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        python3-venv >/dev/null
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt .
exec .venv/bin/lemondata-exporter demo "$@"
