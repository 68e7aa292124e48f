"""Two-parameter logistic IRT on per-item correctness of a calibration population of models.

P(correct | theta, a_j, b_j) = sigmoid(a_j . theta - b_j), theta and a_j of `dims` dimensions (1 by
default; more as in tinyBenchmarks' multidimensional IRT). Abilities are per task by default
(``ability_scope="per_task"``: a model has one theta per task, as merged specialists are strong on one
task and weak on another) or one theta shared by every task (``"shared"``, tinyBenchmarks' choice).

The fit is a joint MAP estimate (Gaussian priors on theta, a and b) by full-batch L-BFGS in torch,
float64, on the observed entries of the response matrix only (NaN = not observed). A new model's
ability given a few answered items is a small convex MAP problem solved by Newton's method in numpy.

Why no IRT library: py-irt 0.7 (what tinyBenchmarks used) pins typer<0.15 and rich<14, which would
downgrade this project's CLI stack, pulls in pyro, fits by stochastic variational inference (slow, not
bit-deterministic) and has no entry point for a new model's ability under a caller-chosen prior, which
the merge-aware estimators need; girth is one-dimensional and has no missing-data mask. The model is
small enough that a direct MAP fit is shorter than the glue either library would need.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from fitness.errors import FitnessError

IRT_FORMAT_VERSION = 1
ABILITY_SCOPES = ("per_task", "shared")
SHARED_GROUP = "*"


@dataclass(frozen=True)
class IRTFitSettings:
    """How an IRT model is fitted; stored with the parameters so a fit can be reproduced."""

    dims: int = 1
    ability_scope: str = "per_task"
    theta_sd: float = 1.0  # prior sd of each ability coordinate
    a_sd: float = 0.5  # prior sd of each discrimination coordinate around their fitted mean
    b_sd: float = 3.0  # prior sd of the difficulty around its fitted mean
    max_iter: int = 1000
    tolerance: float = 1e-7  # on the gradient of the per-observation objective
    seed: int = 0

    def __post_init__(self) -> None:
        if self.dims < 1:
            raise FitnessError(f"IRTFitSettings.dims must be >= 1, got {self.dims}")
        if self.ability_scope not in ABILITY_SCOPES:
            raise FitnessError(f"IRTFitSettings.ability_scope must be one of {ABILITY_SCOPES}, "
                               f"got {self.ability_scope!r}")
        for name in ("theta_sd", "a_sd", "b_sd", "tolerance"):
            if not getattr(self, name) > 0:
                raise FitnessError(f"IRTFitSettings.{name} must be > 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class AbilityPrior:
    """Gaussian prior on one model's ability: mean [n_groups, dims], cov [n_groups, dims, dims]."""

    mean: np.ndarray
    cov: np.ndarray

    @classmethod
    def isotropic(cls, mean: np.ndarray, sd: float) -> "AbilityPrior":
        mean = np.asarray(mean, dtype=float)
        eye = np.broadcast_to(np.eye(mean.shape[-1]), (*mean.shape, mean.shape[-1]))
        return cls(mean=mean, cov=eye * sd**2)


@dataclass
class IRTParams:
    """A fitted IRT model. Item j has discrimination a[j] ([dims]), difficulty b[j] and task
    item_tasks[j]; calibration model m has ability theta[m] ([n_groups, dims]), one row per ability
    group (a task, or the single shared group)."""

    item_ids: list[str]
    item_tasks: list[str]
    a: np.ndarray  # [n_items, dims]
    b: np.ndarray  # [n_items]
    model_ids: list[str]
    theta: np.ndarray  # [n_models, n_groups, dims]
    settings: IRTFitSettings = field(default_factory=IRTFitSettings)
    version: int = IRT_FORMAT_VERSION

    def __post_init__(self) -> None:
        if len(self.item_tasks) != len(self.item_ids):
            raise FitnessError(f"IRTParams: {len(self.item_tasks)} task labels for {len(self.item_ids)} items")
        self.a = np.asarray(self.a, dtype=float).reshape(len(self.item_ids), self.settings.dims)
        self.b = np.asarray(self.b, dtype=float).reshape(len(self.item_ids))
        self.tasks: list[str] = list(dict.fromkeys(self.item_tasks))
        self.groups: list[str] = ability_groups(self.item_tasks, self.settings.ability_scope)
        self.theta = np.asarray(self.theta, dtype=float).reshape(
            len(self.model_ids), len(self.groups), self.settings.dims)
        self._item_position = {item: j for j, item in enumerate(self.item_ids)}
        if len(self._item_position) != len(self.item_ids):
            raise FitnessError("IRTParams: item ids are not unique")
        self.item_group = item_groups(self.item_tasks, self.groups)

    @property
    def dims(self) -> int:
        return self.settings.dims

    def item_index(self, item_ids: Sequence[str]) -> np.ndarray:
        try:
            return np.array([self._item_position[item] for item in item_ids], dtype=int)
        except KeyError as exc:
            raise FitnessError(f"item {exc.args[0]!r} is not in the calibrated IRT model") from None

    def task_items(self, task: str) -> np.ndarray:
        if task not in self.tasks:
            raise FitnessError(f"task {task!r} is not in the calibrated IRT model (tasks: {self.tasks})")
        return np.flatnonzero(np.asarray(self.item_tasks) == task)

    def model_ability(self, model_id: str) -> np.ndarray:
        if model_id not in self.model_ids:
            raise FitnessError(f"model {model_id!r} is not in the IRT calibration population")
        return self.theta[self.model_ids.index(model_id)]

    def default_prior(self) -> AbilityPrior:
        """The prior the calibration abilities were fitted under."""
        return AbilityPrior.isotropic(np.zeros((len(self.groups), self.dims)), self.settings.theta_sd)

    def probabilities(self, ability: np.ndarray, items: np.ndarray | None = None) -> np.ndarray:
        """P(correct) of a model with `ability` ([n_groups, dims]) on `items` (indices; all if None)."""
        items = np.arange(len(self.item_ids)) if items is None else np.asarray(items, dtype=int)
        logits = np.einsum("jd,jd->j", np.asarray(ability)[self.item_group[items]], self.a[items]) - self.b[items]
        return _sigmoid(logits)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "settings": dataclasses.asdict(self.settings),
            "dims": self.dims,
            "item_ids": list(self.item_ids),
            "item_tasks": list(self.item_tasks),
            "a": self.a.tolist(),
            "b": self.b.tolist(),
            "model_ids": list(self.model_ids),
            "groups": list(self.groups),
            "theta": self.theta.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "IRTParams":
        version = data.get("version")
        if version != IRT_FORMAT_VERSION:
            raise FitnessError(f"IRT params format version {version!r} is not {IRT_FORMAT_VERSION}")
        try:
            return cls(item_ids=list(data["item_ids"]), item_tasks=list(data["item_tasks"]),
                       a=np.array(data["a"], dtype=float), b=np.array(data["b"], dtype=float),
                       model_ids=list(data["model_ids"]), theta=np.array(data["theta"], dtype=float),
                       settings=IRTFitSettings(**data["settings"]), version=version)
        except KeyError as exc:
            raise FitnessError(f"IRT params dict lacks field {exc.args[0]!r}") from None
        except ValueError as exc:
            if isinstance(exc, FitnessError):
                raise
            raise FitnessError(f"IRT params dict has mis-shaped arrays: {exc}") from None


def ability_groups(item_tasks: Sequence[str], ability_scope: str) -> list[str]:
    """One ability group per task (in first-seen order), or the single shared group."""
    return list(dict.fromkeys(item_tasks)) if ability_scope == "per_task" else [SHARED_GROUP]


def item_groups(item_tasks: Sequence[str], groups: list[str]) -> np.ndarray:
    """Each item's ability-group index."""
    if groups == [SHARED_GROUP]:
        return np.zeros(len(item_tasks), dtype=int)
    position = {g: i for i, g in enumerate(groups)}
    return np.array([position[t] for t in item_tasks], dtype=int)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free logistic


def check_responses(values: np.ndarray, what: str) -> np.ndarray:
    """Correctness values must lie in [0, 1] (NaN allowed: not observed)."""
    values = np.asarray(values, dtype=float)
    observed = values[~np.isnan(values)]
    if observed.size and (observed.min() < 0 or observed.max() > 1):
        raise FitnessError(f"{what}: correctness values must lie in [0, 1], found {observed.min()}..{observed.max()}")
    return values


def fit_irt(responses: np.ndarray, item_ids: Sequence[str], item_tasks: Sequence[str],
            model_ids: Sequence[str], settings: IRTFitSettings = IRTFitSettings()) -> IRTParams:
    """Fit item parameters and calibration abilities to a response matrix [n_models, n_items]
    (correctness in [0, 1], NaN where a model did not answer an item)."""
    R = check_responses(responses, "IRT calibration responses")
    if R.ndim != 2 or R.shape != (len(model_ids), len(item_ids)):
        raise FitnessError(f"IRT calibration responses have shape {R.shape}, expected "
                           f"({len(model_ids)} models, {len(item_ids)} items)")
    if len(set(model_ids)) != len(model_ids):
        raise FitnessError("IRT calibration model ids are not unique")
    if len(model_ids) < 2:
        raise FitnessError(f"IRT calibration needs at least 2 models, got {len(model_ids)}")
    observed = ~np.isnan(R)
    for j in np.flatnonzero(~observed.any(axis=0))[:1]:
        raise FitnessError(f"item {item_ids[j]!r} has no observed response in the calibration population")
    for m in np.flatnonzero(~observed.any(axis=1))[:1]:
        raise FitnessError(f"model {model_ids[m]!r} has no observed response in the calibration population")

    if len(item_tasks) != len(item_ids):
        raise FitnessError(f"{len(item_tasks)} task labels for {len(item_ids)} items")
    groups = ability_groups(item_tasks, settings.ability_scope)
    group_of_item = item_groups(item_tasks, groups)
    theta, a, b = _standardise(*_map_fit(R, observed, group_of_item, len(groups), settings), group_of_item)
    return IRTParams(item_ids=list(item_ids), item_tasks=list(item_tasks), a=a, b=b, model_ids=list(model_ids),
                     theta=theta, settings=settings)


def _group_accuracy(R: np.ndarray, observed: np.ndarray, item_group: np.ndarray, n_groups: int) -> np.ndarray:
    """Each model's mean correctness per ability group, [n_models, n_groups] (0.5 where unobserved)."""
    filled = np.where(observed, R, 0.0)
    onehot = np.eye(n_groups)[item_group]  # [n_items, n_groups]
    counts = observed.astype(float) @ onehot
    return np.where(counts > 0, (filled @ onehot) / np.maximum(counts, 1), 0.5)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 0.02, 0.98)
    return np.log(p / (1 - p))


def _map_fit(R: np.ndarray, observed: np.ndarray, item_group: np.ndarray, n_groups: int,
             settings: IRTFitSettings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n_models, n_items = R.shape
    rng = np.random.default_rng(settings.seed)
    # Start near the answer with the sign fixed: the first ability coordinate is the standardised logit
    # of each model's accuracy, so "able" points the same way in every group.
    accuracy = _group_accuracy(R, observed, item_group, n_groups)
    first = _logit(accuracy)
    first = (first - first.mean(axis=0)) / np.maximum(first.std(axis=0), 1e-3)
    theta0 = 0.1 * rng.standard_normal((n_models, n_groups, settings.dims))
    theta0[:, :, 0] = first
    a0 = 0.1 * rng.standard_normal((n_items, settings.dims))
    a0[:, 0] = 1.0
    b0 = -_logit(np.nanmean(R, axis=0))

    theta = torch.tensor(theta0, dtype=torch.float64, requires_grad=True)
    a = torch.tensor(a0, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(b0, dtype=torch.float64, requires_grad=True)
    # Hierarchical means: items shrink towards the typical discrimination and difficulty, not towards 0.
    a_mean = torch.tensor(a0.mean(axis=0), dtype=torch.float64, requires_grad=True)
    b_mean = torch.tensor(b0.mean(), dtype=torch.float64, requires_grad=True)
    targets = torch.tensor(np.where(observed, R, 0.0), dtype=torch.float64)
    mask = torch.tensor(observed, dtype=torch.float64)
    groups = torch.tensor(item_group, dtype=torch.long)
    n_observed = float(observed.sum())

    def objective() -> torch.Tensor:
        logits = (theta[:, groups, :] * a).sum(-1) - b
        nll = (torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none") * mask).sum()
        log_prior = (0.5 * theta.square().sum() / settings.theta_sd**2
                     + 0.5 * (a - a_mean).square().sum() / settings.a_sd**2
                     + 0.5 * (b - b_mean).square().sum() / settings.b_sd**2)
        return (nll + log_prior) / n_observed

    optimizer = torch.optim.LBFGS([theta, a, b, a_mean, b_mean], lr=1.0, max_iter=settings.max_iter, history_size=20,
                                  tolerance_grad=settings.tolerance, tolerance_change=settings.tolerance**2,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    optimizer.step(closure)
    return theta.detach().numpy().copy(), a.detach().numpy().copy(), b.detach().numpy().copy()


def _standardise(theta: np.ndarray, a: np.ndarray, b: np.ndarray,
                 item_group: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Re-express the fit so the calibration abilities have mean 0 and identity covariance per group,
    leaving every logit unchanged. The joint MAP fit leaves the scale wherever the priors balance it
    (with many more items than models, abilities come out ~1.8x too wide); a new model's default prior
    N(0, I) must describe the population the item parameters were fitted on."""
    theta, a, b = theta.copy(), a.copy(), b.copy()
    dims = theta.shape[-1]
    for g in range(theta.shape[1]):
        mean = theta[:, g].mean(axis=0)
        chol = np.linalg.cholesky(np.cov(theta[:, g], rowvar=False, bias=True).reshape(dims, dims) + 1e-9 * np.eye(dims))
        items = item_group == g
        # a . theta - b = (a L) . theta' - (b - a . mean), with theta = L theta' + mean
        b[items] -= a[items] @ mean
        a[items] = a[items] @ chol
        theta[:, g] = np.linalg.solve(chol, (theta[:, g] - mean).T).T
    return theta, a, b


def map_logistic(features: np.ndarray, offsets: np.ndarray, targets: np.ndarray,
                 prior_mean: np.ndarray, prior_cov: np.ndarray, max_iter: int = 100) -> np.ndarray:
    """argmax_x  sum_j log Bernoulli(targets_j | sigmoid(features_j . x - offsets_j)) + log N(x | mean, cov).

    Convex, so damped Newton from the prior mean converges in a handful of steps."""
    precision = np.linalg.inv(prior_cov)
    x = np.array(prior_mean, dtype=float)

    def loss(v: np.ndarray) -> float:
        z = features @ v - offsets
        d = v - prior_mean
        return float(np.sum(np.logaddexp(0.0, z) - targets * z) + 0.5 * d @ precision @ d)

    current = loss(x)
    for _ in range(max_iter):
        p = _sigmoid(features @ x - offsets)
        grad = features.T @ (p - targets) + precision @ (x - prior_mean)
        hess = (features * (p * (1 - p))[:, None]).T @ features + precision
        step = np.linalg.solve(hess, grad)
        decrement = float(grad @ step)
        if decrement < 1e-20:
            break
        t = 1.0
        while (trial := loss(x - t * step)) > current - 1e-4 * t * decrement and t > 1e-8:
            t *= 0.5
        x, current = x - t * step, trial
        if decrement < 1e-14:
            break
    return x


def fit_ability(params: IRTParams, item_ids: Sequence[str], responses: Sequence[float],
                prior: AbilityPrior | None = None) -> np.ndarray:
    """MAP ability [n_groups, dims] of a new model from its correctness on `item_ids`. Groups with no
    answered item keep the prior mean. Default prior: the one the calibration was fitted under."""
    prior = params.default_prior() if prior is None else prior
    expected = (len(params.groups), params.dims)
    if np.shape(prior.mean) != expected or np.shape(prior.cov) != (*expected, params.dims):
        raise FitnessError(f"ability prior has mean {np.shape(prior.mean)} / cov {np.shape(prior.cov)}, expected "
                           f"mean {expected} and cov {(*expected, params.dims)}")
    y = check_responses(responses, "candidate responses")
    if y.shape != (len(item_ids),):
        raise FitnessError(f"{y.size} responses for {len(item_ids)} items")
    if np.isnan(y).any():
        raise FitnessError(f"response to item {item_ids[int(np.flatnonzero(np.isnan(y))[0])]!r} is NaN")
    items = params.item_index(item_ids)
    ability = np.array(prior.mean, dtype=float)
    for g in range(len(params.groups)):
        in_group = params.item_group[items] == g
        if in_group.any():
            chosen = items[in_group]
            ability[g] = map_logistic(params.a[chosen], params.b[chosen], y[in_group], prior.mean[g], prior.cov[g])
    return ability
