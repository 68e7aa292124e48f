"""NuSLERP: spherical interpolation of two models (or of their task vectors, with a base) by a weight pair,
row-wise, column-wise or over the flattened tensor (mergekit's generalisation of SLERP)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from evosearch.merge.methods.base import MergeMethod, TensorMerge, check_input_counts, flag
from evosearch.merge.methods.task_arithmetic import WEIGHT


def slerp_along(t: float, a: torch.Tensor, b: torch.Tensor, *, dim: int, flatten: bool,
                eps: float = 1e-8) -> torch.Tensor:
    """Spherical interpolation of the vectors along `dim` (all elements when `flatten`); (nearly) colinear
    pairs interpolate linearly. The vectors keep their norms: only the coefficients are spherical."""
    shape = a.shape
    if flatten:
        a, b = a.reshape(-1), b.reshape(-1)
    elif dim != -1:
        a, b = a.transpose(dim, -1), b.transpose(dim, -1)
    unit_a = a / torch.norm(a, dim=-1, keepdim=True).clamp(min=1e-7)
    unit_b = b / torch.norm(b, dim=-1, keepdim=True).clamp(min=1e-7)
    cos = (unit_a * unit_b).sum(dim=-1, keepdim=True).clamp(-1, 1)
    colinear = (1 - cos.square()) <= eps ** 2
    theta = torch.acos(torch.where(colinear, 0, cos))
    spherical = (torch.sin((1 - t) * theta) * a + torch.sin(t * theta) * b) / torch.sin(theta)
    out = torch.where(colinear, (1 - t) * a + t * b, spherical)
    if dim != -1 and not flatten:
        out = out.transpose(dim, -1)
    return out.reshape(shape)


@dataclass(frozen=True)
class NuSlerpMerge(MergeMethod):
    def check_models(self, models: Sequence[str], base: Optional[str]) -> None:
        check_input_counts(self.name, models, base, others=(2, 2))

    def merge(self, job: TensorMerge) -> torch.Tensor:
        first, second = job.others
        w0, w1 = (job.params.per_model[m]["weight"] for m in (first, second))
        t = 0.5 if abs(w0 + w1) < 1e-6 else w1 / (w0 + w1)
        shared = job.params.shared
        kwargs = dict(dim=0 if shared["nuslerp_row_wise"] else -1, flatten=shared["nuslerp_flatten"])
        if job.base is None:
            return slerp_along(t, job.tensors[first], job.tensors[second], **kwargs)
        base = job.tensors[job.base]
        return base + slerp_along(t, job.tensors[first] - base, job.tensors[second] - base, **kwargs)


NUSLERP = NuSlerpMerge(name="nuslerp", parameters=(
    WEIGHT,
    flag("nuslerp_row_wise", False, "interpolate each column vector (rows of the transpose) instead of each row"),
    flag("nuslerp_flatten", True, "interpolate the whole tensor as one vector")),
    needs_base=False, reference="mergekit's NuSLERP (no paper): SLERP by a weight pair, per row, column or whole tensor")
