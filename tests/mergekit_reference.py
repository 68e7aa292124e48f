"""mergekit 0.1.5 (a test-only dependency) as the numerical reference: one config merged in-process on CPU."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file


def mergekit_merge(config: dict, out_dir: Path, **options) -> dict[str, torch.Tensor]:
    """The tensors mergekit writes for `config`, computed and stored in float32 (`options`: more
    `MergeOptions`, e.g. `lora_merge_cache` for `model+lora` sources)."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    cfg = MergeConfiguration.model_validate({**config, "dtype": "float32", "out_dtype": "float32"})
    run_merge(cfg, str(out_dir), MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True, **options))
    return load_file(out_dir / "model.safetensors")


def max_abs_diff(ours: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> float:
    assert set(ours) == set(reference), sorted(set(ours) ^ set(reference))[:3]
    return max((ours[n].float() - reference[n].float()).abs().max().item() for n in reference)
