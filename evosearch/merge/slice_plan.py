"""Which part of a PS recipe merges a tensor: its method, inputs, base, parameter scopes and gradient `t`.

A recipe in `models` form is one part over every layer; in `slices` form each slice is a part over its own
layers (mergekit's plan, layer for layer): a layer tensor belongs to the slice holding its layer and reads
`t` as its position within that slice; a tensor outside the layers reads `t = 0` and belongs to the first
slice when it is an embedding (mergekit's "pre" weights) and to the last otherwise (final norm, head).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from evosearch.errors import RecipeError
from evosearch.merge.methods import METHODS, MergeMethod, TensorParameters
from evosearch.merge.parameters import Scopes, layer_index, resolve_parameters
from evosearch.recipe import PSRecipe


@dataclass(frozen=True)
class MergePart:
    method: MergeMethod
    inputs: list[str]  # mergekit's input order
    base: Optional[str]
    shared_scopes: Scopes
    model_scopes: dict[str, Scopes]  # every input that takes per-model parameters
    first_layer: int
    num_layers: int

    def position(self, layer: Optional[int]) -> float:
        """mergekit's gradient coordinate: layer i of the part's n sits at i / (n - 1) (1 when n == 1)."""
        if layer is None:
            return 0.0
        return (layer - self.first_layer) / (self.num_layers - 1) if self.num_layers > 1 else 1.0

    def parameters(self, tensor_name: str) -> TensorParameters:
        return resolve_parameters(self.method, self.shared_scopes, self.model_scopes, tensor_name,
                                  self.position(layer_index(tensor_name)))


def merge_parts(recipe: PSRecipe, num_layers: int) -> list[MergePart]:
    """The recipe's parts, in layer order; RecipeError when its slices do not tile the models' layers."""
    top = ("parameters", recipe.parameters)
    if recipe.slices is None:
        inputs = list(dict.fromkeys(m.model for m in recipe.models))
        if recipe.base_model is not None and recipe.base_model not in inputs:
            inputs.append(recipe.base_model)
        scopes = {}
        for model in recipe.method.weighted_models(inputs, recipe.base_model):
            scopes[model] = [(f"models[{i}].parameters", m.parameters) for i, m in enumerate(recipe.models)
                             if m.model == model][:1] + [top]
        return [MergePart(recipe.method, inputs, recipe.base_model, [top], scopes, 0, num_layers)]
    parts = []
    for k, piece in enumerate(recipe.slices):
        method = METHODS[piece.merge_method or recipe.merge_method]
        inputs = [s.model for s in piece.sources]
        base = None if method.ignores_base else piece.base_model or recipe.base_model
        here = (f"slices[{k}].parameters", piece.parameters)
        scopes = {model: [(f"slices[{k}].sources[{i}].parameters", s.parameters)
                          for i, s in enumerate(piece.sources) if s.model == model] + [here, top]
                  for model in method.weighted_models(inputs, base)}
        start, stop = piece.layer_range
        parts.append(MergePart(method, inputs, base, [here, top], scopes, start, stop - start))
    covered = recipe.slices[-1].layer_range[1]
    if covered != num_layers:
        raise RecipeError(f"recipe slices cover layers 0-{covered - 1} but the models have {num_layers} layers; "
                          f"a PS recipe merges every layer once")
    return parts


def part_for(parts: list[MergePart], tensor_name: str) -> MergePart:
    layer = layer_index(tensor_name)
    if layer is None:
        return parts[0] if "embed" in tensor_name else parts[-1]
    return next(p for p in parts if p.first_layer <= layer < p.first_layer + p.num_layers)
