"""The data-flow-space (DFS) merge plan: which source layer runs at each hop, with which scale.

One `DFSPlan` serves both consumers, so the path/scale/product logic exists once:

* the in-memory model (`evosearch.merge.dfs_model.build_dfs_model`) multiplies the residual stream by
  `Hop.scale` before hop k, which is the definition of the DFS model;
* the export (`output_config`, `output_tensor_names`, `output_tensor`) writes each hop as its own
  layer of a plain causal LM of the sources' family, with the scales folded away.

Why folding is exact up to eps: in a pre-norm RMSNorm decoder a layer sees the residual stream only
through RMSNorm, and RMSNorm(c·x) = RMSNorm(x) apart from eps. Let h_k be the in-memory stream leaving
hop k and P_k = s_0·…·s_k. Dividing hop k's two output projections (o_proj, down_proj, biases
included) by P_k gives a network whose stream is h_k / P_k after every hop; the final norm removes
the 1/P factor, so the logits agree. Exactly, RMSNorm(x/P) = RMSNorm(x) evaluated with eps·P² instead
of eps, so the difference is of relative size eps·|P² - 1| / (2·mean(x²)): negligible once the stream's
mean square is far above eps, as it is in trained models.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
from transformers import AutoModelForCausalLM, PretrainedConfig
from transformers.initialization import no_init_weights

from evosearch.errors import UsageError
from evosearch.recipe import DFSRecipe, recipe_methods


class DFSError(UsageError, ValueError):
    """A DFS recipe that cannot be built from these sources; the message is one line."""


# Families whose decoder layers are checked to be pre-norm with RMSNorm on both branches and whose
# only writes to the residual stream are o_proj and the MLP's down projections (biases included).
# Qwen3's q_norm/k_norm act after q_proj/k_proj, inside the normed branch, so they do not break scale
# invariance; Phi-3's fused qkv_proj/gate_up_proj read the normed stream.
CAUSAL_LM_CLASS = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "phi3": "Phi3ForCausalLM",
}

# Families refused, and why.
_SANDWICH = ("its sandwich norms (post_attention_layernorm / post_feedforward_layernorm) normalise each branch's "
             "output before it joins the stream, so a residual scale cannot be divided out of o_proj and down_proj")
_MOE = ("its checkpoints store each expert as its own tensors while transformers 5 builds the experts fused, "
        "and the DFS export writes the fused layout's names; the scales would fold (the router reads the normed "
        "stream) but the layer copy does not convert the layouts")
NOT_FOLDABLE = {"gemma2": _SANDWICH, "gemma3": _SANDWICH, "gemma3_text": _SANDWICH,
                "mixtral": _MOE, "qwen2_moe": _MOE, "qwen3_moe": _MOE}

# Suffixes (after "model.layers.{k}.") of the tensors that write into the residual stream.
FOLDED_SUFFIXES = frozenset({
    "self_attn.o_proj.weight", "self_attn.o_proj.bias",
    "mlp.down_proj.weight", "mlp.down_proj.bias",
})

# Config fields every source must share: a layer from one source must fit the stream, cache, masks
# and rotary embedding of the others, and the exported config has one value for each. The vocabulary is
# not among them: tokens enter and leave through the embed source alone (its embeddings, head and
# tokenizer), so a PS source with a mapped vocabulary (tokenizer_source) may feed a DFS path.
SHARED_CONFIG_FIELDS = (
    "model_type", "hidden_size", "intermediate_size", "num_attention_heads",
    "num_key_value_heads", "head_dim", "hidden_act", "rms_norm_eps", "attention_bias", "mlp_bias",
    "rope_parameters", "sliding_window",
)

_LAYER_TENSOR = re.compile(r"model\.layers\.(\d+)\.(.+)")


@dataclass(frozen=True)
class Hop:
    """One layer of the DFS path."""

    source: int
    layer: int
    scale: float  # multiplies the residual stream entering this hop (the first hop's is 1)
    product: float  # P_k: product of the scales up to and including this hop (the fold divisor)


def dfs_hops(recipe: DFSRecipe) -> list[Hop]:
    """The recipe's path with each hop's residual scale and cumulative product."""
    hops: list[Hop] = []
    product = 1.0
    for (source, layer), scale in zip(recipe.path(), recipe.hop_scales()):
        product *= scale
        hops.append(Hop(source, layer, float(scale), product))
    return hops


def source_label(recipe: DFSRecipe, index: int) -> str:
    src = recipe.sources[index]
    what = src if isinstance(src, str) else f"PS merge ({recipe_methods(src)}) of {', '.join(src.source_paths())}"
    return f"DFS source {index} ({what})"


@dataclass
class DFSPlan:
    recipe: DFSRecipe
    source_configs: list[PretrainedConfig]
    hops: list[Hop]

    @classmethod
    def from_recipe(cls, recipe: DFSRecipe, source_configs: Sequence[Optional[PretrainedConfig]],
                    max_path: Optional[int] = None) -> "DFSPlan":
        """Validate `recipe` against the sources' configs (one per `recipe.sources`, in order)."""
        if len(source_configs) != len(recipe.sources):
            raise DFSError(f"DFS recipe has {len(recipe.sources)} sources but {len(source_configs)} were given")
        for i, cfg in enumerate(source_configs):
            if cfg is None:
                raise DFSError(f"{source_label(recipe, i)}: has no config")
        configs = list(source_configs)
        _check_sources(recipe, configs)
        hops = dfs_hops(recipe)
        if max_path is not None and len(hops) > max_path:
            raise DFSError(f"DFS path has {len(hops)} layers, more than max_path {max_path}")
        return cls(recipe, configs, hops)

    @property
    def embed_config(self) -> PretrainedConfig:
        return self.source_configs[self.recipe.embed_source]

    def output_config(self) -> PretrainedConfig:
        """The embed source's config with one decoder layer per hop (each keeping its source layer's type)."""
        cfg = copy.deepcopy(self.embed_config)
        cfg.num_hidden_layers = len(self.hops)
        if getattr(cfg, "layer_types", None) is not None:
            cfg.layer_types = [self.source_configs[h.source].layer_types[h.layer] for h in self.hops]
        cfg.architectures = [CAUSAL_LM_CLASS[cfg.model_type]]
        return cfg

    def output_tensor_names(self) -> list[str]:
        """HF tensor names of the output model, in state-dict order; a tied lm_head is left out."""
        return _tensor_names(self.output_config())

    def output_tensor(self, name: str, read: Callable[[int, str], torch.Tensor]) -> torch.Tensor:
        """Output tensor `name`, where `read(source_index, source_tensor_name)` gives one source tensor."""
        m = _LAYER_TENSOR.fullmatch(name)
        if m is None:
            return read(self.recipe.embed_source, name)
        k, suffix = int(m.group(1)), m.group(2)
        if k >= len(self.hops):
            raise DFSError(f"tensor {name}: the DFS path has only {len(self.hops)} layers")
        hop = self.hops[k]
        tensor = read(hop.source, f"model.layers.{hop.layer}.{suffix}")
        if suffix in FOLDED_SUFFIXES and hop.product != 1.0:
            compute = torch.float64 if tensor.dtype == torch.float64 else torch.float32
            tensor = (tensor.to(compute) / hop.product).to(tensor.dtype)
        return tensor


def _check_sources(recipe: DFSRecipe, configs: list[PretrainedConfig]) -> None:
    for i, cfg in enumerate(configs):
        model_type = getattr(cfg, "model_type", None)
        if model_type in NOT_FOLDABLE:
            raise DFSError(f"{source_label(recipe, i)}: model_type {model_type!r} is refused by DFS: "
                           f"{NOT_FOLDABLE[model_type]}")
        if model_type not in CAUSAL_LM_CLASS:
            raise DFSError(f"{source_label(recipe, i)}: model_type {model_type!r} is not supported by DFS "
                           f"(only pre-norm RMSNorm decoders whose residual scales fold exactly: "
                           f"{', '.join(CAUSAL_LM_CLASS)})")
        if cfg.num_hidden_layers != recipe.num_layers:
            raise DFSError(f"{source_label(recipe, i)}: has {cfg.num_hidden_layers} layers but the recipe's "
                           f"num_layers is {recipe.num_layers}")
    first = configs[0]
    for i, cfg in enumerate(configs[1:], start=1):
        for field in SHARED_CONFIG_FIELDS:
            ours, theirs = _field(cfg, field), _field(first, field)
            if ours != theirs:
                raise DFSError(f"{source_label(recipe, i)}: {field} is {ours!r} but {source_label(recipe, 0)} "
                               f"has {theirs!r}")


def _field(cfg: PretrainedConfig, field: str) -> Any:
    if field == "head_dim":  # configs that omit head_dim derive it
        return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return getattr(cfg, field, None)


def _tensor_names(config: PretrainedConfig) -> list[str]:
    """The persistent tensors of a model of `config`, found by building it on the meta device."""
    with no_init_weights(), torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    names = list(model.state_dict())
    if getattr(config, "tie_word_embeddings", False):
        tied = set(getattr(model, "_tied_weights_keys", None) or {})
        names = [n for n in names if n not in tied]
    return names

