"""Deterministic CPU training of the zoo's tiny Llama models."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast


@dataclass(frozen=True)
class ModelShape:
    hidden_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int = 384
    max_position_embeddings: int = 128


@dataclass(frozen=True)
class TrainSettings:
    steps: int
    lr: float
    batch_size: int = 32
    seq_len: int = 64
    warmup_steps: int = 0
    weight_decay: float = 0.0


def new_model(shape: ModelShape, tokenizer: PreTrainedTokenizerFast, seed: int) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=shape.hidden_size, num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads, num_key_value_heads=shape.num_attention_heads,
        intermediate_size=shape.intermediate_size, max_position_embeddings=shape.max_position_embeddings,
        rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def packed_batches(texts: Iterator[str], tokenizer: PreTrainedTokenizerFast, batch_size: int,
                   seq_len: int) -> Iterator[torch.Tensor]:
    """Examples `<s>text</s>` concatenated into rows of exactly `seq_len` tokens (no padding)."""
    eos = tokenizer.eos_token_id
    buffer: list[int] = []
    while True:
        while len(buffer) < batch_size * seq_len:
            buffer.extend(tokenizer(next(texts))["input_ids"] + [eos])
        rows = torch.tensor(buffer[: batch_size * seq_len]).view(batch_size, seq_len)
        buffer = buffer[batch_size * seq_len:]
        yield rows


def train_only(model: LlamaForCausalLM, layers: Optional[Sequence[int]], embeddings: bool) -> None:
    """Make only decoder `layers` (None: all of them) and, with `embeddings`, the token embeddings (tied to
    the head) and the final norm trainable; everything else is frozen (requires_grad False)."""
    chosen = range(model.config.num_hidden_layers) if layers is None else layers
    for p in model.parameters():
        p.requires_grad_(False)
    for i in chosen:
        for p in model.model.layers[i].parameters():
            p.requires_grad_(True)
    if embeddings:
        for p in (*model.model.embed_tokens.parameters(), *model.model.norm.parameters(),
                  *model.lm_head.parameters()):
            p.requires_grad_(True)


# Called after every optimizer step with (step number from 1, that step's loss).
StepCallback = Callable[[int, float], None]


def train(model: LlamaForCausalLM, batches: Iterator[torch.Tensor], settings: TrainSettings,
          on_step: Optional[StepCallback] = None) -> list[float]:
    """AdamW with linear warmup then cosine decay to 10% over the parameters that require grad (see
    `train_only`); returns the loss of every step."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=settings.lr, betas=(0.9, 0.98), weight_decay=settings.weight_decay)

    def lr_at(step: int) -> float:
        if step < settings.warmup_steps:
            return (step + 1) / settings.warmup_steps
        progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    losses = []
    for rows in itertools.islice(batches, settings.steps):
        loss = model(input_ids=rows, labels=rows).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(len(losses), losses[-1])
    model.eval()
    return losses
