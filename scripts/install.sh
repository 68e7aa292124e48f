#!/usr/bin/env bash
# Creates .venv and installs evosearch into it. `--test` adds the test extras (pytest, mergekit as the
# numerical reference, selenium), PostgreSQL's server binaries, which the storage tests start on 127.0.0.1,
# and Debian's headless Chromium with its chromedriver, which the dashboard's browser tests drive.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian's packages, never a browser build that a tool downloads itself (the tests point Selenium at
# /usr/bin/chromedriver, so Selenium Manager never runs).
install_chromium() {
    if [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]]; then
        return 0
    fi
    local sudo=""
    if [[ "$(id -u)" != "0" ]]; then
        sudo="sudo"
    fi
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
    [[ -x /usr/bin/chromedriver ]] || { echo "install.sh: chromium-driver installed but no /usr/bin/chromedriver" >&2; exit 1; }
}

extras=""
if [[ "${1:-}" == "--test" ]]; then
    extras="[test]"
    bash .ci/postgres.sh
    install_chromium
fi
python3 -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
# torch is pinned to 2.13.0 in pyproject.toml: its CPU wheel is on the build machines' disk.
.venv/bin/pip install --quiet -e ".${extras}"
