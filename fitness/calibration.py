"""Calibration: which models to score on the full tasks, scoring them, and the honest error report.

1. `calibration_population` - the sources, the base and N random merges of a PS search space (uniform
   genomes, decoded by the space), plus held-out merges drawn from an independent seed stream.
2. `run_calibration` - every member on the FULL tasks, in-process or over a Ray `WorkerPool`; each
   model is handed to `on_model` as soon as it finishes, so the caller stores it in its own transaction.
3. `fitness_report` - for every anchor strategy, k and estimator: the held-out models' estimated
   scores (from their answers on the anchors) against their true full-task scores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional, Sequence, Union

import numpy as np

from evosearch.recipe import recipe_hash
from evosearch.spaces import PSSpace, PSSpaceConfig
from fitness.errors import FitnessError
from fitness.estimators import ESTIMATORS, MERGE_AWARE_ESTIMATORS
from fitness.irt import IRTFitSettings
from fitness.reduced import ReducedFitness, fit_calibration, recipe_sources
from fitness.report_math import mean_absolute_error_points, spearman_rank_correlation, worst_error_points

ROLES = ("source", "base", "random", "heldout")
DEFAULT_STRATEGIES = ("random", "irt_clustering", "correctness_clustering")


class CalibrationMember(NamedTuple):
    label: str
    role: str  # source | base | random | heldout
    recipe: dict  # sources and the base as a one-model linear merge of weight 1 (the model itself)


@dataclass
class CalibratedModel:
    """One member's full-task responses; the attribute names are those of CalibrationModelRecord."""

    label: str
    role: str
    recipe: Optional[dict]
    responses: dict[str, dict[int, int]]  # task -> doc id -> 0/1
    accuracy: dict[str, float]
    seconds: Optional[float] = None


@dataclass
class Calibration:
    """A calibration in memory, read the same way as a stored CalibrationRecord."""

    tasks: list[str]
    models: list[Any] = field(default_factory=list)
    irt_params: Optional[dict] = None
    name: str = ""


def identity_recipe(path: str) -> dict:
    """The recipe that builds model `path` itself (linear merge of one model at weight 1 is exact)."""
    return {"kind": "ps", "merge_method": "linear", "models": [{"model": path, "parameters": {"weight": 1.0}}]}


def _short_labels(paths: list[str]) -> list[str]:
    names = [Path(p).name or p for p in paths]
    return [n if names.count(n) == 1 else f"{n}-{i}" for i, n in enumerate(names)]


def _random_merges(space: PSSpace, n: int, rng: np.random.Generator, seen: set[str], what: str) -> list[dict]:
    """`n` distinct recipes from uniform genomes (a duplicate of an earlier recipe is drawn again)."""
    out: list[dict] = []
    for _ in range(100 * n):
        recipe = space.decode(rng.random(space.dim))
        digest = recipe_hash(recipe)
        if digest not in seen:
            seen.add(digest)
            out.append(recipe.model_dump(mode="json"))
            if len(out) == n:
                break
    if len(out) < n:
        raise FitnessError(f"the search space yields fewer than {n} distinct {what} merges")
    return out


def calibration_population(space: Union[PSSpace, PSSpaceConfig, dict], n_random: int, seed: int = 0,
                           n_heldout: int = 0) -> list[CalibrationMember]:
    """Sources and base (role source/base), `n_random` random merges (role random) and `n_heldout` held-out
    merges (role heldout). Random and held-out merges come from independent seed streams of `seed` and
    never repeat each other or a source."""
    if isinstance(space, dict):
        space = PSSpaceConfig(**space)
    if isinstance(space, PSSpaceConfig):
        space = PSSpace(space)
    if n_random < 0 or n_heldout < 0:
        raise FitnessError(f"n_random and n_heldout must be >= 0, got {n_random} and {n_heldout}")
    config = space.config
    paths = list(dict.fromkeys(([config.base_model] if config.base_model else []) + list(config.sources)))
    members = [CalibrationMember(label, "base" if p == config.base_model else "source", identity_recipe(p))
               for p, label in zip(paths, _short_labels(paths))]
    seen: set[str] = set()
    random_stream, heldout_stream = np.random.SeedSequence(seed).spawn(2)
    for role, count, stream in (("random", n_random, random_stream), ("heldout", n_heldout, heldout_stream)):
        recipes = _random_merges(space, count, np.random.default_rng(stream), seen, role)
        members += [CalibrationMember(f"{role}-{i:03d}", role, r) for i, r in enumerate(recipes)]
    return members


def run_calibration(members: Sequence[CalibrationMember], runner: Any, tasks: Optional[list[str]] = None,
                    on_model: Optional[Callable[[CalibratedModel], None]] = None,
                    key_prefix: str = "calib") -> list[CalibratedModel]:
    """Score every member on every doc of `tasks` (default: all the worker's tasks) with `runner`: a
    `CandidateWorker` or a factory making one (in this process, one after another), or a `WorkerPool` of
    them. Each
    finished model goes to `on_model` at once. Members that fail are reported together at the end
    (one line, the first failure named) after every other member has been scored and handed over."""
    from workers.candidate import CandidateTask
    from workers.pool import WorkerPool

    labels = [m.label for m in members]
    if len(set(labels)) != len(labels):
        raise FitnessError("calibration members' labels are not unique")
    by_key = {f"{key_prefix}/{m.label}": m for m in members}
    jobs = [CandidateTask(key=key, recipe=m.recipe, samples=None, tasks=tasks) for key, m in by_key.items()]

    if not isinstance(runner, WorkerPool) and not hasattr(runner, "run"):
        runner = runner()
    if isinstance(runner, WorkerPool):
        outcomes = ((o.item, o.value, o.error) for o in runner.map_unordered(jobs, lambda job: (job,)))
    else:
        outcomes = (_run_here(runner, job) for job in jobs)

    done: list[CalibratedModel] = []
    failures: list[str] = []
    for job, result, error in outcomes:
        member = by_key[job.key]
        if error is not None:
            failures.append(f"{member.label}: {error}")
            continue
        model = CalibratedModel(label=member.label, role=member.role, recipe=member.recipe,
                                responses=result.correct, accuracy=result.accuracy,
                                seconds=result.build_seconds + result.eval_seconds + result.overhead_seconds)
        done.append(model)
        if on_model is not None:
            on_model(model)
    if failures:
        raise FitnessError(f"{len(failures)} of {len(members)} calibration models failed; first: {failures[0]}")
    order = {label: i for i, label in enumerate(labels)}
    return sorted(done, key=lambda m: order[m.label])


def _run_here(worker: Any, job: Any) -> tuple[Any, Any, Optional[str]]:
    from workers.candidate import CandidateError

    try:
        return job, worker.run(job), None
    except CandidateError as exc:
        return job, None, f"CandidateError: {exc}"


def _true_scores(model: Any, task: str) -> float:
    if task in model.accuracy:
        return float(model.accuracy[task])
    answers = model.responses.get(task) or {}
    if not answers:
        raise FitnessError(f"held-out model {model.label} has no score on task {task!r}")
    return float(np.mean(list(answers.values())))


def _json_number(value: float) -> Optional[float]:
    return None if value is None or math.isnan(value) else float(value)


def fitness_report(calibration_models: Sequence[Any], heldout_models: Sequence[Any],
                   estimators: Sequence[str] = tuple(ESTIMATORS), ks: Sequence[int] = (10, 30),
                   strategies: Sequence[str] = DEFAULT_STRATEGIES, seed: int = 0,
                   tasks: Optional[list[str]] = None,
                   irt_settings: IRTFitSettings = IRTFitSettings()) -> list[dict[str, Any]]:
    """One row per (estimator, strategy, k): items a candidate answers, the reduction factor, and against the
    held-out models' true full-task scores the mean absolute error and worst error (accuracy points, over
    every held-out model and task) and Spearman's rho (per task, then averaged). IRT is fitted once on
    `calibration_models`; held-out models answer the anchors out of their full-task responses."""
    if not heldout_models:
        raise FitnessError("the fitness report needs held-out models with full-task scores")
    if tasks is None:
        tasks = list(calibration_models[0].responses) if calibration_models else []
    for name in estimators:
        if name not in ESTIMATORS:
            raise FitnessError(f"unknown estimator {name!r} (known: {', '.join(ESTIMATORS)})")
    calibration = Calibration(tasks=list(tasks), models=[m for m in calibration_models if m.role != "heldout"])
    params = fit_calibration(calibration, irt_settings)
    truth = {t: [_true_scores(m, t) for m in heldout_models] for t in tasks}
    merge_sources = {}
    if MERGE_AWARE_ESTIMATORS & set(estimators):
        for m in heldout_models:
            if not m.recipe:
                raise FitnessError(f"held-out model {m.label} has no recipe; merge-aware estimators need its sources")
            merge_sources[m.label] = recipe_sources(m.recipe)

    rows: list[dict[str, Any]] = []
    for strategy in strategies:
        for k in ks:
            base = ReducedFitness.from_params(calibration, params, k=k, strategy=strategy, seed=seed)
            for name in estimators:
                fitness = base.with_estimator(name)
                estimates = {t: [] for t in tasks}
                for m in heldout_models:
                    sources, weights = merge_sources.get(m.label, ((), None))
                    scores = fitness.estimate(m.responses, sources, weights)
                    for t in tasks:
                        estimates[t].append(scores[t])
                rows.append(_row(name, strategy, k, fitness, estimates, truth, len(calibration.models)))
    return rows


def _row(estimator: str, strategy: str, k: int, fitness: ReducedFitness, estimates: dict[str, list[float]],
         truth: dict[str, list[float]], n_calibration: int) -> dict[str, Any]:
    tasks = list(truth)
    all_est = [e for t in tasks for e in estimates[t]]
    all_true = [v for t in tasks for v in truth[t]]
    rho = {t: spearman_rank_correlation(estimates[t], truth[t]) for t in tasks}
    defined = [r for r in rho.values() if not math.isnan(r)]
    return {
        "estimator": estimator, "strategy": strategy, "k": k,
        "items_per_candidate": fitness.n_items, "full_items": fitness.n_full_items,
        "reduction": fitness.n_full_items / fitness.n_items,
        "mae_points": mean_absolute_error_points(all_est, all_true),
        "worst_points": worst_error_points(all_est, all_true),
        "spearman": _json_number(float(np.mean(defined)) if defined else float("nan")),
        "mae_points_per_task": {t: mean_absolute_error_points(estimates[t], truth[t]) for t in tasks},
        "spearman_per_task": {t: _json_number(r) for t, r in rho.items()},
        "n_heldout": len(all_true) // max(len(tasks), 1), "n_calibration": n_calibration,
    }


def format_report(rows: Sequence[dict[str, Any]]) -> str:
    """The report as a Markdown table, best (lowest MAE) first."""
    lines = ["| estimator | anchors | k | items | reduction | MAE (pts) | worst (pts) | Spearman |",
             "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: r["mae_points"]):
        rho = "n/a" if r["spearman"] is None else f"{r['spearman']:.3f}"
        lines.append(f"| {r['estimator']} | {r['strategy']} | {r['k']} | {r['items_per_candidate']} | "
                     f"{r['reduction']:.1f}x | {r['mae_points']:.2f} | {r['worst_points']:.2f} | {rho} |")
    return "\n".join(lines)
