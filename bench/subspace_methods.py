"""The subspace merge methods (Iso-C, Iso-CTS, TSV-M): agreement with FusionBench and seconds per tensor.

    .venv/bin/python bench/subspace_methods.py [--fusion-python PATH] [--size 4096] [--tasks 3] [--smoke]

1. FusionBench (PyPI `fusion-bench`) runs its own `iso_c`, `iso_cts` and TSV-M
   (`compute_and_sum_svd_mem_reduction`) on the same task vectors as ours, in its own virtual environment
   (`--fusion-python`, default $FUSION_BENCH_PYTHON): install it apart from the project's, torch pinned first:
   `python -m venv /tmp/venv-fusion && /tmp/venv-fusion/bin/pip install torch==2.13.0 fusion-bench`.
   The table gives the max abs difference of the merged task vectors, and relative to their largest entry.
2. Seconds to merge one `--size` x `--size` float32 weight matrix from `--tasks` task vectors on CPU, with
   `--threads` torch threads (the search merges every 2-D tensor of a candidate this way): the CPU seconds
   the process spent (what a core costs, whatever else shares the machine) and the wall seconds.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

from common import RESULTS, SMOKE_OUT, markdown_table, write_result

METHODS = ("iso_c", "iso_cts", "tsv_m")

# Runs inside FusionBench's environment: its functions on our task vectors, results saved for comparison.
FUSION_SCRIPT = """
import sys, torch
from fusion_bench.method.isotropic_merging.iso_utils import iso_c, iso_cts
from fusion_bench.method.task_singular_vector.utils.TSVM_utils import compute_and_sum_svd_mem_reduction
tvs = torch.load(sys.argv[1])
out = {"iso_c": iso_c(tvs, accelerator="cpu"), "iso_cts": iso_cts(tvs, common_space_fraction=0.8, accelerator="cpu"),
       "tsv_m": compute_and_sum_svd_mem_reduction(tvs, accelerator="cpu")}
torch.save(out, sys.argv[2])
"""


def ours(method: str, task_vectors: list, key: str):
    import torch

    from evosearch.merge.methods import METHODS as REGISTRY, TensorMerge, TensorParameters

    kind = REGISTRY[method]
    base = torch.zeros_like(task_vectors[0][key])
    names = [f"task{i}" for i in range(len(task_vectors))]
    tensors = {n: base + tv[key] for n, tv in zip(names, task_vectors)} | {"base": base}
    shared = {p.name: p.default for p in kind.parameters if not p.per_model}
    params = TensorParameters(shared, {n: {"weight": 1.0} for n in names})
    return kind.merge(TensorMerge(key, tensors, "base", params, seed=0)) - base


def compare(fusion_python: str, rows: int, cols: int, tasks: int) -> dict:
    import torch

    gen = torch.Generator().manual_seed(0)
    # Task vectors of fine-tunes share a common part; a shared low-rank component gives them one.
    shared = torch.randn(rows, 4, generator=gen) @ torch.randn(4, cols, generator=gen)
    task_vectors = [{"weight": 0.01 * (shared + 0.5 * torch.randn(rows, cols, generator=gen)),
                     "weight_t": 0.01 * torch.randn(cols, rows, generator=gen),
                     "bias": 0.01 * torch.randn(rows, generator=gen)} for _ in range(tasks)]
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(task_vectors, Path(tmp) / "tvs.pt")
        subprocess.run([fusion_python, "-c", FUSION_SCRIPT, str(Path(tmp) / "tvs.pt"), str(Path(tmp) / "out.pt")],
                       check=True, capture_output=True, text=True, cwd=tmp)
        theirs = torch.load(Path(tmp) / "out.pt")
    version = subprocess.run([fusion_python, "-c", "import importlib.metadata as m; print(m.version('fusion-bench'))"],
                             check=True, capture_output=True, text=True).stdout.strip()
    result = {"fusion_bench": version, "shapes": {k: list(v.shape) for k, v in task_vectors[0].items()},
              "tasks": tasks, "methods": {}}
    for method in METHODS:
        worst = max((ours(method, task_vectors, k) - theirs[method][k]).abs().max().item() for k in task_vectors[0])
        scale = max(theirs[method][k].abs().max().item() for k in task_vectors[0])
        result["methods"][method] = {"max_abs_diff": worst, "max_abs_value": scale, "relative": worst / scale}
    return result


def seconds_per_tensor(size: int, tasks: int, repeats: int) -> dict:
    import torch

    gen = torch.Generator().manual_seed(1)
    task_vectors = [{"w": 0.01 * torch.randn(size, size, generator=gen)} for _ in range(tasks)]
    wall, cpu = {}, {}
    for method in METHODS:
        times = []
        for _ in range(repeats):
            start, start_cpu = time.perf_counter(), time.process_time()
            ours(method, task_vectors, "w")
            times.append((time.perf_counter() - start, time.process_time() - start_cpu))
        wall[method], cpu[method] = min(times)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fusion-python", default=os.environ.get("FUSION_BENCH_PYTHON"),
                        help="python of a venv with fusion-bench installed (the comparison is skipped without one)")
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--smoke", action="store_true", help="small tensors; writes to a temp dir")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    size = 128 if args.smoke else args.size
    compared_shape = (48, 32) if args.smoke else (512, 384)
    result: dict = {"settings": {"size": size, "tasks": args.tasks, "threads": args.threads, "repeats": args.repeats,
                                 "smoke": args.smoke}}
    if args.fusion_python and Path(args.fusion_python).exists():
        result["fusion_bench"] = compare(args.fusion_python, *compared_shape, args.tasks)
    else:
        result["fusion_bench"] = {"skipped": "no --fusion-python (a venv with fusion-bench) given"}
    # CPU seconds of this process are what a core costs; wall seconds also count waiting for a shared core.
    result["seconds_per_tensor"], result["cpu_seconds_per_tensor"] = seconds_per_tensor(size, args.tasks, args.repeats)
    out = Path(args.out) if args.out else (SMOKE_OUT if args.smoke else RESULTS)
    path = write_result(out, "subspace_methods", result)
    fb = result["fusion_bench"].get("methods", {})
    rows = [[m, f"{fb[m]['max_abs_diff']:.2g} ({fb[m]['relative']:.1g} relative)" if m in fb else "skipped",
             f"{result['cpu_seconds_per_tensor'][m]:.2f}", f"{result['seconds_per_tensor'][m]:.2f}"] for m in METHODS]
    print(markdown_table(["method", f"vs FusionBench {result['fusion_bench'].get('fusion_bench', '')} "
                          f"(max abs diff, {args.tasks} tasks)",
                          f"CPU seconds per {size}x{size} tensor ({args.tasks} tasks, {args.threads} thread(s))",
                          "wall seconds"], rows))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
