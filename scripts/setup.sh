#!/usr/bin/env bash
# Install everything cloudfs needs on a fresh Debian machine, idempotently.
#   scripts/setup.sh          system packages for the drive + a venv with cloudfs
#   scripts/setup.sh --test   the same, plus PostgreSQL, HAProxy and the test dependencies
#   scripts/setup.sh --cluster what scripts/cluster.sh needs (the same as --test)
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[[ "${1:-}" == "--test" || "${1:-}" == "--cluster" ]] && want_test=1

apt_packages=(fuse3 libfuse3-dev pkg-config python3-venv curl)
# chromium and firefox-esr: the browser tests drive them headless (tests/web; Chromium through
# Playwright, Firefox over its own WebDriver BiDi), never a downloaded browser build;
# haproxy: the cluster tests put it in front of several server replicas
(( want_test )) && apt_packages+=(postgresql sqlite3 git rsync chromium firefox-esr haproxy)

missing=()
for pkg in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if (( ${#missing[@]} )); then
    echo "setup: installing ${missing[*]}"
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv .venv
fi
extras="fuse"
(( want_test )) && extras="fuse,test"
stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)-$extras"
if [[ ! -e "$stamp" ]]; then
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -e ".[$extras]"
    touch "$stamp"
fi
echo "setup: ready (.venv/bin/cloudfs)"
