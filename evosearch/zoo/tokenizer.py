"""The zoo's character-level tokenizer: one token per L1/L2 character, plus bos/eos/pad/unk."""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from evosearch.zoo.tasks import L1_CHARS, L2_CHARS

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Deterministic: the vocabulary is the fixed character set, in a fixed order."""
    vocab = {tok: i for i, tok in enumerate([*SPECIAL_TOKENS, " ", *L1_CHARS, *L2_CHARS])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    # Every encoded text starts with BOS, as every training example does (lm-eval encodes with
    # add_special_tokens left at the tokenizer's default).
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   unk_token=UNK, model_max_length=256, padding_side="right")
