"""Resolve a recipe's parameter settings for one tensor, with mergekit's precedence and gradients.

A setting is a scalar, a gradient (a list interpolated over the layer position ``t`` in [0, 1]) or a
list of ``{filter, value}`` conditionals, the first whose filter is a substring of the tensor name
winning. Per-model parameters fall back to the recipe's top-level ``parameters`` and then to the
method's default, exactly as mergekit resolves them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

from evosearch.recipe import ConditionalParameter, ParameterSetting, PSRecipe, RecipeError

_REQUIRED = object()


def _as_float(value: Any, where: str) -> float:
    if isinstance(value, bool):
        raise RecipeError(f"{where}: expected a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise RecipeError(f"{where}: expected a number, got {value!r}") from None


def _as_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in {"true", "false", "1", "0", "yes", "no"}:
        return value.strip().lower() in {"true", "1", "yes"}
    raise RecipeError(f"{where}: expected true or false, got {value!r}")


@dataclass(frozen=True)
class ParameterKind:
    """A parameter's type and default, as mergekit declares it for a method."""

    parse: Callable[[Any, str], Any]
    default: Any = _REQUIRED

    @property
    def numeric(self) -> bool:
        return self.parse is _as_float


def _num(default: Any = _REQUIRED) -> ParameterKind:
    return ParameterKind(_as_float, default)


def _flag(default: bool) -> ParameterKind:
    return ParameterKind(_as_bool, default)


@dataclass(frozen=True)
class MethodParameters:
    """Which parameters a method reads: shared ones once per tensor, per-model ones per input."""

    shared: Mapping[str, ParameterKind]
    per_model: Mapping[str, ParameterKind]


def _task_arithmetic_family(normalize: bool, rescale: bool, extra: Mapping[str, ParameterKind] = {}
                            ) -> MethodParameters:
    return MethodParameters(
        shared={"int8_mask": _flag(False), "normalize": _flag(normalize), "rescale": _flag(rescale),
                "lambda": _num(1.0)},
        per_model={"weight": _num(), "density": _num(1.0), **extra},
    )


# Defaults are mergekit 0.1.5's (merge_methods/registry.py and each method's spec).
METHOD_PARAMETERS: dict[str, MethodParameters] = {
    "linear": MethodParameters(shared={"normalize": _flag(True)}, per_model={"weight": _num()}),
    "task_arithmetic": _task_arithmetic_family(normalize=False, rescale=False),
    "ties": _task_arithmetic_family(normalize=True, rescale=False),
    "dare_ties": _task_arithmetic_family(normalize=False, rescale=True),
    "dare_linear": _task_arithmetic_family(normalize=False, rescale=True),
    "breadcrumbs": _task_arithmetic_family(normalize=False, rescale=False, extra={"gamma": _num(0.01)}),
    "breadcrumbs_ties": _task_arithmetic_family(normalize=False, rescale=False, extra={"gamma": _num(0.01)}),
    "della": _task_arithmetic_family(normalize=True, rescale=True, extra={"epsilon": _num(0.15)}),
    "della_linear": _task_arithmetic_family(normalize=False, rescale=True, extra={"epsilon": _num(0.15)}),
    "model_stock": MethodParameters(shared={"filter_wise": _flag(False)}, per_model={}),
    "slerp": MethodParameters(shared={"t": _num()}, per_model={}),
}

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


def evaluate_setting(setting: ParameterSetting, kind: ParameterKind, tensor_name: str, t: float,
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
    return (1 - frac) * values[lo] + frac * values[hi]


def _resolve(name: str, kind: ParameterKind, scopes: Sequence[tuple[str, Mapping[str, ParameterSetting]]],
             tensor_name: str, t: float, owner: str) -> Any:
    for prefix, scope in scopes:
        if name in scope:
            value = evaluate_setting(scope[name], kind, tensor_name, t, f"{prefix}.{name}")
            if value is not None:
                return value
    if kind.default is _REQUIRED:
        raise RecipeError(f"{owner}: parameter {name!r} is required but unset for tensor {tensor_name}")
    return kind.default


@dataclass(frozen=True)
class TensorParameters:
    """Parameters resolved for one tensor: shared values, and per-model values keyed by model path."""

    shared: dict[str, Any]
    per_model: dict[str, dict[str, Any]]


def resolve_tensor_parameters(recipe: PSRecipe, tensor_name: str, t: float,
                              per_model_inputs: Sequence[str]) -> TensorParameters:
    """Resolve every parameter of `recipe.merge_method` for `tensor_name` at layer position `t`.

    `per_model_inputs` are the models that take per-model parameters (mergekit: every input for
    linear, the non-base inputs for the base-relative methods).
    """
    spec = METHOD_PARAMETERS[recipe.merge_method]
    top = ("parameters", recipe.parameters)
    shared = {n: _resolve(n, k, [top], tensor_name, t, "recipe") for n, k in spec.shared.items()}
    per_model: dict[str, dict[str, Any]] = {}
    for model in per_model_inputs:
        scopes = [(f"models[{i}].parameters", m.parameters) for i, m in enumerate(recipe.models)
                  if m.model == model][:1] + [top]
        per_model[model] = {n: _resolve(n, k, scopes, tensor_name, t, f"model {model}")
                            for n, k in spec.per_model.items()}
    return TensorParameters(shared, per_model)
