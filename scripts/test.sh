#!/usr/bin/env bash
# Installs everything (venv, test extras, PostgreSQL) and runs the whole test suite, slow tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# Two workers, whole modules each (module-scoped fixtures such as a Ray head start once): the suite spends
# much of its time waiting on Ray, driver and browser start-ups, which the other worker fills.
exec .venv/bin/python -m pytest -q -n 2 --dist loadscope "$@"
