"""Sparsification of task vectors: which part of each fine-tune's delta a TIES-family merge keeps.

Each function takes one task vector (``model - base`` of one tensor), keeps a `density` fraction of it by
its own rule and, with `rescale`, scales the kept part to the L1 norm of the whole (~ 1/density on
average), as mergekit 0.1.5 does.
"""

from __future__ import annotations

import torch

from evosearch.errors import RecipeError


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
