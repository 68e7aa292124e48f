"""Fitness cost: seconds per candidate scored on the IRT anchors vs on the full tasks, with the error the
reduction costs (from the fitness report of the same calibration).

One in-process `CandidateWorker` (what a Ray actor runs) on the zoo, a fixed set of random recipes from the
calibration's own search space, each scored twice: on the anchors a job's default reduced fitness asks
(`anchor_regression`, 25 per task, correctness clustering, chosen on the stored calibration `zoo-calib`)
and on every doc of the four search-split tasks. Build time is the same both ways; the forward passes and
lm-eval's overhead shrink with the items.

Then generation against multiple choice: the same recipes scored on the same docs of the zoo's target, once
as multiple choice (`zoo_target`: one loglikelihood per choice) and once answered by generation
(`zoo_target_gen`: greedy, the answer's length, exact match), with the share of each candidate's time
spent inside the model's forward passes.

    .venv/bin/python bench/fitness_cost.py            # runs/zoo + the zoo-calib calibration, 6 recipes
    .venv/bin/python bench/fitness_cost.py --smoke    # tiny zoo, random anchors, 2 recipes
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from common import RESULTS, ROOT, add_zoo_arguments, markdown_table, resolve_zoo_arguments, write_result

os.environ.setdefault("TQDM_DISABLE", "1")  # lm-eval's per-task bars; read when tqdm is first imported
CALIBRATION_FILE = ROOT / "examples" / "calibrate_zoo.yaml"
FITNESS_REPORT = RESULTS / "fitness_report.json"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_zoo_arguments(p, "tiny zoo, k random docs per task as anchors, 2 recipes")
    p.add_argument("--calibration", default="zoo-calib", help="stored calibration whose anchors are timed")
    p.add_argument("--store", default="runs/zoo-calib/evosearch.db", help="its SQLite store")
    p.add_argument("--k", type=int, default=25, help="anchors per task")
    p.add_argument("--candidates", type=int, default=6, help="random recipes timed both ways")
    p.add_argument("--target-docs", type=int, default=100, help="target docs timed as multiple choice and generative")
    args = p.parse_args(argv)
    if args.smoke:
        args.candidates, args.k, args.target_docs = 2, 5, 10
    return resolve_zoo_arguments(args)


def _space(zoo):
    """The calibration example's PS space over `zoo`'s models."""
    import yaml

    from evosearch.spaces import build_space, parse_space_config

    raw = yaml.safe_load(CALIBRATION_FILE.read_text())["search_space"]
    raw["sources"] = [str(zoo.models[name]) for name in raw["sources"]]
    raw["base_model"] = str(zoo.models["base"])
    raw["num_layers"] = json.loads((zoo.models["base"] / "config.json").read_text())["num_hidden_layers"]
    return build_space(parse_space_config(raw))


def _anchors(args, tasks: list[str], n_docs: dict[str, int]) -> tuple[dict[str, list[int]], str]:
    """Task -> anchor doc ids, and how they were chosen."""
    import numpy as np

    if args.smoke:
        rng = np.random.default_rng(0)
        return {t: sorted(rng.choice(n_docs[t], args.k, replace=False).tolist()) for t in tasks}, "random docs"
    from fitness.reduced import ReducedFitness
    from storage import Store

    with Store.open(f"sqlite:///{Path(args.store).resolve()}") as store:
        calibration = store.get_calibration(args.calibration)
    fitness = ReducedFitness.from_calibration(calibration, estimator="anchor_regression", k=args.k,
                                              strategy="correctness_clustering")
    return fitness.samples, f"{args.calibration}: anchor_regression, correctness clustering"


def _time(worker, recipes: list[dict], samples, tasks: list[str]) -> dict:
    from workers.candidate import CandidateTask

    rows = []
    for i, recipe in enumerate(recipes):
        started = time.perf_counter()
        result = worker.run(CandidateTask(key=f"bench/{i}", recipe=recipe, samples=samples, tasks=tasks))
        rows.append({"wall": time.perf_counter() - started, "build": result.build_seconds,
                     "forward": result.eval_seconds, "overhead": result.overhead_seconds})
    return {key: statistics.median(r[key] for r in rows) for key in rows[0]}


def _reported_error(k: int) -> dict | None:
    """The fitness report's row for the default reduced fitness at this k, if the report is there."""
    if not FITNESS_REPORT.is_file():
        return None
    for row in json.loads(FITNESS_REPORT.read_text())["rows"]:
        if (row["estimator"], row["strategy"], row["k"]) == ("anchor_regression", "correctness_clustering", k):
            return {key: row[key] for key in ("mae_points", "worst_points", "spearman", "reduction")}
    return None


def _generative_vs_choice(zoo, recipes: list[dict], n_docs: int) -> dict | None:
    """Median seconds per candidate on the target's first `n_docs` docs, as multiple choice and generated,
    and the share inside the model; None for a zoo built before it had the generative target."""
    from evosearch.zoo.tasks import GENERATIVE_FROM, GENERATIVE_TASK
    from workers.candidate import CandidateWorker

    if GENERATIVE_TASK not in zoo.tasks:
        return None
    kinds = {"multiple_choice": GENERATIVE_FROM, "generative": GENERATIVE_TASK}
    worker = CandidateWorker([str(p) for p in zoo.models.values()], [str(zoo.include_path)], list(kinds.values()))
    out: dict = {"docs": n_docs, "tasks": kinds}
    for kind, task in kinds.items():
        samples = {task: list(range(n_docs))}
        _time(worker, recipes[:1], samples, [task])  # warm-up
        timed = _time(worker, recipes, samples, [task])
        out[kind] = {**timed, "model_share": timed["forward"] / timed["wall"]}
    out["generative_over_multiple_choice"] = out["generative"]["wall"] / out["multiple_choice"]["wall"]
    return out


def main(argv=None) -> int:
    import numpy as np
    import torch

    from evosearch.zoo import ZooManifest, build_zoo
    from workers.candidate import CandidateWorker

    args = parse_args(argv)
    torch.set_num_threads(1)  # one worker, one core: as one Ray actor with num_cpus 1
    zoo = build_zoo(Path(args.zoo), preset="tiny") if args.smoke else ZooManifest.load(Path(args.zoo))
    tasks = zoo.task_names("search")
    worker = CandidateWorker([str(p) for p in zoo.models.values()], [str(zoo.include_path)], tasks)
    n_docs = {t: len(worker.evaluator.doc_ids(t)) for t in tasks}
    anchors, chosen = _anchors(args, tasks, n_docs)
    space = _space(zoo)
    recipes = [space.decode(g).model_dump(mode="json")
               for g in np.random.default_rng(0).random((args.candidates, space.dim))]
    _time(worker, recipes[:1], anchors, tasks)  # warm-up: first-call costs out of the timed set
    reduced = _time(worker, recipes, anchors, tasks)
    full = _time(worker, recipes, None, tasks)
    items = {"anchors": sum(len(v) for v in anchors.values()), "full": sum(n_docs.values())}
    result = {"smoke": args.smoke, "anchors_chosen_by": chosen,
              "k_per_task": args.k, "candidates": args.candidates, "items_per_candidate": items,
              "median_seconds": {"anchors": reduced, "full": full},
              "speedup_wall": full["wall"] / reduced["wall"], "error_at_this_k": _reported_error(args.k),
              "generative_vs_multiple_choice": _generative_vs_choice(zoo, recipes, args.target_docs)}
    path = write_result(args.out, "fitness_cost", result)
    print(markdown_table(
        ["scored on", "items/candidate", "s/candidate (median)", "build s", "forward s", "overhead s"],
        [[name, items[name], f"{t['wall']:.2f}", f"{t['build']:.2f}", f"{t['forward']:.2f}", f"{t['overhead']:.2f}"]
         for name, t in (("anchors", reduced), ("full", full))]))
    error = result["error_at_this_k"]
    print(f"\nfull / anchors: {result['speedup_wall']:.1f}x faster per candidate for "
          f"{items['full'] / items['anchors']:.0f}x fewer items"
          + (f"; error at this k (fitness report): MAE {error['mae_points']:.2f} points, "
             f"Spearman {error['spearman']:.3f}" if error else ""))
    generated = result["generative_vs_multiple_choice"]
    if generated is None:
        print("\ngenerative vs multiple choice: skipped (this zoo has no zoo_target_gen; rebuild it)")
    else:
        print(f"\nthe target's first {generated['docs']} docs, per candidate:")
        print(markdown_table(
            ["scored as", "task", "s/candidate (median)", "forward s", "inside the model"],
            [[kind, generated["tasks"][kind], f"{generated[kind]['wall']:.2f}", f"{generated[kind]['forward']:.2f}",
              f"{100 * generated[kind]['model_share']:.0f}%"] for kind in ("multiple_choice", "generative")]))
        print(f"generative / multiple choice: {generated['generative_over_multiple_choice']:.1f}x the seconds")
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
