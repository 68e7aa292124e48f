"""The parameter-space merge engine: one recipe, many source models, one merged tensor at a time.

`PSMerger.merge_tensor(name)` reads each source's copy of `name` (from disk or from memory), resolves
the recipe's parameters for that tensor and applies the method. The same engine drives the streaming
export (sources read lazily from safetensors) and the search workers (sources resident, maybe on GPU).
"""

from __future__ import annotations

import hashlib
from typing import Mapping, Optional, Union

import torch
from transformers import PretrainedConfig

from evosearch.merge import methods
from evosearch.merge.parameters import (
    METHOD_PARAMETERS,
    TensorParameters,
    count_layers,
    layer_position,
    resolve_tensor_parameters,
)
from evosearch.merge.sources import ResidentModel, SourceError, SourceModel, TensorSource, check_compatible
from evosearch.recipe import PSRecipe, RecipeError

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


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
        check_compatible(list(self.sources.values()))
        self.method = recipe.merge_method
        self.base = recipe.base_model
        self.inputs = self._inputs()
        self._reference = self.sources[recipe.base_model or recipe.models[0].model]
        self._names = self._reference.tensor_names()
        self.num_layers = count_layers(self._names)
        self.out_dtype = _DTYPES[recipe.dtype]
        self._scratch_buffer: Optional[torch.Tensor] = None
        self._validate()

    @classmethod
    def open(cls, recipe: PSRecipe, allow_pickle: bool = False) -> "PSMerger":
        """A merger reading every source lazily from its local directory."""
        return cls(recipe, {p: SourceModel.open(p, allow_pickle=allow_pickle) for p in recipe.source_paths()})

    @property
    def config(self) -> Optional[PretrainedConfig]:
        """The merged model's config: the base model's (else the first model's)."""
        return self._reference.config

    def tensor_names(self) -> list[str]:
        return list(self._names)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._reference.shape(name))

    def read(self, name: str) -> torch.Tensor:
        """Alias of `merge_tensor`, so a merger can itself serve as a source (PS+DFS)."""
        return self.merge_tensor(name)

    @property
    def name(self) -> str:
        return f"ps-merge({self.method})"

    # --- the merge ------------------------------------------------------------------------------
    def parameters_for(self, tensor_name: str) -> TensorParameters:
        per_model = self.inputs if self.method == "linear" else [m for m in self.inputs if m != self.base]
        t = layer_position(tensor_name, self.num_layers)
        return resolve_tensor_parameters(self.recipe, tensor_name, t, per_model)

    def merge_tensor(self, name: str) -> torch.Tensor:
        tensors = {m: self.sources[m].read(name) for m in self.inputs}
        first = next(iter(tensors.values()))
        if not first.is_floating_point():
            return tensors.get(self.base, first)  # integer buffers are copied, never averaged
        compute = torch.float64 if first.dtype == torch.float64 else torch.float32
        del first  # every reference dropped early lets a source tensor be freed once used
        tensors = {m: t.to(compute) for m, t in tensors.items()}
        params = self.parameters_for(name)
        merged = self._apply(name, tensors, params)
        return merged.to(self.out_dtype)

    def _apply(self, name: str, tensors: dict[str, torch.Tensor], params: TensorParameters) -> torch.Tensor:
        shared = params.shared
        if self.method == "linear":
            return methods.linear(list(tensors.values()), [params.per_model[m]["weight"] for m in tensors],
                                  normalize=shared["normalize"], where=f"tensor {name}")
        base = tensors[self.base]
        others = [m for m in tensors if m != self.base]
        if self.method == "slerp":
            return methods.slerp(shared["t"], base, tensors[others[0]])
        if self.method == "model_stock":
            return methods.model_stock(base, [tensors[m] for m in others], filter_wise=shared["filter_wise"])
        generator = None
        if methods.TASK_ARITHMETIC_VARIANTS[self.method].sparsify in (methods.Sparsify.random, methods.Sparsify.della):
            generator = torch.Generator(device=base.device).manual_seed(tensor_seed(self.recipe.seed, name))
        finetuned = [tensors.pop(m) for m in others]  # handed over, so each is freed once used
        return methods.task_arithmetic(
            base, finetuned, [params.per_model[m] for m in others],
            methods.TASK_ARITHMETIC_VARIANTS[self.method], normalize=shared["normalize"],
            rescale=shared["rescale"], lam=shared["lambda"], generator=generator,
            where=[f"model {m}, tensor {name}" for m in others],
            scratch=lambda elements: self._scratch(elements, base))

    def _scratch(self, elements: int, like: torch.Tensor) -> torch.Tensor:
        """A flat buffer of at least `elements`, kept from tensor to tensor (replaced by a larger one when
        needed), so the merge does not fault in fresh pages for the task vectors of every tensor."""
        buffer = self._scratch_buffer
        if buffer is None or buffer.numel() < elements or buffer.dtype != like.dtype or buffer.device != like.device:
            buffer = self._scratch_buffer = None  # the old one is freed before the new one is allocated
            buffer = self._scratch_buffer = torch.empty(elements, dtype=like.dtype, device=like.device)
        return buffer

    # --- structure ------------------------------------------------------------------------------
    def _inputs(self) -> list[str]:
        """Models in mergekit's input order: the listed models, then the base if not listed."""
        order = list(dict.fromkeys(m.model for m in self.recipe.models))
        if self.base is not None and self.base not in order:
            order.append(self.base)
        return order

    def _validate(self) -> None:
        """Resolve every parameter of every tensor now, so a bad recipe fails before anything is written."""
        non_base = [m for m in self.inputs if m != self.base]
        if self.method == "model_stock" and len(non_base) < 2:
            raise RecipeError(f"model_stock needs at least two models besides base_model, got {len(non_base)}")
        if self.method != "linear" and not non_base:
            raise RecipeError(f"{self.method} needs at least one model besides base_model")
        for name in self._names:
            params = self.parameters_for(name)
            if self.method == "slerp" and not 0 <= params.shared["t"] <= 1:
                raise RecipeError(f"parameters.t: {params.shared['t']:g} for tensor {name} is outside [0, 1]")
            for model, values in params.per_model.items():
                density, eps = values.get("density"), values.get("epsilon")
                if density is not None and not 0 <= density <= 1:
                    raise RecipeError(f"model {model}: density {density:g} for tensor {name} is outside [0, 1]")
                if eps is not None and 0 < density < 1 and not (0 < density - eps and density + eps < 1):
                    raise RecipeError(f"model {model}: della needs 0 < density - epsilon and density + epsilon "
                                      f"< 1 for tensor {name} (density={density:g}, epsilon={eps:g})")

    def merge_all(self) -> dict[str, torch.Tensor]:
        return {n: self.merge_tensor(n) for n in self._names}


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
    from transformers import AutoModelForCausalLM
    from transformers.initialization import no_init_weights

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
    config = config or merger.config
    if config is None:
        raise SourceError(f"model {recipe.base_model or recipe.models[0].model}: no config to build the merged model")
    return build_model(config, merger.merge_all())
