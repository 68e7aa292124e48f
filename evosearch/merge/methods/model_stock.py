"""Model Stock (Jang et al. 2024): move from the base towards the fine-tunes' average by a ratio set by the
angle between their task vectors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from evosearch.errors import RecipeError
from evosearch.merge.methods.base import MergeMethod, TensorMerge, flag


def model_stock(base: torch.Tensor, models: Sequence[torch.Tensor], *, filter_wise: bool) -> torch.Tensor:
    shape = base.shape
    if filter_wise:
        w0 = base.unsqueeze(0) if base.dim() == 1 else base
        ws = [m.unsqueeze(0) if m.dim() == 1 else m for m in models]
    else:
        w0, ws = base.reshape(-1), [m.reshape(-1) for m in models]
    offsets = [w - w0 for w in ws]
    cosines = []
    for i, a in enumerate(offsets):
        for b in offsets[i + 1:]:
            norms = (torch.linalg.vector_norm(a, dim=-1) * torch.linalg.vector_norm(b, dim=-1)).clamp(min=1e-6)
            cosines.append(((a * b).sum(dim=-1) / norms).clamp(-1, 1))
    cos = torch.stack(cosines).mean(dim=0).unsqueeze(-1)
    n = len(ws)
    denominator = 1 + (n - 1) * cos
    # Where the denominator vanishes there is no finite estimate: keep the base.
    singular = denominator.abs() < 1e-6
    t = torch.where(singular, torch.zeros_like(cos), n * cos / torch.where(singular, 1.0, denominator))
    average = sum(ws) / n
    return (t * average + (1 - t) * w0).reshape(shape)


@dataclass(frozen=True)
class ModelStockMerge(MergeMethod):
    def check_models(self, models: Sequence[str], base: Optional[str]) -> None:
        super().check_models(models, base)
        others = [m for m in dict.fromkeys(models) if m != base]
        if len(others) < 2:
            raise RecipeError(f"model_stock needs at least two models besides base_model, got {len(others)}")

    def merge(self, job: TensorMerge) -> torch.Tensor:
        return model_stock(job.tensors[job.base], [job.tensors[m] for m in job.others],
                           filter_wise=job.params.shared["filter_wise"])


MODEL_STOCK = ModelStockMerge(name="model_stock",
                              parameters=(flag("filter_wise", False, "one ratio per row instead of per tensor"),),
                              reference="Jang et al. 2024, Model Stock")
