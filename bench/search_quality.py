"""Search quality on the zoo's cross-domain target: evolved merge vs random search vs best source vs best
default merge, at an equal evaluation budget (issue 4, "What must be shown"; issue 6, item 5).

Every method picks its model on the SEARCH split (`zoo_target`); the picked model is then scored on the
held-out REPORT split (`zoo_target_report`), the number users trust. Evolved (CMA-ES) and random search run
through the real driver (`run_job`: local Ray workers, a SQLite store); the source models and the default
merge grid are scored in this process with the same evaluator and tasks.

    .venv/bin/python bench/search_quality.py                  # runs/zoo, 3 seeds x 120 candidates
    .venv/bin/python bench/search_quality.py --smoke          # tiny zoo, 1 seed, seconds (CI)

Writes a table to stdout, JSON to bench/results/search_quality.json and a convergence plot (best-so-far
search-split accuracy vs candidates evaluated, mean over seeds) to bench/results/search_quality.png.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from common import machine  # noqa: E402  (bench/, the script's own directory)

SEARCH_TASK, REPORT_TASK = "zoo_target", "zoo_target_report"
SPECIALISTS = ("math", "strings", "lang")
GRID_WEIGHTS = (0.5, 0.75, 1.0)
TIES_DENSITIES = (0.5, 0.7)
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class MethodRun:
    """One method on one seed (or the one deterministic run of a baseline)."""

    method: str
    seed: Optional[int]
    picked: str  # what the method chose (a recipe summary or a model name)
    search: float  # the picked model's search-split accuracy
    report: float  # ... and its report-split accuracy
    candidates: int  # candidates charged to the budget (identical recipes served from the cache included)
    evaluated: int  # of which actually evaluated
    seconds: float
    best_so_far: list[float] = field(default_factory=list)  # search split, after each candidate

    @property
    def gap(self) -> float:
        return self.search - self.report


# --- driver methods: evolved (CMA-ES) and random search -------------------------------------------------
def search_job(zoo, method: str, seed: int, args, out_dir: Path) -> dict:
    """A PS job over the three specialists onto the base: task-arithmetic weights per 2-layer block (plus the
    embeddings/norms/head group); CMA-ES for `evolved`, uniform sampling for `random`."""
    optimizer = ({"name": "cmaes", "popsize": args.popsize, "sigma0": 0.25} if method == "evolved"
                 else {"name": "random", "pop_size": args.popsize})
    num_layers = json.loads((Path(zoo.models["base"]) / "config.json").read_text())["num_hidden_layers"]
    return {
        "name": f"{method}-s{seed}",
        "seed": seed,
        "output_dir": str(out_dir / f"{method}-s{seed}"),
        "sources": {k: str(v) for k, v in zoo.models.items()},
        "base_model": "base",
        "search_space": {"kind": "ps", "sources": list(SPECIALISTS), "methods": "task_arithmetic",
                         "num_layers": num_layers, "layer_groups": 2, "bounds": {"weight": [0.0, 1.5]},
                         "fixed_per_model": {"density": 1.0}, "parameters": {"normalize": False}},
        "optimizer": optimizer,
        "generations": -(-args.budget // args.popsize),
        "budget": args.budget,
        "objectives": [{"task": SEARCH_TASK, "direction": "max", "report_task": REPORT_TASK}],
        "fitness": {"mode": "full", **({"limit": args.limit} if args.limit else {})},
        "tasks": {"include_path": str(zoo.include_path)},
        "workers": {"count": args.workers, "num_cpus": 1},
        "report": {"when": "end"},
    }


def _score(cand, split: str) -> Optional[float]:
    for s in cand.scores:
        if s.split == split and s.objective == SEARCH_TASK:
            return s.full if s.full is not None else s.estimated
    return None


def _recipe_summary(recipe: dict) -> str:
    """`model: [w per group]` per source, short enough for a table."""
    parts = []
    for m in recipe["models"]:
        w = m["parameters"]["weight"]
        values = [c["value"] for c in w] if isinstance(w, list) else [w]
        parts.append(f"{Path(m['model']).name}=" + "/".join(f"{v:.2f}" for v in values))
    return " ".join(parts)


def run_search(zoo, method: str, seed: int, args, store, out_dir: Path) -> MethodRun:
    from evosearch.search.driver import run_job
    from evosearch.search.job import parse_job

    spec = parse_job(search_job(zoo, method, seed, args, out_dir), where=f"{method}-s{seed}")
    summary = run_job(spec, store)
    cands = sorted(store.candidates(summary.job_id), key=lambda c: (c.generation, c.index))
    curve, best = [], float("-inf")
    for c in cands:
        value = _score(c, "search") if c.status == "done" else None
        best = max(best, value if value is not None else float("-inf"))
        curve.append(best)
    # The pick is decided on the search split alone; among tied front members the first one found wins
    # (never the one with the best report score: that would peek at the held-out split).
    front = sorted(store.front(summary.job_id), key=lambda c: (-_score(c, "search"), c.generation, c.index))
    picked = front[0]
    report = _score(picked, "report")
    if report is None:
        raise RuntimeError(f"{method}-s{seed}: the picked candidate {picked.id} has no report-split score")
    return MethodRun(method=method, seed=seed, picked=_recipe_summary(picked.recipe), search=_score(picked, "search"),
                     report=report, candidates=summary.candidates, evaluated=summary.evaluated,
                     seconds=summary.seconds, best_so_far=curve)


# --- in-process methods: the source models and the default merge grid -----------------------------------
class ZooScorer:
    """The zoo's tensors resident, one evaluator over the target's search and report splits."""

    def __init__(self, zoo, limit: Optional[int]):
        from safetensors.torch import load_file
        from transformers import AutoConfig, AutoTokenizer

        from fitness.evaluator import LmEvalEvaluator

        self.zoo = zoo
        self.paths = {name: str(path) for name, path in zoo.models.items()}
        self.tensors = {p: load_file(str(Path(p) / "model.safetensors")) for p in self.paths.values()}
        self.config = AutoConfig.from_pretrained(self.paths["base"])
        self.tokenizer = AutoTokenizer.from_pretrained(self.paths["base"])
        self.evaluator = LmEvalEvaluator(zoo.include_path, [SEARCH_TASK, REPORT_TASK])
        self.samples = None if limit is None else {t: list(range(limit)) for t in (SEARCH_TASK, REPORT_TASK)}

    def score(self, model, task: str) -> float:
        samples = None if self.samples is None else {task: self.samples[task]}
        return self.evaluator.evaluate(model, self.tokenizer, tasks=[task], samples=samples).accuracy[task]

    def source(self, name: str):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(self.paths[name]).eval()

    def merge(self, method: str, weights: dict[str, float], density: float = 1.0):
        from evosearch.merge.ps import build_merged_model
        from evosearch.recipe import PSRecipe

        recipe = PSRecipe(merge_method=method, base_model=self.paths["base"], parameters={"normalize": False},
                          models=[{"model": self.paths[m], "parameters": {"weight": w, "density": density}}
                                  for m, w in weights.items()])
        return build_merged_model(recipe, self.tensors, config=self.config)


def default_merge_grid() -> list[tuple[str, str, dict[str, float], float]]:
    """(label, method, weights, density): uniform task arithmetic and TIES over every set of two or three
    specialists, each weight in GRID_WEIGHTS, TIES at each of TIES_DENSITIES."""
    grid = []
    subsets = [s for r in (2, 3) for s in itertools.combinations(SPECIALISTS, r)]
    for subset, w in itertools.product(subsets, GRID_WEIGHTS):
        weights = {m: w for m in subset}
        grid.append((f"TA {'+'.join(subset)} w={w}", "task_arithmetic", weights, 1.0))
        for d in TIES_DENSITIES:
            grid.append((f"TIES {'+'.join(subset)} w={w} d={d}", "ties", weights, d))
    return grid


def pick_and_report(method: str, scorer: ZooScorer, entries) -> MethodRun:
    """Score each (label, build) on the search split, pick the best (first on ties), score it on report."""
    started = time.monotonic()
    curve, scored, best = [], [], float("-inf")
    for label, build in entries:
        acc = scorer.score(build(), SEARCH_TASK)
        scored.append((label, acc, build))
        best = max(best, acc)
        curve.append(best)
    label, acc, build = max(scored, key=lambda t: t[1])  # max keeps the first of equal scores
    report = scorer.score(build(), REPORT_TASK)
    return MethodRun(method=method, seed=None, picked=label, search=acc, report=report, candidates=len(scored),
                     evaluated=len(scored), seconds=time.monotonic() - started, best_so_far=curve)


def run_baselines(scorer: ZooScorer) -> list[MethodRun]:
    sources = [(name, lambda name=name: scorer.source(name)) for name in ("base", *SPECIALISTS)]
    merges = [(label, lambda m=m, w=w, d=d: scorer.merge(m, w, d)) for label, m, w, d in default_merge_grid()]
    return [pick_and_report("best source", scorer, sources), pick_and_report("best default merge", scorer, merges)]


# --- summary, table, JSON, plot -----------------------------------------------------------------------
def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(runs: list[MethodRun]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for method in dict.fromkeys(r.method for r in runs):
        mine = [r for r in runs if r.method == method]
        report, search, gap = (_mean_std([getattr(r, k) for r in mine]) for k in ("report", "search", "gap"))
        out[method] = {
            "seeds": len(mine), "report_mean": report[0], "report_std": report[1],
            "search_mean": search[0], "search_std": search[1], "gap_mean": gap[0], "gap_std": gap[1],
            "candidates_mean": statistics.fmean(r.candidates for r in mine),
            "evaluated_mean": statistics.fmean(r.evaluated for r in mine),
            "seconds_mean": statistics.fmean(r.seconds for r in mine),
            "picked": [r.picked for r in mine],
        }
    return out


def differences(summary: dict[str, dict]) -> dict[str, float]:
    """Report-split points (x100) the evolved pick gains over each other method's pick."""
    evolved = summary.get("evolved")
    if evolved is None:
        return {}
    return {f"evolved - {m}": 100 * (evolved["report_mean"] - s["report_mean"])
            for m, s in summary.items() if m != "evolved"}


def table(summary: dict[str, dict]) -> str:
    head = ("| method | seeds | report acc % (mean ± std) | search acc % | search - report (pts) "
            "| candidates (evaluated) | seconds |")
    rows = [head, "|" + "---|" * 7]
    for method, s in summary.items():
        rows.append(f"| {method} | {s['seeds']} | {100 * s['report_mean']:.1f} ± {100 * s['report_std']:.1f} "
                    f"| {100 * s['search_mean']:.1f} ± {100 * s['search_std']:.1f} | {100 * s['gap_mean']:+.1f} "
                    f"| {s['candidates_mean']:.0f} ({s['evaluated_mean']:.0f}) | {s['seconds_mean']:.0f} |")
    return "\n".join(rows)


def plot(runs: list[MethodRun], path: Path, budget: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in dict.fromkeys(r.method for r in runs):
        curves = [r.best_so_far for r in runs if r.method == method]
        n = min(len(c) for c in curves)
        mean = 100 * np.mean([c[:n] for c in curves], axis=0)
        x = np.arange(1, n + 1)
        seeded = [r for r in runs if r.method == method and r.seed is not None]
        runs_label = f"{len(curves)} seed{'s' if len(curves) > 1 else ''}" if seeded else "fixed set"
        (line,) = ax.plot(x, mean, label=f"{method} ({runs_label})", drawstyle="steps-post")
        if len(curves) > 1:
            lo, hi = 100 * np.min([c[:n] for c in curves], axis=0), 100 * np.max([c[:n] for c in curves], axis=0)
            ax.fill_between(x, lo, hi, alpha=0.15, color=line.get_color(), step="post")
        if n < budget:  # a fixed set smaller than the budget: its best carries on
            ax.hlines(mean[-1], n, budget, linestyles="dotted", colors=line.get_color())
    ax.set_xlabel("candidates evaluated")
    ax.set_ylabel(f"best-so-far {SEARCH_TASK} accuracy (search split, %)")
    ax.set_title("Search quality on the zoo's cross-domain target (mean over seeds; band: min-max)")
    ax.title.set_fontsize(10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results(runs: list[MethodRun], args, zoo_root: str, out: Path, started: str) -> dict:
    summary = summarise(runs)
    result = {
        "benchmark": "search_quality", "date": started, "machine": machine(), "zoo": zoo_root,
        "settings": {"budget": args.budget, "seeds": args.seeds, "popsize": args.popsize, "workers": args.workers,
                     "limit": args.limit, "search_task": SEARCH_TASK, "report_task": REPORT_TASK,
                     "space": "task_arithmetic over math/strings/lang onto base, weight in [0, 1.5] per 2-layer "
                              "block + rest group, normalize false",
                     "default_grid_size": len(default_merge_grid())},
        "summary": summary, "differences_report_points": differences(summary),
        "runs": [asdict(r) | {"gap": r.gap} for r in runs],
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "search_quality.json").write_text(json.dumps(result, indent=2))
    plot(runs, out / "search_quality.png", args.budget)
    return result


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--zoo", default="runs/zoo", help="a built zoo (`evosearch zoo build DIR`)")
    p.add_argument("--budget", type=int, default=120, help="candidates per search run")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--popsize", type=int, default=12, help="candidates per generation (both searches)")
    p.add_argument("--workers", type=int, default=2, help="Ray workers")
    p.add_argument("--limit", type=int, default=None, help="score only the first N docs of each split")
    p.add_argument("--out", default=None, help="where the JSON and PNG go (default bench/results; with --smoke "
                                             "a temp dir, so a smoke run never replaces the measured results)")
    p.add_argument("--smoke", action="store_true", help="tiny zoo (built in a temp dir), 8 candidates, 1 seed")
    args = p.parse_args(argv)
    if args.smoke:
        args.budget, args.seeds, args.popsize, args.workers, args.limit = 8, 1, 4, 1, args.limit or 50
        args.out = args.out or str(Path(tempfile.gettempdir()) / "evosearch_search_quality_smoke")
    args.out = args.out or str(RESULTS)
    if args.seeds < 1:
        p.error("--seeds must be at least 1")
    if args.budget < args.popsize:
        p.error(f"--budget {args.budget} is less than one generation (--popsize {args.popsize})")
    return args


def main(argv=None) -> int:
    import torch

    from evosearch.zoo import ZooManifest, build_zoo
    from storage import Store

    args = parse_args(argv)
    torch.set_num_threads(1)  # tiny models; the Ray workers take the cores
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    with tempfile.TemporaryDirectory(prefix="search_quality_") as tmp:
        tmp_dir = Path(tmp)
        zoo = build_zoo(tmp_dir / "zoo", preset="tiny") if args.smoke else ZooManifest.load(Path(args.zoo))
        runs = run_baselines(ZooScorer(zoo, args.limit))
        for r in runs:
            print(f"{r.method}: {r.picked} search {100 * r.search:.1f} report {100 * r.report:.1f} "
                  f"({r.seconds:.0f} s)", flush=True)
        store = Store.open(f"sqlite:///{tmp_dir / 'evosearch.db'}")
        try:
            for seed, method in itertools.product(range(args.seeds), ("evolved", "random")):
                run = run_search(zoo, method, seed, args, store, tmp_dir)
                runs.append(run)
                print(f"{method} seed {seed}: {run.picked} search {100 * run.search:.1f} report "
                      f"{100 * run.report:.1f} ({run.candidates} candidates, {run.seconds:.0f} s)", flush=True)
                # Written after every run so an interrupted benchmark still leaves its measurements.
                result = write_results(runs, args, str(zoo.root), Path(args.out), started)
        finally:
            store.close()
    print()
    print(f"budget {args.budget} candidates per search run, {args.seeds} seed(s), zoo {zoo.root}")
    print(table(result["summary"]))
    for name, points in result["differences_report_points"].items():
        print(f"{name}: {points:+.1f} points (report split)")
    print(f"wrote {Path(args.out) / 'search_quality.json'} and {Path(args.out) / 'search_quality.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
