"""In-memory PS build vs the machine's memory bandwidth, measured in the same run.

A search worker keeps its sources resident and builds each candidate in memory: `build_merged_model`
(PSMerger over resident tensors, then the merged state loaded into a causal-LM module), the code path
`CandidateWorker._build_ps` runs. Here the benchmark family of `merge_speed.py` (base + 3 variants,
103M parameters each) is resident and each recipe is built; its effective bandwidth is (bytes of every
source tensor read + bytes of the merged tensors written) / build seconds, against a large torch tensor
copy (bytes read + written / seconds, best of several) on the same threads. A second table times the
method kernel alone on one large tensor (`--kernel-size`, 4096 x 4096 by default: a 7B model's attention
projection) of a base and 3 fine-tunes, the same bytes-moved rule, so that per-tensor overheads of the
small family do not hide the kernel's own speed.

    .venv/bin/python bench/build_bandwidth.py             # 103M-parameter family, best of 3
    .venv/bin/python bench/build_bandwidth.py --smoke     # tiny family, seconds
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from common import (add_family_arguments, build_family, markdown_table, parameter_count, resolve_family_arguments,
                    write_result)
from merge_speed import recipes

TARGET = 0.5  # share of the copy bandwidth the build should reach
# The generalised task-arithmetic family, whose kernel is one pass over memory (merge/methods/fused.py).
METHODS = ("task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs", "della")


def synchronize(device: str) -> None:
    """Wait for the device's queued work, so a timer reads the work's end (a no-op on CPU)."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def copy_bandwidth(nbytes: int, repeats: int, device: str = "cpu") -> tuple[float, float]:
    """Bytes per second of `dst.copy_(src)` over float32 tensors of `nbytes`, counting read + write: per
    wall second and per CPU second (on a shared machine the second is what this process got)."""
    import torch

    src = torch.rand(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # fault the pages in before timing
    best = best_cpu = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start, cpu = time.perf_counter(), time.process_time()
        dst.copy_(src)
        synchronize(device)
        best, best_cpu = min(best, time.perf_counter() - start), min(best_cpu, time.process_time() - cpu)
    return 2 * nbytes / best, 2 * nbytes / best_cpu


def build_once(recipe, resident, config) -> tuple[float, float, float]:
    """(merge seconds, build seconds, build CPU seconds) of one in-memory build, as a worker does it."""
    from evosearch.merge.ps import PSMerger, as_sources, build_model

    device = str(next(iter(next(iter(resident.values())).values())).device)
    synchronize(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    state = PSMerger(recipe, as_sources(resident)).merge_all()
    synchronize(device)
    merged = time.perf_counter()
    model = build_model(config, state)
    synchronize(device)
    built, cpu = time.perf_counter(), time.process_time() - cpu_start
    del model, state
    return merged - start, built - start, cpu


def kernel_once(method: str, base, models: dict, seed: int) -> tuple[float, float]:
    """Wall and CPU seconds of one `MergeMethod.merge` of a single tensor, as PSMerger calls it."""
    from evosearch.merge.methods import METHODS, TensorMerge, TensorParameters

    per_model = {m: {"weight": 0.5, "density": 0.4, "gamma": 0.02, "epsilon": 0.05} for m in models}
    shared = {"normalize": method in ("ties", "della"), "rescale": method.startswith(("dare", "della")),
              "lambda": 1.0, "int8_mask": False}
    job = TensorMerge("model.layers.0.self_attn.q_proj.weight", {**models, "base": base}, "base",
                      TensorParameters(shared, per_model), seed)
    synchronize(str(base.device))
    start, cpu = time.perf_counter(), time.process_time()
    METHODS[method].merge(job)
    synchronize(str(base.device))
    return time.perf_counter() - start, time.process_time() - cpu


def kernel_rows(size: int, repeats: int, bandwidth: tuple[float, float], device: str) -> list[dict]:
    import torch

    gen = torch.Generator().manual_seed(0)
    base = torch.randn(size, size, generator=gen) * 0.02
    models = {f"ft{i}": (base + torch.randn(size, size, generator=gen) * 0.01).to(device) for i in range(3)}
    base = base.to(device)
    moved = (len(models) + 2) * base.numel() * base.element_size()
    rows = []
    for method in METHODS:
        timings = [kernel_once(method, base, models, seed=7) for _ in range(repeats)]
        seconds, cpu = min(t[0] for t in timings), min(t[1] for t in timings)
        rows.append({"method": method, "tensor": [size, size], "sources": len(models) + 1, "bytes_moved": moved,
                     "seconds": seconds, "cpu_seconds": cpu, "gb_per_s": moved / seconds / 1e9,
                     "share_of_bandwidth": moved / seconds / bandwidth[0],
                     "cpu_share_of_bandwidth": moved / cpu / bandwidth[1]})
        print(f"kernel {method}: {seconds:.3f} s = {moved / seconds / 1e9:.2f} GB/s", flush=True)
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_family_arguments(p, repeats_help="builds per recipe (the fastest counts)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the build and the copy")
    p.add_argument("--copy-bytes", type=int, default=1 << 30, help="size of the tensor copied for bandwidth "
                                                                  "(--smoke: 64 MiB)")
    p.add_argument("--device", default="cpu", help="where the resident sources live (cuda: as a GPU worker's)")
    p.add_argument("--kernel-size", type=int, default=4096, help="side of the square tensor of the kernel table "
                                                                 "(--smoke: 512)")
    args = resolve_family_arguments(p, p.parse_args(argv))
    if args.smoke:
        args.copy_bytes, args.kernel_size = 1 << 26, 512
    return args


def main(argv=None) -> int:
    import torch

    from evosearch.merge.sources import SourceModel
    from evosearch.recipe import parse_recipe

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    paths = build_family(Path(args.cache) / args.size, args.size)
    sources = {str(p): SourceModel.open(str(p)) for p in paths.values()}
    # What a worker holds, on its device.
    resident = {path: {n: t.to(args.device) for n, t in source.load_all().items()} for path, source in sources.items()}
    config = sources[str(paths["base"])].config
    model_bytes = sum(t.numel() * t.element_size() for t in resident[str(paths["base"])].values())
    bandwidth, cpu_bandwidth = copy_bandwidth(args.copy_bytes, repeats=5 if args.smoke else 10, device=args.device)
    print(f"family: {parameter_count(paths['base']) / 1e6:.1f}M parameters, {model_bytes / 1e6:.0f} MB per model; "
          f"copy bandwidth {bandwidth / 1e9:.1f} GB/s on {torch.get_num_threads()} thread(s)", flush=True)

    rows = []
    for method, raw in recipes(paths, list(METHODS)).items():
        recipe = parse_recipe(raw, source=f"{method} recipe")
        moved = (len(recipe.source_paths()) + 1) * model_bytes  # every source read once, the merge written once
        timings = [build_once(recipe, resident, config) for _ in range(args.repeats)]
        merge_s, build_s, cpu_s = (min(t[i] for t in timings) for i in range(3))
        rows.append({"method": method, "sources": len(recipe.source_paths()), "bytes_moved": moved,
                     "merge_seconds": merge_s, "build_seconds": build_s, "build_cpu_seconds": cpu_s,
                     "build_gb_per_s": moved / build_s / 1e9,
                     "share_of_bandwidth": moved / build_s / bandwidth,
                     "cpu_share_of_bandwidth": moved / cpu_s / cpu_bandwidth,
                     "merge_share_of_bandwidth": moved / merge_s / bandwidth})
        print(f"{method}: build {build_s:.2f} s (merge {merge_s:.2f} s, {cpu_s:.2f} CPU s) = "
              f"{moved / build_s / 1e9:.2f} GB/s", flush=True)

    kernel = kernel_rows(args.kernel_size, args.repeats, (bandwidth, cpu_bandwidth), args.device)
    path = write_result(args.out, "build_bandwidth", {
        "settings": {"device": args.device, "size": args.size, "parameters": parameter_count(paths["base"]),
                     "model_bytes": model_bytes,
                     "repeats": args.repeats, "threads": torch.get_num_threads(), "copy_bytes": args.copy_bytes,
                     "target_share": TARGET,
                     "bytes_moved": "every source tensor read once + every merged tensor written once "
                                    "(M + 1 tensors read, 1 written)",
                     "build": "PSMerger.merge_all over resident tensors + build_model (CandidateWorker._build_ps)"},
        "copy_bandwidth_gb_per_s": bandwidth / 1e9, "copy_bandwidth_per_cpu_second_gb": cpu_bandwidth / 1e9,
        "summary": rows, "kernel": kernel})
    print()
    print(markdown_table(
        ["method", "sources", "GB moved", "build s (merge s)", "build CPU s", "build GB/s", "copy GB/s",
         "share of copy bandwidth (per CPU second)"],
        [[r["method"], r["sources"], f"{r['bytes_moved'] / 1e9:.2f}",
          f"{r['build_seconds']:.2f} ({r['merge_seconds']:.2f})", f"{r['build_cpu_seconds']:.2f}",
          f"{r['build_gb_per_s']:.2f}", f"{bandwidth / 1e9:.1f}",
          f"{100 * r['share_of_bandwidth']:.0f}% ({100 * r['cpu_share_of_bandwidth']:.0f}%)"] for r in rows]))
    print()
    print(markdown_table(
        ["method (one tensor)", "tensor", "GB moved", "seconds (CPU s)", "GB/s",
         "share of copy bandwidth (per CPU second)"],
        [[r["method"], "x".join(map(str, r["tensor"])), f"{r['bytes_moved'] / 1e9:.2f}",
          f"{r['seconds']:.3f} ({r['cpu_seconds']:.3f})", f"{r['gb_per_s']:.2f}",
          f"{100 * r['share_of_bandwidth']:.0f}% ({100 * r['cpu_share_of_bandwidth']:.0f}%)"] for r in kernel]))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
