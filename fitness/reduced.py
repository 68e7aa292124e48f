"""The search's fitness: a candidate answers k anchor items per task; an IRT estimator predicts its full score.

`ReducedFitness.from_calibration` turns a stored calibration (the per-item responses of a population of
models on the full tasks) into everything a worker needs: the anchors to evaluate (`samples`) and the
fitted IRT model behind `estimate`. It is plain data (numpy arrays in dataclasses), so it pickles to
Ray workers, and `to_dict` / `from_dict` store it as JSON.

The calibration is read by attribute only (duck typing): `.tasks`, `.models` (each with `.label`,
`.role`, `.recipe`, `.responses` {task: {doc_id: 0/1}}) and optionally `.irt_params` (an
`IRTParams.to_dict()`), as `storage.records.CalibrationRecord` has.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from evosearch.merge.sources import source_key
from evosearch.recipe import parse_recipe, recipe_source_paths
from fitness.anchors import AnchorSelector
from fitness.errors import FitnessError
from fitness.estimators import (MERGE_AWARE_ESTIMATORS, MIN_REGRESSION_MODELS, CandidateAnswers, EstimationContext,
                                get_estimator)
from fitness.irt import IRTFitSettings, IRTParams, fit_irt

REDUCED_FORMAT_VERSION = 1
# Held-out models check the estimators; they never take part in the fit.
FIT_ROLES = ("source", "base", "random")
SOURCE_ROLES = ("source", "base")


def item_id(task: str, doc_id: int) -> str:
    return f"{task}/{doc_id}"


def split_item_id(item: str) -> tuple[str, int]:
    task, _, doc = item.rpartition("/")
    return task, int(doc)


@dataclass(frozen=True)
class ResponseMatrix:
    """A calibration's responses laid out for IRT: rows = models, columns = items (NaN = not answered)."""

    values: np.ndarray  # [n_models, n_items]
    model_ids: list[str]
    item_ids: list[str]
    item_tasks: list[str]

    @classmethod
    def from_calibration(cls, calibration: Any, roles: Sequence[str] = FIT_ROLES) -> "ResponseMatrix":
        tasks = list(calibration.tasks)
        # Rows by label, not in stored order (the order workers finished in): the fit and so the anchors
        # must not depend on which model finished first.
        models = sorted((m for m in calibration.models if m.role in roles), key=lambda m: m.label)
        if not tasks:
            raise FitnessError(f"calibration {_name(calibration)} names no tasks")
        labels = [m.label for m in models]
        if len(set(labels)) != len(labels):
            raise FitnessError(f"calibration {_name(calibration)}: model labels are not unique")
        answers = [{task: _int_keys(m.responses.get(task, {})) for task in tasks} for m in models]
        item_ids, item_tasks = [], []
        for task in tasks:
            docs = sorted(set().union(*(a[task] for a in answers)))
            if not docs:
                raise FitnessError(f"calibration {_name(calibration)}: no model answered task {task!r}")
            item_ids += [item_id(task, d) for d in docs]
            item_tasks += [task] * len(docs)
        position = {item: j for j, item in enumerate(item_ids)}
        values = np.full((len(models), len(item_ids)), np.nan)
        for row, model_answers in enumerate(answers):
            for task, docs in model_answers.items():
                for doc, value in docs.items():
                    values[row, position[item_id(task, doc)]] = float(value)
        return cls(values=values, model_ids=labels, item_ids=item_ids, item_tasks=item_tasks)

    def items_per_task(self) -> dict[str, int]:
        tasks = list(dict.fromkeys(self.item_tasks))
        return {t: self.item_tasks.count(t) for t in tasks}


def _int_keys(docs: Mapping) -> dict[int, float]:
    """Doc ids come back as strings from JSON columns."""
    return {int(doc): value for doc, value in docs.items()}


def _name(calibration: Any) -> str:
    return repr(getattr(calibration, "name", None) or "(unnamed)")


def fit_calibration(calibration: Any, settings: IRTFitSettings = IRTFitSettings()) -> IRTParams:
    """Fit the IRT model to a calibration's non-held-out models (store `.to_dict()` with the calibration)."""
    matrix = ResponseMatrix.from_calibration(calibration)
    if len(matrix.model_ids) < 2:
        raise FitnessError(f"calibration {_name(calibration)} has {len(matrix.model_ids)} model(s) to fit IRT on; "
                           f"at least 2 are needed (more for a stable fit)")
    return fit_irt(matrix.values, matrix.item_ids, matrix.item_tasks, matrix.model_ids, settings)


def fitted_in_finishing_order(params: IRTParams, calibration: Any) -> bool:
    """A stored fit of an evosearch that laid rows out in finishing order: the calibration's models and items,
    rows in another order than by label. Refit it once (its anchors may differ from a label-order fit)."""
    matrix = ResponseMatrix.from_calibration(calibration)
    return (params.item_ids == matrix.item_ids and params.model_ids != matrix.model_ids
            and sorted(params.model_ids) == matrix.model_ids)


def stored_or_fitted_params(calibration: Any, settings: IRTFitSettings = IRTFitSettings()) -> IRTParams:
    """The calibration's stored fit when it covers exactly its current models and items, else a new fit."""
    stored = getattr(calibration, "irt_params", None)
    if stored:
        params = IRTParams.from_dict(stored)
        matrix = ResponseMatrix.from_calibration(calibration)
        if params.model_ids == matrix.model_ids and params.item_ids == matrix.item_ids:
            return params
    return fit_calibration(calibration, settings)


@dataclass(frozen=True)
class ReducedFitness:
    """Anchors to evaluate and the estimator that turns a candidate's answers into full-task scores."""

    context: EstimationContext
    estimator: str
    full_items: dict[str, int]  # task -> items in the full task (the calibration's)
    source_labels: dict[str, str]  # model directory (source_key) -> its label in the calibration

    def __post_init__(self) -> None:
        get_estimator(self.estimator)  # unknown names fail here, on the driver, not in every worker

    @classmethod
    def from_calibration(cls, calibration: Any, estimator: str = "gpirt", k: int = 30,
                         strategy: str = "irt_clustering", seed: int = 0,
                         irt_settings: IRTFitSettings = IRTFitSettings()) -> "ReducedFitness":
        """Fit (or reuse the stored) IRT parameters, select k anchors per task, measure p-IRT's bias."""
        return cls.from_params(calibration, stored_or_fitted_params(calibration, irt_settings), estimator=estimator,
                               k=k, strategy=strategy, seed=seed)

    @classmethod
    def from_params(cls, calibration: Any, params: IRTParams, estimator: str = "gpirt", k: int = 30,
                    strategy: str = "irt_clustering", seed: int = 0) -> "ReducedFitness":
        """As `from_calibration` with the IRT fit given (the report reuses one fit for every k and strategy)."""
        get_estimator(estimator)
        matrix = ResponseMatrix.from_calibration(calibration)
        if params.model_ids != matrix.model_ids or params.item_ids != matrix.item_ids:
            raise FitnessError(f"IRT params do not match calibration {_name(calibration)}'s models and items; refit")
        anchors = AnchorSelector(strategy, k, seed).select(params, matrix.values)
        context = EstimationContext.build(params, anchors, matrix.values)
        if estimator == "anchor_regression" and not context.regression:
            raise FitnessError(f"calibration {_name(calibration)}: anchor_regression needs at least "
                               f"{MIN_REGRESSION_MODELS} fitted models that answered every anchor")
        return cls(context=context, estimator=estimator, full_items=matrix.items_per_task(),
                   source_labels=_source_labels(calibration))

    def with_estimator(self, estimator: str) -> "ReducedFitness":
        return dataclasses.replace(self, estimator=estimator)

    # --- what the worker evaluates ---------------------------------------------------------------
    @property
    def samples(self) -> dict[str, list[int]]:
        """Task -> anchor doc ids, the `samples` of a CandidateTask."""
        return {task: sorted(split_item_id(item)[1] for item in anchors.item_ids)
                for task, anchors in self.context.anchors.tasks.items()}

    @property
    def tasks(self) -> list[str]:
        return list(self.context.anchors.tasks)

    @property
    def n_items(self) -> int:
        return len(self.context.anchors.item_ids())

    @property
    def n_full_items(self) -> int:
        return sum(self.full_items.values())

    # --- scores ----------------------------------------------------------------------------------
    def _anchor_responses(self, correct: Mapping[str, Mapping[int, int]]) -> dict[str, float]:
        responses: dict[str, float] = {}
        for task, anchors in self.context.anchors.tasks.items():
            if task not in correct:
                raise FitnessError(f"no answers for task {task!r}; the anchors of every task are needed")
            answered = _int_keys(correct[task])
            for item in anchors.item_ids:
                doc = split_item_id(item)[1]
                if doc not in answered:
                    raise FitnessError(f"task {task!r}: no answer to anchor doc {doc}")
                responses[item] = float(answered[doc])
        return responses

    def anchor_accuracy(self, correct: Mapping[str, Mapping[int, int]]) -> dict[str, float]:
        """Plain mean correctness on each task's anchors (what ScoreRecord.anchor_accuracy stores)."""
        responses = self._anchor_responses(correct)
        return {task: float(np.mean([responses[i] for i in anchors.item_ids]))
                for task, anchors in self.context.anchors.tasks.items()}

    def estimate(self, correct: Mapping[str, Mapping[int, int]], source_models: Sequence[str] = (),
                 source_weights: Optional[Sequence[float]] = None) -> dict[str, float]:
        """Task -> estimated full-task accuracy in [0, 1], from the candidate's answers (`correct`: task ->
        doc id -> 0/1, at least every anchor; other docs are ignored). `source_models` (calibration labels
        or model directories, e.g. from `evosearch.recipe.recipe_sources`) are needed by the merge-aware estimators only."""
        sources = [self._calibration_label(m) for m in source_models] if self.estimator in MERGE_AWARE_ESTIMATORS else []
        answers = CandidateAnswers(self._anchor_responses(correct), sources,
                                   None if not sources or source_weights is None else list(source_weights))
        estimates = get_estimator(self.estimator)(self.context, answers)
        for task, value in estimates.items():
            if not np.isfinite(value):
                raise FitnessError(f"task {task!r}: estimator {self.estimator} gave {value}")
        return {task: float(np.clip(value, 0.0, 1.0)) for task, value in estimates.items()}

    def _calibration_label(self, model: str) -> str:
        if model in self.context.params.model_ids:
            return model
        label = self.source_labels.get(source_key(model))
        if label is None:
            raise FitnessError(f"source model {model} is not in the calibration population "
                               f"(merge-aware estimator {self.estimator} needs its calibrated ability)")
        return label

    # --- storage ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"version": REDUCED_FORMAT_VERSION, "estimator": self.estimator, "context": self.context.to_dict(),
                "full_items": dict(self.full_items), "source_labels": dict(self.source_labels)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ReducedFitness":
        if data.get("version") != REDUCED_FORMAT_VERSION:
            raise FitnessError(f"reduced fitness format version {data.get('version')!r} is not {REDUCED_FORMAT_VERSION}")
        try:
            return cls(context=EstimationContext.from_dict(data["context"]), estimator=data["estimator"],
                       full_items={t: int(n) for t, n in data["full_items"].items()},
                       source_labels=dict(data["source_labels"]))
        except KeyError as exc:
            raise FitnessError(f"reduced fitness dict lacks field {exc.args[0]!r}") from None


def _source_labels(calibration: Any) -> dict[str, str]:
    """Model directory -> label, for the calibration's single-model members (sources and base)."""
    labels: dict[str, str] = {}
    for model in calibration.models:
        if model.role not in SOURCE_ROLES or not model.recipe:
            continue
        paths = recipe_source_paths(parse_recipe(model.recipe, source=f"calibration model {model.label}"))
        if len(paths) == 1:
            labels[source_key(paths[0])] = model.label
    return labels
