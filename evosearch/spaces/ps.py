"""Parameter-space (PS) search space: per-model merge parameters per layer group, optionally per tensor group.

Genes, in order: the merge-method choice (only when several methods are listed: one gene, or with
`methods_per_layer_group` one per layer block), then for every source model, every searched per-model
parameter (sorted by name) and every parameter group a gene, then one gene per searched global parameter
(sorted by name). A parameter's genes are shared by the methods that take it and ignored by the others,
so a method's parameters act only where it is chosen and an unused gene never changes the recipe.

Parameter groups: the layers are cut into `layer_groups` contiguous blocks (`every_layer` = one block per
layer); with `tensor_groups` (tensor-name substrings such as `self_attn`, `mlp`) each block is further split
by tensor group. When there is more than one group, every tensor that belongs to no group (embeddings, norms,
the head, and with tensor groups the in-layer norms) shares one extra `rest` group. The recipe carries the
values as mergekit conditional parameters: a list of `{filter, value}` where the first matching filter wins
and the last entry, without a filter, is the `rest` value. Per-layer filters end in a dot
(`model.layers.3.`) so that layer 3 never matches layer 30.

When the layer blocks choose different methods the recipe is a PS recipe in mergekit's `slices:` form, one
slice per block with its own `merge_method` (evosearch's extension: mergekit has one method per config), the
base model listed among each slice's sources. The `rest` group's values apply to the embeddings (merged as
the first block's method merges) and to the final norm and head (the last block's), as mergekit's slices do.
"""

from __future__ import annotations

from typing import Literal, Optional, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from evosearch.config_file import OneOrMore
from evosearch.merge.methods import METHODS
from evosearch.recipe import (ConditionalParameter, InputModel, InputSlice, OutputSlice, ParameterSetting, PSRecipe,
                              ScalarParameter)
from evosearch.spaces.base import DECIMALS, Range, SearchSpace, SpaceError, decode_choice, encode_choice
# A tensor name that matches no filter: reads back the `rest` value of a conditional list.
_REST_PROBE = "\x00rest"


class PSSpaceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["ps"] = "ps"
    sources: list[str] = Field(min_length=1, description="models that get per-model genes, in recipe order")
    base_model: Optional[str] = None
    methods: OneOrMore = Field(min_length=1, description="one method = fixed; several = a categorical gene")
    num_layers: Optional[int] = Field(default=None, gt=0, description="needed when layer_groups is not 1")
    layer_groups: Union[int, Literal["every_layer"]] = 1
    tensor_groups: list[str] = Field(default_factory=list, description="tensor-name substrings, e.g. mlp")
    layer_prefix: str = "model.layers."
    bounds: dict[str, Range] = Field(default_factory=dict, description="per-model parameter ranges")
    fixed_per_model: dict[str, float] = Field(default_factory=dict, description="per-model values not searched")
    parameters: dict[str, ScalarParameter] = Field(default_factory=dict, description="fixed global parameters")
    search_globals: dict[str, Range] = Field(default_factory=dict, description="searched global parameters")
    grouped_globals: bool = Field(default=False, description="searched globals get a gene per parameter group "
                                                             "(slerp's per-layer t) instead of one")
    methods_per_layer_group: bool = Field(default=False, description="one method gene per layer block instead "
                                                                     "of one for the whole recipe")
    seed: int = Field(default=0, description="DARE/DELLA drop seed, fixed so decoding stays deterministic")
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    out_dtype: Optional[Literal["float32", "float16", "bfloat16"]] = None
    tokenizer_source: Optional[str] = None

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, v: list[str]) -> list[str]:
        for m in v:
            if m not in METHODS:
                raise ValueError(f"unknown merge method {m!r}; known: {', '.join(sorted(METHODS))}")
        if len(set(v)) != len(v):
            raise ValueError("methods are listed twice")
        return v

    @model_validator(mode="after")
    def _check(self) -> "PSSpaceConfig":
        needs_base = [m for m in self.methods if METHODS[m].needs_base]
        if needs_base and self.base_model is None:
            raise ValueError(f"base_model is required by merge method {needs_base[0]!r}")
        if self.layer_groups != 1:
            if self.num_layers is None:
                raise ValueError("num_layers is required when layer_groups is not 1")
            if self.layer_groups != "every_layer" and not 1 <= self.layer_groups <= self.num_layers:
                raise ValueError(f"layer_groups must be in 1..num_layers ({self.num_layers})")
        per_model = set().union(*(METHODS[m].per_model_names for m in self.methods))
        global_ = set().union(*(METHODS[m].shared_names for m in self.methods))
        for field, names, allowed, what in (
            ("bounds", self.bounds, per_model, "per-model"),
            ("fixed_per_model", self.fixed_per_model, per_model, "per-model"),
            ("parameters", self.parameters, global_, "global"),
            ("search_globals", self.search_globals, global_, "global"),
        ):
            for name in names:
                if name not in allowed:
                    raise ValueError(f"{field}.{name}: not a {what} parameter of {', '.join(self.methods)}")
        for a, b in (("bounds", "fixed_per_model"), ("parameters", "search_globals")):
            both = set(getattr(self, a)) & set(getattr(self, b))
            if both:
                raise ValueError(f"{sorted(both)[0]} is in both {a} and {b}")
        defaults = self.default_ranges()
        for name in per_model - set(self.fixed_per_model) - set(self.bounds):
            if name not in defaults:
                raise ValueError(f"bounds.{name}: no default range, give one")
        if len(set(self.tensor_groups)) != len(self.tensor_groups) or not all(self.tensor_groups):
            raise ValueError("tensor_groups must be distinct non-empty substrings")
        return self


    def default_ranges(self) -> dict[str, Range]:
        """The registry's search range of every per-model parameter of the listed methods that has one."""
        ranges: dict[str, Range] = {}
        for method in self.methods:
            for p in METHODS[method].parameters:
                if p.per_model and p.search_range is not None:
                    ranges.setdefault(p.name, Range(low=p.search_range[0], high=p.search_range[1]))
        return ranges


class PSSpace(SearchSpace):
    def __init__(self, config: PSSpaceConfig):
        self.config = config
        c = config
        self._layers = c.num_layers
        self._blocks = c.num_layers if c.layer_groups == "every_layer" else c.layer_groups
        self._tgroups: list[Optional[str]] = list(c.tensor_groups) or [None]
        # Group keys: (block, tensor group) pairs plus the shared `rest`, or one group for the whole model.
        self._grouped = self._blocks > 1 or bool(c.tensor_groups)
        self._groups: list[Union[tuple[int, Optional[str]], str]] = (
            [(b, t) for b in range(self._blocks) for t in self._tgroups] + ["rest"] if self._grouped else ["all"]
        )
        self._bounds = c.default_ranges() | c.bounds
        self._searched = sorted(set().union(*(METHODS[m].per_model_names for m in c.methods)) - set(c.fixed_per_model))
        self._globals = sorted(c.search_globals)
        self._method_genes = 0 if len(c.methods) == 1 else self._blocks if c.methods_per_layer_group else 1
        self._names = self._make_gene_names()
        # Decode every method at the box centre so an unbuildable config fails now, with one line.
        for i in range(len(c.methods)):
            g = np.full(self.dim, 0.5)
            g[:self._method_genes] = encode_choice(i, len(c.methods))
            try:
                self.decode(g)
            except ValidationError as e:
                raise SpaceError(f"search_space ({c.methods[i]}): {e.errors()[0]['msg'].removeprefix('Value error, ')}") from None

    # --- layout ------------------------------------------------------------------------------------
    def _group_label(self, group) -> str:
        if isinstance(group, str):
            return group
        b, t = group
        if self._blocks == 1:
            span = "all"
        else:
            layers = self._block_layers(b)
            span = f"L{layers[0]}-{layers[-1]}" if len(layers) > 1 else f"L{layers[0]}"
        return span if t is None else f"{span}.{t}"

    def _block_layers(self, b: int) -> list[int]:
        # Block of layer i is floor(i * k / L): contiguous, sizes differ by at most one.
        return [i for i in range(self._layers) if i * self._blocks // self._layers == b]

    def _make_gene_names(self) -> list[str]:
        names = ["method"] if self._method_genes == 1 else [
            f"method.{self._group_label((b, None))}" for b in range(self._method_genes)]
        for m in range(len(self.config.sources)):
            for p in self._searched:
                names += [f"m{m}.{p}.{self._group_label(g)}" for g in self._groups]
        if self.config.grouped_globals:
            return names + [f"global.{p}.{self._group_label(g)}" for p in self._globals for g in self._groups]
        return names + [f"global.{p}" for p in self._globals]

    @property
    def dim(self) -> int:
        return len(self._names)

    def gene_names(self) -> list[str]:
        return list(self._names)

    def describe(self) -> str:
        c = self.config
        method = c.methods[0] if len(c.methods) == 1 else f"one of {', '.join(c.methods)}" + (
            " per layer block" if self._method_genes > 1 else "")
        return (f"PS space: {method} over {len(c.sources)} model(s), {len(self._groups)} parameter group(s) "
                f"per model ({self._blocks} layer block(s) x {len(self._tgroups)} tensor group(s)"
                f"{' + rest' if self._grouped else ''}), searched {', '.join(self._searched + self._globals) or 'nothing'}; "
                f"{self.dim} genes")

    # --- decode ------------------------------------------------------------------------------------
    def _setting(self, values: list[float]) -> ParameterSetting:
        if not self._grouped:
            return values[0]
        conds: list[ConditionalParameter] = []
        for group, v in zip(self._groups, values):
            if group == "rest":
                conds.append(ConditionalParameter(value=v))
                continue
            b, t = group
            suffix = "" if t is None else t
            if self._blocks == 1:
                conds.append(ConditionalParameter(filter=t, value=v))
            else:
                conds += [ConditionalParameter(filter=f"{self.config.layer_prefix}{i}.{suffix}", value=v)
                          for i in self._block_layers(b)]
        return conds

    def decode(self, genome: np.ndarray) -> PSRecipe:
        c = self.config
        g = self._genome(genome)
        blocks = [c.methods[decode_choice(x, len(c.methods))] for x in g[:self._method_genes]] or [c.methods[0]]
        pos = self._method_genes
        n_groups = len(self._groups)
        per_source: list[dict[str, list[float]]] = []
        for _ in c.sources:
            values: dict[str, list[float]] = {}
            for p in self._searched:
                values[p] = [self._bounds[p].decode(x) for x in g[pos:pos + n_groups]]
                pos += n_groups
            per_source.append(values | {p: [round(v, DECIMALS)] * n_groups for p, v in c.fixed_per_model.items()})
        grouped: dict[str, list[float]] = {}
        scalar: dict[str, float] = {}
        for p in self._globals:
            if c.grouped_globals:
                grouped[p], pos = [c.search_globals[p].decode(x) for x in g[pos:pos + n_groups]], pos + n_groups
            else:
                scalar[p], pos = c.search_globals[p].decode(g[pos]), pos + 1
        if len(set(blocks)) == 1:
            return self._whole_recipe(blocks[0], per_source, grouped, scalar)
        return self._sliced_recipe(blocks, per_source, grouped, scalar)

    def _whole_recipe(self, method: str, per_source: list[dict[str, list[float]]], grouped: dict[str, list[float]],
                      scalar: dict[str, float]) -> PSRecipe:
        """One method for every layer: a `models:` recipe, each group's values as conditional filters."""
        c = self.config
        models = []
        for src, values in zip(c.sources, per_source):
            values = {p: list(v) for p, v in values.items() if p in METHODS[method].per_model_names}
            METHODS[method].repair(values, DECIMALS)
            models.append(InputModel(model=src, parameters={p: self._setting(v) for p, v in sorted(values.items())}))
        searched = scalar | {p: self._setting(v) for p, v in grouped.items()}
        allowed = METHODS[method].shared_names
        parameters = {p: v for p, v in sorted((c.parameters | searched).items()) if p in allowed}
        return PSRecipe(merge_method=method, models=models, base_model=c.base_model, parameters=parameters,
                        dtype=c.dtype, out_dtype=c.out_dtype, tokenizer_source=c.tokenizer_source, seed=c.seed)

    def _sliced_recipe(self, blocks: list[str], per_source: list[dict[str, list[float]]],
                       grouped: dict[str, list[float]], scalar: dict[str, float]) -> PSRecipe:
        """A method per layer block: a `slices:` recipe, one slice per block, each with its own method."""
        c = self.config
        slices = []
        for b, method in enumerate(blocks):
            kind = METHODS[method]
            mine = [i for i, grp in enumerate(self._groups) if grp == "rest" or grp[0] == b]
            layers = self._block_layers(b)
            span = [layers[0], layers[-1] + 1]
            sources = []
            for src, values in zip(c.sources, per_source):
                values = {p: [v[i] for i in mine] for p, v in values.items() if p in kind.per_model_names}
                kind.repair(values, DECIMALS)
                sources.append(InputSlice(model=src, layer_range=span,
                                          parameters={p: self._slice_setting(v) for p, v in sorted(values.items())}))
            if c.base_model is not None and c.base_model not in c.sources:
                sources.append(InputSlice(model=c.base_model, layer_range=span))
            own = {p: self._slice_setting([v[i] for i in mine]) for p, v in grouped.items() if p in kind.shared_names}
            slices.append(OutputSlice(sources=sources, parameters=dict(sorted(own.items())),
                                      merge_method=None if method == blocks[0] else method))
        allowed = set().union(*(METHODS[m].shared_names for m in blocks))
        parameters = {p: v for p, v in sorted((c.parameters | scalar).items()) if p in allowed}
        return PSRecipe(merge_method=blocks[0], slices=slices, base_model=c.base_model, parameters=parameters,
                        dtype=c.dtype, out_dtype=c.out_dtype, tokenizer_source=c.tokenizer_source, seed=c.seed)

    def _slice_setting(self, values: list[float]) -> ParameterSetting:
        """One block's group values (its tensor groups, then `rest`) as a setting inside that block's slice."""
        *inside, rest = values
        if all(v == rest for v in inside):
            return rest
        filters = self.config.tensor_groups or [self.config.layer_prefix]
        return [ConditionalParameter(filter=f, value=v) for f, v in zip(filters, inside)] + [
            ConditionalParameter(value=rest)]

    # --- encode ------------------------------------------------------------------------------------
    def _probe(self, group) -> str:
        """A tensor name that falls in `group`, to read a group's value back from a setting."""
        if not isinstance(group, tuple):
            return _REST_PROBE
        b, t = group
        layer = self._block_layers(b)[0] if self._blocks > 1 else 0
        return f"{self.config.layer_prefix}{layer}.{t or ''}"

    def encode(self, recipe: PSRecipe) -> np.ndarray:
        c = self.config
        if not isinstance(recipe, PSRecipe):
            raise SpaceError(f"a PS space encodes PS recipes, not {recipe.kind!r}")
        if recipe.base_model != c.base_model:
            raise SpaceError(f"base_model {recipe.base_model!r} differs from the space's {c.base_model!r}")
        blocks, model_scopes, global_scopes = self._scopes(recipe)
        for method in blocks:
            if method not in c.methods:
                raise SpaceError(f"merge_method {method!r} is not among the space's methods {c.methods}")
        genes = [encode_choice(c.methods.index(m), len(c.methods)) for m in blocks[:self._method_genes]]

        def gene(scopes: list[dict], p: str, group, bounds: Range) -> float:
            # The group's value where its block's settings give one, else the box centre (an unused gene).
            scope = scopes[0] if group in ("rest", "all") else scopes[group[0]]
            setting = scope.get(p, next((s[p] for s in scopes if p in s), None) if group == "rest" else None)
            return 0.5 if setting is None else bounds.encode(_resolve(setting, self._probe(group)))

        for scopes in model_scopes:
            for p in self._searched:
                genes += [gene(scopes, p, grp, self._bounds[p]) for grp in self._groups]
        for p in self._globals:
            groups = self._groups if c.grouped_globals else ["rest"]
            genes += [gene(global_scopes, p, grp, c.search_globals[p]) for grp in groups]
        return np.asarray(genes, dtype=float)

    def _scopes(self, recipe: PSRecipe) -> tuple[list[str], list[list[dict]], list[dict]]:
        """The recipe's method per layer block, and per source and for the globals its settings per block."""
        c = self.config
        n = max(self._blocks, 1)
        if recipe.slices is None:
            if [m.model for m in recipe.models] != c.sources:
                raise SpaceError(f"recipe models {[m.model for m in recipe.models]} differ from the space's sources")
            return ([recipe.merge_method] * n, [[m.parameters] * n for m in recipe.models],
                    [recipe.parameters] * n)
        spans = [[self._block_layers(b)[0], self._block_layers(b)[-1] + 1] for b in range(n)]
        if self._method_genes < 2 or [list(s.layer_range) for s in recipe.slices] != spans:
            raise SpaceError(f"recipe slices {[list(s.layer_range) for s in recipe.slices]} are not this space's "
                             f"layer blocks with a method each")
        by_model = [{s.model: s.parameters for s in piece.sources} for piece in recipe.slices]
        if any([m for m in piece if m != c.base_model or m in c.sources] != c.sources for piece in by_model):
            raise SpaceError(f"recipe slices' sources differ from the space's sources {c.sources}")
        return ([s.merge_method or recipe.merge_method for s in recipe.slices],
                [[piece[src] for piece in by_model] for src in c.sources],
                [recipe.parameters | s.parameters for s in recipe.slices])

def _resolve(setting: ParameterSetting, tensor_name: str) -> float:
    """mergekit's rule for a conditional list: the first entry whose filter is absent or in the name."""
    if isinstance(setting, ConditionalParameter):
        setting = [setting]
    if isinstance(setting, list) and setting and all(isinstance(s, ConditionalParameter) for s in setting):
        for cond in setting:
            if cond.filter in (None, "*") or cond.filter in tensor_name:
                return _resolve(cond.value, tensor_name)
        raise SpaceError(f"no conditional value applies to {tensor_name!r}")
    if isinstance(setting, (int, float)) and not isinstance(setting, bool):
        return float(setting)
    raise SpaceError(f"parameter setting {setting!r} is not one this space produces")
