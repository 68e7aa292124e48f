"""LoRA adapters (PEFT's on-disk format) folded into their base model's tensors.

A source written `BASE+ADAPTER` (mergekit's syntax) or a PEFT adapter directory alone (its base named by
`base_model_name_or_path` in adapter_config.json) is its base with every adapted weight replaced by
W + scaling * B @ A, as PEFT's `merge_and_unload` computes it (scaling = lora_alpha / r, or
lora_alpha / sqrt(r) with rsLoRA; r read from the tensors, so `rank_pattern` is honoured). Whole modules
the adapter saved (`modules_to_save`) replace the base's. The fold happens when a tensor is read, so an
export streams it and a search worker, which reads every tensor once, folds once.

Adapters whose fold is not W + scaling * B @ A (DoRA, LoRA biases, `alpha_pattern`, fan-in-fan-out
layers) are refused with one line rather than folded wrongly.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
from safetensors.torch import load_file

from evosearch.errors import UsageError, first_line

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model."


class AdapterError(UsageError, ValueError):
    """An adapter that cannot be folded; the message is one line naming the adapter directory."""


def is_adapter_dir(path: Path) -> bool:
    return (path / ADAPTER_CONFIG).is_file()


def adapter_base(path: Path) -> str:
    """The base model an adapter directory names (`base_model_name_or_path`)."""
    base = _read_config(path).get("base_model_name_or_path")
    if not base:
        raise AdapterError(f"adapter {path}: {ADAPTER_CONFIG} names no base_model_name_or_path; "
                           f"write the source as BASE+{path}")
    return str(base)


@dataclass(frozen=True)
class LoraAdapter:
    """An adapter's low-rank pairs and saved modules, keyed by the base tensor they change."""

    path: Path
    pairs: Mapping[str, tuple[torch.Tensor, torch.Tensor, float, bool]]  # weight -> (A, B, scaling, embedding)
    replaced: Mapping[str, torch.Tensor]  # weight -> the adapter's own copy (modules_to_save)

    @classmethod
    def load(cls, path: Path) -> "LoraAdapter":
        config = _read_config(path)
        if config.get("peft_type", "LORA") != "LORA":
            raise AdapterError(f"adapter {path}: peft_type {config['peft_type']} is not LORA")
        for flag, why in (("use_dora", "DoRA rescales the folded weight"), ("fan_in_fan_out", "transposed layers"),
                          ("lora_bias", "LoRA biases")):
            if config.get(flag):
                raise AdapterError(f"adapter {path}: {flag} ({why}) is not supported; fold it with PEFT first")
        if config.get("alpha_pattern"):
            raise AdapterError(f"adapter {path}: alpha_pattern is not supported; fold it with PEFT first")
        weights = path / ADAPTER_WEIGHTS
        if not weights.is_file():
            raise AdapterError(f"adapter {path}: no {ADAPTER_WEIGHTS} (only safetensors adapters are read)")
        try:
            tensors = load_file(weights)
        except Exception as e:  # safetensors raises its own error type for a corrupt file
            raise AdapterError(f"adapter {path}: unreadable {ADAPTER_WEIGHTS} ({first_line(e)})") from None
        alpha, rslora = float(config.get("lora_alpha", 8)), bool(config.get("use_rslora"))
        pairs, replaced = {}, {}
        for key, tensor in tensors.items():
            name = key.removeprefix(_PEFT_PREFIX)
            for a_part, b_part, embedding in ((".lora_A.weight", ".lora_B.weight", False),
                                              (".lora_embedding_A", ".lora_embedding_B", True)):
                if name.endswith(a_part):
                    module = name.removesuffix(a_part)
                    b = tensors.get(key.removesuffix(a_part) + b_part)
                    if b is None:
                        raise AdapterError(f"adapter {path}: {key} has no matching {b_part.lstrip('.')}")
                    rank = tensor.shape[0]
                    scaling = alpha / math.sqrt(rank) if rslora else alpha / rank
                    pairs[f"{module}.weight"] = (tensor, b, scaling, embedding)
                    break
            else:
                if ".lora_" in name or "lora_magnitude_vector" in name:
                    continue  # the B half of a pair (read above), or DoRA's vector (refused by its flag)
                replaced[name.replace(".modules_to_save.default", "")] = tensor
        if not pairs and not replaced:
            raise AdapterError(f"adapter {path}: {ADAPTER_WEIGHTS} holds no LoRA tensors")
        return cls(path, pairs, replaced)

    def targets(self) -> set[str]:
        return set(self.pairs) | set(self.replaced)

    def fold(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        """Base tensor `name` with the adapter folded in (the base tensor itself when it is not adapted)."""
        if name in self.replaced:
            return self.replaced[name].to(weight.dtype)
        pair = self.pairs.get(name)
        if pair is None:
            return weight
        a, b, scaling, embedding = pair
        compute = torch.float64 if weight.dtype == torch.float64 else torch.float32
        delta = b.to(compute) @ a.to(compute)
        if embedding:
            delta = delta.T
        if tuple(delta.shape) != tuple(weight.shape):
            raise AdapterError(f"adapter {self.path}: its update of {name} has shape {tuple(delta.shape)}, the "
                               f"base's tensor {tuple(weight.shape)}")
        return (weight.to(compute) + delta * scaling).to(weight.dtype)


def _read_config(path: Path) -> dict:
    try:
        return json.loads((path / ADAPTER_CONFIG).read_text())
    except (OSError, ValueError) as e:
        raise AdapterError(f"adapter {path}: unreadable {ADAPTER_CONFIG} ({first_line(e)})") from None
