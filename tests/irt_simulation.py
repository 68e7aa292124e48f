"""Simulated model populations drawn from a known 2PL, for testing the IRT fitness layer against truth."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fitness.irt import IRTParams, fit_irt


@dataclass
class SimulatedBench:
    """Ground truth: per-item task, a [n_items, dims], b [n_items]; abilities are [n_tasks, dims] per model."""

    item_ids: list[str]
    item_tasks: list[str]
    tasks: list[str]
    a: np.ndarray
    b: np.ndarray

    def probabilities(self, abilities: np.ndarray) -> np.ndarray:
        """[n_models, n_items] P(correct) for abilities [n_models, n_tasks, dims]."""
        task_of_item = np.array([self.tasks.index(t) for t in self.item_tasks])
        logits = np.einsum("mjd,jd->mj", abilities[:, task_of_item, :], self.a) - self.b
        return 1.0 / (1.0 + np.exp(-logits))

    def answer(self, abilities: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return (rng.random((abilities.shape[0], len(self.item_ids))) < self.probabilities(abilities)).astype(float)

    def accuracy(self, responses: np.ndarray) -> dict[str, np.ndarray]:
        """Observed full-task accuracy per task, [n_models] each."""
        tasks = np.array(self.item_tasks)
        return {t: responses[:, tasks == t].mean(axis=1) for t in self.tasks}


def make_bench(rng: np.random.Generator, n_tasks: int = 3, items_per_task: int = 600, dims: int = 1) -> SimulatedBench:
    tasks = [f"task{t}" for t in range(n_tasks)]
    item_tasks = [t for t in tasks for _ in range(items_per_task)]
    n = len(item_tasks)
    a = np.exp(0.35 * rng.standard_normal((n, dims))) / np.sqrt(dims)
    b = 1.3 * rng.standard_normal(n)
    return SimulatedBench(item_ids=[f"{t}/{i}" for i, t in enumerate(item_tasks)], item_tasks=item_tasks,
                          tasks=tasks, a=a, b=b)


def draw_abilities(rng: np.random.Generator, n_models: int, n_tasks: int, dims: int = 1,
                   task_correlation: float = 0.5) -> np.ndarray:
    """[n_models, n_tasks, dims] abilities, correlated across tasks (a generally stronger model is
    stronger everywhere, but specialists exist)."""
    cov = np.full((n_tasks, n_tasks), task_correlation) + (1 - task_correlation) * np.eye(n_tasks)
    chol = np.linalg.cholesky(cov)
    z = rng.standard_normal((n_models, dims, n_tasks)) @ chol.T
    return z.transpose(0, 2, 1)


def merge_abilities(rng: np.random.Generator, sources: np.ndarray, n_merges: int,
                    noise_sd: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Merged candidates whose ability is a convex mix of the sources' ([n_sources, n_tasks, dims]) plus
    a little noise; returns (abilities [n_merges, n_tasks, dims], weights [n_merges, n_sources])."""
    weights = rng.dirichlet(np.ones(len(sources)), size=n_merges)
    mixed = np.einsum("ms,std->mtd", weights, sources)
    return mixed + noise_sd * rng.standard_normal(mixed.shape), weights


def fitted_population(rng: np.random.Generator, n_models: int, skipped: float = 0.0
                      ) -> tuple[SimulatedBench, np.ndarray, np.ndarray, list[str], IRTParams]:
    """A 3-task bench of 600 items each, `n_models` abilities drawn for it, their answers (a `skipped` share
    left unanswered, NaN) and the 2PL fit to them: (bench, abilities, responses, model ids, params)."""
    bench = make_bench(rng, n_tasks=3, items_per_task=600)
    abilities = draw_abilities(rng, n_models, 3)
    responses = bench.answer(abilities, rng)
    if skipped:
        responses[rng.random(responses.shape) < skipped] = np.nan
    model_ids = [f"model{m}" for m in range(n_models)]
    return bench, abilities, responses, model_ids, fit_irt(responses, bench.item_ids, bench.item_tasks, model_ids)
