"""Worker busy share and search quality: generational vs steady-state scheduling, same jobs, same seeds.

A DFS job over the zoo's math and lang specialists, with layers repeated so that random genomes give paths
of very different lengths (so candidates take very different times), is run by the real driver with two
real CandidateWorker actors, once per scheduling mode and seed, each into a fresh SQLite store, with the
same optimizer (GA), generations and population: the same budget. From the store:

- busy share = sum over candidates of the worker's own seconds (build + forward + the rest of its call)
  / (workers x the search's span), the span running from the start of the search (the workers already
  started) to the driver's last search event (the last candidate recorded and told);
- search quality = the best search-split score of the job.

    .venv/bin/python bench/scheduling.py --zoo runs/zoo     # 4 seeds x 6 generations x 8 candidates
    .venv/bin/python bench/scheduling.py --smoke            # tiny zoo, 1 seed x 2 generations x 4
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import add_zoo_arguments, markdown_table, resolve_zoo_arguments, write_result

MODES = ("generational", "steady_state")
TARGET = 0.95  # steady-state busy share


def job(zoo, name: str, scheduling: str, seed: int, generations: int, population: int, limit: int,
        out: Path) -> dict:
    layers = json.loads((zoo.models["base"] / "config.json").read_text())["num_hidden_layers"]
    return {
        "name": name, "seed": seed, "output_dir": str(out / name), "scheduling": scheduling,
        "sources": {"math": str(zoo.models["math"]), "lang": str(zoo.models["lang"])},
        "search_space": {"kind": "dfs", "sources": ["math", "lang"], "num_layers": layers, "repeats": 3,
                         "scale_range": [0.8, 1.6], "anchor_ends": True},
        "optimizer": {"name": "ga", "pop_size": population},
        "generations": generations,
        "objectives": [{"task": "zoo_target", "direction": "max"}],
        "fitness": {"mode": "full", "limit": limit},
        "tasks": {"include_path": str(zoo.include_path)},
        "workers": {"count": 2, "num_cpus": 1},
        "report": {"when": "never"},
    }


def measure(raw: dict) -> dict:
    from evosearch.search.driver import SearchDriver
    from evosearch.search.job import parse_job
    from storage import Store

    spec = parse_job(raw)
    Path(spec.output_dir).mkdir(parents=True, exist_ok=True)
    store = Store.open(spec.store)
    job = store.create_job(spec.name, spec.to_dict(), spec.seed, spec.output_dir,
                           objectives=dict(zip(spec.objective_names, spec.directions)))
    search_events: list[float] = []
    driver = SearchDriver(spec, store, job, on_event=lambda e: e.phase == "search" and search_events.append(
        time.perf_counter()))
    driver.workers()  # started (sources loaded, tasks built) before the clock starts
    start = time.perf_counter()
    summary = driver.run()
    wall = time.perf_counter() - start
    evaluated = [c for c in store.candidates(summary.job_id) if c.attempts > 0 and c.status == "done"]
    own = [(c.build_seconds or 0) + (c.eval_seconds or 0) + (c.overhead_seconds or 0) for c in evaluated]
    span = max(search_events) - start
    paths = [sum(c.recipe["indicator"]) for c in evaluated]
    best = max(s.estimated for c in store.candidates(summary.job_id, status="done") for s in c.scores
               if s.split == "search")
    return {"job": spec.name, "scheduling": spec.scheduling, "seed": spec.seed, "candidates": len(evaluated),
            "generations": summary.generations, "wall_seconds": wall, "span_seconds": span,
            "worker_seconds": sum(own), "busy_share": sum(own) / (spec.workers.count * span),
            "candidate_seconds": {"min": min(own), "median": statistics.median(own), "max": max(own)},
            "path_length": {"min": min(paths), "median": statistics.median(paths), "max": max(paths)},
            "best_search_score": best}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_zoo_arguments(p, "tiny zoo (built once into a temp dir), 1 seed, 2 generations of 4, 20 docs")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--generations", type=int, default=6)
    p.add_argument("--population", type=int, default=8)
    p.add_argument("--limit", type=int, default=100, help="docs of the search split scored per candidate")
    args = p.parse_args(argv)
    if args.smoke:
        args.seeds, args.generations, args.population, args.limit = [0], 2, 4, 20
    return resolve_zoo_arguments(args)


def main(argv=None) -> int:
    import ray
    import torch

    from evosearch.zoo import ZooManifest, build_zoo

    args = parse_args(argv)
    torch.set_num_threads(1)  # the actors take the cores
    zoo = build_zoo(Path(args.zoo), preset="tiny") if args.smoke else ZooManifest.load(Path(args.zoo))
    runs = []
    try:
        with tempfile.TemporaryDirectory(prefix="scheduling_") as tmp:
            for seed in args.seeds:
                for mode in MODES:
                    raw = job(zoo, f"{mode}-{seed}", mode, seed, args.generations, args.population, args.limit,
                              Path(tmp))
                    run = measure(raw)
                    runs.append(run)
                    print(f"{mode} seed {seed}: busy {100 * run['busy_share']:.1f}% of {run['span_seconds']:.0f} s, "
                          f"candidate {run['candidate_seconds']['min']:.1f}-{run['candidate_seconds']['max']:.1f} s, "
                          f"best {run['best_search_score']:.3f}", flush=True)
    finally:
        ray.shutdown()
    summary = {}
    for mode in MODES:
        mine = [r for r in runs if r["scheduling"] == mode]
        summary[mode] = {"busy_share": sum(r["worker_seconds"] for r in mine) / sum(2 * r["span_seconds"] for r in mine),
                         "mean_best_search_score": statistics.mean(r["best_search_score"] for r in mine),
                         "span_seconds": sum(r["span_seconds"] for r in mine)}
    path = write_result(args.out, "scheduling", {
        "settings": {"zoo": str(zoo.root), "seeds": args.seeds, "generations": args.generations,
                     "population": args.population, "limit": args.limit, "workers": 2, "optimizer": "ga",
                     "space": "dfs, math + lang, repeats 3, anchor ends", "target_steady_busy_share": TARGET,
                     "busy_share": "sum of worker seconds / (workers x span from first candidate start to last "
                                   "record)"},
        "summary": summary, "runs": runs})
    print()
    print(markdown_table(["scheduling", "busy share", "span s (all seeds)", "mean best search score"],
                         [[m, f"{100 * s['busy_share']:.1f}%", f"{s['span_seconds']:.0f}",
                           f"{s['mean_best_search_score']:.3f}"] for m, s in summary.items()]))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
