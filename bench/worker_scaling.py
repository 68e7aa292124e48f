"""Worker throughput and where a worker's time goes: candidates per minute with 1 and 2 CandidateWorker
Ray actors on this machine, and the share of worker time in forward passes vs build vs overhead.

A fixed set of random TIES recipes from the PS space of `examples/job_ps_cmaes.yaml` (the zoo's three
specialists onto its base, weights and densities per 2-layer block) is scored in full mode (the first
`--limit` docs of the search split), as the driver asks its workers: the same `WorkerPool` of
`CandidateWorker` actors on a local Ray, the same `CandidateTask`s. Actor start-up (loading sources and
building lm-eval tasks) and one warm-up candidate per actor are left out of the timed set.

    .venv/bin/python bench/worker_scaling.py              # runs/zoo, 16 recipes, 1 and 2 workers
    .venv/bin/python bench/worker_scaling.py --smoke      # tiny zoo (cached in a temp dir), 4 recipes
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from common import ROOT, add_zoo_arguments, markdown_table, resolve_zoo_arguments, write_result

JOB_FILE = ROOT / "examples" / "job_ps_cmaes.yaml"
TARGET = 0.8  # share of worker time that should be forward passes + build


def job_spec(zoo, limit: int):
    """examples/job_ps_cmaes.yaml pointed at `zoo`, in full mode with a doc limit."""
    import yaml

    from evosearch.search.job import parse_job

    raw = yaml.safe_load(JOB_FILE.read_text())
    raw["sources"] = {name: str(path) for name, path in zoo.models.items()}
    raw["tasks"] = {"include_path": str(zoo.include_path)}
    raw["search_space"]["num_layers"] = json.loads((zoo.models["base"] / "config.json").read_text())[
        "num_hidden_layers"]
    raw["fitness"] = {"mode": "full", "limit": limit}
    raw.pop("output_dir", None)
    return parse_job(raw, where=str(JOB_FILE))


def candidate_tasks(spec, n: int, seed: int) -> list:
    """`n` recipes decoded from uniform random genomes, as the driver's full-mode tasks."""
    import numpy as np

    from evosearch.spaces import build_space
    from workers.candidate import CandidateTask

    space = build_space(spec.search_space)
    genomes = np.random.default_rng(seed).random((n, space.dim))
    samples = {t: list(range(spec.fitness.limit)) for t in spec.search_tasks}
    return [CandidateTask(key=f"bench/{i}", recipe=space.decode(g).model_dump(mode="json"), samples=samples,
                          tasks=spec.search_tasks) for i, g in enumerate(genomes)]


def measure(spec, tasks: list, workers: int) -> dict:
    """Start `workers` actors, warm each up with one candidate, then time the whole fixed set."""
    from evosearch.search.ray_session import ensure_ray
    from workers.candidate import CandidateWorker
    from workers.pool import ActorOptions, WorkerPool

    w = spec.workers
    ensure_ray(num_cpus=max(os.cpu_count() or 1, workers))
    started = time.perf_counter()
    pool = WorkerPool(CandidateWorker, (spec.source_paths, spec.tasks.include_path, spec.search_tasks, w.batch_size,
                                        w.device, w.dtype),
                      num_workers=workers, options=ActorOptions(num_cpus=1), call="run", max_retries=0).start()
    try:
        startup = time.perf_counter() - started  # `start` waits until every actor has loaded
        warm = list(pool.map_unordered(tasks[:workers], lambda t: (t,)))
        failed = [o.error for o in warm if not o.ok]
        timed_start = time.perf_counter()
        outcomes = list(pool.map_unordered(tasks, lambda t: (t,)))
        wall = time.perf_counter() - timed_start
    finally:
        pool.shutdown()
    failed += [o.error for o in outcomes if not o.ok]
    if failed:
        raise RuntimeError(f"{len(failed)} candidate(s) failed, first: {failed[0]}")
    results = [o.value for o in outcomes]
    build = sum(r.build_seconds for r in results)
    forward = sum(r.eval_seconds for r in results)
    overhead = sum(r.overhead_seconds for r in results)
    busy = build + forward + overhead
    return {"workers": workers, "candidates": len(results), "wall_seconds": wall, "startup_seconds": startup,
            "candidates_per_minute": 60 * len(results) / wall,
            "worker_seconds": {"build": build, "forward": forward, "overhead": overhead},
            "share": {"build": build / busy, "forward": forward / busy, "overhead": overhead / busy},
            "forward_plus_build_share": (build + forward) / busy,
            # Of the actors' wall time, the part spent outside `run` (Ray dispatch, result transfer, idling
            # at the end of the set).
            "idle_share": max(0.0, 1 - busy / (workers * wall)),
            "workers_seen": len({r.worker for r in results})}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_zoo_arguments(p, "tiny zoo (built once into a temp dir), 4 recipes, 20 docs")
    p.add_argument("--candidates", type=int, default=16, help="recipes in the fixed set")
    p.add_argument("--limit", type=int, default=200, help="docs of the search split scored per candidate")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to measure")
    p.add_argument("--seed", type=int, default=0, help="seed of the random recipes")
    args = p.parse_args(argv)
    if args.smoke:
        args.candidates, args.limit = 4, 20
    args = resolve_zoo_arguments(args)
    if args.candidates < max(args.workers):
        p.error(f"--candidates {args.candidates} is fewer than the largest worker count")
    return args


def main(argv=None) -> int:
    import ray
    import torch

    from evosearch.zoo import ZooManifest, build_zoo

    args = parse_args(argv)
    torch.set_num_threads(1)  # the actors take the cores
    zoo = build_zoo(Path(args.zoo), preset="tiny") if args.smoke else ZooManifest.load(Path(args.zoo))
    spec = job_spec(zoo, args.limit)
    tasks = candidate_tasks(spec, args.candidates, args.seed)
    try:
        runs = []
        for workers in args.workers:
            run = measure(spec, tasks, workers)
            runs.append(run)
            print(f"{workers} worker(s): {run['candidates_per_minute']:.1f} candidates/min "
                  f"(forward {100 * run['share']['forward']:.0f}%, build {100 * run['share']['build']:.0f}%, "
                  f"overhead {100 * run['share']['overhead']:.0f}%)", flush=True)
    finally:
        ray.shutdown()
    by_count = {r["workers"]: r for r in runs}
    scaling = (by_count[2]["candidates_per_minute"] / by_count[1]["candidates_per_minute"]
               if 1 in by_count and 2 in by_count else None)
    path = write_result(args.out, "worker_scaling", {
        "settings": {"zoo": str(zoo.root), "job": str(JOB_FILE.relative_to(ROOT)), "candidates": args.candidates,
                     "limit": args.limit, "seed": args.seed, "search_tasks": spec.search_tasks,
                     "batch_size": spec.workers.batch_size, "target_forward_plus_build": TARGET,
                     "timing": "actor start-up and one warm-up candidate per actor excluded"},
        "runs": runs, "scaling_2_over_1": scaling})
    print()
    print(markdown_table(
        ["workers", "candidates", "candidates/min", "forward %", "build %", "overhead %", "forward + build %",
         "actor idle %"],
        [[r["workers"], r["candidates"], f"{r['candidates_per_minute']:.1f}", f"{100 * r['share']['forward']:.0f}",
          f"{100 * r['share']['build']:.0f}", f"{100 * r['share']['overhead']:.0f}",
          f"{100 * r['forward_plus_build_share']:.0f}", f"{100 * r['idle_share']:.0f}"] for r in runs]))
    if scaling is not None:
        print(f"scaling 2 workers / 1 worker: {scaling:.2f}x on {os.cpu_count()} CPU cores")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
