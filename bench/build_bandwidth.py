"""In-memory PS build vs the machine's memory bandwidth, measured in the same run.

A search worker keeps its sources resident and builds each candidate in memory: `build_merged_model`
(PSMerger over resident tensors, then the merged state loaded into a causal-LM module), the code path
`CandidateWorker._build_ps` runs. Here the benchmark family of `merge_speed.py` (base + 3 variants,
101M parameters each) is resident and each recipe is built; its effective bandwidth is (bytes of every
source tensor read + bytes of the merged tensors written) / build seconds, against a large torch tensor
copy (bytes read + written / seconds, best of several) on the same threads.

    .venv/bin/python bench/build_bandwidth.py             # 101M-parameter family, best of 3
    .venv/bin/python bench/build_bandwidth.py --smoke     # tiny family, seconds
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS, build_family, markdown_table, parameter_count, write_result
from merge_speed import recipes

TARGET = 0.5  # share of the copy bandwidth the build should reach


def copy_bandwidth(nbytes: int, repeats: int) -> float:
    """Bytes per second of `dst.copy_(src)` over float32 tensors of `nbytes`, counting read + write."""
    import torch

    src = torch.rand(nbytes // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)  # fault the pages in before timing
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2 * nbytes / best


def build_once(recipe, resident, config) -> tuple[float, float]:
    """(merge seconds, total build seconds) of one in-memory build, as a worker does it."""
    from evosearch.merge.ps import PSMerger, as_sources, build_model

    start = time.perf_counter()
    state = PSMerger(recipe, as_sources(resident)).merge_all()
    merged = time.perf_counter()
    model = build_model(config, state)
    built = time.perf_counter()
    del model, state
    return merged - start, built - start


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3, help="builds per recipe (the fastest counts)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    p.add_argument("--copy-bytes", type=int, default=1 << 30, help="size of the tensor copied for bandwidth")
    p.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "evosearch_bench_family"),
                   help="where the generated model family is kept between runs")
    p.add_argument("--out", default=None, help="where the JSON goes (default bench/results; --smoke: a temp dir)")
    p.add_argument("--smoke", action="store_true", help="tiny family, one build per recipe, a 64 MiB copy")
    args = p.parse_args(argv)
    args.size = "smoke" if args.smoke else "full"
    if args.smoke:
        args.repeats, args.copy_bytes = 1, 1 << 26
        args.out = args.out or str(Path(tempfile.gettempdir()) / "evosearch_bench_smoke")
    args.out = args.out or str(RESULTS)
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    return args


def main(argv=None) -> int:
    import torch

    from evosearch.merge.sources import SourceModel
    from evosearch.recipe import parse_recipe

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    paths = build_family(Path(args.cache) / args.size, args.size)
    sources = {str(p): SourceModel.open(str(p)) for p in paths.values()}
    resident = {path: source.load_all() for path, source in sources.items()}  # what a worker holds
    config = sources[str(paths["base"])].config
    model_bytes = sum(t.numel() * t.element_size() for t in resident[str(paths["base"])].values())
    bandwidth = copy_bandwidth(args.copy_bytes, repeats=5 if args.smoke else 10)
    print(f"family: {parameter_count(paths['base']) / 1e6:.1f}M parameters, {model_bytes / 1e6:.0f} MB per model; "
          f"copy bandwidth {bandwidth / 1e9:.1f} GB/s on {torch.get_num_threads()} thread(s)", flush=True)

    rows = []
    for method, raw in recipes(paths).items():
        recipe = parse_recipe(raw, source=f"{method} recipe")
        moved = (len(recipe.source_paths()) + 1) * model_bytes  # every source read once, the merge written once
        timings = [build_once(recipe, resident, config) for _ in range(args.repeats)]
        merge_s, build_s = min(t[0] for t in timings), min(t[1] for t in timings)
        rows.append({"method": method, "sources": len(recipe.source_paths()), "bytes_moved": moved,
                     "merge_seconds": merge_s, "build_seconds": build_s, "build_gb_per_s": moved / build_s / 1e9,
                     "share_of_bandwidth": moved / build_s / bandwidth,
                     "merge_share_of_bandwidth": moved / merge_s / bandwidth})
        print(f"{method}: build {build_s:.2f} s (merge {merge_s:.2f} s) = {moved / build_s / 1e9:.2f} GB/s", flush=True)

    path = write_result(args.out, "build_bandwidth", {
        "settings": {"size": args.size, "parameters": parameter_count(paths["base"]), "model_bytes": model_bytes,
                     "repeats": args.repeats, "threads": torch.get_num_threads(), "copy_bytes": args.copy_bytes,
                     "target_share": TARGET,
                     "bytes_moved": "every source tensor read once + every merged tensor written once",
                     "build": "PSMerger.merge_all over resident tensors + build_model (CandidateWorker._build_ps)"},
        "copy_bandwidth_gb_per_s": bandwidth / 1e9, "summary": rows})
    print()
    print(markdown_table(
        ["method", "sources", "GB moved", "build s (merge s)", "build GB/s", "copy GB/s", "share of copy bandwidth"],
        [[r["method"], r["sources"], f"{r['bytes_moved'] / 1e9:.2f}",
          f"{r['build_seconds']:.2f} ({r['merge_seconds']:.2f})", f"{r['build_gb_per_s']:.2f}",
          f"{bandwidth / 1e9:.1f}", f"{100 * r['share_of_bandwidth']:.0f}%"] for r in rows]))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
