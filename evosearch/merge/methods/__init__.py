"""The merge-method registry: every method a recipe can name, one object each (see `base.MergeMethod`).

Adding a method is one module (a `MergeMethod` subclass and its instance) and one entry below."""

from __future__ import annotations

from evosearch.errors import RecipeError
from evosearch.merge.methods.arcee_fusion import ARCEE_FUSION
from evosearch.merge.methods.base import MergeMethod, Parameter, TensorMerge, TensorParameters
from evosearch.merge.methods.karcher import KARCHER
from evosearch.merge.methods.linear import LINEAR
from evosearch.merge.methods.model_stock import MODEL_STOCK
from evosearch.merge.methods.multislerp import MULTISLERP
from evosearch.merge.methods.nearswap import NEARSWAP
from evosearch.merge.methods.nuslerp import NUSLERP
from evosearch.merge.methods.passthrough import PASSTHROUGH
from evosearch.merge.methods.ram import RAM, RAMPLUS_TL
from evosearch.merge.methods.sce import SCE
from evosearch.merge.methods.slerp import SLERP
from evosearch.merge.methods.subspace import ISO_C, ISO_CTS, TSV_M
from evosearch.merge.methods.task_arithmetic import (
    BREADCRUMBS,
    BREADCRUMBS_TIES,
    DARE_LINEAR,
    DARE_TIES,
    DELLA,
    DELLA_LINEAR,
    TASK_ARITHMETIC,
    TIES,
)

METHODS: dict[str, MergeMethod] = {m.name: m for m in (
    LINEAR,
    TASK_ARITHMETIC,
    TIES,
    DARE_TIES,
    DARE_LINEAR,
    BREADCRUMBS,
    BREADCRUMBS_TIES,
    DELLA,
    DELLA_LINEAR,
    MODEL_STOCK,
    SLERP,
    SCE,
    NUSLERP,
    MULTISLERP,
    KARCHER,
    NEARSWAP,
    ARCEE_FUSION,
    RAM,
    RAMPLUS_TL,
    PASSTHROUGH,
    ISO_C,
    ISO_CTS,
    TSV_M,
)}


def get_method(name: str) -> MergeMethod:
    try:
        return METHODS[name]
    except KeyError:
        raise RecipeError(f"unknown merge_method {name!r}; known: {', '.join(sorted(METHODS))}") from None


__all__ = ["METHODS", "MergeMethod", "Parameter", "TensorMerge", "TensorParameters", "get_method"]
