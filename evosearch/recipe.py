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
from evosearch.errors import RecipeError, validation_error_line
from evosearch.merge.methods import METHODS, get_method

ScalarParameter = Union[bool, int, float, str]
ScalarOrGradient = Union[ScalarParameter, list[ScalarParameter]]


class ConditionalParameter(BaseModel):
    """mergekit's ``{filter: substring, value: ...}``: applies to tensors whose name contains `filter`."""

    model_config = ConfigDict(extra="forbid")
    value: ScalarOrGradient
    filter: Optional[str] = None


ParameterSetting = Union[ConditionalParameter, list[ConditionalParameter], ScalarOrGradient]


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
        get_method(v)
        return v

    @model_validator(mode="after")
    def _check(self) -> "PSRecipe":
        method = METHODS[self.merge_method]
        if not self.models:
            raise ValueError("models: at least one model is required")
        method.check_models([m.model for m in self.models], self.base_model)
        for name in self.parameters:
            if name not in method.shared_names | method.per_model_names:
                raise ValueError(f"parameters.{name}: unknown parameter for merge_method {self.merge_method!r}")
        for i, m in enumerate(self.models):
            for name in m.parameters:
                if name not in method.per_model_names:
                    raise ValueError(
                        f"models[{i}] ({m.model}).parameters.{name}: unknown per-model parameter "
                        f"for merge_method {self.merge_method!r}"
                    )
        return self

    @property
    def method(self):
        """The registry's `MergeMethod` of `merge_method`."""
        return METHODS[self.merge_method]

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
        raise RecipeError(validation_error_line(e, where=source, skip=("recipe", "ps", "dfs"))) from None


def load_recipe(path: str | Path) -> Union[PSRecipe, DFSRecipe]:
    return parse_recipe(read_yaml_file(path, "recipe", RecipeError), source=str(Path(path)))


def recipe_to_yaml(recipe: Union[PSRecipe, DFSRecipe]) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)


def recipe_source_paths(recipe: Union[PSRecipe, DFSRecipe]) -> list[str]:
    """Every model directory a recipe reads weights from (a PS+DFS recipe's PS part included)."""
    if isinstance(recipe, PSRecipe):
        return recipe.source_paths()
    paths: list[str] = []
    for source in recipe.sources:
        paths += source.source_paths() if isinstance(source, PSRecipe) else [source]
    return list(dict.fromkeys(paths))


def recipe_sources(recipe: Union[dict, PSRecipe, DFSRecipe]) -> tuple[list[str], Optional[list[float]]]:
    """The models a candidate was merged from and, where its method says so (`MergeMethod.mixing_weights`),
    the weight of each in the merge as an affine mix (MERGE^3's prior for the merge-aware estimators); None
    for DFS and for settings that are no plain numbers (per-layer weights)."""
    if isinstance(recipe, dict):
        recipe = parse_recipe(recipe)
    paths = recipe_source_paths(recipe)
    if not isinstance(recipe, PSRecipe):
        return paths, None
    return paths, recipe.method.mixing_weights(recipe, paths)


def recipe_hash(recipe: Union[PSRecipe, DFSRecipe]) -> str:
    """Content hash: two recipes that decode to the same merge share it (the search's cache key)."""
    canonical = json.dumps(recipe.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:20]
