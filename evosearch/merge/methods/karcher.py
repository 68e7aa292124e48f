"""Karcher mean: the Riemannian (Fréchet) mean of the models' directions on the unit hypersphere, found by
fixed-point iteration, scaled by their mean norm. Every input counts alike, `base_model` included."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from evosearch.errors import RecipeError
from evosearch.merge.methods.base import MergeMethod, TensorMerge, TensorParameters, integer, number


def karcher_mean(tensors: Sequence[torch.Tensor], *, max_iter: int, tol: float) -> torch.Tensor:
    if len(tensors) == 1:
        return tensors[0]
    norm_dtype = torch.float64 if tensors[0].dtype == torch.float64 else torch.float32
    norms = [torch.linalg.vector_norm(t.to(norm_dtype)) for t in tensors]
    share = 1.0 / len(tensors)
    live = [(t / n).to(t.dtype) for t, n in zip(tensors, norms) if n.item() > tol]
    if not live:
        return torch.zeros_like(tensors[0])
    alpha = 1.0 / len(live)
    mean = sum(alpha * u for u in live)
    mean_norm = torch.linalg.vector_norm(mean.to(norm_dtype))
    mean = live[0].clone() if mean_norm.item() < tol else (mean / mean_norm).to(mean.dtype)
    for _ in range(max_iter):
        tangent = torch.zeros_like(mean)
        for unit in live:
            cos = torch.clamp(torch.dot(mean.flatten(), unit.flatten()), -1.0, 1.0)
            theta = torch.arccos(cos)
            if theta.item() >= tol:
                tangent += alpha * (theta / torch.sin(theta)) * (unit - cos * mean)
        length = torch.linalg.vector_norm(tangent.to(norm_dtype))
        if length.item() < tol:
            break
        mean = (torch.cos(length) * mean + torch.sin(length) * (tangent / length)).to(mean.dtype)
        unit_norm = torch.linalg.vector_norm(mean.to(norm_dtype))
        if unit_norm.item() > tol:
            mean = (mean / unit_norm).to(mean.dtype)
    return sum(share * n for n in norms) * mean


@dataclass(frozen=True)
class KarcherMerge(MergeMethod):
    def check_models(self, models: Sequence[str], base: Optional[str]) -> None:
        pass  # any non-empty set of models; a base_model is one more input

    def check_tensor(self, tensor: str, params: TensorParameters) -> None:
        if params.shared["max_iter"] < 0 or params.shared["tol"] < 0:
            raise RecipeError(f"parameters: karcher's max_iter and tol must be >= 0 for tensor {tensor}")

    def merge(self, job: TensorMerge) -> torch.Tensor:
        shared = job.params.shared
        return karcher_mean(list(job.tensors.values()), max_iter=shared["max_iter"], tol=shared["tol"])


KARCHER = KarcherMerge(name="karcher", parameters=(
    integer("max_iter", default=10, doc="fixed-point iterations at most"),
    number("tol", default=1e-5, doc="stop when the tangent step is shorter")),
    needs_base=False, ignores_base=True, reference="Karcher mean on the hypersphere, arXiv 2603.04972 (mergekit's reference)")
