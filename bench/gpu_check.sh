#!/usr/bin/env bash
# One prepared GPU check (under 8 minutes on one GPU): the CUDA tests (merge parity CPU vs GPU, the same
# DARE/DELLA/TIES masks on both), the build-bandwidth bench on CUDA beside CPU, and a short zoo search with
# workers.num_gpus set. Writes bench/results/gpu/*.json and prints a summary; exits non-zero on a failure.
#
#   bash bench/gpu_check.sh            # from the repository root, on the GPU machine
#   GPU_CHECK_SKIP_INSTALL=1 bash bench/gpu_check.sh   # the environment is already set up
#   GPU_CHECK_DEVICE=cpu bash bench/gpu_check.sh       # rehearsal on a CPU machine: smoke sizes, no CUDA
#   PYTHON=/path/to/venv/bin/python bash bench/gpu_check.sh   # default: .venv/bin/python, else python3
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEVICE=${GPU_CHECK_DEVICE:-cuda}
OUT=${GPU_CHECK_OUT:-$ROOT/bench/results/gpu}
[ "$DEVICE" = cuda ] || OUT=${GPU_CHECK_OUT:-/tmp/evosearch_gpu_check_rehearsal}
mkdir -p "$OUT"
export PYTHONPATH=$ROOT HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-$( [ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || command -v python3 )}
step() { printf '\n=== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }

step "environment"
if [ -z "${GPU_CHECK_SKIP_INSTALL:-}" ] && ! "$PY" -c "import evosearch, mergekit, pytest" 2>/dev/null; then
    # The GPU image's own torch (with CUDA) stays: only evosearch's other dependencies are added.
    "$PY" -m pip install --quiet -e "$ROOT[test]"
fi
"$PY" - "$DEVICE" <<'PY'
import torch, sys
if sys.argv[1] == "cuda" and not torch.cuda.is_available():
    sys.exit("gpu_check: torch sees no CUDA device (torch %s)" % torch.__version__)
print("torch", torch.__version__, "on", torch.cuda.get_device_name(0) if sys.argv[1] == "cuda" else "cpu")
PY
command -v cc >/dev/null || echo "no C compiler: the CPU rows below use the torch backend of the merge kernel"

step "CUDA tests: CPU vs GPU merges and masks"
timeout 240 "$PY" -m pytest -q -p no:cacheprovider tests/test_merge_methods.py tests/test_fused_merge.py \
    -k "cuda or backends_agree or masks" --junitxml="$OUT/cuda_tests.xml" | tail -5

if [ "$DEVICE" = cuda ]; then SIZE=(--repeats 3); else SIZE=(--smoke); fi
step "build bandwidth: $DEVICE, then CPU (2 threads)"
timeout 200 "$PY" bench/build_bandwidth.py --device "$DEVICE" "${SIZE[@]}" --out "$OUT/$DEVICE" | tail -16
timeout 200 "$PY" bench/build_bandwidth.py --threads 2 "${SIZE[@]}" --out "$OUT/cpu" | tail -16

step "zoo search with workers on $DEVICE"
ZOO=${GPU_CHECK_ZOO:-/tmp/evosearch_gpu_check_zoo}
timeout 120 "$PY" -c 'from evosearch.cli import app; app()' zoo build "$ZOO" --preset tiny >/dev/null
timeout 200 "$PY" - "$ZOO" "$OUT" "$DEVICE" <<'PY'
import json, sys, time
from pathlib import Path
from evosearch.search.driver import run_job
from evosearch.search.job import parse_job
from evosearch.zoo import ZooManifest
from storage import Store

zoo, out, device = ZooManifest.load(Path(sys.argv[1])), Path(sys.argv[2]), sys.argv[3]
job = parse_job({
    "name": "gpu-check", "seed": 0, "output_dir": str(out / "gpu-check-run"), "scheduling": "steady_state",
    "sources": {k: str(v) for k, v in zoo.models.items()}, "base_model": "base",
    "search_space": {"kind": "ps", "sources": ["math", "lang"], "methods": "dare_ties",
                     "bounds": {"weight": [0.0, 2.0]}},
    "optimizer": {"name": "ga", "pop_size": 4}, "generations": 2,
    "objectives": [{"task": "zoo_target", "direction": "max"}],
    "fitness": {"mode": "full", "limit": 50}, "tasks": {"include_path": str(zoo.include_path)},
    "workers": {"count": 1, "num_gpus": 1 if device == "cuda" else 0, "device": device},
    "report": {"when": "end"}})
Path(job.output_dir).mkdir(parents=True, exist_ok=True)
store = Store.open(job.store)
start = time.perf_counter()
summary = run_job(job, store)
cands = store.candidates(summary.job_id)
result = {"status": summary.status, "generations": summary.generations, "candidates": len(cands),
          "seconds": time.perf_counter() - start, "workers": sorted({c.worker for c in cands}),
          "device": device, "on_device": all((":cuda" in c.worker) == (device == "cuda") for c in cands if c.attempts),
          "build_seconds": [c.build_seconds for c in cands if c.attempts],
          "eval_seconds": [c.eval_seconds for c in cands if c.attempts], "front": summary.front_ids}
(out / "zoo_search.json").write_text(json.dumps(result, indent=2))
print(json.dumps({k: result[k] for k in ("status", "generations", "candidates", "seconds", "on_device")}))
if summary.status != "finished" or not result["on_device"]:
    sys.exit(f"gpu_check: the zoo search did not finish on {device} workers")
PY

step "done: results under $OUT"
ls -1 "$OUT"
