"""Data-flow-space (DFS) search space, after Sakana's evolutionary model merge.

`M` sources x `L` layers x `r` repeats give `T` slots in `DFSRecipe` order. Genes: one indicator gene per
free slot (on when > 0.5, as Sakana), then the `M x M` scale table row-major, each mapped linearly onto
`scale_range` (Sakana: scale = 1 + gene, i.e. [1, 2]).

Repair, so every genome decodes to a valid recipe:
* `anchor_ends`: the path is forced to start at the anchor source's first layer (repeat 0) and end at its
  last layer (last repeat), as Sakana did. Those two slots are always on and every slot before the first or
  after the last is always off; none of them has a gene.
* `max_path`: when more slots are on than the cap, the on slots with the highest genes are kept (ties go to
  the earlier slot); forced slots always count.
* an empty path turns on the slot with the highest gene.

Canonical scales: a scale only matters for a (source a -> source b) hop that the path actually makes, so
every table entry for a hop the path never makes is written as 1.0. Genomes that differ only in scales the
path ignores then decode to the same recipe and share one `recipe_hash`: that is the evaluate-once cache
paying off for the part of a DFS genome that is discrete. (The per-slot "scale only when on" encodings of
later work need a per-hop scale, which `DFSRecipe`'s M x M table cannot express.)
"""

from __future__ import annotations

from typing import Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from evosearch.recipe import DFSRecipe, check_dfs_tokenizer_source
from evosearch.spaces.base import Range, SearchSpace, SpaceError

UNUSED_SCALE = 1.0


class DFSSpaceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["dfs"] = "dfs"
    sources: list[str] = Field(min_length=1)
    num_layers: int = Field(gt=0, description="L: layers per source (all sources must agree)")
    repeats: int = Field(default=1, gt=0)
    scale_range: Range = Field(default_factory=lambda: Range(low=1.0, high=2.0))
    max_path: Optional[int] = Field(default=None, gt=0, description="cap on the number of layers on the path")
    anchor_ends: bool = Field(default=False, description="path starts at anchor's first layer, ends at its last")
    anchor_source: int = Field(default=0, ge=0)
    embed_source: int = Field(default=0, ge=0)
    tokenizer_source: Optional[str] = None

    @model_validator(mode="after")
    def _check(self) -> "DFSSpaceConfig":
        m = len(self.sources)
        for field in ("anchor_source", "embed_source"):
            if getattr(self, field) >= m:
                raise ValueError(f"{field} {getattr(self, field)} is not a source index (0..{m - 1})")
        if self.scale_range.low <= 0:
            raise ValueError("scale_range: scales must be positive")
        check_dfs_tokenizer_source(self.tokenizer_source)
        forced = 2 if self.anchor_ends and (self.repeats > 1 or self.num_layers > 1) else 1
        if self.max_path is not None and self.max_path < forced:
            raise ValueError(f"max_path {self.max_path} is shorter than the {forced} forced slot(s)")
        return self


class DFSSpace(SearchSpace):
    def __init__(self, config: DFSSpaceConfig):
        self.config = config
        c = config
        m, n, r = len(c.sources), c.num_layers, c.repeats
        self._slots = m * n * r
        if c.anchor_ends:
            first = c.anchor_source * n
            last = (r - 1) * m * n + c.anchor_source * n + n - 1
            self._forced = sorted({first, last})
            self._free = list(range(first + 1, last))
        else:
            self._forced = []
            self._free = list(range(self._slots))
        self._n_scales = m * m

    @property
    def dim(self) -> int:
        return len(self._free) + self._n_scales

    def gene_names(self) -> list[str]:
        m, n = len(self.config.sources), self.config.num_layers
        slots = [f"slot{j}.s{(j // n) % m}.l{j % n}.r{j // (m * n)}" for j in self._free]
        return slots + [f"scale.{a}->{b}" for a in range(m) for b in range(m)]

    def describe(self) -> str:
        c = self.config
        ends = f", path anchored to source {c.anchor_source}'s first/last layer" if c.anchor_ends else ""
        cap = f", at most {c.max_path} layers" if c.max_path else ""
        return (f"DFS space: {len(c.sources)} sources x {c.num_layers} layers x {c.repeats} repeats = "
                f"{self._slots} slots ({len(self._free)} free){ends}{cap}; scales in "
                f"[{c.scale_range.low}, {c.scale_range.high}]; {self.dim} genes")

    def decode(self, genome: np.ndarray, sources: Optional[list] = None) -> DFSRecipe:
        """`sources` replaces the configured ones (same length): the PS+DFS space passes a PS recipe."""
        c = self.config
        g = self._genome(genome)
        slot_genes, scale_genes = g[:len(self._free)], g[len(self._free):]
        indicator = np.zeros(self._slots, dtype=bool)
        indicator[self._forced] = True
        on = [i for i, x in enumerate(slot_genes) if x > 0.5]
        room = None if c.max_path is None else c.max_path - len(self._forced)
        if room is not None and len(on) > room:
            # Highest genes win; the stable sort keeps the earlier slot on ties.
            on = sorted(sorted(on, key=lambda i: -slot_genes[i])[:room])
        if not on and not self._forced and len(slot_genes):
            on = [int(np.argmax(slot_genes))]
        indicator[[self._free[i] for i in on]] = True
        m = len(c.sources)
        used = _used_hops(indicator, m, c.num_layers)
        scales = [[c.scale_range.decode(scale_genes[a * m + b]) if (a, b) in used else UNUSED_SCALE
                   for b in range(m)] for a in range(m)]
        return DFSRecipe(sources=list(sources if sources is not None else c.sources), num_layers=c.num_layers,
                         repeats=c.repeats, indicator=indicator.tolist(), scales=scales,
                         embed_source=c.embed_source, tokenizer_source=c.tokenizer_source)

    def encode(self, recipe: DFSRecipe) -> np.ndarray:
        c = self.config
        if not isinstance(recipe, DFSRecipe):
            raise SpaceError(f"a DFS space encodes DFS recipes, not {recipe.kind!r}")
        for field in ("num_layers", "repeats", "embed_source"):
            if getattr(recipe, field) != getattr(c, field):
                raise SpaceError(f"recipe {field} {getattr(recipe, field)} differs from the space's {getattr(c, field)}")
        if len(recipe.sources) != len(c.sources):
            raise SpaceError(f"recipe has {len(recipe.sources)} sources, the space {len(c.sources)}")
        outside = [j for j, on in enumerate(recipe.indicator) if on and j not in self._free and j not in self._forced]
        if outside or not all(recipe.indicator[j] for j in self._forced):
            raise SpaceError("recipe path does not start and end at the anchor's first and last layer")
        slot_genes = [0.75 if recipe.indicator[j] else 0.25 for j in self._free]
        scale_genes = [c.scale_range.encode(s) for row in recipe.scales for s in row]
        return np.asarray(slot_genes + scale_genes, dtype=float)


def _used_hops(indicator: np.ndarray, m: int, n: int) -> set[tuple[int, int]]:
    """The (source, next source) pairs the path moves between; slot j belongs to source (j // n) % m."""
    path_sources = [(j // n) % m for j in np.flatnonzero(indicator)]
    return set(zip(path_sources, path_sources[1:]))
