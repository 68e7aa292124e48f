"""Multi-SLERP: barycentric interpolation of several models on the hypersphere (tangent space at the
weighted mean of their directions, exponential map back), norms averaged by the same weights."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from evosearch.errors import RecipeError
from evosearch.merge.methods.base import MergeMethod, TensorMerge, check_input_counts, flag, number
from evosearch.merge.methods.task_arithmetic import WEIGHT


@dataclass(frozen=True)
class MultiSlerpMerge(MergeMethod):
    def check_models(self, models: Sequence[str], base: Optional[str]) -> None:
        check_input_counts(self.name, models, base, others=(1, None))

    def merge(self, job: TensorMerge) -> torch.Tensor:
        others = job.others
        if len(others) == 1:
            return job.tensors[others[0]]
        eps = job.params.shared["eps"]
        base = job.tensors[job.base] if job.base is not None else None
        points = torch.stack([job.tensors.pop(m) for m in others])
        if base is not None:
            points -= base
        flat = points.view(len(others), -1)
        weights = torch.tensor([job.params.per_model[m]["weight"] for m in others], dtype=flat.dtype,
                               device=flat.device)
        if job.params.shared["normalize_weights"]:
            weights = weights / weights.sum()
        norms = torch.norm(flat, dim=-1, keepdim=True)
        units = flat / (norms + eps)
        mean = (units * weights.view(-1, 1)).sum(0)
        mean_norm = torch.norm(mean)
        if mean_norm < eps:
            if len(others) != 2:
                raise RecipeError(f"tensor {job.name}: multislerp's weighted mean direction is zero "
                                  f"(antipodal models balanced by their weights); change the weights")
            out = (points[0] * weights[0] + points[1] * weights[1]).view(points.shape[1:])
            return out if base is None else out + base
        mean = mean / mean_norm
        tangents = units - (units * mean).sum(-1, keepdim=True) * mean
        step = (tangents * weights.view(-1, 1)).sum(0)
        length = torch.norm(step) + eps
        out = (mean * torch.cos(length) + step * (torch.sin(length) / length)) * (norms.squeeze(-1) * weights).sum()
        out = out.view(points.shape[1:])
        return out if base is None else out + base


MULTISLERP = MultiSlerpMerge(name="multislerp", parameters=(
    WEIGHT,
    flag("normalize_weights", True, "divide the weights by their sum"),
    number("eps", default=1e-8, doc="guard against division by a zero norm")),
    needs_base=False, reference="Goddard, Multi-SLERP (goddard.blog, no paper): barycentric interpolation on a hypersphere")
