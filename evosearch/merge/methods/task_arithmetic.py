"""The generalised task-arithmetic family: task arithmetic, TIES, DARE, Breadcrumbs and DELLA.

Every member merges ``base + lambda * combine_i(w_i * sparsify(m_i - base))``; they differ in how each task
vector is sparsified and whether the sum keeps, per element, only the contributions whose sign agrees
with the sign of their sum (TIES's sign consensus). Semantics and numerics follow mergekit 0.1.5's
`generalized_task_arithmetic`, the test suite's reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

import torch

from evosearch.errors import RecipeError
from evosearch.merge.methods.base import (
    MergeMethod,
    Parameter,
    TensorMerge,
    TensorParameters,
    flag,
    number,
    plain_number,
    recipe_weight,
)
from evosearch.merge.methods.counter_random import stream_key
from evosearch.merge.methods.fused import NONE, Keep, fused_combine, l1_rescale_factor
from evosearch.merge.methods.sparsify import (
    RankWindow,
    keep_della,
    keep_random,
    keep_windows,
    magnitude_window,
    outlier_window,
)

# Two kinds of sparsification: by magnitude rank (elements count, a model's parameters) -> its rank window,
# found for every task vector of the tensor in one pass; by random draw (base, model, parameters, the key
# of its draws, where) -> which elements survive.
Window = Callable[[int, Mapping[str, Any]], RankWindow]
Draw = Callable[[torch.Tensor, torch.Tensor, Mapping[str, Any], tuple[int, int], str], Optional[Keep]]

WEIGHT = number("weight", per_model=True, search_range=(0.0, 1.0), doc="scale of the model's task vector")
DENSITY = number("density", per_model=True, default=1.0, search_range=(0.1, 1.0),
                 doc="fraction of the task vector kept")
GAMMA = number("gamma", per_model=True, default=0.01, search_range=(0.0, 0.1),
               doc="fraction of the largest magnitudes dropped as outliers")
EPSILON = number("epsilon", per_model=True, default=0.15, search_range=(0.0, 0.1),
                 doc="spread of the keep-probability around density, by magnitude rank")


def _shared(normalize: bool, rescale: bool) -> tuple[Parameter, ...]:
    return (flag("int8_mask", False, "accepted for mergekit configs; masks are kept in the compute dtype"),
            flag("normalize", normalize, "divide by the sum of the weights that contribute"),
            flag("rescale", rescale, "scale the kept task vector back to the L1 norm of the whole"),
            number("lambda", default=1.0, doc="scale of the combined task vector"))


def _magnitude(numel, p):
    return magnitude_window(numel, p["density"])


def _outliers(numel, p):
    return outlier_window(numel, p["density"], p["gamma"])


def _random(base, model, p, key, where):
    return keep_random(p["density"], key)


def _della(base, model, p, key, where):
    return keep_della(base, model, p["density"], p["epsilon"], key, where)


def combine_task_vectors(base: torch.Tensor, models: list[torch.Tensor], params: Sequence[Mapping], *,
                         window: Optional[Window], draw: Optional[Draw], sign_consensus: bool, normalize: bool,
                         rescale: bool, lam: float, seed: int, where: Sequence[str]) -> torch.Tensor:
    """``base + lam * combine(w_i * sparsify(m_i - base))`` for one tensor, in one pass (`fused.py`).

    Task vector i draws its random numbers under `stream_key(seed, i)`."""
    if not models:
        return base
    if window is not None:
        found = keep_windows(base, models, [window(base.numel(), p) for p in params])
    elif draw is not None:
        found = [draw(base, model, p, stream_key(seed, i), where[i]) for i, (model, p) in enumerate(zip(models, params))]
    else:
        found = [None] * len(models)
    keeps = []
    for model, keep in zip(models, found):
        keep = keep or Keep()
        if rescale and keep.kind != NONE:
            keep.scale = l1_rescale_factor(base, model, keep)
        keeps.append(keep)
    return fused_combine(base, models, keeps, [p["weight"] for p in params], sign_consensus=sign_consensus,
                         normalize=normalize, lam=lam)


@dataclass(frozen=True)
class GeneralizedTaskArithmetic(MergeMethod):
    """One member of the family: how it sparsifies (None: not at all) and whether signs must agree."""

    window: Optional[Window] = None  # sparsified by magnitude rank
    draw: Optional[Draw] = None  # sparsified at random (counter-based draws from the tensor's own seed)
    sign_consensus: bool = False

    def check_tensor(self, tensor: str, params: TensorParameters) -> None:
        for model, values in params.per_model.items():
            density, eps = values["density"], values.get("epsilon")
            if not 0 <= density <= 1:
                raise RecipeError(f"model {model}: density {density:g} for tensor {tensor} is outside [0, 1]")
            if eps is not None and 0 < density < 1 and not (0 < density - eps and density + eps < 1):
                raise RecipeError(f"model {model}: della needs 0 < density - epsilon and density + epsilon "
                                  f"< 1 for tensor {tensor} (density={density:g}, epsilon={eps:g})")

    def merge(self, job: TensorMerge) -> torch.Tensor:
        base = job.tensors[job.base].contiguous()
        others = job.others
        shared = job.params.shared
        return combine_task_vectors(
            base, [job.tensors[m].contiguous() for m in others], [job.params.per_model[m] for m in others],
            window=self.window, draw=self.draw, sign_consensus=self.sign_consensus, normalize=shared["normalize"],
            rescale=shared["rescale"], lam=shared["lambda"], seed=job.seed,
            where=[f"model {m}, tensor {job.name}" for m in others])

    def mixing_weights(self, recipe, paths: Sequence[str]) -> Optional[list[float]]:
        # base + sum_i w_i (m_i - base) = (1 - sum w) base + sum w_i m_i
        weights = {p: recipe_weight(recipe, p) for p in paths}
        if not all(plain_number(w) for w in weights.values()):
            return None
        others = [p for p in paths if p != recipe.base_model]
        return [1.0 - sum(float(weights[p]) for p in others)] + [float(weights[p]) for p in others]

    def repair(self, values: dict[str, list[float]], decimals: int) -> None:
        if self.draw is _della:
            repair_della(values, decimals)


def repair_della(values: dict[str, list[float]], decimals: int) -> None:
    """DELLA needs density +/- epsilon inside (0, 1) wherever 0 < density < 1: shrink epsilon to fit, on the
    `decimals` grid the search space rounds to."""
    if "density" not in values or "epsilon" not in values:
        return
    step = 10.0 ** -decimals
    for i, (d, e) in enumerate(zip(values["density"], values["epsilon"])):
        if 0 < d < 1:
            limit = math.floor((min(d, 1 - d) - step) / step) * step
            values["epsilon"][i] = round(max(0.0, min(e, limit)), decimals)


def _member(name: str, *, normalize: bool, rescale: bool, sparsify: Optional[Callable] = None,
            sign_consensus: bool = False, extra: tuple[Parameter, ...] = (), reference: str) -> GeneralizedTaskArithmetic:
    random = sparsify in (_random, _della)
    return GeneralizedTaskArithmetic(
        name=name, parameters=(WEIGHT, DENSITY, *extra, *_shared(normalize, rescale)), reference=reference,
        window=None if random else sparsify, draw=sparsify if random else None, sign_consensus=sign_consensus,
        verified="mergekit's drop rate and rescaling, statistically (random drops)" if random
        else "parity with mergekit" if sparsify is None
        # mergekit's order among equal magnitudes is its sort's; ours is the lowest index, on every device
        else "parity with mergekit but where elements tie at the density cut (the lowest index is kept)")


# Defaults of normalize and rescale are mergekit 0.1.5's for each name. Plain task arithmetic accepts (and
# ignores) density, as mergekit does, so its configs load.
TASK_ARITHMETIC = _member("task_arithmetic", normalize=False, rescale=False,
                          reference="Ilharco et al. 2023, Editing Models with Task Arithmetic")
TIES = _member("ties", normalize=True, rescale=False, sparsify=_magnitude, sign_consensus=True,
               reference="Yadav et al. 2023, TIES-Merging")
DARE_TIES = _member("dare_ties", normalize=False, rescale=True, sparsify=_random, sign_consensus=True,
                    reference="Yu et al. 2024, Language Models are Super Mario (DARE), with TIES's sign consensus")
DARE_LINEAR = _member("dare_linear", normalize=False, rescale=True, sparsify=_random,
                      reference="Yu et al. 2024, Language Models are Super Mario (DARE)")
BREADCRUMBS = _member("breadcrumbs", normalize=False, rescale=False, sparsify=_outliers, extra=(GAMMA,),
                      reference="Davari & Belilovsky 2024, Model Breadcrumbs")
BREADCRUMBS_TIES = _member("breadcrumbs_ties", normalize=False, rescale=False, sparsify=_outliers,
                           sign_consensus=True, extra=(GAMMA,),
                           reference="Davari & Belilovsky 2024, Model Breadcrumbs, with TIES's sign consensus")
DELLA = _member("della", normalize=True, rescale=True, sparsify=_della, sign_consensus=True, extra=(EPSILON,),
                reference="Deep et al. 2024, DELLA-Merging (MagPrune)")
DELLA_LINEAR = _member("della_linear", normalize=False, rescale=True, sparsify=_della, extra=(EPSILON,),
                       reference="Deep et al. 2024, DELLA-Merging (MagPrune), without sign consensus")
