"""Write a recipe's merged model as a plain Hugging Face directory, streaming tensor by tensor.

Only one output shard and one tensor per source are ever in memory. Everything is written into a
temporary directory beside the target and renamed into place at the end, so a failure leaves nothing
half-written.
"""

from __future__ import annotations

import copy
import errno
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Protocol, Union

import torch
import yaml
from safetensors.torch import save_file
from transformers import PretrainedConfig, PreTrainedTokenizerBase

from evosearch.errors import RunFailure, UsageError
from evosearch.merge import DEFAULT_MAX_SHARD_SIZE
from evosearch.merge.dfs import DFSPlan
from evosearch.merge.ps import PSMerger
from evosearch.merge.sources import TOKENIZER_FILES, SourceError, SourceModel, TensorSource, load_tokenizer, \
    tokenizer_dir
from evosearch.recipe import DFSRecipe, PSRecipe, recipe_hash, recipe_methods, recipe_to_yaml

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


class ExportError(UsageError, ValueError):
    """The export cannot proceed; the message is one line naming the file or directory."""


class DiskFullError(RunFailure, OSError):
    """The disk filled up while writing an export; nothing of it was left behind."""


def _disk_full(exc: BaseException) -> bool:
    # safetensors' Rust writer reports ENOSPC in its own words: "... Os { code: 28, ... No space left ... }"
    return (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "No space left on device" in str(exc)


def parse_size(size: Union[int, str]) -> int:
    """Bytes in "2GB", "500MB", "1.5GiB" or a plain integer."""
    if isinstance(size, int) and size > 0:
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(size))
    if not m or m.group(2).lower() not in _UNITS or float(m.group(1)) <= 0:
        raise ExportError(f"max shard size {size!r}: expected a positive size such as 2GB, 500MB or 1GiB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


class TensorProducer(Protocol):
    """What export needs from an engine: the output config, tensor names, and each tensor on demand."""

    config: PretrainedConfig

    def tensor_names(self) -> list[str]: ...

    def produce(self, name: str) -> torch.Tensor: ...

    def tokenizer(self) -> Optional[PreTrainedTokenizerBase]:
        """The tokenizer the engine built for the output vocabulary (None: copy one from a model)."""
        ...


@dataclass
class _PSProducer:
    merger: PSMerger
    config: PretrainedConfig

    def tensor_names(self) -> list[str]:
        return self.merger.tensor_names()

    def tokenizer(self) -> Optional[PreTrainedTokenizerBase]:
        return self.merger.vocabulary.tokenizer if self.merger.vocabulary else None

    def produce(self, name: str) -> torch.Tensor:
        return self.merger.merge_tensor(name)


@dataclass
class _DFSProducer:
    plan: DFSPlan
    read: Callable[[int, str], torch.Tensor]
    config: PretrainedConfig
    embed_tokenizer: Optional[PreTrainedTokenizerBase]

    def tensor_names(self) -> list[str]:
        return self.plan.output_tensor_names()

    def produce(self, name: str) -> torch.Tensor:
        return self.plan.output_tensor(name, self.read)

    def tokenizer(self) -> Optional[PreTrainedTokenizerBase]:
        return self.embed_tokenizer


def open_source(source: Union[str, PSRecipe], allow_pickle: bool = False) -> TensorSource:
    """A DFS source: a local model, or a PS merge whose tensors are merged on demand."""
    if isinstance(source, PSRecipe):
        return PSMerger.open(source, allow_pickle=allow_pickle)
    return SourceModel.open(source, allow_pickle=allow_pickle)


def _producer(recipe: Union[PSRecipe, DFSRecipe], allow_pickle: bool, max_path: Optional[int]) -> TensorProducer:
    if isinstance(recipe, PSRecipe):
        merger = PSMerger.open(recipe, allow_pickle=allow_pickle)
        if merger.config is None:
            raise SourceError(f"model {recipe.source_paths()[0]}: no config")
        return _PSProducer(merger, merger.config)
    sources = [open_source(s, allow_pickle) for s in recipe.sources]
    plan = DFSPlan.from_recipe(recipe, [s.config for s in sources], max_path=max_path)
    embed = sources[recipe.embed_source]
    tokenizer = embed.vocabulary.tokenizer if isinstance(embed, PSMerger) and embed.vocabulary else None
    return _DFSProducer(plan, lambda i, name: sources[i].read(name), plan.output_config(), tokenizer)


def check_buildable(recipe: Union[PSRecipe, DFSRecipe], allow_pickle: bool = False) -> None:
    """Open `recipe`'s sources and validate it against them (configs, layers, shapes, parameters) from the
    checkpoints' headers, building and writing nothing."""
    _producer(recipe, allow_pickle, max_path=None)


class ShardWriter:
    """Accumulates tensors into safetensors shards of at most `max_bytes` (a bigger tensor gets its own)."""

    def __init__(self, directory: Path, max_bytes: int):
        self.directory, self.max_bytes = directory, max_bytes
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._shards: list[list[str]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self._pending and self._pending_bytes + size > self.max_bytes:
            self._flush()
        # Own, contiguous CPU storage: safetensors refuses views that share storage.
        tensor = tensor.detach().to("cpu").contiguous()
        if tensor.untyped_storage().nbytes() != size:
            tensor = tensor.clone()
        self._pending[name] = tensor
        self._pending_bytes += size
        self.total_bytes += size

    def _flush(self) -> None:
        save_file(self._pending, self.directory / f"shard-{len(self._shards):05d}.safetensors",
                  metadata={"format": "pt"})
        self._shards.append(list(self._pending))
        self._pending, self._pending_bytes = {}, 0

    def close(self) -> list[str]:
        """Give the shards their final names; write the index when there is more than one."""
        if self._pending or not self._shards:
            self._flush()
        n = len(self._shards)
        names = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        weight_map = {}
        for i, (final, tensors) in enumerate(zip(names, self._shards)):
            (self.directory / f"shard-{i:05d}.safetensors").rename(self.directory / final)
            weight_map.update({t: final for t in tensors})
        if n > 1:
            index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
            (self.directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        return names


def _default_tokenizer_source(recipe: Union[PSRecipe, DFSRecipe]) -> Optional[str]:
    if recipe.tokenizer_source:
        return recipe.tokenizer_source
    if isinstance(recipe, PSRecipe):
        return recipe.source_paths()[0]
    src = recipe.sources[recipe.embed_source]
    return src if isinstance(src, str) else _default_tokenizer_source(src)


def _copy_tokenizer(source: Optional[str], explicit: bool, out: Path) -> Optional[str]:
    """Save the tokenizer of `source` into `out`; a default source without one is skipped."""
    if source is None:
        return None
    root = tokenizer_dir(source)
    if not explicit and not any((root / f).is_file() for f in TOKENIZER_FILES):
        return None
    load_tokenizer(source).save_pretrained(out)
    return source


def _model_card(recipe: Union[PSRecipe, DFSRecipe], tokenizer: Optional[str]) -> str:
    mergekit = ""
    if isinstance(recipe, PSRecipe):
        sources = recipe.source_paths()
        what = f"a parameter-space merge with **{recipe_methods(recipe)}**"
        base = f"\nBase model: `{recipe.base_model}`.\n" if recipe.base_model else ""
        blocker = recipe.mergekit_blocker()
        mergekit = (" and, for mergekit, `mergekit_config.yml`." if blocker is None else
                    f". mergekit cannot build this merge ({blocker}); `evosearch merge evosearch_recipe.yaml OUT` "
                    f"rebuilds it.")
    else:
        sources = [s if isinstance(s, str) else f"PS merge ({recipe_methods(s)}) of " + ", ".join(s.source_paths())
                   for s in recipe.sources]
        what = (f"a data-flow-space (layer path) merge: {len(recipe.path())} layers chosen from "
                f"{len(recipe.sources)} sources x {recipe.num_layers} layers x {recipe.repeats} repeats")
        base = ""
    meta = {"library_name": "transformers", "tags": ["merge", "evosearch"],
            "base_model": [s for s in sources if isinstance(s, str) and not s.startswith("PS merge")]}
    front = yaml.safe_dump(meta, sort_keys=False)
    lines = [f"---\n{front}---", "# Merged model", "",
             f"Built by evosearch as {what}.{base}", "Source models:", ""]
    lines += [f"- `{s}`" for s in sources]
    lines += ["", f"Tokenizer: {'`' + tokenizer + '`' if tokenizer else 'none copied'}.",
              f"Recipe hash: `{recipe_hash(recipe)}`; the full recipe is in `evosearch_recipe.yaml`"
              + (mergekit or "."), ""]
    return "\n".join(lines)


def output_dir(out_dir: Union[str, Path], force: bool) -> Path:
    """`out_dir` made absolute with its `..` resolved as written (so `a/../b` is `b`, and no `a` is created),
    checked before anything is built: ExportError unless it is absent or an empty directory (or `force`),
    and its nearest existing parent is a directory."""
    out = Path(os.path.abspath(Path(out_dir).expanduser()))
    if out.exists() and not out.is_dir():
        raise ExportError(f"output {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ExportError(f"output directory {out} is not empty (use --force to replace it)")
    check_creatable(out)
    return out


def check_creatable(path: Path) -> None:
    """ExportError unless the nearest existing ancestor of `path` is a directory (a file there stops even root)."""
    parent = next(p for p in path.parents if p.exists())
    if not parent.is_dir():
        raise ExportError(f"output {path}: cannot be created, {parent} is not a directory")


def export_recipe(recipe: Union[PSRecipe, DFSRecipe], out_dir: Union[str, Path], *,
                  max_shard_size: Union[int, str] = DEFAULT_MAX_SHARD_SIZE, tokenizer_source: Optional[str] = None,
                  allow_pickle: bool = False, force: bool = False, max_path: Optional[int] = None) -> Path:
    """Build `recipe` and write it to `out_dir` as an HF model directory; returns the directory (absolute).
    `max_path` refuses a DFS recipe whose layer path is longer."""
    max_bytes = parse_size(max_shard_size)
    out_dir = output_dir(out_dir, force)
    producer = _producer(recipe, allow_pickle, max_path)  # validates sources and parameters before any write
    if tokenizer_source and producer.tokenizer() is not None:
        raise ExportError(f"--tokenizer-source {tokenizer_source}: the recipe's tokenizer_source "
                          f"{_default_tokenizer_source(recipe)} already gives the output vocabulary")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.evosearch-tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        writer = ShardWriter(staging, max_bytes)
        for name in producer.tensor_names():
            writer.add(name, producer.produce(name))
        writer.close()
        config = copy.deepcopy(producer.config)
        if isinstance(recipe, PSRecipe):
            config.dtype = recipe.output_dtype
        config.save_pretrained(staging)
        built = producer.tokenizer()
        if built is not None:
            built.save_pretrained(staging)
            tokenizer = f"{_default_tokenizer_source(recipe)} vocabulary"
        else:
            tokenizer = _copy_tokenizer(tokenizer_source or _default_tokenizer_source(recipe),
                                        explicit=bool(tokenizer_source or recipe.tokenizer_source), out=staging)
        _drop_remote_code_references(staging)
        (staging / "evosearch_recipe.yaml").write_text(recipe_to_yaml(recipe))
        if isinstance(recipe, PSRecipe) and recipe.mergekit_blocker() is None:
            (staging / "mergekit_config.yml").write_text(yaml.safe_dump(recipe.to_mergekit(), sort_keys=False))
        (staging / "README.md").write_text(_model_card(recipe, tokenizer))
        _replace_dir(staging, out_dir)
    except BaseException as e:
        shutil.rmtree(staging, ignore_errors=True)
        if _disk_full(e):
            raise DiskFullError(f"output {out_dir}: the disk filled up while writing the model (no space left "
                                f"on device); nothing was left behind: free space and export again") from None
        raise
    return out_dir


def _drop_remote_code_references(directory: Path) -> None:
    """The export is a plain model of a transformers architecture: a source's `auto_map` (custom code in the
    source's directory or repo, never copied) would point a `trust_remote_code` load of it at code that is
    not there, or at someone else's."""
    for name in ("config.json", "tokenizer_config.json"):
        path = directory / name
        if path.is_file():
            data = json.loads(path.read_text())
            if data.pop("auto_map", None) is not None:
                path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _replace_dir(staging: Path, out_dir: Path) -> None:
    old = None
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.evosearch-old-{uuid.uuid4().hex[:8]}"
        out_dir.rename(old)
    staging.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

