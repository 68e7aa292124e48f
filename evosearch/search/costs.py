"""Cost objectives: numbers read off a candidate's recipe, never evaluated (e.g. the DFS path length).

Adding one is one `CostTerm` in `COST_TERMS`: the spaces it makes sense for, its value, and its worst value
(the hypervolume's reference point, fixed so hypervolumes compare across generations)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


def path_length(recipe: dict) -> float:
    """Layers on a DFS recipe's path (the PS+DFS recipe's too); 0 for a PS recipe, which has no path."""
    return float(sum(bool(x) for x in recipe.get("indicator", ())))


def _all_slots(space: Any) -> float:
    dfs = getattr(space, "dfs", space)  # a PS+DFS space's DFS part, or the DFS space itself
    return float(len(dfs.sources) * dfs.num_layers * dfs.repeats)


@dataclass(frozen=True)
class CostTerm:
    name: str
    spaces: tuple[str, ...]  # the search-space kinds whose recipes have it
    value: Callable[[dict], float]  # recipe (as stored) -> cost
    largest: Callable[[Any], float]  # space config -> the largest value any of its recipes can have


COST_TERMS: dict[str, CostTerm] = {t.name: t for t in (
    CostTerm("path_length", ("dfs", "ps+dfs"), path_length, _all_slots),
)}
