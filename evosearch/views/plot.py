"""A job's search drawn as one PNG: the front of every generation, and the best per objective by generation.

One objective: every candidate's score by generation with the best so far. Two: all candidates in objective
space, each generation's front as a step line, coloured by generation. More: the fronts as parallel coordinates.
Beside it, per objective, the best search-split estimate so far and the front's best report-split score
(held out), so the winner's-curse gap shows.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # files only, never a window: before pyplot is imported

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import cm, colors  # noqa: E402

from evosearch.search.job import TaskObjective  # noqa: E402
from evosearch.views.scores import QueryError, measured_by, split_scores  # noqa: E402

if TYPE_CHECKING:  # the notebook API draws with this module; it is never imported from here
    from evosearch.api import Job


def _values(candidates, objectives: list[str], split: str) -> np.ndarray:
    rows = [[split_scores(c, split).get(o) for o in objectives] for c in candidates]
    table = [[math.nan if v is None else v for v in row] for row in rows]
    return np.array(table, dtype=float).reshape(-1, len(objectives))


def _better(direction: str):
    return np.nanmax if direction == "max" else np.nanmin


def plot_job(job: "Job", path: Path) -> Path:
    spec = job.spec
    names, directions = spec.objective_names, spec.directions
    done = job.candidates()
    if not done:
        raise QueryError(f"job {job.name} has no evaluated candidate to plot")
    last = job.store.last_generation(job.record.id)
    committed = last.generation if last else -1
    # A running or killed job also has candidates of a generation not committed yet (and without a front).
    generations = list(range(max(committed, max(c.generation for c in done)) + 1))
    fronts = {g: job.front_candidates(g) if g <= committed else [] for g in generations}
    gens = np.array([c.generation for c in done])
    search = _values(done, names, "search")
    norm = colors.Normalize(vmin=0, vmax=max(len(generations) - 1, 1))
    cmap = plt.get_cmap("viridis")
    k = len(names)
    task_names = {o.objective for o in spec.task_objectives}

    fig = plt.figure(figsize=(12 if k > 1 else 8, max(4.5, 2.6 * k)), layout="constrained")
    grid = fig.add_gridspec(k, 2 if k > 1 else 1, width_ratios=[3, 2] if k > 1 else [1])
    if k > 1:
        ax = fig.add_subplot(grid[:, 0])
        if k == 2:
            _two_objectives(ax, search, gens, fronts, names, directions, _axis_labels(spec), cmap, norm)
        else:
            _parallel(ax, fronts, names, directions, search, cmap, norm)
        fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="generation",
                     ticks=generations if len(generations) <= 12 else None)
    for i, (name, direction) in enumerate(zip(names, directions)):
        ax = fig.add_subplot(grid[i, 1 if k > 1 else 0])
        if k == 1:
            ax.scatter(gens, search[:, 0], c=gens, cmap=cmap, norm=norm, s=18, alpha=0.6,
                       label="candidates (search split)")
        _convergence(ax, generations, gens, search[:, i], fronts, name, direction, _better(direction),
                     measured=f"search-split estimate, {measured_by(spec.objectives[i])}" if name in task_names
                     else "cost")
    fig.suptitle(f"{job.name}: {len(done)} candidates over {len(generations)} generation(s)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _last_front(fronts: dict) -> int | None:
    return max((g for g, front in fronts.items() if front), default=None)


def _axis_labels(spec) -> list[str]:
    """A task objective is measured on its search split; a cost is read off the recipe, on no split."""
    return [f"{o.objective} ({o.direction}, "
            f"{'search split, ' + measured_by(o) if isinstance(o, TaskObjective) else 'cost'})" for o in spec.objectives]


def _two_objectives(ax, search, gens, fronts, names, directions, labels, cmap, norm) -> None:
    ax.scatter(search[:, 0], search[:, 1], c=gens, cmap=cmap, norm=norm, s=16, alpha=0.35, label="candidates")
    final_generation = _last_front(fronts)
    for g, front in fronts.items():
        if not front:
            continue
        f = _values(front, names, "search")
        f = f[np.argsort(f[:, 0])]
        final = g == final_generation
        # The front is the staircase bounding what it dominates: between two neighbours (x ascending) the
        # level is the right one's when x is maximised, the left one's when it is minimised.
        where = "pre" if directions[0] == "max" else "post"
        ax.step(f[:, 0], f[:, 1], where=where, color=cmap(norm(g)), lw=2.5 if final else 1.0,
                alpha=1.0 if final else 0.6, label="last front" if final else None)
        ax.scatter(f[:, 0], f[:, 1], color=cmap(norm(g)), edgecolor="black" if final else "none", s=40 if final else 20)
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.set_title("front per generation")
    ax.legend(loc="best", fontsize=8)


def _parallel(ax, fronts, names, directions, search, cmap, norm) -> None:
    low, high = np.nanmin(search, axis=0), np.nanmax(search, axis=0)
    span = np.where(high > low, high - low, 1.0)
    x = np.arange(len(names))
    final_generation = _last_front(fronts)
    for g, front in fronts.items():
        final = g == final_generation
        for row in _values(front, names, "search"):
            ax.plot(x, (row - low) / span, color=cmap(norm(g)), lw=2.0 if final else 0.8, alpha=0.9 if final else 0.4)
    ax.set_xticks(x, [f"{n}\n({d})" for n, d in zip(names, directions)])
    for xi, lo, hi in zip(x, low, high):
        ax.annotate(f"{hi:.3g}", (xi, 1.0), xytext=(3, 3), textcoords="offset points", fontsize=7)
        ax.annotate(f"{lo:.3g}", (xi, 0.0), xytext=(3, -10), textcoords="offset points", fontsize=7)
    ax.set_ylim(-0.08, 1.08)
    ax.set_ylabel("search-split value, scaled to the range over all candidates")
    ax.set_title("front per generation (parallel coordinates)")


def _convergence(ax, generations, gens, values, fronts, name, direction, better, measured: str) -> None:
    per_generation = [better(values[gens == g]) if np.isfinite(values[gens == g]).any() else math.nan
                      for g in generations]
    so_far = np.fmax.accumulate(per_generation) if direction == "max" else np.fmin.accumulate(per_generation)
    ax.plot(generations, so_far, marker="o", color="tab:blue", label=f"best so far, {measured}")
    report = [_values(fronts[g], [name], "report")[:, 0] for g in generations]
    report = [better(r) if np.isfinite(r).any() else math.nan for r in report]
    if np.isfinite(report).any():
        ax.plot(generations, report, marker="s", ls="--", color="tab:orange",
                label="front's best, report split (held out)")
    ax.set_xlabel("generation")
    ax.set_ylabel(f"{name} ({direction})")
    ax.set_xticks(generations)
    ax.set_title(f"convergence: {name}", fontsize=10)
    ax.legend(loc="best", fontsize=8)
