"""Resolve a recipe's parameter settings for one tensor, with mergekit's precedence and gradients.

A setting is a scalar, a gradient (a list interpolated over the layer position ``t`` in [0, 1]) or a
list of ``{filter, value}`` conditionals, the first whose filter is a substring of the tensor name
winning. Per-model parameters fall back to the recipe's top-level ``parameters`` and then to the
method's default, exactly as mergekit resolves them.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Optional, Sequence

from evosearch.errors import RecipeError
from evosearch.merge.methods import MergeMethod, Parameter, TensorParameters
from evosearch.recipe import ConditionalParameter, ParameterSetting

_LAYER_INDEX = re.compile(r"(?:^|\.)(\d+)\.")


def layer_index(tensor_name: str) -> Optional[int]:
    """The decoder-layer index in a tensor name (``model.layers.3.mlp...`` -> 3), None outside layers."""
    m = _LAYER_INDEX.search(tensor_name)
    return int(m.group(1)) if m else None


def count_layers(tensor_names: Sequence[str]) -> int:
    indices = {i for i in map(layer_index, tensor_names) if i is not None}
    return max(indices) + 1 if indices else 0


def layer_position(tensor_name: str, num_layers: int) -> float:
    """mergekit's gradient coordinate ``t``: layer i of L sits at i / (L - 1) (1 when L == 1).

    Tensors outside the layer stack (embeddings, final norm, head) are planned by mergekit with t = 0,
    so a gradient gives them its first value.
    """
    i = layer_index(tensor_name)
    if i is None:
        return 0.0
    return i / (num_layers - 1) if num_layers > 1 else 1.0


def evaluate_setting(setting: ParameterSetting, kind: Parameter, tensor_name: str, t: float,
                     where: str) -> Any:
    """The value of one setting for one tensor, or None when no conditional applies to it."""
    if isinstance(setting, ConditionalParameter):
        setting = [setting]
    if isinstance(setting, dict):
        setting = [ConditionalParameter(**setting)]
    if not isinstance(setting, list):
        return kind.parse(setting, where)
    if not setting:
        raise RecipeError(f"{where}: empty list (give a value, a gradient or a list of filters)")
    if all(isinstance(e, ConditionalParameter) for e in setting):
        for cond in setting:
            if cond.filter in (None, "*") or cond.filter in tensor_name:
                return evaluate_setting(cond.value, kind, tensor_name, t, where)
        return None
    if any(isinstance(e, ConditionalParameter) for e in setting):
        raise RecipeError(f"{where}: mixes filters and plain values in one list")
    values = [kind.parse(v, f"{where}[{i}]") for i, v in enumerate(setting)]
    if not kind.numeric:
        return values[int(t * (len(values) - 1))]
    scaled = t * (len(values) - 1)
    lo = int(scaled)
    hi = min(len(values) - 1, lo + 1)
    frac = scaled - lo
    return kind.parse((1 - frac) * values[lo] + frac * values[hi], where)  # an integer must land on one


Scopes = Sequence[tuple[str, Mapping[str, ParameterSetting]]]  # (where, settings), highest precedence first


def _resolve(name: str, kind: Parameter, scopes: Scopes, tensor_name: str, t: float, owner: str) -> Any:
    for prefix, scope in scopes:
        if name in scope:
            value = evaluate_setting(scope[name], kind, tensor_name, t, f"{prefix}.{name}")
            if value is not None:
                return value
    if kind.required:
        raise RecipeError(f"{owner}: parameter {name!r} is required but unset for tensor {tensor_name}")
    return kind.default


def resolve_parameters(method: MergeMethod, shared_scopes: Scopes, model_scopes: Mapping[str, Scopes],
                       tensor_name: str, t: float) -> TensorParameters:
    """Resolve every parameter of `method` for `tensor_name` at gradient coordinate `t`: shared ones from
    `shared_scopes`, per-model ones for each model of `model_scopes` (mergekit: every input for linear, the
    non-base inputs for the base-relative methods) from that model's scopes."""
    shared = {p.name: _resolve(p.name, p, shared_scopes, tensor_name, t, "recipe")
              for p in method.parameters if not p.per_model}
    per_model = {model: {p.name: _resolve(p.name, p, scopes, tensor_name, t, f"model {model}")
                         for p in method.parameters if p.per_model}
                 for model, scopes in model_scopes.items()}
    return TensorParameters(shared, per_model)
