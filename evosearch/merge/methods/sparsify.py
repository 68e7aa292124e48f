"""Sparsification of task vectors: which part of each fine-tune's delta a TIES-family merge keeps.

Each rule looks at one task vector (``model - base`` of one tensor) and returns a `fused.Keep`: which
elements survive, for the one-pass combination in `fused.py` to apply. The rules are mergekit 0.1.5's:
magnitude (TIES) keeps the `density` share of largest |delta|, magnitude with outliers (Breadcrumbs) drops
the `gamma` share of largest and keeps the next `density` share, DARE keeps each element with probability
`density`, DELLA (MagPrune) with a probability rising with its magnitude rank in its row. Two choices
differ from mergekit and make the result the same on every device: elements of equal magnitude are
ranked by index (the lower first) where mergekit's unstable sort leaves them in whatever order it
happens to, and random draws are counter-based (`counter_random.py`), not a generator's stream.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from evosearch.errors import RecipeError
from evosearch.merge.methods.counter_random import probability_threshold
from evosearch.merge.methods.fused import DRAW, MASK, RANKS, Keep, della_mask, rank_bounds


# A rank window (upper, lower): kept are the elements of magnitude rank in [lower, upper), counted from the
# largest; None keeps everything. The bounds of every task vector of a tensor are found in one pass.
RankWindow = Optional[tuple[int, int]]


def magnitude_window(numel: int, density: float) -> RankWindow:
    if density >= 1:
        return None
    return (max(1, int(density * numel)) if density > 0 else 0), 0


def outlier_window(numel: int, density: float, gamma: float) -> RankWindow:
    if density >= 1:
        return None
    keep = int(density * numel)
    # Never drop so many outliers that fewer than `keep` elements remain. mergekit keeps ascending ranks
    # [n_small, n_small + keep): descending ranks [n - n_small - keep, n - n_small).
    n_small = max(0, numel - keep - int(gamma * numel))
    return numel - n_small, numel - n_small - keep


def keep_windows(base: torch.Tensor, models: Sequence[torch.Tensor], windows: Sequence[RankWindow]
                 ) -> list[Optional[Keep]]:
    """The Keep of each task vector's rank window (None where the window keeps everything)."""
    requests = [(model, rank) for model, w in zip(models, windows) if w is not None for rank in w]
    bounds = iter(rank_bounds(base, requests))
    return [None if w is None else Keep(RANKS, upper=next(bounds), lower=next(bounds)) for w in windows]


def keep_random(density: float, key: tuple[int, int]) -> Optional[Keep]:
    if density >= 1:
        return None
    return Keep(DRAW, key=key, threshold=probability_threshold(max(0.0, density)))


def keep_della(base: torch.Tensor, model: torch.Tensor, density: float, epsilon: float, key: tuple[int, int],
               where: str) -> Optional[Keep]:
    if density >= 1:
        return None
    if density <= 0:
        return Keep(DRAW, key=key, threshold=0)
    if density + epsilon >= 1 or density - epsilon <= 0:
        raise RecipeError(f"{where}: della needs 0 < density - epsilon and density + epsilon < 1 "
                          f"(density={density:g}, epsilon={epsilon:g})")
    # Keep probability (density - eps) + 2 eps rank / span, rank 0 the row's smallest magnitude.
    span = (base.numel() if base.dim() < 2 else base.numel() // base.shape[0]) - 1
    step = 2 * epsilon / span if span > 0 else 0.0
    return Keep(MASK, mask=della_mask(base, model, density - epsilon, step, key))
