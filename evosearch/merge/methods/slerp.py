"""SLERP: spherical interpolation between the base and one other model (Shoemake 1985, as mergekit does it)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from evosearch.errors import RecipeError
from evosearch.merge.methods.base import MergeMethod, TensorMerge, TensorParameters, number, plain_number


def slerp(t: float, v0: torch.Tensor, v1: torch.Tensor, *, dot_threshold: float = 0.9995,
          eps: float = 1e-8) -> torch.Tensor:
    """Spherical interpolation of the flattened tensors; nearly (anti)parallel pairs interpolate linearly."""
    a, b = v0.reshape(-1), v1.reshape(-1)
    if a.numel() == 0:
        return v0.clone()
    na, nb = torch.linalg.vector_norm(a), torch.linalg.vector_norm(b)
    na = na if na > eps else torch.ones_like(na)
    nb = nb if nb > eps else torch.ones_like(nb)
    dot = float(((a / na) * (b / nb)).sum().clamp(-1, 1))
    if abs(dot) > dot_threshold:
        ca, cb = 1 - t, t
    else:
        theta = math.acos(dot)
        ca, cb = math.sin((1 - t) * theta) / math.sin(theta), math.sin(t * theta) / math.sin(theta)
    return (ca * a + cb * b).reshape(v0.shape)


@dataclass(frozen=True)
class SlerpMerge(MergeMethod):
    def check_models(self, models: Sequence[str], base: Optional[str]) -> None:
        if base is not None and len(set(models) | {base}) != 2:
            raise RecipeError("slerp merges exactly two models, one of which is base_model")
        super().check_models(models, base)

    def check_tensor(self, tensor: str, params: TensorParameters) -> None:
        t = params.shared["t"]
        if not 0 <= t <= 1:
            raise RecipeError(f"parameters.t: {t:g} for tensor {tensor} is outside [0, 1]")

    def merge(self, job: TensorMerge) -> torch.Tensor:
        return slerp(job.params.shared["t"], job.tensors[job.base], job.tensors[job.others[0]])

    def mixing_weights(self, recipe, paths: Sequence[str]) -> Optional[list[float]]:
        t = recipe.parameters.get("t")
        return [1.0 - t, t] if plain_number(t) else None


SLERP = SlerpMerge(name="slerp", parameters=(number("t", search_range=(0.0, 1.0),
                                                    doc="0 gives the base, 1 the other model"),),
                   reference="Shoemake 1985, Animating Rotation with Quaternion Curves")
