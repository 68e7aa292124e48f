"""RAM (Reinforced Agent Merging): a task vector's change is kept whole where it is the only model that
changes an element, and averaged over the models that change it where several do; RAM+ (tensor-local)
also boosts each model's unique changes by how much it overlaps with the others."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from evosearch.merge.methods.base import MergeMethod, TensorMerge, number


@dataclass(frozen=True)
class RAMMerge(MergeMethod):
    boost_unique: bool = False  # RAM+'s per-model factor on its unique changes

    def merge(self, job: TensorMerge) -> torch.Tensor:
        base = job.tensors[job.base]
        others = job.others
        if not others:
            return base
        shared = job.params.shared
        deltas = torch.stack([job.tensors.pop(m) - base for m in others]).view(len(others), -1)
        changed = deltas.abs() > shared["epsilon"]
        count = changed.sum(dim=0, keepdim=True)
        alone, several = count == 1, count > 1
        deltas = deltas * changed
        unique = deltas * alone
        if self.boost_unique:
            overlap_ratio = (changed & several).sum(dim=1) / (changed & alone).sum(dim=1).clamp(min=shared["epsilon"])
            unique = unique * (1 + shared["r"] * overlap_ratio.clamp(min=0, max=shared["alpha"])).unsqueeze(-1)
        merged = (unique + deltas * several / count.clamp(min=1)).sum(dim=0, keepdim=True)
        return base + merged.reshape_as(base)


_EPSILON = number("epsilon", default=1e-5, doc="a change smaller than this counts as none")
_REFERENCE = "Reinforced Agent Merging (RAM), arXiv 2601.13572"
RAM = RAMMerge(name="ram", parameters=(_EPSILON,), reference=_REFERENCE)
RAMPLUS_TL = RAMMerge(name="ramplus_tl", parameters=(
    number("r", default=0.1, search_range=(0.0, 1.0), doc="strength of the boost of unique changes"),
    number("alpha", default=0.2, search_range=(0.0, 1.0), doc="cap of the overlap ratio in the boost"),
    _EPSILON), reference=_REFERENCE + ", RAM+ tensor-local", boost_unique=True)
