"""The output vocabulary of a merge (`tokenizer_source`), and each source's embedding rows mapped to it.

Fine-tunes often add tokens (chat-template markers, padding), so sources of one family differ in
vocabulary size. `tokenizer_source` says which vocabulary the merged model gets, with mergekit's
meanings:

* ``base``: the base model's tokenizer (the first source's when the recipe has no base model);
* ``union``: the base tokenizer plus, in source order, every token another source has and it lacks
  (plain tokens first, then added tokens with their settings);
* a model path: that model's tokenizer.

Every vocabulary-indexed tensor (embeddings, untied head) of every source is then re-indexed by token
into the output vocabulary before the merge method sees it. A row a source lacks is filled as mergekit
fills it: from the one source that has the token, else from the base model when it has it, else the mean
of the sources that have it, and zeros when none has it. A padded embedding (more rows than tokens)
loses its padding rows, as in mergekit.

One deliberate difference: mergekit orders the non-base sources of a union (and picks the base of a
recipe without one) by iterating a set, so its token ids for tokens from two different fine-tunes depend
on the process's hash seed; here they follow the recipe's source order. Rows agree token by token.
"""

from __future__ import annotations

import functools
import tempfile
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from evosearch.merge.sources import VocabularyError, load_tokenizer, source_key


@dataclass(frozen=True)
class OutputVocabulary:
    """The merged model's tokenizer and, per source (keyed by the recipe's spelling), the source row of
    every output token id (-1 where the source lacks the token)."""

    tokenizer: PreTrainedTokenizerBase
    size: int
    rows: Mapping[str, torch.Tensor]

    def remap(self, tensors: Mapping[str, torch.Tensor], base: Optional[str]) -> dict[str, torch.Tensor]:
        """Each source's vocabulary tensor re-indexed to the output vocabulary (dim 0), missing rows filled
        by mergekit's rule over the sources of this tensor (`tensors`, in order) and `base`."""
        models = list(tensors)
        rows = torch.stack([self.rows[m] for m in models])  # [sources, size]
        present = rows >= 0
        count = present.sum(0)
        first = tensors[models[0]]
        fill = torch.zeros((self.size, *first.shape[1:]), dtype=first.dtype, device=first.device)
        incomplete = (count < len(models)).nonzero().flatten().tolist()
        if incomplete:
            base_at = models.index(base) if base in models else None
            for token_id in incomplete:
                holders = present[:, token_id].nonzero().flatten().tolist()
                if len(holders) == 1:
                    donors = holders
                elif not holders:
                    continue  # no source has it: zeros
                elif base_at is not None and present[base_at, token_id]:
                    donors = [base_at]
                else:
                    donors = holders
                total = sum(tensors[models[h]][int(rows[h, token_id])] for h in donors)
                fill[token_id] = total / len(donors)
        out = {}
        for i, model in enumerate(models):
            mapped = fill.clone()
            mask = present[i].to(first.device)
            mapped[mask] = tensors[model][rows[i].to(first.device)[mask]]
            out[model] = mapped
        return out


def output_vocabulary(tokenizer_source: str, models: Sequence[str], base: Optional[str],
                      sizes: Mapping[str, int]) -> OutputVocabulary:
    """The output vocabulary of `models` (recipe spellings, base first when there is one) for
    `tokenizer_source`; `sizes` gives each model's embedding rows. Cached: a worker builds it once."""
    return _output_vocabulary(tokenizer_source, tuple(models), base, tuple(sizes[m] for m in models))


@functools.lru_cache(maxsize=16)
def _output_vocabulary(tokenizer_source: str, models: tuple[str, ...], base: Optional[str],
                       sizes: tuple[int, ...]) -> OutputVocabulary:
    base = base or models[0]
    by_model = dict(zip(models, sizes))
    tokenizers = {m: _tokenizer(m) for m in models}
    for m in models:
        too_high = [t for t, i in tokenizers[m].get_vocab().items() if i >= by_model[m]]
        if too_high:
            raise VocabularyError(f"model {m}: its tokenizer has token {too_high[0]!r} beyond its "
                                  f"{by_model[m]} embedding rows; trim the tokenizer to the model")
    if tokenizer_source == "base":
        tokenizer = tokenizers[base]
    elif tokenizer_source == "union":
        tokenizer = _union(tokenizers[base], [tokenizers[m] for m in models if m != base])
    else:
        tokenizer = _tokenizer(tokenizer_source)
    vocab = tokenizer.get_vocab()
    size = len(vocab)
    if sorted(vocab.values()) != list(range(size)):
        raise VocabularyError(f"tokenizer_source {tokenizer_source}: token ids are not 0..{size - 1}")
    tokens = sorted(vocab, key=vocab.get)
    rows = {}
    for m in models:
        own = tokenizers[m].get_vocab()
        rows[m] = torch.tensor([own.get(t, -1) for t in tokens], dtype=torch.long)
    return OutputVocabulary(tokenizer, size, rows)


def _tokenizer(path: str) -> PreTrainedTokenizerBase:
    return _tokenizer_of(source_key(path), path)


@functools.lru_cache(maxsize=32)
def _tokenizer_of(key: str, path: str) -> PreTrainedTokenizerBase:
    return load_tokenizer(path)


def _union(base: PreTrainedTokenizerBase, others: Sequence[PreTrainedTokenizerBase]) -> PreTrainedTokenizerBase:
    """The base tokenizer extended by the other sources' tokens (a fresh copy: the base's is cached)."""
    with tempfile.TemporaryDirectory() as tmp:
        base.save_pretrained(tmp)
        union = AutoTokenizer.from_pretrained(tmp, trust_remote_code=False, local_files_only=True)
    plain: dict[str, None] = {}
    added: dict[str, object] = {}
    for tok in [base, *others]:
        specials = {info.content: info for info in tok.added_tokens_decoder.values()}
        for token in sorted(tok.get_vocab(), key=tok.get_vocab().get):
            if token in specials:
                added.setdefault(token, specials[token])
            else:
                plain.setdefault(token)
    known = base.get_vocab()
    new_plain = [t for t in plain if t not in known and t not in added]
    if new_plain:
        union.add_tokens(new_plain)
    union.add_tokens([info for t, info in added.items() if t not in union.get_vocab()])
    return union
