"""Search and report splits for a task that ships only one: a deterministic hold-out carved from its docs.

The report split must stay unseen by the search, so for such a task a fixed share of its docs is set aside
(`carve_holdout`): the search evaluates, calibrates and chooses anchors on the rest only (`search_only`
removes the hold-out from a calibration before anything is fitted or selected), and the front is re-scored
on the hold-out. The carve depends on the task name, its doc count, the fraction and the job's seed alone,
and the job records it in the store, so a resumed job or a later report scores the very same docs.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any, Mapping, Sequence

import numpy as np

from fitness.errors import FitnessError
from storage.records import TaskSplitRecord


def carve_holdout(task: str, n_docs: int, fraction: float, seed: int) -> TaskSplitRecord:
    """`round(fraction * n_docs)` docs (at least one) drawn for the report split, the rest for the search,
    by a permutation seeded with the job's seed and the task's name (two tasks of one job differ)."""
    if not 0.0 < fraction < 1.0:
        raise FitnessError(f"task {task!r}: hold-out fraction must be between 0 and 1, got {fraction}")
    n_report = max(1, int(round(fraction * n_docs)))
    if n_docs - n_report < 1:
        raise FitnessError(f"task {task!r} has {n_docs} doc(s): too few to carve a hold-out of {fraction:.0%} "
                           "and keep any for the search")
    rng = np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(task.encode("utf-8"))]))
    order = rng.permutation(n_docs)
    return TaskSplitRecord(task=task, n_docs=n_docs, report_fraction=fraction, seed=seed,
                           search_doc_ids=sorted(int(i) for i in order[n_report:]),
                           report_doc_ids=sorted(int(i) for i in order[:n_report]))


def search_only(calibration: Any, search_docs: Mapping[str, Sequence[int]]) -> Any:
    """The calibration as the search may see it: for every task in `search_docs`, only those docs remain in
    each model's responses and accuracy. Its stored IRT fit covered the hold-out items too, so it is
    dropped: the fit is redone on the search docs alone. Calibration records and in-memory calibrations
    (dataclasses with `.models[i].responses`) both work."""
    if not search_docs:
        return calibration
    keep = {task: {int(d) for d in docs} for task, docs in search_docs.items()}
    models = []
    for model in calibration.models:
        responses = {task: ({d: v for d, v in answers.items() if int(d) in keep[task]} if task in keep else answers)
                     for task, answers in model.responses.items()}
        accuracy = {task: (float(np.mean(list(responses[task].values()))) if task in keep and responses.get(task)
                           else value) for task, value in model.accuracy.items()}
        models.append(dataclasses.replace(model, responses=responses, accuracy=accuracy))
    return dataclasses.replace(calibration, models=models, irt_params=None)


def split_docs(tasks: Sequence[str], splits: Mapping[str, TaskSplitRecord], split: str,
               limit: int | None = None) -> dict[str, list[int]] | None:
    """Task -> the doc ids to score on `split` ("search" or "report"): a carved task's own side of its
    hold-out, cut to the first `limit` docs in smoke runs. A task left out is scored on every doc; None
    when every task is."""
    if split not in ("search", "report"):
        raise FitnessError(f"split must be 'search' or 'report', not {split!r}")
    docs: dict[str, list[int]] = {}
    for task in tasks:
        carved = splits.get(task)
        ids = None if carved is None else (carved.search_doc_ids if split == "search" else carved.report_doc_ids)
        if limit is not None:
            ids = (ids if ids is not None else list(range(limit)))[:limit]
        if ids is not None:
            docs[task] = ids
    return docs or None


def describe(task: str, splits: Mapping[str, TaskSplitRecord], split: str) -> str:
    """How a model card names the docs of `task` a `split` score was measured on."""
    carved = splits.get(task)
    if carved is None:
        return f"`{task}`"
    if split == "search":
        return f"`{task}` without its hold-out ({len(carved.search_doc_ids)} of {carved.n_docs} docs)"
    return (f"`{task}` hold-out ({len(carved.report_doc_ids)} of {carved.n_docs} docs, "
            f"{carved.report_fraction:.0%} carved with seed {carved.seed})")
