"""NearSwap: take the other model's value where it lies near the base's, interpolating by closeness
(weight t / |base - other|, clipped to [0, 1]): small, local edits survive, large moves are damped."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from evosearch.errors import RecipeError
from evosearch.merge.methods.base import MergeMethod, TensorMerge, TensorParameters, check_input_counts, number


@dataclass(frozen=True)
class NearSwapMerge(MergeMethod):
    def check_models(self, models: Sequence[str], base: Optional[str]) -> None:
        super().check_models(models, base)
        check_input_counts(self.name, models, base, inputs=(2, 2))

    def check_tensor(self, tensor: str, params: TensorParameters) -> None:
        if params.shared["t"] < 0:
            raise RecipeError(f"parameters.t: {params.shared['t']:g} for tensor {tensor} is negative")

    def merge(self, job: TensorMerge) -> torch.Tensor:
        base, other = job.tensors[job.base], job.tensors[job.others[0]]
        weight = (job.params.shared["t"] / (base - other).abs().clamp(min=1e-6)).clamp(min=0, max=1)
        return weight * other + (1 - weight) * base


NEARSWAP = NearSwapMerge(name="nearswap", parameters=(
    number("t", search_range=(0.0, 0.01), doc="distance (in weight units) below which the other model's value is taken whole"),),
    reference="alchemonaut 2024, NearSwap (QuartetAnemoi-70B model card, no paper)")
