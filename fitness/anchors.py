"""Anchor items: the few items per task a candidate actually answers.

Strategies (k anchors per task, deterministic given the seed):

* ``random``: k items uniformly, equal weights (the baseline).
* ``irt_clustering``: KMeans on the items' fitted IRT parameters (a, b); anchors are the items nearest
  each centroid (medoids), weighted by their cluster's share of the task.
* ``correctness_clustering``: tinyBenchmarks' choice: KMeans on each item's column of the calibration
  correctness matrix (unobserved cells filled with the IRT probability), medoids and weights as above.
"""

from __future__ import annotations

import warnings
import zlib
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from threadpoolctl import threadpool_limits

from fitness.errors import FitnessError
from fitness.irt import IRTParams, check_responses

ANCHOR_FORMAT_VERSION = 1


@dataclass(frozen=True)
class TaskAnchors:
    """One task's anchors; weights sum to 1 and say what share of the task each anchor stands for."""

    item_ids: list[str]
    weights: list[float]


@dataclass(frozen=True)
class AnchorSet:
    strategy: str
    k: int
    seed: int
    tasks: dict[str, TaskAnchors]
    version: int = ANCHOR_FORMAT_VERSION

    def item_ids(self) -> list[str]:
        """Every anchor of every task, task by task."""
        return [item for anchors in self.tasks.values() for item in anchors.item_ids]

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "strategy": self.strategy, "k": self.k, "seed": self.seed,
                "tasks": {task: {"item_ids": list(a.item_ids), "weights": list(a.weights)}
                          for task, a in self.tasks.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AnchorSet":
        if data.get("version") != ANCHOR_FORMAT_VERSION:
            raise FitnessError(f"anchor set format version {data.get('version')!r} is not {ANCHOR_FORMAT_VERSION}")
        try:
            tasks = {task: TaskAnchors(item_ids=list(a["item_ids"]), weights=[float(w) for w in a["weights"]])
                     for task, a in data["tasks"].items()}
            return cls(strategy=data["strategy"], k=int(data["k"]), seed=int(data["seed"]), tasks=tasks)
        except KeyError as exc:
            raise FitnessError(f"anchor set dict lacks field {exc.args[0]!r}") from None


def _task_seed(seed: int, task: str) -> int:
    """A per-task seed, so adding a task to the set leaves the other tasks' anchors unchanged."""
    return int(np.random.SeedSequence([seed, zlib.crc32(task.encode())]).generate_state(1)[0])


def _cluster_anchors(features: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions (into `features`' rows) of k medoid anchors and their weights."""
    # sklearn takes a second to import, and a job file names anchor strategies long before any clustering.
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    n = len(features)
    # One thread: the problem is tiny, and OpenMP threads contending with torch's made it ~50x slower.
    # Fewer distinct rows than k is handled below, so sklearn's warning about it is expected.
    with threadpool_limits(limits=1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        kmeans = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(features)
    distance = np.linalg.norm(features - kmeans.cluster_centers_[kmeans.labels_], axis=1)
    members = [np.flatnonzero(kmeans.labels_ == c) for c in range(k)]
    members = [m[np.lexsort((m, distance[m]))] for m in members if m.size]  # nearest the centroid first
    # With fewer distinct feature rows than k (identical correctness columns), some clusters come back
    # empty; the k anchors are then shared out to the clusters that stand for the most items each.
    counts = np.ones(len(members), dtype=int)
    sizes = np.array([m.size for m in members])
    while counts.sum() < k:
        share = np.where(counts < sizes, sizes / counts, -1.0)
        counts[int(np.argmax(share))] += 1
    positions = np.concatenate([m[:c] for m, c in zip(members, counts)])
    weights = np.concatenate([np.full(c, m.size / (c * n)) for m, c in zip(members, counts)])
    return positions, weights


def _irt_features(params: IRTParams, items: np.ndarray, responses: np.ndarray | None) -> np.ndarray:
    return np.column_stack([params.a[items], params.b[items]])


def _correctness_features(params: IRTParams, items: np.ndarray, responses: np.ndarray | None) -> np.ndarray:
    if responses is None:
        raise FitnessError("correctness_clustering anchors need the calibration response matrix")
    columns = responses[:, items]
    predicted = np.stack([params.probabilities(theta, items) for theta in params.theta])
    return np.where(np.isnan(columns), predicted, columns).T


FeatureFn = Callable[[IRTParams, np.ndarray, "np.ndarray | None"], np.ndarray]
# Each clustering strategy names the item features it clusters on; random anchors need none.
ANCHOR_STRATEGIES: dict[str, FeatureFn | None] = {
    "random": None,
    "irt_clustering": _irt_features,
    "correctness_clustering": _correctness_features,
}


@dataclass(frozen=True)
class AnchorSelector:
    """Chooses k anchors per task of a calibrated IRT model with one of ANCHOR_STRATEGIES."""

    strategy: str = "irt_clustering"
    k: int = 30
    seed: int = 0

    def __post_init__(self) -> None:
        if self.strategy not in ANCHOR_STRATEGIES:
            raise FitnessError(f"unknown anchor strategy {self.strategy!r} (known: {', '.join(ANCHOR_STRATEGIES)})")
        if self.k < 1:
            raise FitnessError(f"anchor count k must be >= 1, got {self.k}")

    def select(self, params: IRTParams, responses: np.ndarray | None = None) -> AnchorSet:
        """`responses`: the calibration matrix [params.model_ids, params.item_ids] (NaN = unobserved);
        only correctness_clustering reads it."""
        if responses is not None:
            responses = check_responses(responses, "calibration responses")
            if responses.shape != (len(params.model_ids), len(params.item_ids)):
                raise FitnessError(f"calibration responses have shape {responses.shape}, expected "
                                   f"({len(params.model_ids)}, {len(params.item_ids)}) as in the IRT params")
        features_of = ANCHOR_STRATEGIES[self.strategy]
        tasks: dict[str, TaskAnchors] = {}
        for task in params.tasks:
            items = params.task_items(task)
            if self.k > items.size:
                raise FitnessError(f"task {task!r} has {items.size} items, fewer than k={self.k} anchors")
            seed = _task_seed(self.seed, task)
            if features_of is None:
                positions = np.sort(np.random.default_rng(seed).choice(items.size, size=self.k, replace=False))
                weights = np.full(self.k, 1.0 / self.k)
            else:
                positions, weights = _cluster_anchors(features_of(params, items, responses), self.k, seed)
            tasks[task] = TaskAnchors(item_ids=[params.item_ids[j] for j in items[positions]],
                                      weights=[float(w) for w in weights])
        return AnchorSet(strategy=self.strategy, k=self.k, seed=self.seed, tasks=tasks)
