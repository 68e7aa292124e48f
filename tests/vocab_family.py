"""Tiny Llama families whose fine-tunes added tokens, as real chat fine-tunes do.

`base` has a word-level tokenizer of 96 tokens (96 embedding rows). `chat` adds the special tokens
<|im_start|> and <|im_end|> (98 rows); `tool` adds <|im_start|> as well and a plain token <tool> (98
rows). So the union has tokens every source has, one that only the two fine-tunes share (averaged), and
tokens only one source has (taken from it).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AddedToken, LlamaForCausalLM, PreTrainedTokenizerFast

from tiny_llama import tiny_llama_config

BASE_TOKENS = 96
ADDED = {"chat": [AddedToken("<|im_start|>", special=True), AddedToken("<|im_end|>", special=True)],
         "tool": [AddedToken("<|im_start|>", special=True), "<tool>"]}


def base_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i + 3 for i in range(BASE_TOKENS - 3)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def save_vocab_family(root: Path, tied: bool = False, seed: int = 0) -> dict[str, str]:
    """Write base, chat and tool under `root`; their paths by name."""
    torch.manual_seed(seed)
    config = tiny_llama_config(layers=2, hidden=32, vocab=BASE_TOKENS)
    config.tie_word_embeddings = tied
    base = LlamaForCausalLM(config).float()
    paths = {"base": root / "base"}
    base.save_pretrained(paths["base"], safe_serialization=True)
    base_tokenizer().save_pretrained(paths["base"])
    for k, (name, added) in enumerate(ADDED.items()):
        gen = torch.Generator().manual_seed(seed * 100 + k + 1)
        model = LlamaForCausalLM(copy.deepcopy(config)).float()
        model.load_state_dict(base.state_dict())
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.02 * torch.randn(p.shape, generator=gen))
        tokenizer = base_tokenizer()
        tokenizer.add_tokens(added)
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():  # the new rows: trained in a real fine-tune, random here
            model.get_input_embeddings().weight[BASE_TOKENS:] = torch.randn(len(added), config.hidden_size,
                                                                            generator=gen)
            if not tied:
                model.get_output_embeddings().weight[BASE_TOKENS:] = torch.randn(len(added), config.hidden_size,
                                                                                 generator=gen)
        paths[name] = root / name
        model.save_pretrained(paths[name], safe_serialization=True)
        tokenizer.save_pretrained(paths[name])
    return {k: str(v) for k, v in paths.items()}
