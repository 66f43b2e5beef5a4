#!/usr/bin/env bash
# Sets up everything the test suite needs on a fresh Debian machine, then runs
# it: system packages (Prometheus, Alertmanager, Redis, Chromium, systemd-analyze),
# a virtualenv with the project and its test tools at the versions in
# constraints.txt, linters, type checks, and pytest.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k transitions`.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_packages=()
command -v promtool >/dev/null || apt_packages+=(prometheus)
command -v prometheus-alertmanager >/dev/null || apt_packages+=(prometheus-alertmanager)
command -v redis-server >/dev/null || apt_packages+=(redis-server)
command -v chromium >/dev/null || apt_packages+=(chromium)
command -v systemd-analyze >/dev/null || apt_packages+=(systemd)
python3 -c "import venv, ensurepip" 2>/dev/null || apt_packages+=(python3-venv)
if ((${#apt_packages[@]})); then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    echo "installing Debian packages: ${apt_packages[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        "${apt_packages[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]'
export PATH="$PWD/.venv/bin:$PATH"

echo "== ruff"
ruff check .
ruff format --check .
echo "== mypy"
mypy
echo "== pytest"
python -m pytest "$@"
