"""The search-space interface: a genome in [0, 1]^d <-> a validated merge recipe.

Decoding is pure and total: out-of-box genes are clipped and structurally invalid choices (an empty DFS
path, a too-long path, a DELLA epsilon that leaves (0, 1)) are repaired, so the optimizer never sees a
crash for a point it proposed. Decoded floats are rounded to `DECIMALS` places so the recipe's JSON (and so
`recipe_hash`, the evaluate-once cache key) carries no float noise from the genome arithmetic.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, model_validator

from evosearch.errors import UsageError
from evosearch.recipe import DFSRecipe, PSRecipe

Recipe = Union[PSRecipe, DFSRecipe]

# 1e-6 is far below anything a merge or an anchor-based fitness estimate can resolve, and far above the
# 1e-16 noise of `lo + g * (hi - lo)` and its inverse, so in-space recipes round-trip exactly.
DECIMALS = 6


class SpaceError(UsageError, ValueError):
    """A search-space config or a genome/recipe that does not fit the space; the message is one line."""


class Range(BaseModel):
    """A closed interval a gene is mapped onto linearly: value = low + gene * (high - low)."""

    model_config = ConfigDict(extra="forbid")
    low: float
    high: float

    @model_validator(mode="before")
    @classmethod
    def _from_pair(cls, data: Any) -> Any:
        # Job files write ranges as `[0.1, 1.0]`.
        if isinstance(data, (list, tuple)):
            if len(data) != 2:
                raise ValueError(f"a range is [low, high], got {len(data)} numbers")
            return {"low": data[0], "high": data[1]}
        return data

    @model_validator(mode="after")
    def _ordered(self) -> "Range":
        if not (np.isfinite(self.low) and np.isfinite(self.high)) or self.low >= self.high:
            raise ValueError(f"range needs finite low < high, got [{self.low}, {self.high}]")
        return self

    def decode(self, gene: float) -> float:
        return round(self.low + float(gene) * (self.high - self.low), DECIMALS)

    def encode(self, value: float) -> float:
        return float(np.clip((float(value) - self.low) / (self.high - self.low), 0.0, 1.0))


def decode_choice(gene: float, n: int) -> int:
    """A categorical gene: [0, 1] cut into `n` equal bins."""
    return min(int(float(gene) * n), n - 1)


def encode_choice(index: int, n: int) -> float:
    return (index + 0.5) / n


class SearchSpace(ABC):
    """Maps genomes in the unit box to recipes; see the module docstring for the decoding contract."""

    @property
    @abstractmethod
    def dim(self) -> int: ...

    @abstractmethod
    def gene_names(self) -> list[str]: ...

    @abstractmethod
    def decode(self, genome: np.ndarray) -> Recipe: ...

    @abstractmethod
    def encode(self, recipe: Recipe) -> np.ndarray: ...

    @abstractmethod
    def describe(self) -> str: ...

    def _genome(self, genome: np.ndarray) -> np.ndarray:
        """The genome as a clipped float vector of length `dim`; NaN genes read as the box centre."""
        g = np.asarray(genome, dtype=float).reshape(-1)
        if g.shape[0] != self.dim:
            raise SpaceError(f"genome has {g.shape[0]} genes, this space has {self.dim}")
        return np.clip(np.nan_to_num(g, nan=0.5), 0.0, 1.0)
