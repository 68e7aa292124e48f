"""Full-task accuracy of a candidate from its answers to the anchors (tinyBenchmarks, MERGE^3).

Every estimator maps (EstimationContext, CandidateAnswers) -> {task: estimated accuracy in [0, 1]}:

* ``weighted_anchor``: sum of anchor weight x correctness.
* ``irt``: MAP ability from the anchors, then the mean predicted P(correct) over all the task's items.
* ``pirt`` (p-IRT): observed anchors count as themselves, the other items as their predicted P.
* ``gpirt`` (gp-IRT): lambda * weighted_anchor + (1 - lambda) * pirt with tinyBenchmarks' heuristic
  lambda = bias^2 / (bias^2 + var): bias^2 is p-IRT's mean squared error on the calibration models
  (stored per task in the context), var the Bernoulli variance of the weighted anchor estimate at the
  fitted ability. A well-fitting IRT model (small bias) leans on p-IRT; many anchors (small var) lean on
  the anchors.
* ``mpirt`` / ``mgpirt`` (MERGE^3): as pirt / gpirt, but the candidate's ability starts from a mix of its
  source models' calibrated abilities: per ability group, mixing weights (summing to 1) are fitted to the
  anchors by MAP around the recipe's weights normalised to sum 1 (uniform when the recipe gives none),
  and the ability is then refined by MAP under a Gaussian prior centred on that mix. MERGE^3 fits the
  weights unconstrained and stops at the mix; with a one-dimensional ability per task and several
  sources that is underdetermined, hence the sum constraint, the prior and the refinement.
* ``anchor_regression``: each task's accuracy as a ridge regression on the answers to the anchors of
  EVERY task, fitted on the calibration population (ridge strength by exact leave-one-out error). A task
  with k anchors alone is estimated from k coin flips; merges of the same sources move their tasks
  together, so the other tasks' anchors carry information about this one, and the regression learns how
  much from the calibration models instead of assuming an IRT model.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from fitness.anchors import AnchorSet
from fitness.errors import FitnessError
from fitness.irt import AbilityPrior, IRTParams, check_responses, fit_ability, map_logistic

CONTEXT_FORMAT_VERSION = 1
# Ridge strengths tried for anchor_regression, relative to nothing: answers are 0/1 and accuracies in [0, 1].
RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(-2, 3, 31))
MIN_REGRESSION_MODELS = 4


@dataclass(frozen=True)
class MergePriorSettings:
    mix_weight_sd: float = 0.25  # prior sd of the mixing weights around the recipe's (normalised) weights
    ability_sd: float = 0.3  # prior sd of the candidate's ability around the sources' mix


@dataclass(frozen=True)
class CandidateAnswers:
    """A candidate's correctness on the anchors, keyed by item id, and (for the merge-aware estimators)
    the calibration-population ids of the models it was merged from, with the recipe's weights if known."""

    responses: Mapping[str, float]
    source_models: Sequence[str] = ()
    source_weights: Sequence[float] | None = None


@dataclass(frozen=True)
class AnchorRegression:
    """One task's accuracy = intercept + coef . (answers to every anchor, in `AnchorSet.item_ids()` order)."""

    intercept: float
    coef: list[float]
    alpha: float
    loo_mae: float  # mean absolute leave-one-out error on the calibration models, accuracy in [0, 1]


def fit_anchor_regression(X: np.ndarray, y: np.ndarray, alphas: Sequence[float] = RIDGE_ALPHAS) -> AnchorRegression:
    """Ridge regression of y on X with an intercept, its strength chosen by the exact leave-one-out error
    (the hat-matrix identity: residual / (1 - leverage)), all from one SVD of the centred X."""
    n = X.shape[0]
    x_mean, y_mean = X.mean(axis=0), float(y.mean())
    U, sv, Vt = np.linalg.svd(X - x_mean, full_matrices=False)
    uty = U.T @ (y - y_mean)
    best = None
    for alpha in alphas:
        shrink = sv**2 / (sv**2 + alpha)
        fitted = y_mean + U @ (shrink * uty)
        leverage = 1.0 / n + np.einsum("ij,j,ij->i", U, shrink, U)
        loo = (y - fitted) / np.clip(1.0 - leverage, 1e-9, None)
        score = float(np.mean(np.square(loo)))
        if best is None or score < best[0]:
            best = (score, alpha, float(np.mean(np.abs(loo))))
    _, alpha, loo_mae = best
    coef = Vt.T @ (sv / (sv**2 + alpha) * uty)
    return AnchorRegression(intercept=float(y_mean - x_mean @ coef), coef=[float(c) for c in coef], alpha=float(alpha),
                            loo_mae=loo_mae)


@dataclass(frozen=True)
class EstimationContext:
    """Everything the estimators need besides the candidate: the IRT model, the anchors, and p-IRT's
    squared error per task on the calibration population (for gp-IRT's lambda)."""

    params: IRTParams
    anchors: AnchorSet
    pirt_sq_bias: dict[str, float]
    merge_prior: MergePriorSettings = field(default_factory=MergePriorSettings)
    regression: dict[str, AnchorRegression] = field(default_factory=dict)  # empty: too few calibration models
    version: int = CONTEXT_FORMAT_VERSION

    @classmethod
    def build(cls, params: IRTParams, anchors: AnchorSet, calibration_responses: np.ndarray,
              merge_prior: MergePriorSettings = MergePriorSettings()) -> "EstimationContext":
        """Measure p-IRT on each calibration model that answered every anchor, against its accuracy on
        the items it answered. (In-sample: the item parameters saw these models, so this errs low.)"""
        R = check_responses(calibration_responses, "calibration responses")
        if R.shape != (len(params.model_ids), len(params.item_ids)):
            raise FitnessError(f"calibration responses have shape {R.shape}, expected "
                               f"({len(params.model_ids)}, {len(params.item_ids)}) as in the IRT params")
        unbiased = cls(params=params, anchors=anchors, pirt_sq_bias={t: 0.0 for t in anchors.tasks},
                       merge_prior=merge_prior)
        anchor_ids = anchors.item_ids()
        anchor_idx = params.item_index(anchor_ids)
        errors: dict[str, list[float]] = {task: [] for task in anchors.tasks}
        complete = [row for row in R if not np.isnan(row[anchor_idx]).any()]
        for row in complete:
            estimate = ESTIMATORS["pirt"](unbiased, CandidateAnswers(dict(zip(anchor_ids, row[anchor_idx]))))
            for task in anchors.tasks:
                errors[task].append(estimate[task] - float(np.nanmean(row[params.task_items(task)])))
        if not complete:
            raise FitnessError("no calibration model answered every anchor; cannot measure p-IRT's bias")
        regression = {}
        if len(complete) >= MIN_REGRESSION_MODELS:
            X = np.array([row[anchor_idx] for row in complete])
            regression = {task: fit_anchor_regression(X, np.array([np.nanmean(row[params.task_items(task)])
                                                                   for row in complete]))
                          for task in anchors.tasks}
        return dataclasses.replace(unbiased, pirt_sq_bias={t: float(np.mean(np.square(e))) for t, e in errors.items()},
                                   regression=regression)

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "params": self.params.to_dict(), "anchors": self.anchors.to_dict(),
                "pirt_sq_bias": dict(self.pirt_sq_bias), "merge_prior": dataclasses.asdict(self.merge_prior),
                "regression": {t: dataclasses.asdict(r) for t, r in self.regression.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EstimationContext":
        if data.get("version") != CONTEXT_FORMAT_VERSION:
            raise FitnessError(f"estimation context format version {data.get('version')!r} is not {CONTEXT_FORMAT_VERSION}")
        try:
            return cls(params=IRTParams.from_dict(data["params"]), anchors=AnchorSet.from_dict(data["anchors"]),
                       pirt_sq_bias={t: float(v) for t, v in data["pirt_sq_bias"].items()},
                       merge_prior=MergePriorSettings(**data["merge_prior"]),
                       # Contexts stored before anchor_regression existed have none.
                       regression={t: AnchorRegression(**r) for t, r in data.get("regression", {}).items()})
        except KeyError as exc:
            raise FitnessError(f"estimation context dict lacks field {exc.args[0]!r}") from None


@dataclass(frozen=True)
class _Observed:
    """The candidate's anchor answers, checked and laid out against the IRT model."""

    item_ids: list[str]
    values: np.ndarray  # correctness per item in item_ids
    items: np.ndarray  # their positions in params.item_ids


def _observe(context: EstimationContext, answers: CandidateAnswers) -> _Observed:
    if not answers.responses:
        raise FitnessError("candidate answered no anchors: responses are empty")
    expected = context.anchors.item_ids()
    missing = [item for item in expected if item not in answers.responses]
    if missing:
        raise FitnessError(f"candidate has no response to anchor {missing[0]!r} ({len(missing)} anchors missing)")
    extra = set(answers.responses) - set(expected)
    if extra:
        raise FitnessError(f"response to {sorted(extra)[0]!r}, which is not an anchor of this anchor set")
    values = np.array([answers.responses[item] for item in expected], dtype=float)
    if np.isnan(values).any():
        raise FitnessError(f"response to anchor {expected[int(np.flatnonzero(np.isnan(values))[0])]!r} is NaN")
    check_responses(values, "candidate responses")
    return _Observed(item_ids=expected, values=values, items=context.params.item_index(expected))


def _plain_ability(context: EstimationContext, observed: _Observed, answers: CandidateAnswers) -> np.ndarray:
    return fit_ability(context.params, observed.item_ids, observed.values)


def _sum_zero_basis(n: int) -> np.ndarray:
    """Orthonormal basis [n, n-1] of the weight changes that keep the weights' sum."""
    centering = np.eye(n) - 1.0 / n
    return np.linalg.svd(centering)[0][:, : n - 1]


def _merge_ability(context: EstimationContext, observed: _Observed, answers: CandidateAnswers) -> np.ndarray:
    params, settings = context.params, context.merge_prior
    if not answers.source_models:
        raise FitnessError("merge-aware estimators need the candidate's source models (CandidateAnswers.source_models)")
    sources = np.stack([params.model_ability(m) for m in answers.source_models])  # [S, groups, dims]
    n_sources = len(answers.source_models)
    if answers.source_weights is None:
        prior_weights = np.full(n_sources, 1.0 / n_sources)
    else:
        prior_weights = np.asarray(answers.source_weights, dtype=float)
        if prior_weights.shape != (n_sources,) or not prior_weights.sum() > 0:
            raise FitnessError(f"source weights {list(answers.source_weights)} do not fit {n_sources} source models "
                               f"with a positive sum")
        prior_weights = prior_weights / prior_weights.sum()
    # The mix is an affine combination (weights summing to 1, as a merge interpolates its sources), so
    # only the n-1 directions that keep the sum are fitted, with an isotropic prior around the recipe.
    basis = _sum_zero_basis(n_sources)
    mix = np.einsum("s,sgd->gd", prior_weights, sources)
    for g in range(len(params.groups)):
        in_group = params.item_group[observed.items] == g
        if in_group.any() and n_sources > 1:
            chosen = observed.items[in_group]
            # logit_j = sum_s w_s (a_j . theta_s,g) - b_j: a logistic regression in the mixing weights.
            features = params.a[chosen] @ sources[:, g, :].T
            change = map_logistic(features @ basis, params.b[chosen] - features @ prior_weights,
                                  observed.values[in_group], np.zeros(n_sources - 1),
                                  settings.mix_weight_sd**2 * np.eye(n_sources - 1))
            mix[g] = (prior_weights + basis @ change) @ sources[:, g, :]
    return fit_ability(params, observed.item_ids, observed.values, AbilityPrior.isotropic(mix, settings.ability_sd))


@dataclass(frozen=True)
class _TaskView:
    """One task's anchors and the candidate's fitted predictions on it."""

    anchor_values: np.ndarray
    anchor_weights: np.ndarray
    anchor_probabilities: np.ndarray
    other_probabilities: np.ndarray  # the task's items that are not anchors

    @property
    def n_items(self) -> int:
        return self.anchor_values.size + self.other_probabilities.size


AbilityFn = Callable[[EstimationContext, _Observed, CandidateAnswers], np.ndarray]
TaskFormula = Callable[[EstimationContext, str, _TaskView], float]


def _per_task(context: EstimationContext, answers: CandidateAnswers, ability_of: AbilityFn | None,
              formula: TaskFormula) -> dict[str, float]:
    params = context.params
    observed = _observe(context, answers)
    ability = None if ability_of is None else ability_of(context, observed, answers)
    position = {item: i for i, item in enumerate(observed.item_ids)}
    estimates: dict[str, float] = {}
    for task, anchors in context.anchors.tasks.items():
        task_items = params.task_items(task)
        anchor_items = params.item_index(anchors.item_ids)
        others = np.setdiff1d(task_items, anchor_items)
        view = _TaskView(
            anchor_values=observed.values[[position[item] for item in anchors.item_ids]],
            anchor_weights=np.asarray(anchors.weights, dtype=float),
            anchor_probabilities=np.empty(0) if ability is None else params.probabilities(ability, anchor_items),
            other_probabilities=np.empty(0) if ability is None else params.probabilities(ability, others))
        estimates[task] = float(formula(context, task, view))
    return estimates


def _weighted_anchor_value(context: EstimationContext, task: str, view: _TaskView) -> float:
    return float(view.anchor_weights @ view.anchor_values)


def _irt_value(context: EstimationContext, task: str, view: _TaskView) -> float:
    return float((view.anchor_probabilities.sum() + view.other_probabilities.sum()) / view.n_items)


def _pirt_value(context: EstimationContext, task: str, view: _TaskView) -> float:
    return float((view.anchor_values.sum() + view.other_probabilities.sum()) / view.n_items)


def gpirt_lambda(sq_bias: float, anchor_variance: float) -> float:
    """tinyBenchmarks' weight on the anchor estimate: bias^2 / (bias^2 + var)."""
    total = sq_bias + anchor_variance
    return 0.0 if total <= 0 else sq_bias / total


def _gpirt_value(context: EstimationContext, task: str, view: _TaskView) -> float:
    p = view.anchor_probabilities
    variance = float(np.sum(view.anchor_weights**2 * p * (1 - p)))
    lam = gpirt_lambda(context.pirt_sq_bias.get(task, 0.0), variance)
    return lam * _weighted_anchor_value(context, task, view) + (1 - lam) * _pirt_value(context, task, view)


Estimator = Callable[[EstimationContext, CandidateAnswers], dict[str, float]]


def anchor_regression(context: EstimationContext, answers: CandidateAnswers) -> dict[str, float]:
    if not context.regression:
        raise FitnessError(f"anchor_regression needs at least {MIN_REGRESSION_MODELS} calibration models that "
                           "answered every anchor")
    values = _observe(context, answers).values
    # A linear fit can step past the ends near them; an accuracy cannot.
    return {task: float(np.clip(r.intercept + np.dot(r.coef, values), 0.0, 1.0)) for task, r in context.regression.items()}


def _estimator(ability_of: AbilityFn | None, formula: TaskFormula) -> Estimator:
    """The per-task estimator that finds the candidate's ability with `ability_of` (None: none needed) and
    turns it, task by task, into an accuracy with `formula` (picklable: it ships to Ray workers)."""
    return functools.partial(_per_task, ability_of=ability_of, formula=formula)


# The ability behind each IRT estimator: the plain fit on the anchors, or MERGE^3's, pulled towards the
# mix of the candidate's sources. Adding an estimator is one entry here.
ESTIMATORS: dict[str, Estimator] = {
    "weighted_anchor": _estimator(None, _weighted_anchor_value),
    "irt": _estimator(_plain_ability, _irt_value),
    "pirt": _estimator(_plain_ability, _pirt_value),
    "gpirt": _estimator(_plain_ability, _gpirt_value),
    "mpirt": _estimator(_merge_ability, _pirt_value),
    "mgpirt": _estimator(_merge_ability, _gpirt_value),
    "anchor_regression": anchor_regression,
}
MERGE_AWARE_ESTIMATORS = frozenset({"mpirt", "mgpirt"})


def get_estimator(name: str) -> Estimator:
    try:
        return ESTIMATORS[name]
    except KeyError:
        raise FitnessError(f"unknown estimator {name!r} (known: {', '.join(ESTIMATORS)})") from None
