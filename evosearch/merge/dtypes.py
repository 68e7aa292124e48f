"""The floating-point types a recipe or a worker may name, by their mergekit / transformers spelling."""

from __future__ import annotations

import torch

from evosearch.errors import RecipeError

TORCH_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16,
                                        "bfloat16": torch.bfloat16}


def torch_dtype(name: str) -> torch.dtype:
    try:
        return TORCH_DTYPES[name]
    except KeyError:
        raise RecipeError(f"dtype {name!r} is not one of {', '.join(TORCH_DTYPES)}") from None
