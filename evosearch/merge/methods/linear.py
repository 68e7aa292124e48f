"""Linear: a weighted average of the models' weights (Wortsman et al. 2022, Model Soups)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from evosearch.errors import RecipeError
from evosearch.merge.methods.base import MergeMethod, TensorMerge, flag, plain_number, recipe_weight
from evosearch.merge.methods.task_arithmetic import WEIGHT


@dataclass(frozen=True)
class LinearMerge(MergeMethod):
    def weighted_models(self, inputs: Sequence[str], base: Optional[str]) -> list[str]:
        return list(inputs)  # a linear merge weighs the base like any other input

    def check_models(self, models: Sequence[str], base: Optional[str]) -> None:
        pass  # any non-empty set of models, with or without a base

    def merge(self, job: TensorMerge) -> torch.Tensor:
        weights = [job.params.per_model[m]["weight"] for m in job.tensors]
        out = torch.zeros_like(next(iter(job.tensors.values())))
        for tensor, w in zip(job.tensors.values(), weights):
            out.add_(tensor, alpha=w)
        if job.params.shared["normalize"]:
            total = sum(weights)
            if total == 0:
                raise RecipeError(f"tensor {job.name}: linear weights sum to 0, cannot normalize")
            out.div_(total)
        return out

    def mixing_weights(self, recipe, paths: Sequence[str]) -> Optional[list[float]]:
        weights = [recipe_weight(recipe, p) for p in paths]
        return [float(w) for w in weights] if all(plain_number(w) for w in weights) else None


LINEAR = LinearMerge(name="linear", parameters=(WEIGHT, flag("normalize", True, "divide by the sum of the weights")),
                     needs_base=False, reference="Wortsman et al. 2022, Model Soups")
