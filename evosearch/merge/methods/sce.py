"""SCE (Wan et al. 2024, FuseChat): Select the elements where the task vectors vary most, Calculate each
model's weight from its task vector's energy, Erase the contributions whose sign disagrees with the sum's."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from evosearch.errors import RecipeError
from evosearch.merge.methods.base import MergeMethod, TensorMerge, TensorParameters, flag, number


def variance_mask(task_vectors: torch.Tensor, fraction: float) -> torch.Tensor:
    """1 at the `fraction` of elements (of those that vary at all) whose variance across models is largest."""
    if fraction >= 1:
        return torch.ones_like(task_vectors[0])
    variance = torch.var(task_vectors, dim=0, unbiased=False)
    k = int(torch.count_nonzero(variance) * fraction) if fraction > 0 else 0
    mask = torch.zeros_like(variance)
    if k:
        mask.view(-1)[torch.topk(variance.abs().view(-1), k=k, largest=True).indices] = 1
    return mask


def energy_weights(task_vectors: torch.Tensor) -> torch.Tensor:
    """Each model's mean squared task vector, as a share of the total (equal shares when all are ~0)."""
    energy = task_vectors.square().reshape(task_vectors.shape[0], -1).mean(dim=1)
    total = float(energy.sum())
    if abs(total) < 1e-6:
        return torch.full_like(energy, 1.0 / energy.shape[0])
    return energy / total


@dataclass(frozen=True)
class SCEMerge(MergeMethod):
    def check_tensor(self, tensor: str, params: TensorParameters) -> None:
        fraction = params.shared["select_topk"]
        if not 0 <= fraction <= 1:
            raise RecipeError(f"parameters.select_topk: {fraction:g} for tensor {tensor} is outside [0, 1]")

    def merge(self, job: TensorMerge) -> torch.Tensor:
        base = job.tensors[job.base]
        others = job.others
        if not others:
            return base
        deltas = torch.stack([job.tensors.pop(m) - base for m in others])
        fraction = job.params.shared["select_topk"]
        if fraction < 1:
            deltas *= variance_mask(deltas, fraction)
        majority = torch.where(deltas.sum(dim=0) >= 0, 1.0, -1.0).to(deltas.dtype)
        agree = deltas.sign().eq(majority)
        weights = energy_weights(deltas).reshape(-1, *([1] * base.dim())) * agree
        return base + (deltas * weights).sum(dim=0) / weights.sum(dim=0).clamp(min=1e-6)


SCE = SCEMerge(name="sce", parameters=(
    flag("int8_mask", False, "accepted for mergekit configs; masks are kept in the compute dtype"),
    number("select_topk", default=1.0, search_range=(0.1, 1.0),
           doc="fraction of elements kept, those of largest variance across the task vectors")),
    reference="Wan et al. 2024, FuseChat (SCE merging), arXiv 2408.07990")
