"""TIES on bfloat16 sources, where equal magnitudes are common: seconds per tensor against float32 sources.

A bf16 weight has 8 significant bits, so the task vectors of bf16 fine-tunes (exact differences of bf16
numbers) repeat the same magnitudes many times, and the density cut of TIES usually falls inside a run of
equal values. This times `PSMerger.merge_tensor` (the path a search worker and the export take) on a
base + 2 fine-tunes of one square tensor, with the sources stored as float32 and as bf16 (`dtype:
bfloat16`), and counts the elements tied at the cut.

    .venv/bin/python bench/ties_bf16.py            # 4096 x 4096, 5 repeats
    .venv/bin/python bench/ties_bf16.py --smoke    # 512 x 512, 1 repeat
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import RESULTS, SMOKE_OUT, markdown_table, write_result  # noqa: E402

DENSITY = 0.3


def tied_at_cut(deltas, density: float) -> int:
    """Elements whose |delta| equals the k-th largest of one task vector (k = density x size)."""
    import torch

    magnitude = deltas.abs().reshape(-1).float()
    k = max(1, int(density * magnitude.numel()))
    threshold = torch.kthvalue(magnitude, magnitude.numel() - k + 1).values
    return int((magnitude == threshold).sum())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    import torch

    from evosearch.merge.ps import PSMerger
    from evosearch.merge.sources import ResidentModel
    from evosearch.recipe import parse_recipe

    torch.set_num_threads(1)
    size, repeats = (512, 1) if args.smoke else (4096, 5)
    name = "model.layers.0.mlp.down_proj.weight"
    gen = torch.Generator().manual_seed(0)
    base = 0.02 * torch.randn(size, size, generator=gen)
    tensors = {"base": base, **{f"ft{i}": base + 0.002 * torch.randn(size, size, generator=gen) for i in range(2)}}
    rows, runs = [], []
    for stored in ("float32", "bfloat16"):
        dtype = getattr(torch, stored)
        sources = {m: ResidentModel(m, {name: t.to(dtype)}) for m, t in tensors.items()}
        recipe = parse_recipe({"kind": "ps", "merge_method": "ties", "base_model": "base", "dtype": stored,
                               "out_dtype": "float32", "models": [
                                   {"model": m, "parameters": {"weight": 0.5, "density": DENSITY}} for m in ("ft0", "ft1")]})
        merger = PSMerger(recipe, sources)
        merger.merge_tensor(name)  # warm-up: scratch buffers, kernel compilation
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            merger.merge_tensor(name)
            seconds.append(time.perf_counter() - start)
        ties = tied_at_cut(sources["ft0"].read(name).float() - sources["base"].read(name).float(), DENSITY)
        run = {"stored": stored, "median_seconds": statistics.median(seconds), "seconds": seconds,
               "tied_at_cut": ties}
        runs.append(run)
        rows.append([stored, f"{size}x{size}", f"{run['median_seconds']:.3f}", ties])
    table = markdown_table(["sources", "tensor", "median s per TIES merge (3 inputs)", "elements tied at the cut"],
                           rows)
    print(table)
    out = Path(args.out) if args.out else (SMOKE_OUT if args.smoke else RESULTS)
    write_result(out, "ties_bf16", {"size": size, "density": DENSITY, "repeats": repeats, "runs": runs,
                                    "bf16_over_float32": runs[1]["median_seconds"] / runs[0]["median_seconds"],
                                    "table": table})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
