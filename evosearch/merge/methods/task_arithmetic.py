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
from evosearch.merge.methods.sparsify import (
    sparsify_della,
    sparsify_magnitude,
    sparsify_magnitude_outliers,
    sparsify_random,
)

# sparsify(task vector, its model's parameters, rescale, generator, where) -> the kept task vector
Sparsifier = Callable[[torch.Tensor, Mapping[str, Any], bool, Optional[torch.Generator], str], torch.Tensor]

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


def _magnitude(delta, p, rescale, generator, where):
    return sparsify_magnitude(delta, p["density"], rescale)


def _outliers(delta, p, rescale, generator, where):
    return sparsify_magnitude_outliers(delta, p["density"], p["gamma"], rescale)


def _random(delta, p, rescale, generator, where):
    return sparsify_random(delta, p["density"], rescale, generator)


def _della(delta, p, rescale, generator, where):
    return sparsify_della(delta, p["density"], p["epsilon"], rescale, generator, where)


_CHUNK = 1 << 17  # elements per step of the element-wise combination: its several passes stay in cache


def combine_task_vectors(base: torch.Tensor, models: list[Optional[torch.Tensor]], params: Sequence[Mapping],
                         *, sparsify: Optional[Sparsifier], sign_consensus: bool, normalize: bool, rescale: bool,
                         lam: float, generator: Optional[torch.Generator], where: Sequence[str],
                         scratch: Optional[Callable[[int], torch.Tensor]] = None) -> torch.Tensor:
    """``base + lam * combine(w_i * sparsify(m_i - base))`` for one tensor.

    Task vectors that get sparsified are taken whole (sparsification looks at the whole tensor), and
    their entry of `models` is released (set to None) once taken; unsparsified ones are taken a cache-sized
    chunk at a time. `scratch(n)`, when given, returns a flat buffer of at least n elements of base's
    dtype and device for them, which a caller merging tensor after tensor reuses: a fresh buffer of a
    tensor's size would have its every page faulted in again for each tensor.
    """
    if not models:
        return base
    n, numel = len(models), base.numel()
    whole = sparsify is not None and any(p["density"] < 1 for p in params)
    size = n * (numel if whole else min(numel, _CHUNK))
    buffer = scratch(size)[:size] if scratch is not None else torch.empty(size, dtype=base.dtype, device=base.device)
    if whole:
        deltas = buffer.view(n, numel)
        for i, p in enumerate(params):
            row = deltas[i]
            delta = torch.sub(models[i], base, out=row.view(base.shape))
            models[i] = None
            delta = sparsify(delta, p, rescale, generator, where[i])
            if delta.data_ptr() != row.data_ptr():  # sparsified into a new tensor
                row.copy_(delta.reshape(-1))
            del delta, row
    else:
        chunk_deltas = buffer.view(n, -1)
        flat_models = [m.reshape(-1) for m in models]
    weights = torch.tensor([p["weight"] for p in params], dtype=base.dtype, device=base.device).reshape(-1, 1)
    if not sign_consensus:
        divisor = weights.sum(dim=0)
        divisor[divisor.abs() < 1e-8] = 1
    out = torch.empty_like(base).reshape(-1)
    flat_base = base.reshape(-1)
    for start in range(0, numel, _CHUNK):
        end = min(start + _CHUNK, numel)
        if whole:
            d = deltas[:, start:end]
        else:
            d = chunk_deltas[:, :end - start]
            for i, model in enumerate(flat_models):
                torch.sub(model[start:end], flat_base[start:end], out=d[i])
        d = d.mul_(weights)
        if sign_consensus:
            majority = torch.where(d.sum(dim=0) >= 0, 1.0, -1.0).to(base.dtype)
            agree = d.sign().eq_(majority)  # 1.0 where the sign agrees; zeros (dropped) never do
            mixed = d.mul_(agree).sum(dim=0)
            divisor = agree.mul_(weights).sum(dim=0)
            divisor[divisor == 0] = 1
        else:
            mixed = d.sum(dim=0)
        if normalize:
            mixed /= divisor
        if lam != 1:
            mixed *= lam
        torch.add(mixed, flat_base[start:end], out=out[start:end])
    return out.reshape(base.shape)


@dataclass(frozen=True)
class GeneralizedTaskArithmetic(MergeMethod):
    """One member of the family: how it sparsifies (None: not at all) and whether signs must agree."""

    sparsify: Optional[Sparsifier] = None
    sign_consensus: bool = False
    random: bool = False  # the sparsifier draws random numbers, from the tensor's own seed

    def check_tensor(self, tensor: str, params: TensorParameters) -> None:
        for model, values in params.per_model.items():
            density, eps = values["density"], values.get("epsilon")
            if not 0 <= density <= 1:
                raise RecipeError(f"model {model}: density {density:g} for tensor {tensor} is outside [0, 1]")
            if eps is not None and 0 < density < 1 and not (0 < density - eps and density + eps < 1):
                raise RecipeError(f"model {model}: della needs 0 < density - epsilon and density + epsilon "
                                  f"< 1 for tensor {tensor} (density={density:g}, epsilon={eps:g})")

    def merge(self, job: TensorMerge) -> torch.Tensor:
        base = job.tensors[job.base]
        others = job.others
        shared = job.params.shared
        generator = torch.Generator(device=base.device).manual_seed(job.seed) if self.random else None
        finetuned = [job.tensors.pop(m) for m in others]  # handed over, so each is freed once used
        return combine_task_vectors(
            base, finetuned, [job.params.per_model[m] for m in others], sparsify=self.sparsify,
            sign_consensus=self.sign_consensus, normalize=shared["normalize"], rescale=shared["rescale"],
            lam=shared["lambda"], generator=generator, where=[f"model {m}, tensor {job.name}" for m in others],
            scratch=job.scratch)

    def mixing_weights(self, recipe, paths: Sequence[str]) -> Optional[list[float]]:
        # base + sum_i w_i (m_i - base) = (1 - sum w) base + sum w_i m_i
        weights = {p: recipe_weight(recipe, p) for p in paths}
        if not all(plain_number(w) for w in weights.values()):
            return None
        others = [p for p in paths if p != recipe.base_model]
        return [1.0 - sum(float(weights[p]) for p in others)] + [float(weights[p]) for p in others]

    def repair(self, values: dict[str, list[float]], decimals: int) -> None:
        if self.sparsify is _della:
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


def _member(name: str, *, normalize: bool, rescale: bool, sparsify: Optional[Sparsifier] = None,
            sign_consensus: bool = False, extra: tuple[Parameter, ...] = (), reference: str) -> GeneralizedTaskArithmetic:
    random = sparsify in (_random, _della)
    return GeneralizedTaskArithmetic(
        name=name, parameters=(WEIGHT, DENSITY, *extra, *_shared(normalize, rescale)), reference=reference,
        sparsify=sparsify, sign_consensus=sign_consensus, random=random,
        verified="mergekit's drop rate and rescaling, statistically (random drops)" if random
        else "parity with mergekit")


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
