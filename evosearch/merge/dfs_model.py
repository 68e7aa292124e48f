"""The DFS candidate in memory: a real causal LM whose decoder layers are the sources' own layers.

No weight is copied: each hop is a shallow module copy of its source layer that shares the layer's
parameter tensors, with its own `layer_idx` (so the KV cache keeps a repeated layer's two uses apart)
and, when the hop's scale is not 1, a forward pre-hook multiplying the incoming residual stream.
Embeddings, final norm, rotary embedding and head are the embed source's own modules. Building a
candidate therefore costs module bookkeeping only, and the sources stay resident and untouched.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
from torch import nn
from transformers import PretrainedConfig
from transformers.initialization import no_init_weights

from evosearch.merge.dfs import DFSError, DFSPlan, source_label
from evosearch.recipe import DFSRecipe


@dataclass(frozen=True)
class ResidualScale:
    """Forward pre-hook: multiplies the residual stream entering a decoder layer by `scale`."""

    scale: float

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        if args:
            return (args[0] * self.scale, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": kwargs["hidden_states"] * self.scale}


def build_dfs_model(recipe: DFSRecipe, sources: Sequence[nn.Module], max_path: Optional[int] = None) -> nn.Module:
    """The DFS candidate of `recipe` over loaded causal LMs `sources` (one per `recipe.sources`), in eval mode."""
    if len(sources) != len(recipe.sources):
        raise DFSError(f"DFS recipe has {len(recipe.sources)} sources but {len(sources)} models were given")
    plan = DFSPlan.from_recipe(recipe, [getattr(s, "config", None) for s in sources], max_path=max_path)
    decoders = [_decoder(recipe, i, s) for i, s in enumerate(sources)]
    _check_placement(recipe, sources)
    config = plan.output_config()
    embed = sources[recipe.embed_source]
    model = _empty_shell(type(embed), config)

    # Every module but the layer stack is the embed source's own (shared, not copied).
    prefix = embed.base_model_prefix
    for name, _ in list(model.named_children()):
        if name != prefix:
            setattr(model, name, getattr(embed, name))
    inner = getattr(model, prefix)
    for name, _ in list(inner.named_children()):
        if name != "layers":
            setattr(inner, name, getattr(decoders[recipe.embed_source], name))

    # A copied layer's submodules that pointed at their source's config now point at the candidate's.
    config_memo = {id(s.config): config for s in sources} | {id(d.config): config for d in decoders}
    inner.layers = nn.ModuleList(
        _hop_layer(decoders[hop.source].layers[hop.layer], k, hop.scale, config_memo)
        for k, hop in enumerate(plan.hops))

    leftover = next((n for n, t in itertools.chain(model.named_parameters(), model.named_buffers()) if t.is_meta),
                    None)
    if leftover is not None:
        raise DFSError(f"DFS model: {leftover} was not taken from a source ({type(embed).__name__} has "
                       f"modules DFS does not know)")
    if getattr(embed, "generation_config", None) is not None:
        model.generation_config = copy.deepcopy(embed.generation_config)
    return model.eval()


def _decoder(recipe: DFSRecipe, index: int, source: nn.Module) -> nn.Module:
    """The source's decoder stack (e.g. LlamaModel), checked to hold `recipe.num_layers` layers."""
    decoder = getattr(source, getattr(source, "base_model_prefix", ""), None)
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise DFSError(f"{source_label(recipe, index)}: {type(source).__name__} has no decoder layer list")
    if len(layers) != recipe.num_layers:
        raise DFSError(f"{source_label(recipe, index)}: has {len(layers)} decoder layers but the recipe's "
                       f"num_layers is {recipe.num_layers}")
    return decoder


def _check_placement(recipe: DFSRecipe, sources: Sequence[nn.Module]) -> None:
    """Hops from different sources feed one stream, so all sources need one device and dtype."""
    placements = [(p.device, p.dtype) for p in (next(s.parameters()) for s in sources)]
    for i, (device, dtype) in enumerate(placements[1:], start=1):
        if (device, dtype) != placements[0]:
            raise DFSError(f"{source_label(recipe, i)}: is {dtype} on {device} but {source_label(recipe, 0)} is "
                           f"{placements[0][1]} on {placements[0][0]}")


def _empty_shell(model_class: type, config: PretrainedConfig) -> nn.Module:
    """A model of `config` whose tensors are on the meta device: no memory, no initialisation."""
    with no_init_weights(), torch.device("meta"):
        return model_class(config)


def _hop_layer(layer: nn.Module, index: int, scale: float, config_memo: dict[int, PretrainedConfig]) -> nn.Module:
    memo: dict[int, Any] = {id(t): t for t in itertools.chain(layer.parameters(), layer.buffers())}
    memo.update(config_memo)
    hop = copy.deepcopy(layer, memo)
    for module in hop.modules():
        if hasattr(module, "layer_idx"):
            module.layer_idx = index
    if scale != 1.0:
        hop.register_forward_pre_hook(ResidualScale(scale), with_kwargs=True)
    return hop
