"""The parameter-space merge engine: one recipe, many source models, one merged tensor at a time.

`PSMerger.merge_tensor(name)` reads each source's copy of `name` (from disk or from memory), resolves
the recipe's parameters for that tensor and applies the method. The same engine drives the streaming
export (sources read lazily from safetensors) and the search workers (sources resident, maybe on GPU).
"""

from __future__ import annotations

import copy
import hashlib
from typing import Mapping, Optional, Union

import torch
from transformers import AutoModelForCausalLM, PretrainedConfig
from transformers.initialization import no_init_weights

from evosearch.merge.dtypes import torch_dtype
from evosearch.merge.methods import TensorMerge, TensorParameters
from evosearch.merge.parameters import count_layers
from evosearch.merge.slice_plan import merge_parts, part_for
from evosearch.merge.sources import ResidentModel, SourceError, SourceModel, TensorSource, check_compatible, \
    is_vocabulary_tensor, vocabulary_size
from evosearch.merge.vocabulary import OutputVocabulary, output_vocabulary
from evosearch.recipe import PSRecipe


def tensor_seed(seed: int, tensor_name: str) -> int:
    """The random seed of one tensor: independent of the order in which tensors are merged."""
    digest = hashlib.sha256(f"{seed}\0{tensor_name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class PSMerger:
    """Merges tensors of the sources named by `recipe` (a mapping from the recipe's model strings)."""

    def __init__(self, recipe: PSRecipe, sources: Mapping[str, TensorSource]):
        self.recipe = recipe
        missing = [p for p in recipe.source_paths() if p not in sources]
        if missing:
            raise SourceError(f"model {missing[0]}: not among the loaded sources")
        self.sources = {p: sources[p] for p in recipe.source_paths()}
        check_compatible(list(self.sources.values()), recipe.tokenizer_source)
        self._reference = self.sources[recipe.source_paths()[0]]
        self._names = self._reference.tensor_names()
        # With a tokenizer_source, every vocabulary tensor is re-indexed by token before it is merged.
        self.vocabulary: Optional[OutputVocabulary] = None
        if recipe.tokenizer_source:
            self.vocabulary = output_vocabulary(recipe.tokenizer_source, list(self.sources), recipe.base_model,
                                                {p: vocabulary_size(s) for p, s in self.sources.items()})
        self.num_layers = count_layers(self._names)
        self.parts = merge_parts(recipe, self.num_layers)
        self.read_dtype = torch_dtype(recipe.dtype)
        self.out_dtype = torch_dtype(recipe.output_dtype)
        self._scratch_buffer: Optional[torch.Tensor] = None
        self._validate()

    @classmethod
    def open(cls, recipe: PSRecipe, allow_pickle: bool = False) -> "PSMerger":
        """A merger reading every source lazily from its local directory."""
        return cls(recipe, {p: SourceModel.open(p, allow_pickle=allow_pickle) for p in recipe.source_paths()})

    @property
    def config(self) -> Optional[PretrainedConfig]:
        """The merged model's config: the base model's (else the first model's), with the output
        vocabulary's size."""
        return self.output_config(self._reference.config)

    def output_config(self, config: Optional[PretrainedConfig]) -> Optional[PretrainedConfig]:
        """`config` (a source's) as the merged model's: a copy with the output vocabulary's size."""
        if config is None or self.vocabulary is None or config.vocab_size == self.vocabulary.size:
            return config
        config = copy.deepcopy(config)
        config.vocab_size = self.vocabulary.size
        return config

    def tensor_names(self) -> list[str]:
        return list(self._names)

    def shape(self, name: str) -> tuple[int, ...]:
        shape = tuple(self._reference.shape(name))
        if self.vocabulary is not None and is_vocabulary_tensor(name):
            return (self.vocabulary.size, *shape[1:])
        return shape

    def read(self, name: str) -> torch.Tensor:
        """Alias of `merge_tensor`, so a merger can itself serve as a source (PS+DFS)."""
        return self.merge_tensor(name)

    @property
    def name(self) -> str:
        return f"ps-merge({'+'.join(m.name for m in self.recipe.methods_used())})"

    # --- the merge ------------------------------------------------------------------------------
    def parameters_for(self, tensor_name: str) -> TensorParameters:
        return part_for(self.parts, tensor_name).parameters(tensor_name)

    def merge_tensor(self, name: str) -> torch.Tensor:
        part = part_for(self.parts, name)
        tensors = {m: self.sources[m].read(name) for m in part.inputs}
        first = next(iter(tensors.values()))
        if not first.is_floating_point():
            return tensors.get(part.base, first)  # integer buffers are copied, never averaged
        compute = torch.float64 if first.dtype == torch.float64 else torch.float32
        device = first.device
        del first  # every reference dropped early lets a source tensor be freed once used
        if self.read_dtype != torch.float32:  # mergekit reads the sources at `dtype`: bf16/fp16 round them
            tensors = {m: t.to(self.read_dtype) for m, t in tensors.items()}
        tensors = {m: t.to(compute) for m, t in tensors.items()}
        if self.vocabulary is not None and is_vocabulary_tensor(name):
            tensors = self.vocabulary.remap(tensors, part.base)
        job = TensorMerge(name=name, tensors=tensors, base=part.base,
                          params=part.parameters(name), seed=tensor_seed(self.recipe.seed, name),
                          scratch=lambda elements: self._scratch(elements, compute, device))
        del tensors
        return part.method.merge(job).to(self.out_dtype)

    def _scratch(self, elements: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A flat buffer of at least `elements`, kept from tensor to tensor (replaced by a larger one when
        needed), so the merge does not fault in fresh pages for the task vectors of every tensor."""
        buffer = self._scratch_buffer
        if buffer is None or buffer.numel() < elements or buffer.dtype != dtype or buffer.device != device:
            buffer = self._scratch_buffer = None  # the old one is freed before the new one is allocated
            buffer = self._scratch_buffer = torch.empty(elements, dtype=dtype, device=device)
        return buffer

    # --- structure ------------------------------------------------------------------------------
    def _validate(self) -> None:
        """Resolve every parameter of every tensor now, so a bad recipe fails before anything is written."""
        for name in self._names:
            part_for(self.parts, name).method.check_tensor(name, self.parameters_for(name))

    def merge_all(self) -> dict[str, torch.Tensor]:
        return {n: self.merge_tensor(n) for n in self._names}


class StagedSource:
    """A source whose tensors are copied onto `device` as they are read: sources kept in host memory feed a
    merge that runs on the GPU one tensor at a time."""

    def __init__(self, source: TensorSource, device: torch.device):
        self.source, self.device = source, device
        self.name, self.config = source.name, source.config

    def tensor_names(self) -> list[str]:
        return self.source.tensor_names()

    def shape(self, name: str) -> tuple[int, ...]:
        return self.source.shape(name)

    def read(self, name: str) -> torch.Tensor:
        return self.source.read(name).to(self.device, non_blocking=True)


ResidentSources = Mapping[str, Union[Mapping[str, torch.Tensor], TensorSource]]


def as_sources(resident: ResidentSources, configs: Optional[Mapping[str, PretrainedConfig]] = None
               ) -> dict[str, TensorSource]:
    """Wrap plain ``{tensor name: Tensor}`` dicts as sources; TensorSource values pass through."""
    out: dict[str, TensorSource] = {}
    for path, value in resident.items():
        if hasattr(value, "read") and hasattr(value, "tensor_names"):
            out[path] = value
        else:
            out[path] = ResidentModel(path, value, (configs or {}).get(path))
    return out


def merge_state_dict(recipe: PSRecipe, resident: ResidentSources) -> dict[str, torch.Tensor]:
    """The merged state dict, built from resident source tensors (on their device)."""
    return PSMerger(recipe, as_sources(resident)).merge_all()


def build_model(config: PretrainedConfig, state: Mapping[str, torch.Tensor]) -> torch.nn.Module:
    """A causal-LM module of `config` holding `state`, on the state's device, in eval mode.

    Weights are not randomly initialised first (that would cost as much as the merge), and the module
    takes the tensors of `state` themselves as its parameters (no copy: a copy would cost as much again,
    and twice the memory), so it shares storage with whatever else holds them.
    """
    first = next(iter(state.values()))
    dtype = first.dtype if first.is_floating_point() else torch.float32
    with no_init_weights(), torch.device(first.device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=False)
    missing, unexpected = model.load_state_dict(dict(state), strict=False, assign=True)
    tied = set(getattr(model, "_tied_weights_keys", None) or {})
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise SourceError(f"merged state does not fit {type(model).__name__}: "
                          f"{'missing ' + missing[0] if missing else 'unexpected ' + unexpected[0]}")
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    return model.eval()


def build_merged_model(recipe: PSRecipe, resident: ResidentSources,
                       config: Optional[PretrainedConfig] = None) -> torch.nn.Module:
    """Merge resident sources and return a ready model (config: the base model's unless given)."""
    merger = PSMerger(recipe, as_sources(resident))
    config = merger.output_config(config) or merger.config
    if config is None:
        raise SourceError(f"model {recipe.source_paths()[0]}: no config to build the merged model")
    return build_model(config, merger.merge_all())
