"""Merge kernels: each takes the inputs of ONE tensor and returns the merged tensor.

Semantics and numerics follow the papers as mergekit 0.1.5 implements them (the test-suite's
reference): task vectors are ``model - base``; sparsification keeps a `density` fraction of each task
vector; TIES keeps, per element, only the contributions whose sign agrees with the sign of their sum;
with `rescale` the kept task vector is scaled to the L1 norm of the full one (~ 1/density on average).
Inputs arrive already in the compute dtype (float32, or float64 for float64 inputs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Callable, Optional, Sequence

import torch

from evosearch.recipe import RecipeError


class Sparsify(str, Enum):
    magnitude = "magnitude"  # TIES: keep the largest |delta|
    random = "random"  # DARE: keep each element with probability density
    magnitude_outliers = "magnitude_outliers"  # Breadcrumbs: drop the largest gamma and the smallest
    della = "della"  # DELLA MagPrune: keep-probability grows with |delta|'s rank in its row


@dataclass(frozen=True)
class TaskArithmeticVariant:
    sparsify: Optional[Sparsify]
    sign_consensus: bool


TASK_ARITHMETIC_VARIANTS: dict[str, TaskArithmeticVariant] = {
    "task_arithmetic": TaskArithmeticVariant(None, False),
    "ties": TaskArithmeticVariant(Sparsify.magnitude, True),
    "dare_ties": TaskArithmeticVariant(Sparsify.random, True),
    "dare_linear": TaskArithmeticVariant(Sparsify.random, False),
    "breadcrumbs": TaskArithmeticVariant(Sparsify.magnitude_outliers, False),
    "breadcrumbs_ties": TaskArithmeticVariant(Sparsify.magnitude_outliers, True),
    "della": TaskArithmeticVariant(Sparsify.della, True),
    "della_linear": TaskArithmeticVariant(Sparsify.della, False),
}


# The kernels below work in place where they can: the largest tensors (embeddings, head) set the
# merge's peak memory, and every avoided temporary is one tensor-sized buffer less.
def _rescale_l1(delta: torch.Tensor, kept: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    before, after = delta.abs().sum(), kept.abs().sum()
    if before < eps or after < eps:
        return kept
    return kept.mul_(before / after)


def _finish(delta: torch.Tensor, mask: torch.Tensor, rescale: bool) -> torch.Tensor:
    kept = mask.mul_(delta)
    return _rescale_l1(delta, kept) if rescale else kept


def _keep_only(delta: torch.Tensor, keep_indices: torch.Tensor, rescale: bool) -> torch.Tensor:
    flat = delta.reshape(-1)
    kept = torch.zeros_like(flat)
    kept[keep_indices] = flat[keep_indices]
    kept = kept.reshape(delta.shape)
    return _rescale_l1(delta, kept) if rescale else kept


_RADIX_BITS = 16  # the top bits of each magnitude that pick its histogram bin in `_kth_largest`


def _kth_largest(magnitude: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest of a flat tensor of non-negative floats (float32 or float64), by one radix pass.

    Non-negative IEEE floats order like their bit patterns read as integers, so a histogram of the top
    16 bits finds the bin holding the k-th largest, and only that bin (a sliver of the tensor) needs a
    selection. Several times faster than `kthvalue` over the whole tensor, with the same result.
    """
    bits = magnitude.view(torch.int32 if magnitude.element_size() == 4 else torch.int64)
    bins = bits >> (8 * magnitude.element_size() - _RADIX_BITS)
    counts = torch.bincount(bins, minlength=1 << (_RADIX_BITS - 1))  # the sign bit is 0: half the range
    at_or_above = counts.flip(0).cumsum(0)  # [j]: elements in the top j + 1 bins
    j = int(torch.searchsorted(at_or_above, k))
    above = int(at_or_above[j - 1]) if j > 0 else 0
    in_bin = magnitude[bins == counts.numel() - 1 - j]
    return in_bin.kthvalue(in_bin.numel() - (k - above) + 1).values


def sparsify_magnitude(delta: torch.Tensor, density: float, rescale: bool) -> torch.Tensor:
    if density >= 1:
        return delta
    if density <= 0 or delta.numel() == 0:
        return torch.zeros_like(delta)
    k = max(1, int(density * delta.numel()))
    # The k largest |delta| by threshold: a selection, far cheaper than mergekit's full sort.
    magnitude = delta.abs().reshape(-1)
    keep = magnitude >= _kth_largest(magnitude, k)
    if int(torch.count_nonzero(keep)) > k:
        # Elements tied at the threshold straddle the cut. Which of them survive is decided by the
        # order mergekit's (unstable) descending argsort leaves them in; only that sort reproduces it.
        keep.zero_()[torch.argsort(magnitude, descending=True)[:k]] = True
    del magnitude
    if not rescale:
        return delta.mul_(keep.reshape(delta.shape))  # in place: `delta` is the caller's scratch
    return _rescale_l1(delta, delta * keep.reshape(delta.shape))


def sparsify_magnitude_outliers(delta: torch.Tensor, density: float, gamma: float, rescale: bool) -> torch.Tensor:
    if density >= 1:
        return delta
    n = delta.numel()
    keep = int(density * n)
    # Never drop so many outliers that fewer than `keep` elements remain.
    n_small = max(0, n - keep - int(gamma * n))
    ascending = torch.argsort(delta.abs().reshape(-1))
    return _keep_only(delta, ascending[n_small:n_small + keep], rescale)


def sparsify_random(delta: torch.Tensor, density: float, rescale: bool, generator: torch.Generator) -> torch.Tensor:
    if density >= 1:
        return delta
    probs = torch.full_like(delta, max(0.0, density))
    return _finish(delta, torch.bernoulli(probs, generator=generator), rescale)


def sparsify_della(delta: torch.Tensor, density: float, epsilon: float, rescale: bool,
                   generator: torch.Generator, where: str) -> torch.Tensor:
    if density >= 1:
        return delta
    if density <= 0:
        return torch.zeros_like(delta)
    if density + epsilon >= 1 or density - epsilon <= 0:
        raise RecipeError(f"{where}: della needs 0 < density - epsilon and density + epsilon < 1 "
                          f"(density={density:g}, epsilon={epsilon:g})")
    rows = delta.reshape(1, -1) if delta.dim() < 2 else delta
    ranks = rows.abs().argsort(dim=1).argsort(dim=1).to(delta.dtype)  # 0 = smallest in its row
    span = rows.shape[1] - 1
    rank_fraction = ranks / span if span > 0 else torch.zeros_like(ranks)
    probs = (density - epsilon) + 2 * epsilon * rank_fraction
    mask = torch.bernoulli(probs, generator=generator).reshape(delta.shape)
    return _finish(delta, mask, rescale)


_CHUNK = 1 << 17  # elements per step of the element-wise combination: its several passes stay in cache


def task_arithmetic(base: torch.Tensor, models: list[Optional[torch.Tensor]], params: Sequence[dict],
                    variant: TaskArithmeticVariant, *, normalize: bool, rescale: bool, lam: float,
                    generator: Optional[torch.Generator], where: Sequence[str],
                    scratch: Optional[Callable[[int], torch.Tensor]] = None) -> torch.Tensor:
    """The generalised task-arithmetic merge shared by task_arithmetic, TIES, DARE, Breadcrumbs, DELLA.

    Task vectors that get sparsified are taken whole (sparsification looks at the whole tensor), and
    their entry of `models` is released (set to None) once taken; unsparsified ones are taken a cache-sized
    chunk at a time. `scratch(n)`, when given, returns a flat buffer of at least n elements of base's
    dtype and device for them, which a caller merging tensor after tensor reuses: a fresh buffer of a
    tensor's size would have its every page faulted in again for each tensor.
    """
    if not models:
        return base
    n, numel = len(models), base.numel()
    whole = variant.sparsify is not None and any(p["density"] < 1 for p in params)
    size = n * (numel if whole else min(numel, _CHUNK))
    buffer = scratch(size)[:size] if scratch is not None else torch.empty(size, dtype=base.dtype, device=base.device)
    if whole:
        deltas = buffer.view(n, numel)
        for i, p in enumerate(params):
            row = deltas[i]
            delta = torch.sub(models[i], base, out=row.view(base.shape))
            models[i] = None
            density = p["density"]
            if variant.sparsify is Sparsify.magnitude:
                delta = sparsify_magnitude(delta, density, rescale)
            elif variant.sparsify is Sparsify.magnitude_outliers:
                delta = sparsify_magnitude_outliers(delta, density, p["gamma"], rescale)
            elif variant.sparsify is Sparsify.random:
                delta = sparsify_random(delta, density, rescale, generator)
            elif variant.sparsify is Sparsify.della:
                delta = sparsify_della(delta, density, p["epsilon"], rescale, generator, where[i])
            if delta.data_ptr() != row.data_ptr():  # sparsified into a new tensor
                row.copy_(delta.reshape(-1))
            del delta, row
    else:
        chunk_deltas = buffer.view(n, -1)
        flat_models = [m.reshape(-1) for m in models]
    weights = torch.tensor([p["weight"] for p in params], dtype=base.dtype, device=base.device).reshape(-1, 1)
    if not variant.sign_consensus:
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
        if variant.sign_consensus:
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


def linear(tensors: Sequence[torch.Tensor], weights: Sequence[float], *, normalize: bool, where: str) -> torch.Tensor:
    out = torch.zeros_like(tensors[0])
    for tensor, w in zip(tensors, weights):
        out.add_(tensor, alpha=w)
    if normalize:
        total = sum(weights)
        if total == 0:
            raise RecipeError(f"{where}: linear weights sum to 0, cannot normalize")
        out.div_(total)
    return out


def model_stock(base: torch.Tensor, models: Sequence[torch.Tensor], *, filter_wise: bool) -> torch.Tensor:
    """Model Stock: move from the base towards the fine-tunes' average by a ratio set by their angle."""
    shape = base.shape
    if filter_wise:
        w0 = base.unsqueeze(0) if base.dim() == 1 else base
        ws = [m.unsqueeze(0) if m.dim() == 1 else m for m in models]
    else:
        w0, ws = base.reshape(-1), [m.reshape(-1) for m in models]
    offsets = [w - w0 for w in ws]
    cosines = []
    for i, a in enumerate(offsets):
        for b in offsets[i + 1:]:
            norms = (torch.linalg.vector_norm(a, dim=-1) * torch.linalg.vector_norm(b, dim=-1)).clamp(min=1e-6)
            cosines.append(((a * b).sum(dim=-1) / norms).clamp(-1, 1))
    cos = torch.stack(cosines).mean(dim=0).unsqueeze(-1)
    n = len(ws)
    denominator = 1 + (n - 1) * cos
    # Where the denominator vanishes there is no finite estimate: keep the base.
    singular = denominator.abs() < 1e-6
    t = torch.where(singular, torch.zeros_like(cos), n * cos / torch.where(singular, 1.0, denominator))
    average = sum(ws) / n
    return (t * average + (1 - t) * w0).reshape(shape)


def slerp(t: float, v0: torch.Tensor, v1: torch.Tensor, *, dot_threshold: float = 0.9995,
          eps: float = 1e-8) -> torch.Tensor:
    """Spherical interpolation of the flattened tensors; nearly (anti)parallel pairs interpolate linearly."""
    a, b = v0.reshape(-1), v1.reshape(-1)
    if a.numel() == 0:
        return v0.clone()
    na, nb = torch.linalg.vector_norm(a), torch.linalg.vector_norm(b)
    na = na if na > eps else torch.ones_like(na)
    nb = nb if nb > eps else torch.ones_like(nb)
    dot = float(((a / na) * (b / nb)).sum().clamp(-1, 1))
    if abs(dot) > dot_threshold:
        ca, cb = 1 - t, t
    else:
        theta = math.acos(dot)
        ca, cb = math.sin((1 - t) * theta) / math.sin(theta), math.sin(t * theta) / math.sin(theta)
    return (ca * a + cb * b).reshape(v0.shape)
