"""Passthrough: one model's tensors, optionally scaled (mergekit's `scale`); in `slices:` configs it stacks
layers of several models (read into a DFS recipe, `evosearch.mergekit_config`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from evosearch.merge.methods.base import MergeMethod, Parameter, TensorMerge, check_input_counts, parse_number


@dataclass(frozen=True)
class PassthroughMerge(MergeMethod):
    def weighted_models(self, inputs: Sequence[str], base: Optional[str]) -> list[str]:
        return list(inputs)

    def check_models(self, models: Sequence[str], base: Optional[str]) -> None:
        check_input_counts(self.name, models, base, ignores_base=True, inputs=(1, 1))

    def merge(self, job: TensorMerge) -> torch.Tensor:
        (model, tensor), = job.tensors.items()
        scale = job.params.per_model[model]["scale"]
        return tensor if scale is None else tensor * scale


PASSTHROUGH = PassthroughMerge(name="passthrough", parameters=(
    Parameter("scale", parse_number, per_model=True, default=None, doc="multiplies the tensor when set"),),
    needs_base=False, ignores_base=True, reference="mergekit's passthrough (no paper): copy, or stack slices")
