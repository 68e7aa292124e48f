"""Merge speed and memory: `evosearch merge` vs `mergekit-yaml` (mergekit 0.1.5) on the same recipes.

A zoo-style Llama family (base + 3 fine-tune-like variants, 103M parameters each, random weights) is
generated once under the cache directory. Each recipe (TIES and task arithmetic with per-layer gradient
parameters; DARE-TIES with a seed) is merged by both tools, each in its own fresh subprocess writing a
fresh directory; the order alternates between repeats and the source files are read once beforehand so
both start from a warm page cache. Reported: wall time (best of the repeats), the ratio mergekit /
evosearch, each child's peak RSS (`wait4`), and the largest absolute difference between the two outputs'
tensors (deterministic methods only: DARE drops weights at random, and the two tools draw differently).

    .venv/bin/python bench/merge_speed.py             # 103M-parameter family, 3 repeats
    .venv/bin/python bench/merge_speed.py --smoke     # tiny family, 1 repeat (seconds)
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from common import (add_family_arguments, build_family, markdown_table, parameter_count, resolve_family_arguments,
                    write_result)

BIN = Path(sys.executable).parent
PARITY_TOLERANCE = 1e-5
DARE_SEED = 1234


SMOKE_METHODS = ("ties", "task_arithmetic", "dare_ties")  # --smoke: seconds, not minutes, of mergekit start-ups
RANDOM_METHODS = {"dare_ties", "dare_linear", "della", "della_linear"}  # drops drawn differently by each tool


def recipes(paths: dict[str, Path], methods: Optional[list[str]] = None) -> dict[str, dict]:
    """The benchmark recipes, mergekit's YAML format, per-layer gradients on every tool-relevant knob: one per
    method the two tools share (`methods`: a subset, by name)."""
    base, ft = str(paths["base"]), [str(paths[f"ft{i}"]) for i in range(3)]
    gradient_models = [
        {"model": ft[0], "parameters": {"weight": [0.2, 0.8, 0.5], "density": [0.4, 0.9]}},
        {"model": ft[1], "parameters": {"weight": [1.0, 0.3], "density": 0.6}},
        {"model": ft[2], "parameters": {"weight": 0.5, "density": [0.7, 0.3]}},
    ]
    ta_models = [{"model": m["model"], "parameters": {"weight": m["parameters"]["weight"]}} for m in gradient_models]
    plain = [{"model": m} for m in ft]
    common = {"base_model": base, "dtype": "float32"}
    every = {
        "ties": {"merge_method": "ties", **common, "models": gradient_models, "parameters": {"normalize": True}},
        "task_arithmetic": {"merge_method": "task_arithmetic", **common, "models": ta_models,
                            "parameters": {"lambda": [0.8, 1.2]}},
        "dare_ties": {"merge_method": "dare_ties", **common, "models": gradient_models, "seed": DARE_SEED},
        "dare_linear": {"merge_method": "dare_linear", **common, "models": gradient_models, "seed": DARE_SEED},
        "breadcrumbs": {"merge_method": "breadcrumbs", **common, "models": gradient_models,
                        "parameters": {"gamma": 0.02}},
        "breadcrumbs_ties": {"merge_method": "breadcrumbs_ties", **common, "models": gradient_models,
                             "parameters": {"gamma": 0.02}},
        "della": {"merge_method": "della", **common, "models": gradient_models, "parameters": {"epsilon": 0.05},
                  "seed": DARE_SEED},
        "della_linear": {"merge_method": "della_linear", **common, "models": gradient_models,
                         "parameters": {"epsilon": 0.05}, "seed": DARE_SEED},
        "linear": {"merge_method": "linear", "dtype": "float32", "models": [
            {"model": base, "parameters": {"weight": [1.0, 0.2]}}, *ta_models]},
        "slerp": {"merge_method": "slerp", **common, "models": [{"model": base}, {"model": ft[0]}],
                  "parameters": {"t": [0.1, 0.6, 0.9]}},
        "model_stock": {"merge_method": "model_stock", **common, "models": plain},
        "sce": {"merge_method": "sce", **common, "models": plain, "parameters": {"select_topk": [0.4, 0.9]}},
        "nuslerp": {"merge_method": "nuslerp", **common, "models": ta_models[:2]},
        "multislerp": {"merge_method": "multislerp", **common, "models": ta_models},
        "karcher": {"merge_method": "karcher", "dtype": "float32", "models": [{"model": m} for m in [base, *ft]]},
        "nearswap": {"merge_method": "nearswap", **common, "models": plain[:1], "parameters": {"t": 0.01}},
        "arcee_fusion": {"merge_method": "arcee_fusion", **common, "models": plain[:1]},
        "ram": {"merge_method": "ram", **common, "models": plain, "parameters": {"epsilon": 0.01}},
        "passthrough": {"merge_method": "passthrough", "dtype": "float32", "models": [
            {"model": ft[2], "parameters": {"scale": [0.5, 2.0]}}]},
    }
    unknown = set(methods or ()) - set(every)
    if unknown:
        raise SystemExit(f"--methods: no benchmark recipe for {', '.join(sorted(unknown))}")
    return {m: r for m, r in every.items() if methods is None or m in methods}


@dataclass
class Run:
    tool: str
    method: str
    repeat: int
    seconds: float
    cpu_seconds: float  # user + system time of the child: less at the mercy of a shared machine than wall time
    peak_rss_bytes: int


def timed_child(cmd: list[str], log: Path, threads: int) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds and peak RSS of one fresh child process (its own `wait4` rusage)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with log.open("w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log.read_text().strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"{cmd[0]} exited {proc.returncode}: {tail[0]}")
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024  # Linux reports kilobytes


def commands(method: str, recipe: dict, work: Path, out: Path) -> dict[str, list[str]]:
    import yaml

    from evosearch.recipe import parse_recipe, recipe_to_yaml

    parsed = parse_recipe(recipe, source=f"{method} recipe")
    ours, theirs = work / f"{method}.evosearch.yaml", work / f"{method}.mergekit.yaml"
    ours.write_text(recipe_to_yaml(parsed))
    theirs.write_text(yaml.safe_dump(parsed.to_mergekit(), sort_keys=False))
    seed = ["--random-seed", str(parsed.seed)] if "seed" in recipe else []
    return {"evosearch": [str(BIN / "evosearch"), "merge", str(ours), str(out)],
            "mergekit": [str(BIN / "mergekit-yaml"), str(theirs), str(out), "--quiet", *seed]}


def load_dir(path: Path) -> dict:
    from safetensors.torch import load_file

    tensors = {}
    for file in sorted(path.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def max_abs_difference(a: Path, b: Path) -> float:
    ta, tb = load_dir(a), load_dir(b)
    # A tied head is the embedding: a tool may or may not write it, so compare what both wrote.
    shared = set(ta) & set(tb)
    if (set(ta) ^ set(tb)) - {"lm_head.weight"}:
        raise RuntimeError(f"outputs {a} and {b} differ in tensor names: {sorted(set(ta) ^ set(tb))[:3]}")
    return max(float((ta[n].double() - tb[n].double()).abs().max()) for n in shared)


def warm_page_cache(paths: dict[str, Path]) -> None:
    for path in paths.values():
        for file in path.glob("*.safetensors"):
            with file.open("rb") as f:
                while f.read(1 << 24):
                    pass


# What each command imports before it merges anything: its entry point's module.
ENTRY_MODULES = {"evosearch": "evosearch.cli", "mergekit": "mergekit.scripts.run_yaml"}


def startup_cpu_seconds(work: Path, threads: int, repeats: int) -> dict[str, float]:
    """Each tool's fixed cost: the least CPU time of a fresh interpreter importing its entry point."""
    return {tool: min(timed_child([sys.executable, "-c", f"import {module}"], work / f"{tool}-import.log",
                                  threads)[1] for _ in range(repeats))
            for tool, module in ENTRY_MODULES.items()}


def net_ratio(cpu: dict[str, float], startup: dict[str, float]) -> Optional[float]:
    """mergekit / evosearch in CPU time once each tool's start-up is taken off (None if noise swallows it)."""
    net = {tool: cpu[tool] - startup[tool] for tool in cpu}
    return net["mergekit"] / net["evosearch"] if min(net.values()) > 0 else None


def summarise(runs: list[Run], differences: dict[str, float], startup: dict[str, float]) -> list[dict]:
    rows = []
    tools = ("evosearch", "mergekit")
    for method in dict.fromkeys(r.method for r in runs):
        mine = {tool: [r for r in runs if r.method == method and r.tool == tool] for tool in tools}
        wall = {tool: min(r.seconds for r in mine[tool]) for tool in tools}
        cpu = {tool: min(r.cpu_seconds for r in mine[tool]) for tool in tools}
        peak = {tool: max(r.peak_rss_bytes for r in mine[tool]) for tool in tools}
        rows.append({"method": method, "evosearch_seconds": wall["evosearch"], "mergekit_seconds": wall["mergekit"],
                     "speedup": wall["mergekit"] / wall["evosearch"],
                     "evosearch_cpu_seconds": cpu["evosearch"], "mergekit_cpu_seconds": cpu["mergekit"],
                     "cpu_speedup": cpu["mergekit"] / cpu["evosearch"],
                     "cpu_speedup_net_of_startup": net_ratio(cpu, startup),
                     "evosearch_peak_rss_bytes": peak["evosearch"], "mergekit_peak_rss_bytes": peak["mergekit"],
                     "max_abs_difference": differences.get(method), "parity_checked": method in differences})
    return rows


def table(rows: list[dict]) -> str:
    mib = 1 << 20
    return markdown_table(
        ["method", "evosearch s (CPU s)", "mergekit s (CPU s)", "speed-up wall (CPU)", "CPU speed-up net of start-up",
         "evosearch peak RSS MiB", "mergekit peak RSS MiB", "max abs diff"],
        [[r["method"], f"{r['evosearch_seconds']:.1f} ({r['evosearch_cpu_seconds']:.1f})",
          f"{r['mergekit_seconds']:.1f} ({r['mergekit_cpu_seconds']:.1f})",
          f"{r['speedup']:.2f}x ({r['cpu_speedup']:.2f}x)", f"{r['cpu_speedup_net_of_startup']:.2f}x" if r["cpu_speedup_net_of_startup"] else "n/a",
          f"{r['evosearch_peak_rss_bytes'] / mib:.0f}", f"{r['mergekit_peak_rss_bytes'] / mib:.0f}",
          f"{r['max_abs_difference']:.1e}" if r["parity_checked"] else "n/a (random drop)"] for r in rows])


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_family_arguments(p, repeats_help="runs per tool and recipe (the best time counts)")
    p.add_argument("--methods", nargs="+", default=None, help="benchmark only these methods (default: every one "
                                                               "both tools have)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads of both tools' processes (OMP_NUM_THREADS); 1 suits a shared machine")
    args = resolve_family_arguments(p, p.parse_args(argv))
    if args.smoke and args.methods is None:
        args.methods = list(SMOKE_METHODS)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    paths = build_family(Path(args.cache) / args.size, args.size)
    params = parameter_count(paths["base"])
    print(f"family: base + 3 variants, {params / 1e6:.1f}M parameters each, {paths['base'].parent}", flush=True)
    warm_page_cache(paths)
    runs: list[Run] = []
    differences: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="merge_speed_", dir=Path(args.cache)) as tmp:
        work = Path(tmp)
        for method, recipe in recipes(paths, args.methods).items():
            for repeat in range(args.repeats):
                outs = {tool: work / f"{method}-{tool}-{repeat}" for tool in ("evosearch", "mergekit")}
                order = ["evosearch", "mergekit"] if repeat % 2 == 0 else ["mergekit", "evosearch"]
                for tool in order:
                    cmd = commands(method, recipe, work, outs[tool])[tool]
                    seconds, cpu, rss = timed_child(cmd, work / f"{method}-{tool}-{repeat}.log", args.threads)
                    runs.append(Run(tool, method, repeat, seconds, cpu, rss))
                    print(f"{method} {tool} #{repeat}: {seconds:.2f} s ({cpu:.2f} CPU s), peak RSS "
                          f"{rss / (1 << 20):.0f} MiB", flush=True)
                if recipe["merge_method"] not in RANDOM_METHODS and method not in differences:
                    differences[method] = max_abs_difference(outs["evosearch"], outs["mergekit"])
                for out in outs.values():
                    shutil.rmtree(out)
        startup = startup_cpu_seconds(work, args.threads, args.repeats)
    rows = summarise(runs, differences, startup)
    path = write_result(args.out, "merge_speed", {
        "settings": {"size": args.size, "parameters": params, "repeats": args.repeats, "threads": args.threads,
                     "family": str(paths["base"].parent),
                     "parity_tolerance": PARITY_TOLERANCE, "dare_seed": DARE_SEED,
                     "timing": "wall and CPU (user + system) seconds of the whole command, interpreter start-up "
                               "included; each the best of the repeats",
                     "peak_rss": "ru_maxrss of each fresh child, max over repeats",
                     "recipes": recipes({k: Path(k) for k in paths}, args.methods)},
        "startup_cpu_seconds": startup, "summary": rows, "runs": [asdict(r) for r in runs]})
    print()
    print(table(rows))
    print(f"start-up (CPU s to import the entry point, best of {args.repeats}): "
          f"evosearch {startup['evosearch']:.1f}, mergekit {startup['mergekit']:.1f}")
    print(f"wrote {path}")
    failed = [r["method"] for r in rows if r["parity_checked"] and r["max_abs_difference"] > PARITY_TOLERANCE]
    if failed:
        print(f"parity FAILED for {', '.join(failed)} (max abs diff > {PARITY_TOLERANCE:g})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
