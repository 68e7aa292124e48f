"""Tiny random Llama checkpoints for merge tests: a base and fine-tunes that are base + small deltas."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def tiny_llama_config(layers: int = 4, hidden: int = 64, vocab: int = 128) -> LlamaConfig:
    return LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                       num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=64, tie_word_embeddings=False)


def save_llama_family(root: Path, n_finetunes: int = 3, delta: float = 0.02, seed: int = 0,
                      config: LlamaConfig | None = None) -> list[Path]:
    """Write `base` and `ft0..` under `root` (safetensors) and return their paths, base first."""
    torch.manual_seed(seed)
    base = LlamaForCausalLM(config or tiny_llama_config()).float()
    paths = [root / "base"]
    base.save_pretrained(paths[0], safe_serialization=True)
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    for i in range(n_finetunes):
        gen = torch.Generator().manual_seed(seed * 1000 + i + 1)
        with torch.no_grad():
            for name, p in base.named_parameters():
                p.copy_(base_state[name] + delta * torch.randn(p.shape, generator=gen))
        paths.append(root / f"ft{i}")
        base.save_pretrained(paths[-1], safe_serialization=True)
    return paths
