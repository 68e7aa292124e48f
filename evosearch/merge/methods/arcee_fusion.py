"""Arcee Fusion: keep the other model's change only where it matters most, by an importance score (the
change's size times the KL divergence of the rows' softmax) above an outlier fence (median + 1.5 IQR)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from evosearch.merge.methods.base import MergeMethod, TensorMerge, check_input_counts

QUANTILE_SAMPLE = 1_000_000  # past this many elements the quartiles come from a random sample, as mergekit's


def importance(other: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    p = F.softmax(other, dim=-1) + 1e-8
    q = F.softmax(base, dim=-1) + 1e-8
    return (other - base).abs() * torch.sum(p * torch.log(p / q), dim=-1, keepdim=True)


def outlier_fence(scores: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """median + 1.5 x the interquartile range, quartiles read off the sorted (maybe sampled) scores."""
    flat = scores.reshape(-1)
    if flat.numel() > QUANTILE_SAMPLE:
        flat = flat[torch.randint(flat.numel(), (QUANTILE_SAMPLE,), generator=generator, device=flat.device)]
    ordered = torch.sort(flat).values
    positions = (torch.tensor([0.25, 0.5, 0.75]).to(ordered.device) * (ordered.numel() - 1)).long()
    q1, median, q3 = ordered[positions]
    return median + 1.5 * (q3 - q1)


@dataclass(frozen=True)
class ArceeFusionMerge(MergeMethod):
    def check_models(self, models: Sequence[str], base: Optional[str]) -> None:
        super().check_models(models, base)
        check_input_counts(self.name, models, base, inputs=(2, 2))

    def merge(self, job: TensorMerge) -> torch.Tensor:
        base, other = job.tensors[job.base], job.tensors[job.others[0]]
        scores = importance(other, base)
        generator = torch.Generator(device=base.device).manual_seed(job.seed)
        keep = (scores >= outlier_fence(scores, generator)).to(base.dtype)
        return base + (other - base) * keep


ARCEE_FUSION = ArceeFusionMerge(name="arcee_fusion", parameters=(),
                                reference="Arcee AI, Arcee Fusion (no paper): importance-gated changes")
