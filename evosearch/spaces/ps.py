"""Parameter-space (PS) search space: per-model merge parameters per layer group, optionally per tensor group.

Genes, in order: the merge-method choice (only when several methods are listed), then for every source
model, every searched per-model parameter (sorted by name) and every parameter group a gene, then one gene
per searched global parameter (sorted by name).

Parameter groups: the layers are cut into `layer_groups` contiguous blocks (`every_layer` = one block per
layer); with `tensor_groups` (tensor-name substrings such as `self_attn`, `mlp`) each block is further split
by tensor group. When there is more than one group, every tensor that belongs to no group (embeddings, norms,
the head, and with tensor groups the in-layer norms) shares one extra `rest` group. The recipe carries the
values as mergekit conditional parameters: a list of `{filter, value}` where the first matching filter wins
and the last entry, without a filter, is the `rest` value. Per-layer filters end in a dot
(`model.layers.3.`) so that layer 3 never matches layer 30.
"""

from __future__ import annotations

from typing import Literal, Optional, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from evosearch.config_file import OneOrMore
from evosearch.merge.methods import METHODS
from evosearch.recipe import ConditionalParameter, InputModel, ParameterSetting, PSRecipe, ScalarParameter
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
    seed: int = Field(default=0, description="DARE/DELLA drop seed, fixed so decoding stays deterministic")
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
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
        self._names = self._make_gene_names()
        # Decode every method at the box centre so an unbuildable config fails now, with one line.
        for i in range(len(c.methods)):
            g = np.full(self.dim, 0.5)
            if len(c.methods) > 1:
                g[0] = encode_choice(i, len(c.methods))
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
        names = ["method"] if len(self.config.methods) > 1 else []
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
        method = c.methods[0] if len(c.methods) == 1 else f"one of {', '.join(c.methods)}"
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
        pos = 0
        method = c.methods[0]
        if len(c.methods) > 1:
            method, pos = c.methods[decode_choice(g[0], len(c.methods))], 1
        accepted = METHODS[method].per_model_names
        n_groups = len(self._groups)
        models = []
        for src in c.sources:
            values: dict[str, list[float]] = {}
            for p in self._searched:
                values[p] = [self._bounds[p].decode(x) for x in g[pos:pos + n_groups]]
                pos += n_groups
            values |= {p: [round(v, DECIMALS)] * n_groups for p, v in c.fixed_per_model.items()}
            values = {p: v for p, v in values.items() if p in accepted}
            METHODS[method].repair(values, DECIMALS)
            models.append(InputModel(model=src, parameters={p: self._setting(v) for p, v in sorted(values.items())}))
        searched_globals: dict[str, ParameterSetting] = {}
        for p in self._globals:
            if c.grouped_globals:
                searched_globals[p] = self._setting([c.search_globals[p].decode(x) for x in g[pos:pos + n_groups]])
                pos += n_groups
            else:
                searched_globals[p], pos = c.search_globals[p].decode(g[pos]), pos + 1
        allowed_globals = METHODS[method].shared_names
        parameters = {p: v for p, v in sorted((c.parameters | searched_globals).items()) if p in allowed_globals}
        return PSRecipe(merge_method=method, models=models, base_model=c.base_model, parameters=parameters,
                        dtype=c.dtype, tokenizer_source=c.tokenizer_source, seed=c.seed)

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
        if recipe.merge_method not in c.methods:
            raise SpaceError(f"merge_method {recipe.merge_method!r} is not among the space's methods {c.methods}")
        if recipe.base_model != c.base_model:
            raise SpaceError(f"base_model {recipe.base_model!r} differs from the space's {c.base_model!r}")
        if [m.model for m in recipe.models] != c.sources:
            raise SpaceError(f"recipe models {[m.model for m in recipe.models]} differ from the space's sources")
        genes: list[float] = []
        if len(c.methods) > 1:
            genes.append(encode_choice(c.methods.index(recipe.merge_method), len(c.methods)))
        for model in recipe.models:
            for p in self._searched:
                setting = model.parameters.get(p)
                genes += [0.5 if setting is None else self._bounds[p].encode(_resolve(setting, self._probe(grp)))
                          for grp in self._groups]
        for p in self._globals:
            setting = recipe.parameters.get(p)
            probes = [self._probe(grp) for grp in self._groups] if c.grouped_globals else [_REST_PROBE]
            genes += [0.5 if setting is None else c.search_globals[p].encode(_resolve(setting, probe))
                      for probe in probes]
        return np.asarray(genes, dtype=float)


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
