"""Merge recipes: plain, serialisable data describing how to build one merged model.

A recipe is the only thing `export` needs, and the unit the search caches on (`recipe_hash`).
Three kinds share one file format (YAML with a `kind` field):

* ``PSRecipe``  - parameter-space merge; field names follow mergekit's ``MergeConfiguration`` so a PS
  recipe round-trips through a mergekit YAML (`PSRecipe.from_mergekit` / `to_mergekit`).
* ``DFSRecipe`` - Sakana's data-flow space: an indicator over ``M * L * r`` layer slots and an ``M x M``
  table of residual-stream scales applied when the path moves from one layer to the next.
* A DFS source may itself be a ``PSRecipe`` (PS+DFS).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from evosearch.config_file import read_yaml_file

ScalarParameter = Union[bool, int, float, str]
ScalarOrGradient = Union[ScalarParameter, list[ScalarParameter]]


class ConditionalParameter(BaseModel):
    """mergekit's ``{filter: substring, value: ...}``: applies to tensors whose name contains `filter`."""

    model_config = ConfigDict(extra="forbid")
    value: ScalarOrGradient
    filter: Optional[str] = None


ParameterSetting = Union[ConditionalParameter, list[ConditionalParameter], ScalarOrGradient]


class RecipeError(ValueError):
    """A recipe that cannot be built; the message is one line naming the field, model or tensor."""


# Per-method parameter names, as mergekit spells them. `per_model` parameters may be set per source
# model (and globally as a default); `global_` ones only at the top level.
MethodSpec = dict[str, frozenset[str]]
_GTA_GLOBAL = frozenset({"normalize", "rescale", "int8_mask", "lambda"})
MERGE_METHODS: dict[str, MethodSpec] = {
    "linear": {"per_model": frozenset({"weight"}), "global_": frozenset({"normalize"})},
    # mergekit accepts (and ignores) density for plain task arithmetic; accepted so its YAMLs load.
    "task_arithmetic": {"per_model": frozenset({"weight", "density"}), "global_": _GTA_GLOBAL},
    "ties": {"per_model": frozenset({"weight", "density"}), "global_": _GTA_GLOBAL},
    "dare_ties": {"per_model": frozenset({"weight", "density"}), "global_": _GTA_GLOBAL},
    "dare_linear": {"per_model": frozenset({"weight", "density"}), "global_": _GTA_GLOBAL},
    "breadcrumbs": {"per_model": frozenset({"weight", "density", "gamma"}), "global_": _GTA_GLOBAL},
    "breadcrumbs_ties": {"per_model": frozenset({"weight", "density", "gamma"}), "global_": _GTA_GLOBAL},
    "della": {"per_model": frozenset({"weight", "density", "epsilon"}), "global_": _GTA_GLOBAL},
    "della_linear": {"per_model": frozenset({"weight", "density", "epsilon"}), "global_": _GTA_GLOBAL},
    "model_stock": {"per_model": frozenset(), "global_": frozenset({"filter_wise"})},
    "slerp": {"per_model": frozenset(), "global_": frozenset({"t"})},
}
# Methods that subtract a base model and so require `base_model`.
METHODS_NEEDING_BASE = frozenset(MERGE_METHODS) - {"linear"}


class InputModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    parameters: dict[str, ParameterSetting] = Field(default_factory=dict)


class PSRecipe(BaseModel):
    """Parameter-space merge of models that share one architecture."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["ps"] = "ps"
    merge_method: str
    models: list[InputModel]
    base_model: Optional[str] = None
    parameters: dict[str, ParameterSetting] = Field(default_factory=dict)
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    tokenizer_source: Optional[str] = None
    # Seed for the random drop of DARE / DELLA; the same seed gives the same merge.
    seed: int = 0

    @field_validator("merge_method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        if v not in MERGE_METHODS:
            raise ValueError(f"unknown merge_method {v!r}; known: {', '.join(sorted(MERGE_METHODS))}")
        return v

    @model_validator(mode="after")
    def _check(self) -> "PSRecipe":
        spec = MERGE_METHODS[self.merge_method]
        if not self.models:
            raise ValueError("models: at least one model is required")
        if self.merge_method in METHODS_NEEDING_BASE and self.base_model is None:
            raise ValueError(f"base_model is required by merge_method {self.merge_method!r}")
        allowed_global = spec["global_"] | spec["per_model"]
        for name in self.parameters:
            if name not in allowed_global:
                raise ValueError(f"parameters.{name}: unknown parameter for merge_method {self.merge_method!r}")
        for i, m in enumerate(self.models):
            for name in m.parameters:
                if name not in spec["per_model"]:
                    raise ValueError(
                        f"models[{i}] ({m.model}).parameters.{name}: unknown per-model parameter "
                        f"for merge_method {self.merge_method!r}"
                    )
        if self.merge_method == "slerp" and len({m.model for m in self.models} | {self.base_model}) != 2:
            raise ValueError("slerp merges exactly two models, one of which is base_model")
        return self

    def source_paths(self) -> list[str]:
        """Every model the merge reads, base first, without duplicates."""
        out: list[str] = []
        for p in ([self.base_model] if self.base_model else []) + [m.model for m in self.models]:
            if p not in out:
                out.append(p)
        return out

    # --- mergekit interop -------------------------------------------------------------------------
    @classmethod
    def from_mergekit(cls, data: dict[str, Any]) -> "PSRecipe":
        unsupported = {"slices", "modules", "tokenizer", "chat_template"} & {k for k, v in data.items() if v}
        if unsupported:
            raise RecipeError(f"mergekit config uses {sorted(unsupported)}, which evosearch does not support")
        fields = {k: v for k, v in data.items() if k in {"merge_method", "models", "base_model", "parameters",
                                                        "dtype", "tokenizer_source"} and v is not None}
        if "models" not in fields and fields.get("merge_method") == "slerp":
            raise RecipeError("slerp config has no models")
        return cls(**fields)

    def to_mergekit(self) -> dict[str, Any]:
        out = self.model_dump(mode="json", exclude={"kind", "seed"}, exclude_none=True)
        if not out.get("parameters"):
            out.pop("parameters", None)
        for m in out["models"]:
            if not m.get("parameters"):
                m.pop("parameters", None)
        return out


class DFSRecipe(BaseModel):
    """Sakana's data-flow-space recipe.

    Slot ``j`` (0-based) names source ``(j // L) % M`` and layer ``j % L`` in repeat ``j // (M * L)``:
    the layers of every source in order, the whole block repeated ``repeats`` times. ``indicator[j]``
    says whether the slot is on; the path is the on slots in slot order. When the path moves from a
    layer of source ``a`` to a layer of source ``b`` the residual stream is multiplied by
    ``scales[a][b]`` (the first hop uses 1).
    """

    model_config = ConfigDict(extra="forbid")
    kind: Literal["dfs"] = "dfs"
    sources: list[Union[str, PSRecipe]]
    num_layers: int = Field(gt=0, description="L: layers per source (all sources must agree)")
    repeats: int = Field(default=1, gt=0)
    indicator: list[bool]
    scales: list[list[float]]
    embed_source: int = 0
    tokenizer_source: Optional[str] = None

    @model_validator(mode="after")
    def _check(self) -> "DFSRecipe":
        m = len(self.sources)
        if m == 0:
            raise ValueError("sources: at least one source is required")
        expected = m * self.num_layers * self.repeats
        if len(self.indicator) != expected:
            raise ValueError(f"indicator has {len(self.indicator)} slots, expected M*L*r = {expected}")
        if not any(self.indicator):
            raise ValueError("indicator selects no layer: the path is empty")
        if len(self.scales) != m or any(len(row) != m for row in self.scales):
            raise ValueError(f"scales must be a {m}x{m} table")
        if not all(s == s and s > 0 for row in self.scales for s in row):
            raise ValueError("scales must be positive and finite")
        if not 0 <= self.embed_source < m:
            raise ValueError(f"embed_source {self.embed_source} is not a source index (0..{m - 1})")
        return self

    def path(self) -> list[tuple[int, int]]:
        """The (source, layer) of every on slot, in slot order."""
        m, n = len(self.sources), self.num_layers
        return [((j // n) % m, j % n) for j, on in enumerate(self.indicator) if on]

    def hop_scales(self) -> list[float]:
        """The residual-stream scale applied before each layer of `path()`; the first hop is 1."""
        p = self.path()
        return [1.0] + [self.scales[a][b] for (a, _), (b, _) in zip(p, p[1:])]


MergeRecipe = Annotated[Union[PSRecipe, DFSRecipe], Field(discriminator="kind")]


class _RecipeFile(BaseModel):
    recipe: MergeRecipe


def parse_recipe(data: dict[str, Any], *, source: str = "recipe") -> Union[PSRecipe, DFSRecipe]:
    """Read an evosearch recipe or a mergekit config (no `kind`, has `merge_method`)."""
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: expected a mapping at the top level")
    try:
        if "kind" not in data and "merge_method" in data:
            return PSRecipe.from_mergekit(data)
        return _RecipeFile(recipe=data).recipe
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"] if x not in ("recipe", "ps", "dfs"))
        msg = err["msg"].removeprefix("Value error, ")
        raise RecipeError(f"{source}: {loc + ': ' if loc else ''}{msg}") from None


def load_recipe(path: str | Path) -> Union[PSRecipe, DFSRecipe]:
    return parse_recipe(read_yaml_file(path, "recipe", RecipeError), source=str(Path(path)))


def recipe_to_yaml(recipe: Union[PSRecipe, DFSRecipe]) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)


def recipe_hash(recipe: Union[PSRecipe, DFSRecipe]) -> str:
    """Content hash: two recipes that decode to the same merge share it (the search's cache key)."""
    canonical = json.dumps(recipe.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:20]
