"""Calibration: which models to score on the full tasks, scoring them, and the honest error report.

1. `calibration_population` - the sources, the base and N random merges of a PS search space (uniform
   genomes, decoded by the space), plus held-out merges drawn from an independent seed stream.
2. Scoring them on the FULL tasks is the search layer's (`evosearch.search.calibrate`): it needs workers.
3. `fitness_report` - for every anchor strategy, k and estimator: the held-out models' estimated
   scores (from their answers on the anchors) against their true full-task scores.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NamedTuple, Optional, Sequence, Union

import numpy as np

from evosearch.recipe import recipe_hash, recipe_sources
from evosearch.spaces import PSSpace, PSSpaceConfig
from fitness.errors import FitnessError
from fitness.estimators import ESTIMATORS, MERGE_AWARE_ESTIMATORS
from fitness.irt import IRTFitSettings
from fitness.reduced import ReducedFitness, fit_calibration
from fitness.report_math import mean_absolute_error_points, spearman_rank_correlation, worst_error_points
from storage.records import CalibrationRecord

DEFAULT_STRATEGIES = ("random", "irt_clustering", "correctness_clustering")
# The bar the reduced fitness must clear on the held-out merges.
BAR = {"min_reduction": 20.0, "max_mae_points": 3.0, "min_spearman": 0.9}


class CalibrationMember(NamedTuple):
    label: str
    role: str  # source | base | random | heldout
    recipe: dict  # sources and the base as a one-model linear merge of weight 1 (the model itself)


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
    calibration = CalibrationRecord(name="", tasks=list(tasks),
                                    models=[m for m in calibration_models if m.role != "heldout"])
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


def meets_bar(row: dict[str, Any]) -> bool:
    return (row["reduction"] >= BAR["min_reduction"] and row["mae_points"] <= BAR["max_mae_points"]
            and row["spearman"] is not None and row["spearman"] >= BAR["min_spearman"])


def format_report(rows: Sequence[dict[str, Any]]) -> str:
    """The report as a Markdown table, best (lowest MAE) first."""
    lines = ["| estimator | anchors | k | items | reduction | MAE (pts) | worst (pts) | Spearman |",
             "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: r["mae_points"]):
        rho = "n/a" if r["spearman"] is None else f"{r['spearman']:.3f}"
        lines.append(f"| {r['estimator']} | {r['strategy']} | {r['k']} | {r['items_per_candidate']} | "
                     f"{r['reduction']:.1f}x | {r['mae_points']:.2f} | {r['worst_points']:.2f} | {rho} |")
    return "\n".join(lines)
