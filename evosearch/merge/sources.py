"""Source models: lazy, per-tensor access to a local Hugging Face checkpoint, or to tensors in memory.

Every source offers the same small interface (`TensorSource`), so the merge engine neither knows nor
cares whether a tensor comes from disk (streaming export) or from a worker's resident copy (search).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Protocol, Sequence

import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoTokenizer, PretrainedConfig

from evosearch.errors import UsageError, first_line
from evosearch.merge.lora import LoraAdapter, adapter_base, is_adapter_dir


class SourceError(UsageError, ValueError):
    """A source model that cannot be used; the message is one line naming the model (and tensor)."""


class VocabularyError(SourceError):
    """Sources whose vocabularies cannot be reconciled as asked; one line naming the models and sizes."""


class TensorSource(Protocol):
    name: str
    config: Optional[PretrainedConfig]

    def tensor_names(self) -> list[str]: ...

    def shape(self, name: str) -> tuple[int, ...]: ...

    def read(self, name: str) -> torch.Tensor: ...


_SAFETENSORS_INDEX = "model.safetensors.index.json"
_PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
# Names of the tensors indexed by token along dim 0, as the architectures this engine merges spell them.
VOCABULARY_TENSOR_SUFFIXES = ("embed_tokens.weight", "lm_head.weight")


def is_vocabulary_tensor(name: str) -> bool:
    return name.endswith(VOCABULARY_TENSOR_SUFFIXES)


def vocabulary_size(model: "TensorSource") -> Optional[int]:
    """The embedding rows of a source (None when it has no token embedding)."""
    for name in model.tensor_names():
        if name.endswith(VOCABULARY_TENSOR_SUFFIXES[0]):
            return model.shape(name)[0]
    return None


def model_reference(ref: str) -> tuple[str, Optional[str]]:
    """(model, adapter or None) of a source: mergekit's `MODEL+LORA`, a PEFT adapter directory (its base
    from adapter_config.json), or a plain model."""
    path = Path(ref).expanduser()
    if "+" in ref and not path.exists():
        model, _, adapter = ref.partition("+")
        return model, adapter
    if path.is_dir() and is_adapter_dir(path) and not (path / "config.json").is_file():
        return adapter_base(path), ref
    return ref, None


def source_key(path: str) -> str:
    """One spelling per source (recipes may write a path relative or with a trailing slash)."""
    model, adapter = model_reference(path)
    key = str(Path(model).expanduser().resolve())
    return key if adapter is None else f"{key}+{Path(adapter).expanduser().resolve()}"


def resolve_model_dir(ref: str) -> Path:
    """The local directory of model `ref`. A hub download would slot in here; there is no network."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise SourceError(f"model {ref}: not a directory")
    looks_like_hub_id = not ref.startswith((".", "/", "~")) and ref.count("/") == 1
    if looks_like_hub_id:
        raise SourceError(f"model {ref}: not found locally (no hub access here; give a local directory)")
    raise SourceError(f"model {ref}: path does not exist")


@dataclass
class _TensorLocation:
    file: Path
    shape: tuple[int, ...]
    itemsize: int  # bytes per element as stored


# Bytes per element of the safetensors header's dtype names.
_SAFETENSORS_ITEMSIZE = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "BF16": 2, "F16": 2,
                         "I16": 2, "U16": 2, "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


@dataclass
class SourceModel:
    """A local HF checkpoint read tensor by tensor; nothing is loaded until `read`."""

    name: str
    path: Path
    config: Optional[PretrainedConfig]
    _index: dict[str, _TensorLocation]
    _pickled: dict[Path, dict[str, torch.Tensor]] = field(default_factory=dict, repr=False)
    _is_pickle: bool = False
    adapter: Optional[LoraAdapter] = None  # folded into every tensor it changes, as the tensor is read

    @classmethod
    def open(cls, path: str, allow_pickle: bool = False) -> "SourceModel":
        """The model of source `path`: a model directory, `MODEL+LORA` or a PEFT adapter directory."""
        model_ref, adapter_ref = model_reference(str(path))
        model = cls._open_model(model_ref, allow_pickle)
        model.name = str(path)
        if adapter_ref is not None:
            model.adapter = LoraAdapter.load(resolve_model_dir(adapter_ref))
            unknown = sorted(model.adapter.targets() - set(model._index))
            if unknown:
                raise SourceError(f"model {path}: the adapter changes tensor {unknown[0]}, which {model_ref} lacks")
        return model

    @classmethod
    def _open_model(cls, path: str, allow_pickle: bool) -> "SourceModel":
        root = resolve_model_dir(str(path))
        config = _load_config(root, str(path))
        files = _safetensors_files(root, str(path))
        if files:
            return cls(str(path), root, config, _index_safetensors(files, str(path)))
        pickled = sorted({p for pat in _PICKLE_PATTERNS for p in root.glob(pat)})
        if not pickled:
            raise SourceError(f"model {path}: no weights found (*.safetensors)")
        if not allow_pickle:
            # Unpickling can run code: `evosearch merge --allow-pickle` is the only opt-in.
            raise SourceError(f"model {path}: only pickle weights ({pickled[0].name}); convert them to "
                              f"safetensors (or pass --allow-pickle to `evosearch merge`)")
        model = cls(str(path), root, config, {}, _is_pickle=True)
        for file in pickled:
            state = _torch_load(file, str(path))
            model._pickled[file] = state
            model._index.update({k: _TensorLocation(file, tuple(v.shape), v.element_size()) for k, v in state.items()})
        return model

    def tensor_names(self) -> list[str]:
        return list(self._index)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._location(name).shape

    def stored_itemsize(self, name: str) -> int:
        """Bytes per element of tensor `name` as the checkpoint stores it (from the header)."""
        return self._location(name).itemsize

    def read(self, name: str) -> torch.Tensor:
        loc = self._location(name)
        if self._is_pickle:
            tensor = self._pickled[loc.file][name]
        else:
            # A short-lived handle: a long-lived mmap would keep every page read so far in our RSS.
            with safe_open(loc.file, framework="pt") as f:
                tensor = f.get_tensor(name)
        return tensor if self.adapter is None else self.adapter.fold(name, tensor)

    def load_all(self, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """Every tensor, resident on `device` (what a search worker keeps)."""
        return {n: self.read(n).to(device) for n in self.tensor_names()}

    def _location(self, name: str) -> _TensorLocation:
        try:
            return self._index[name]
        except KeyError:
            raise SourceError(f"model {self.name}: has no tensor {name}") from None


@dataclass
class ResidentModel:
    """A source whose tensors are already in memory (a worker's cached copy, possibly on GPU)."""

    name: str
    tensors: Mapping[str, torch.Tensor]
    config: Optional[PretrainedConfig] = None

    def tensor_names(self) -> list[str]:
        return list(self.tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._get(name).shape)

    def read(self, name: str) -> torch.Tensor:
        return self._get(name)

    def _get(self, name: str) -> torch.Tensor:
        try:
            return self.tensors[name]
        except KeyError:
            raise SourceError(f"model {self.name}: has no tensor {name}") from None


def check_compatible(models: Sequence[TensorSource], tokenizer_source: Optional[str] = None) -> None:
    """Raise SourceError unless all models share architecture, tensor names and shapes. With a
    `tokenizer_source` the vocabulary tensors may differ in rows (they are mapped by token); without one
    differing vocabularies are a VocabularyError naming two models and their sizes."""
    if not models:
        return
    first = models[0]
    sizes = {m.name: vocabulary_size(m) for m in models}
    if tokenizer_source is None and len(set(sizes.values())) > 1:
        other = next(m for m in models if sizes[m.name] != sizes[first.name])
        raise VocabularyError(f"models {first.name} (vocabulary {sizes[first.name]}) and {other.name} (vocabulary "
                              f"{sizes[other.name]}) differ in vocabulary; set tokenizer_source: base, union or "
                              f"a model path")
    first_arch = _architecture(first)
    first_names = first.tensor_names()
    for other in models[1:]:
        arch = _architecture(other)
        if first_arch and arch and arch != first_arch:
            raise SourceError(f"model {other.name}: architecture {arch} differs from {first.name}'s {first_arch}")
        other_names = set(other.tensor_names())
        missing = [n for n in first_names if n not in other_names]
        if missing:
            raise SourceError(f"model {other.name}: lacks tensor {missing[0]} present in {first.name}")
        extra = sorted(other_names - set(first_names))
        if extra:
            raise SourceError(f"model {other.name}: has tensor {extra[0]} absent from {first.name}")
        for n in first_names:
            a, b = tuple(other.shape(n)), tuple(first.shape(n))
            if tokenizer_source is not None and is_vocabulary_tensor(n):
                a, b = a[1:], b[1:]
            if a != b:
                raise SourceError(f"model {other.name}: tensor {n} has shape {tuple(other.shape(n))}, "
                                  f"{first.name} has {tuple(first.shape(n))}")


def tokenizer_dir(ref: str) -> Path:
    """Where source `ref`'s tokenizer lives: an adapter's own when it ships one, else its model's."""
    model, adapter = model_reference(ref)
    if adapter is not None:
        root = resolve_model_dir(adapter)
        if any((root / f).is_file() for f in TOKENIZER_FILES):
            return root
    return resolve_model_dir(model)


def load_tokenizer(ref: str):
    """The tokenizer of local source `ref`, never with its remote code; SourceError when it has none."""
    root = tokenizer_dir(ref)
    if not any((root / f).is_file() for f in TOKENIZER_FILES):
        raise SourceError(f"model {ref}: no tokenizer in {root} (none of {', '.join(TOKENIZER_FILES)})")
    try:
        return AutoTokenizer.from_pretrained(root, trust_remote_code=False, local_files_only=True)
    except Exception as e:  # transformers raises many types for a bad tokenizer
        raise SourceError(f"model {ref}: cannot load its tokenizer ({first_line(e)})") from None


def check_model_set(paths: Sequence[str], allow_pickle: bool = False, tokenizer_source: Optional[str] = None) -> None:
    """What a search's workers will load, checked from headers alone (no tensor is read): every model opens,
    has a tokenizer, and shares the first one's architecture, tensor names and shapes (vocabulary rows aside
    when a `tokenizer_source` maps them). SourceError naming the model otherwise."""
    models = [SourceModel.open(p, allow_pickle=allow_pickle) for p in paths]
    check_compatible(models, tokenizer_source)
    for p in paths:
        load_tokenizer(p)


def _architecture(model: TensorSource) -> Optional[str]:
    cfg = model.config
    if cfg is None:
        return None
    archs = getattr(cfg, "architectures", None) or []
    return "/".join(archs) or getattr(cfg, "model_type", None)


def _load_config(root: Path, ref: str) -> PretrainedConfig:
    if not (root / "config.json").is_file():
        raise SourceError(f"model {ref}: no config.json in {root}")
    try:
        return AutoConfig.from_pretrained(root, trust_remote_code=False, local_files_only=True)
    except Exception as e:  # transformers raises many types for a bad config
        raise SourceError(f"model {ref}: unreadable config.json ({first_line(e)})") from None


def _safetensors_files(root: Path, ref: str) -> list[Path]:
    index = root / _SAFETENSORS_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError):
            raise SourceError(f"model {ref}: malformed {_SAFETENSORS_INDEX}") from None
        files = [root / f for f in dict.fromkeys(weight_map.values())]
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise SourceError(f"model {ref}: shard {missing[0].name} listed in {_SAFETENSORS_INDEX} is missing")
        return files
    return sorted(root.glob("*.safetensors"))


def _index_safetensors(files: Sequence[Path], ref: str) -> dict[str, _TensorLocation]:
    index: dict[str, _TensorLocation] = {}
    for file in files:
        try:
            with safe_open(file, framework="pt") as f:
                for name in f.keys():
                    piece = f.get_slice(name)
                    index[name] = _TensorLocation(file, tuple(piece.get_shape()),
                                                  _SAFETENSORS_ITEMSIZE.get(piece.get_dtype(), 4))
        except Exception as e:  # safetensors raises its own error type for corrupt headers
            raise SourceError(f"model {ref}: unreadable {file.name} ({first_line(e)})") from None
    return index


def _torch_load(file: Path, ref: str) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise SourceError(f"model {ref}: cannot load {file.name} ({first_line(e)})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SourceError(f"model {ref}: {file.name} is not a state dict of tensors")
    return state
