#!/usr/bin/env bash
# Makes PostgreSQL's server binaries (initdb, pg_ctl, postgres) available for the storage tests, which
# start their own throwaway server on 127.0.0.1. Nothing is started here and no system service is used.
set -euo pipefail

have_server() {
    command -v initdb >/dev/null 2>&1 && return 0
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}

if have_server; then
    exit 0
fi
sudo=""
if [[ "$(id -u)" != "0" ]]; then
    sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends postgresql >/dev/null
# The package starts a cluster as a system service; the tests run their own, so stop it if it runs.
$sudo service postgresql stop >/dev/null 2>&1 || true
have_server || { echo "postgres.sh: PostgreSQL installed but initdb not found" >&2; exit 1; }
