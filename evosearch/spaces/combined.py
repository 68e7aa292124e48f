"""PS+DFS search space: a PS merge, decoded from the first genes, becomes one of the DFS sources.

The genome is the PS genes followed by the DFS genes. A staged search (PS first, then DFS with the PS part
frozen, as Sakana did) searches `space.ps` alone and then `space.fix("ps", best_ps_genes)`.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, model_validator

from evosearch.recipe import DFSRecipe
from evosearch.spaces.base import SearchSpace, SpaceError
from evosearch.spaces.dfs import DFSSpace, DFSSpaceConfig
from evosearch.spaces.ps import PSSpace, PSSpaceConfig

# The DFS source list names the PS merge's place with this marker.
PS_SOURCE = "@ps"
Part = Literal["ps", "dfs"]


class CombinedSpaceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["ps+dfs"] = "ps+dfs"
    ps: PSSpaceConfig
    dfs: DFSSpaceConfig

    @model_validator(mode="after")
    def _one_ps_source(self) -> "CombinedSpaceConfig":
        if self.dfs.sources.count(PS_SOURCE) != 1:
            raise ValueError(f"dfs.sources must name the PS merge exactly once as {PS_SOURCE!r}")
        return self


class CombinedSpace(SearchSpace):
    def __init__(self, config: CombinedSpaceConfig):
        self.config = config
        self.ps = PSSpace(config.ps)
        self.dfs = DFSSpace(config.dfs)
        self._ps_index = config.dfs.sources.index(PS_SOURCE)

    @property
    def dim(self) -> int:
        return self.ps.dim + self.dfs.dim

    def gene_names(self) -> list[str]:
        return [f"ps.{n}" for n in self.ps.gene_names()] + [f"dfs.{n}" for n in self.dfs.gene_names()]

    def describe(self) -> str:
        return (f"PS+DFS space ({self.dim} genes): the PS merge is DFS source {self._ps_index}; "
                f"{self.ps.describe()}; {self.dfs.describe()}")

    def split(self, genome: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        g = self._genome(genome)
        return g[:self.ps.dim], g[self.ps.dim:]

    def join(self, ps_genes: np.ndarray, dfs_genes: np.ndarray) -> np.ndarray:
        return np.concatenate([np.asarray(ps_genes, dtype=float), np.asarray(dfs_genes, dtype=float)])

    def decode(self, genome: np.ndarray) -> DFSRecipe:
        ps_genes, dfs_genes = self.split(genome)
        sources = list(self.config.dfs.sources)
        sources[self._ps_index] = self.ps.decode(ps_genes)
        return self.dfs.decode(dfs_genes, sources=sources)

    def encode(self, recipe: DFSRecipe) -> np.ndarray:
        if not isinstance(recipe, DFSRecipe):
            raise SpaceError(f"a PS+DFS space encodes DFS recipes, not {recipe.kind!r}")
        if len(recipe.sources) != len(self.config.dfs.sources):
            raise SpaceError(f"recipe has {len(recipe.sources)} sources, the space {len(self.config.dfs.sources)}")
        return self.join(self.ps.encode(recipe.sources[self._ps_index]), self.dfs.encode(recipe))

    def fix(self, part: Part, genes: np.ndarray) -> "FixedPartSpace":
        """The space over the other part's genes, with `part` frozen at `genes` (a stage of a staged search)."""
        return FixedPartSpace(self, part, genes)


class FixedPartSpace(SearchSpace):
    """A `CombinedSpace` with one part frozen; its genome is the free part's genes."""

    def __init__(self, combined: CombinedSpace, part: Part, genes: np.ndarray):
        if part not in ("ps", "dfs"):
            raise SpaceError(f"part must be 'ps' or 'dfs', not {part!r}")
        self.combined, self.part = combined, part
        frozen = combined.ps if part == "ps" else combined.dfs
        self.frozen_genes = frozen._genome(genes)
        self._free = combined.dfs if part == "ps" else combined.ps

    @property
    def dim(self) -> int:
        return self._free.dim

    def gene_names(self) -> list[str]:
        other = "dfs" if self.part == "ps" else "ps"
        return [f"{other}.{n}" for n in self._free.gene_names()]

    def describe(self) -> str:
        return f"{self.combined.describe()} -- {self.part} part frozen, {self.dim} genes searched"

    def full_genome(self, genome: np.ndarray) -> np.ndarray:
        g = self._genome(genome)
        return (self.combined.join(self.frozen_genes, g) if self.part == "ps"
                else self.combined.join(g, self.frozen_genes))

    def decode(self, genome: np.ndarray) -> DFSRecipe:
        return self.combined.decode(self.full_genome(genome))

    def encode(self, recipe: DFSRecipe) -> np.ndarray:
        ps_genes, dfs_genes = self.combined.split(self.combined.encode(recipe))
        free = dfs_genes if self.part == "ps" else ps_genes
        if self.decode(free) != recipe:
            raise SpaceError(f"recipe's {self.part} part differs from the frozen one")
        return free
