"""Error metrics for the honesty report: estimated vs measured full-task scores of held-out candidates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.stats import rankdata

from fitness.errors import FitnessError


def _paired(estimates: Sequence[float], truths: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    est, true = np.asarray(estimates, dtype=float), np.asarray(truths, dtype=float)
    if est.shape != true.shape or est.ndim != 1 or est.size == 0:
        raise FitnessError(f"need equally many estimates and true scores (got {est.size} and {true.size}, at least 1)")
    if np.isnan(est).any() or np.isnan(true).any():
        raise FitnessError("estimates and true scores must not contain NaN")
    return est, true


def mean_absolute_error_points(estimates: Sequence[float], truths: Sequence[float]) -> float:
    """Mean |estimate - truth| in accuracy points (accuracies in [0, 1] -> points in [0, 100])."""
    est, true = _paired(estimates, truths)
    return float(100.0 * np.mean(np.abs(est - true)))


def worst_error_points(estimates: Sequence[float], truths: Sequence[float]) -> float:
    """Largest |estimate - truth| in accuracy points."""
    est, true = _paired(estimates, truths)
    return float(100.0 * np.max(np.abs(est - true)))


def spearman_rank_correlation(estimates: Sequence[float], truths: Sequence[float]) -> float:
    """Spearman's rho (ties get average ranks); NaN when either side is constant or has one value,
    since no ranking is then defined."""
    est, true = _paired(estimates, truths)
    rank_est, rank_true = rankdata(est), rankdata(true)
    if rank_est.std() == 0 or rank_true.std() == 0:
        return float("nan")
    return float(np.corrcoef(rank_est, rank_true)[0, 1])


def item_reduction_factor(full_items: int, anchor_items: int) -> float:
    """How many times fewer items a candidate answers: full_items / anchor_items."""
    if anchor_items < 1 or full_items < anchor_items:
        raise FitnessError(f"item reduction needs 1 <= anchor_items <= full_items, got {anchor_items} of {full_items}")
    return full_items / anchor_items


@dataclass(frozen=True)
class EstimatorErrorSummary:
    n_candidates: int
    mae_points: float
    worst_points: float
    spearman: float
    reduction: float


def summarise_errors(estimates: Sequence[float], truths: Sequence[float], full_items: int,
                     anchor_items: int) -> EstimatorErrorSummary:
    """One row of the honesty table for one estimator on one task."""
    return EstimatorErrorSummary(n_candidates=len(truths),
                                 mae_points=mean_absolute_error_points(estimates, truths),
                                 worst_points=worst_error_points(estimates, truths),
                                 spearman=spearman_rank_correlation(estimates, truths),
                                 reduction=item_reduction_factor(full_items, anchor_items))
