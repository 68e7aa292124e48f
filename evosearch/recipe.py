"""Merge recipes: plain, serialisable data describing how to build one merged model.

A recipe is the only thing `export` needs, and the unit the search caches on (`recipe_hash`).
Three kinds share one file format (YAML with a `kind` field):

* ``PSRecipe``  - parameter-space merge; field names follow mergekit's ``MergeConfiguration`` so a PS
  recipe round-trips through a mergekit YAML (`evosearch.mergekit_config` / `to_mergekit`), `slices:` form
  included.
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
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator, \
    model_serializer, model_validator

from evosearch.config_file import read_yaml_file
from evosearch.errors import RecipeError, validation_error_line
from evosearch.merge.methods import METHODS, get_method
from evosearch.mergekit_config import recipe_data

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


class InputSlice(BaseModel):
    """mergekit's slice source: layers ``layer_range = [start, end)`` of one model, with its own parameters."""

    model_config = ConfigDict(extra="forbid")
    model: str
    layer_range: tuple[int, int]
    parameters: dict[str, ParameterSetting] = Field(default_factory=dict)


class OutputSlice(BaseModel):
    """mergekit's output slice: consecutive output layers merged from like layers of its sources, with a
    gradient's ``t`` running over the slice's own layers. `merge_method` is evosearch's: a slice's own method
    (mergekit has one for the whole config, so a recipe whose slices differ in method is evosearch's only)."""

    model_config = ConfigDict(extra="forbid")
    sources: list[InputSlice] = Field(min_length=1)
    base_model: Optional[str] = None
    parameters: dict[str, ParameterSetting] = Field(default_factory=dict)
    merge_method: Optional[str] = None

    @property
    def layer_range(self) -> tuple[int, int]:
        return self.sources[0].layer_range


class PSRecipe(BaseModel):
    """Parameter-space merge of models that share one architecture.

    Either `models` (every layer merged alike, gradients over the whole stack) or `slices` (mergekit's
    `slices:` form, here layer for layer: slice k merges output layers [start, end) from the same layers of
    its sources, with its own sources, base, parameters and method; the embeddings are merged as the first
    slice says and the final norm and head as the last one says, as mergekit does)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["ps"] = "ps"
    merge_method: str
    models: list[InputModel] = Field(default_factory=list)
    slices: Optional[list[OutputSlice]] = None
    base_model: Optional[str] = None
    parameters: dict[str, ParameterSetting] = Field(default_factory=dict)
    # mergekit's pair: sources are read at `dtype` (bf16/fp16 round them), the merge is written at `out_dtype`
    # (default: `dtype`). The arithmetic itself runs in float32 at least, where mergekit's runs at `dtype`.
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    out_dtype: Optional[Literal["float32", "float16", "bfloat16"]] = None
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
        if self.slices is not None and self.models:
            raise ValueError("give either models or slices, not both")
        if self.slices is None and not self.models:
            raise ValueError("models: at least one model is required")
        if self.slices is not None:
            self._check_slices()
        else:
            self.method.check_models([m.model for m in self.models], self.base_model)
            _check_per_model(self.method, self.models, "models")
        known = set().union(*(m.shared_names | m.per_model_names for m in self.methods_used()))
        for name in self.parameters:
            if name not in known:
                raise ValueError(f"parameters.{name}: unknown parameter for merge_method "
                                 f"{', '.join(repr(m.name) for m in self.methods_used())}")
        return self

    def _check_slices(self) -> None:
        if not self.slices:
            raise ValueError("slices: at least one slice is required")
        end = 0
        for k, piece in enumerate(self.slices):
            where = f"slices[{k}]"
            method = get_method(piece.merge_method) if piece.merge_method else self.method
            ranges = {tuple(s.layer_range) for s in piece.sources}
            start, stop = piece.layer_range
            if len(ranges) != 1 or start != end or stop <= start:
                raise ValueError(f"{where}: a PS recipe's slices take layers [{end}, ...) from every source in "
                                 f"turn, layer for layer (got layer ranges {sorted(ranges)}); layer stacks are "
                                 f"DFS recipes")
            end = stop
            models = [s.model for s in piece.sources]
            if len(set(models)) != len(models):
                raise ValueError(f"{where}: a model is listed twice among the sources")
            base = piece.base_model or self.base_model
            if base is not None and not method.ignores_base and base not in models:
                raise ValueError(f"{where}: base_model {base} is not among the slice's sources")
            try:
                method.check_models(models, base)
            except RecipeError as e:
                raise ValueError(f"{where}: {e}") from None
            _check_per_model(method, piece.sources, f"{where}.sources")
            for name in piece.parameters:
                if name not in method.shared_names | method.per_model_names:
                    raise ValueError(f"{where}.parameters.{name}: unknown parameter for merge_method {method.name!r}")

    @model_serializer(mode="wrap")
    def _dump(self, handler) -> dict[str, Any]:
        # The form not used is left out: a `models:` recipe dumps (and hashes) as it did before slices existed.
        out = handler(self)
        out.pop("slices" if self.slices is None else "models", None)
        if out.get("out_dtype", "") is None:  # so recipes that do not set it keep their hash
            out.pop("out_dtype")
        return out

    @property
    def output_dtype(self) -> str:
        return self.out_dtype or self.dtype

    @property
    def method(self):
        """The registry's `MergeMethod` of `merge_method` (of the slices that name none of their own)."""
        return METHODS[self.merge_method]

    def methods_used(self) -> list:
        """Every method the recipe merges with, once each, in order of use."""
        names = [self.merge_method] if self.slices is None else [s.merge_method or self.merge_method for s in self.slices]
        return [METHODS[n] for n in dict.fromkeys(names)]

    def source_paths(self) -> list[str]:
        """Every model the merge reads, base first, without duplicates."""
        listed = [m.model for m in self.models] if self.slices is None else [
            p for s in self.slices for p in [s.base_model] * bool(s.base_model) + [src.model for src in s.sources]]
        return list(dict.fromkeys(([self.base_model] if self.base_model else []) + listed))

    # --- mergekit interop -------------------------------------------------------------------------
    def mergekit_blocker(self) -> Optional[str]:
        """Why mergekit 0.1.5 cannot build this recipe (one line), or None when `to_mergekit` gives a config
        it builds."""
        own = [m.name for m in self.methods_used() if not m.mergekit]
        if own:
            return f"merge_method {', '.join(own)} is evosearch's own; mergekit has no such method"
        if len(self.methods_used()) > 1:
            return (f"its slices merge with different methods ({', '.join(m.name for m in self.methods_used())}); "
                    f"a mergekit config has one merge_method")
        return None

    def to_mergekit(self) -> dict[str, Any]:
        blocker = self.mergekit_blocker()
        if blocker is not None:
            raise RecipeError(f"mergekit cannot build this recipe: {blocker}")
        out = self.model_dump(mode="json", exclude={"kind", "seed"}, exclude_none=True)
        if self.slices is None:
            out.pop("slices", None)
        else:
            out.pop("models", None)
            for piece in out["slices"]:
                piece.pop("merge_method", None)
                for key in ("parameters", "base_model"):
                    if not piece.get(key):
                        piece.pop(key, None)
        if not out.get("parameters"):
            out.pop("parameters", None)
        for m in out.get("models", []) + [s for piece in out.get("slices", []) for s in piece["sources"]]:
            if not m.get("parameters"):
                m.pop("parameters", None)
        return out


def _check_per_model(method, inputs: list, where: str) -> None:
    for i, m in enumerate(inputs):
        for name in m.parameters:
            if name not in method.per_model_names:
                raise ValueError(f"{where}[{i}] ({m.model}).parameters.{name}: unknown per-model parameter "
                                 f"for merge_method {method.name!r}")


def check_dfs_tokenizer_source(value: Optional[str]) -> None:
    """A DFS path's tokenizer is a model's (copied as it is): `base` and `union` map vocabularies in PS merges."""
    if value in ("base", "union"):
        raise ValueError(f"tokenizer_source: {value} maps vocabularies in a PS merge; a DFS path takes its "
                         f"vocabulary from its embed source (give tokenizer_source to a PS source)")


# A model path or a PS merge; tagged by type, so a bad PS source reports its own error, not "not a string".
DFSSource = Annotated[Union[Annotated[str, Tag("model")], Annotated[PSRecipe, Tag("ps")]],
                      Discriminator(lambda v: "model" if isinstance(v, str) else "ps")]


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
    sources: list[DFSSource]
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
        check_dfs_tokenizer_source(self.tokenizer_source)
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
            data = recipe_data(data)
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
    if not isinstance(recipe, PSRecipe) or recipe.slices is not None:
        return paths, None
    return paths, recipe.method.mixing_weights(recipe, paths)


def recipe_methods(recipe: PSRecipe) -> str:
    """The recipe's method, or for a slices recipe each slice's method and layers ("ties on layers 0-1, ...")."""
    if recipe.slices is None:
        return recipe.merge_method
    spans = [f"{s.merge_method or recipe.merge_method} on layers {s.layer_range[0]}-{s.layer_range[1] - 1}"
             for s in recipe.slices]
    return ", ".join(spans) if len(recipe.methods_used()) > 1 else f"{recipe.merge_method} ({len(spans)} slices)"


def recipe_hash(recipe: Union[PSRecipe, DFSRecipe]) -> str:
    """Content hash: two recipes that decode to the same merge share it (the search's cache key)."""
    canonical = json.dumps(recipe.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:20]
