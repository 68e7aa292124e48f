#!/usr/bin/env bash
# Creates .venv and installs evosearch into it. `--test` adds the test extras (pytest, mergekit as the
# numerical reference) and PostgreSQL's server binaries, which the storage tests start on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
if [[ "${1:-}" == "--test" ]]; then
    extras="[test]"
    bash .ci/postgres.sh
fi
python3 -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
# torch is pinned to 2.13.0 in pyproject.toml: its CPU wheel is on the build machines' disk.
.venv/bin/pip install --quiet -e ".${extras}"
