"""Pareto utilities over objective vectors with a declared direction per objective.

Rows with a NaN (a failed candidate) are dominated by every finite row and never enter the first front.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
from pymoo.indicators.hv import HV

from evosearch.errors import UsageError

Direction = Literal["min", "max"]


class ObjectiveError(UsageError, ValueError):
    """Objective values or directions of the wrong shape or kind; the message is one line."""


def check_directions(directions: Sequence[str]) -> tuple[Direction, ...]:
    if not directions:
        raise ObjectiveError("at least one objective direction is required")
    for i, d in enumerate(directions):
        if d not in ("min", "max"):
            raise ObjectiveError(f"objective {i}: direction must be 'min' or 'max', not {d!r}")
    return tuple(directions)  # type: ignore[return-value]


def to_minimisation(objectives: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Objectives as an (n, k) float array in which smaller is better in every column."""
    dirs = check_directions(directions)
    f = np.asarray(objectives, dtype=float)
    if f.ndim == 1:
        f = f.reshape(-1, len(dirs))
    if f.ndim != 2 or f.shape[1] != len(dirs):
        raise ObjectiveError(f"objectives have shape {f.shape}, expected (n, {len(dirs)})")
    return np.where(np.array([d == "max" for d in dirs]), -f, f)


def non_dominated_sort(objectives: np.ndarray, directions: Sequence[str]) -> list[np.ndarray]:
    """Row indices grouped into fronts, best first; rows with a NaN form the last front."""
    f = to_minimisation(objectives, directions)
    finite = np.flatnonzero(np.all(np.isfinite(f), axis=1))
    remaining, fronts = list(finite), []
    while remaining:
        sub = f[remaining]
        # Row i is dominated if some row is <= everywhere and < somewhere.
        le = np.all(sub[:, None, :] <= sub[None, :, :], axis=2)
        lt = np.any(sub[:, None, :] < sub[None, :, :], axis=2)
        dominated = np.any(le & lt, axis=0)
        fronts.append(np.array([remaining[i] for i in np.flatnonzero(~dominated)], dtype=int))
        remaining = [remaining[i] for i in np.flatnonzero(dominated)]
    failed = np.setdiff1d(np.arange(len(f)), finite)
    return fronts + ([failed] if len(failed) else [])


def non_dominated_mask(objectives: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    f = to_minimisation(objectives, directions)
    mask = np.zeros(len(f), dtype=bool)
    if np.all(np.isfinite(f), axis=1).any():
        mask[non_dominated_sort(f, ["min"] * f.shape[1])[0]] = True
    return mask


def knee_index(objectives: np.ndarray, directions: Sequence[str]) -> int:
    """The knee of a set of (mutually non-dominated) points, as a row index.

    Objectives are normalised to [0, 1] over the set. With two objectives the knee is the point farthest
    from the line through the two extreme points, on the side of the ideal point; otherwise (or when that
    line is degenerate) it is the point closest to the ideal point.
    """
    f = to_minimisation(objectives, directions)
    rows = np.flatnonzero(np.all(np.isfinite(f), axis=1))
    if len(rows) == 0:
        raise ObjectiveError("no finite objective vector to choose a knee from")
    f = f[rows]
    span = f.max(axis=0) - f.min(axis=0)
    z = (f - f.min(axis=0)) / np.where(span > 0, span, 1.0)
    if z.shape[1] == 2:
        a, b = z[np.argmin(z[:, 0])], z[np.argmin(z[:, 1])]
        direction = b - a
        length = np.linalg.norm(direction)
        if length > 0:
            # Signed distance, positive towards the ideal point (0, 0).
            normal = np.array([direction[1], -direction[0]]) / length
            if np.dot(-a, normal) < 0:
                normal = -normal
            return int(rows[np.argmax((z - a) @ normal)])
    return int(rows[np.argmin(np.linalg.norm(z, axis=1))])


def hypervolume(objectives: np.ndarray, directions: Sequence[str], reference: Sequence[float]) -> float:
    """Hypervolume dominated by the points and bounded by `reference` (given in the objectives' own
    directions); points that do not beat the reference in every objective add nothing."""
    f = to_minimisation(objectives, directions)
    ref = to_minimisation(np.asarray(reference, dtype=float).reshape(1, -1), directions)[0]
    f = f[np.all(np.isfinite(f), axis=1) & np.all(f < ref, axis=1)]
    return float(HV(ref_point=ref)(f)) if len(f) else 0.0


@dataclass(frozen=True)
class ParetoFront:
    """The non-dominated rows of an objective table: `indices` into it, and their `objectives`."""

    indices: np.ndarray
    objectives: np.ndarray
    directions: tuple[Direction, ...]

    @classmethod
    def from_objectives(cls, objectives: np.ndarray, directions: Sequence[str]) -> "ParetoFront":
        dirs = check_directions(directions)
        f = np.asarray(objectives, dtype=float).reshape(-1, len(dirs))
        idx = np.flatnonzero(non_dominated_mask(f, dirs))
        return cls(indices=idx, objectives=f[idx], directions=dirs)

    def knee(self) -> int:
        """Index (into the original table) of the front's knee point."""
        return int(self.indices[knee_index(self.objectives, self.directions)])

    def hypervolume(self, reference: Sequence[float]) -> float:
        return hypervolume(self.objectives, self.directions, reference)
