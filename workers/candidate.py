"""One search worker: the source models resident, the lm-eval tasks built, candidates built and scored.

A `CandidateWorker` is a plain class (run in-process, or as a Ray actor through `workers.pool.WorkerPool`).
Its constructor pays every fixed cost once: reading each source's safetensors as a ready causal-LM module
(whose parameter tensors double as the resident tensors the PS merge reads), and building the lm-eval task
objects. `run` then only merges (PS), wires layers (DFS, no weight copies), evaluates the asked doc ids and
frees the candidate.

Where the sources live is `resident`: `device` keeps them on the worker's device (fastest builds, M models
of device memory); `host` keeps them in host memory (pinned when CUDA is there) and builds each candidate
on the device tensor by tensor, so the device holds one candidate and one tensor's build buffers whatever
M is (a DFS candidate's layers are then copied to the device, once per distinct layer).
"""

from __future__ import annotations

import copy
import os
import socket
import time
from dataclasses import dataclass
from typing import Optional, Union

import torch

from evosearch.errors import RunFailure, one_line
from evosearch.merge.dfs_model import build_dfs_model
from evosearch.merge.dtypes import TORCH_DTYPES
from evosearch.merge.ps import PSMerger, StagedSource, as_sources, build_model
from evosearch.merge.sources import SourceError, SourceModel, load_tokenizer, source_key
from evosearch.recipe import DFSRecipe, PSRecipe, parse_recipe, recipe_source_paths
from fitness.evaluator import LmEvalEvaluator
from fitness.tasks import TaskSource
from workers.pool import ActorOptions, WorkerPool

RESIDENT_MODES = ("device", "host")


class CandidateError(RunFailure, RuntimeError):
    """A candidate that could not be built or scored; the message is one line naming its key and the cause."""


@dataclass
class CandidateTask:
    key: str  # e.g. "job3/g2/i5" or "calib/random-07", for logs and errors
    recipe: dict  # PSRecipe / DFSRecipe as a dict (parse_recipe reads it)
    samples: Optional[dict[str, list[int]]]  # task -> doc ids (anchors); None = every doc of `tasks`
    tasks: Optional[list[str]] = None  # default: every task the worker loaded


@dataclass
class CandidateResult:
    key: str
    correct: dict[str, dict[int, float]]  # task -> doc id -> its metric value (0/1 for a binary metric)
    accuracy: dict[str, float]  # task -> its metric over the evaluated docs
    build_seconds: float
    eval_seconds: float  # inside the model's forward passes
    overhead_seconds: float  # the rest of the call: recipe parsing, lm-eval's request building, freeing
    worker: str  # "host:pid[:cuda:N]"


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass
class _FiniteLogits:
    """Forward hook noting whether every logit the model produced was finite (checked once, at the end,
    so a GPU is not synchronised after every batch)."""

    flags: list

    def __call__(self, module, args, output) -> None:
        logits = getattr(output, "logits", None)
        if logits is None and isinstance(output, tuple):
            logits = output[0]
        if isinstance(logits, torch.Tensor):
            self.flags.append(torch.isfinite(logits).all())

    def all_finite(self) -> bool:
        return bool(torch.stack(self.flags).all()) if self.flags else True


class CandidateWorker:
    """Loads every source once; `run(task)` builds one candidate in memory, evaluates it and frees it."""

    def __init__(self, sources: list[str], tasks_from: Union[TaskSource, str, list[str]], tasks: list[str],
                 batch_size: int = 64, device: str = "auto", dtype: Optional[str] = None,
                 allow_pickle: bool = False, scoring: Optional[dict] = None, resident: str = "device") -> None:
        if not sources:
            raise SourceError("worker: no source models given")
        if dtype is not None and dtype not in TORCH_DTYPES:
            raise SourceError(f"worker: dtype {dtype!r} is not one of {', '.join(TORCH_DTYPES)}")
        if resident not in RESIDENT_MODES:
            raise SourceError(f"worker: resident {resident!r} is not one of {', '.join(RESIDENT_MODES)}")
        self.device = resolve_device(device)
        self.resident = resident
        self._home = self.device if resident == "device" else torch.device("cpu")  # where sources live
        self.dtype = TORCH_DTYPES[dtype] if dtype else None
        self._modules: dict[str, torch.nn.Module] = {}  # resolved path -> the source as a model
        self._tensors: dict[str, dict[str, torch.Tensor]] = {}  # resolved path -> its tensors (the module's)
        self._configs: dict[str, object] = {}  # resolved path -> its transformers config
        self._tokenizers: dict[str, object] = {}
        for path in sources:
            self._load_source(path, allow_pickle)
        self.evaluator = LmEvalEvaluator(tasks_from, tasks, batch_size=batch_size, device=str(self.device),
                                         scoring=scoring)
        suffix = ""
        if self.device.type == "cuda":
            suffix = f":cuda:{self.device.index if self.device.index is not None else torch.cuda.current_device()}"
        self.name = f"{socket.gethostname()}:{os.getpid()}{suffix}"

    # --- sources ------------------------------------------------------------------------------------
    def _load_source(self, path: str, allow_pickle: bool) -> None:
        key = source_key(path)
        if key in self._modules:
            return
        source = SourceModel.open(path, allow_pickle=allow_pickle)
        names = source.tensor_names()
        module = build_model(source.config, {n: self._place(source.read(n)) for n in names})
        # The module's own parameters serve as the resident tensors, so each source is held once.
        module_state = module.state_dict(keep_vars=False)
        self._tensors[key] = {n: module_state[n] for n in names}
        self._modules[key] = module
        self._configs[key] = source.config
        self._tokenizers[key] = load_tokenizer(path)

    def _place(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(self._home, self.dtype)
        else:
            tensor = tensor.to(self._home)
        if self.resident == "host" and self.device.type == "cuda":
            tensor = tensor.pin_memory()  # host-to-device copies of pinned pages run at full bus speed
        return tensor

    @property
    def source_paths(self) -> list[str]:
        return list(self._modules)

    def _resident(self, paths: list[str]) -> dict[str, dict[str, torch.Tensor]]:
        """The resident tensors of `paths`, keyed by the recipe's own spelling of each path."""
        unknown = [p for p in paths if source_key(p) not in self._tensors]
        if unknown:
            raise SourceError(f"model {unknown[0]} is not among this worker's sources "
                              f"({', '.join(self._modules)})")
        return {p: self._tensors[source_key(p)] for p in paths}

    def _tokenizer(self, path: str):
        key = source_key(path)
        if key not in self._tokenizers:
            self._tokenizers[key] = load_tokenizer(path)
        return self._tokenizers[key]

    # --- building -----------------------------------------------------------------------------------
    def _build_ps(self, recipe: PSRecipe) -> tuple[torch.nn.Module, object]:
        """The merged model and its tokenizer (the output vocabulary's when the recipe maps vocabularies)."""
        sources = as_sources(self._resident(recipe.source_paths()))
        if self.resident == "host":
            sources = {p: StagedSource(s, self.device) for p, s in sources.items()}
        merger = PSMerger(recipe, sources)
        reference = recipe.source_paths()[0]
        model = build_model(merger.output_config(self._configs[source_key(reference)]), merger.merge_all())
        if merger.vocabulary is not None:
            return model, merger.vocabulary.tokenizer
        return model, self._tokenizer(reference)

    def _build(self, recipe: Union[PSRecipe, DFSRecipe]) -> tuple[torch.nn.Module, object]:
        """The candidate on the worker's device and its tokenizer; every source path was checked to be resident."""
        if isinstance(recipe, PSRecipe):
            return self._build_ps(recipe)
        layers, tokenizers = [], []
        for source in recipe.sources:
            if isinstance(source, PSRecipe):
                model, tokenizer = self._build_ps(source)
            else:
                model, tokenizer = self._modules[source_key(source)], self._tokenizer(source)
            layers.append(model)
            tokenizers.append(tokenizer)
        tokenizer = tokenizers[recipe.embed_source]
        if recipe.tokenizer_source:
            tokenizer = self._tokenizer(recipe.tokenizer_source)
        if self.resident == "host":
            layers = [m if isinstance(s, PSRecipe) else copy_to(m, self.device, needed)
                      for s, m, needed in zip(recipe.sources, layers, _layers_used(recipe))]
        return build_dfs_model(recipe, layers), tokenizer

    # --- one candidate --------------------------------------------------------------------------------
    def run(self, task: CandidateTask) -> CandidateResult:
        started = time.perf_counter()
        if task.samples is not None and not any(task.samples.values()):
            raise CandidateError(f"candidate {task.key}: samples name no doc id (None means every doc)")
        try:
            recipe = parse_recipe(task.recipe, source=f"recipe of {task.key}")
            self._resident(recipe_source_paths(recipe))
            model, tokenizer = self._build(recipe)
        except Exception as exc:  # any cause (bad recipe, unknown source, shape or memory error) fails this one
            raise CandidateError(f"candidate {task.key}: build failed: {one_line(exc)}") from None
        built = time.perf_counter()

        finite = _FiniteLogits([])
        hook = model.register_forward_hook(finite)
        try:
            result = self.evaluator.evaluate(model, tokenizer, tasks=task.tasks, samples=task.samples)
            ok = finite.all_finite()
        except Exception as exc:
            raise CandidateError(f"candidate {task.key}: evaluation failed: {one_line(exc)}") from None
        finally:
            hook.remove()
            del model, finite
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        if not ok:
            raise CandidateError(f"candidate {task.key}: the model produced NaN or infinite logits")
        for name, value in result.accuracy.items():
            if value != value or not result.correct.get(name):
                raise CandidateError(f"candidate {task.key}: task {name} gave no score (NaN or no items)")

        build_seconds = built - started
        wall = time.perf_counter() - started
        return CandidateResult(key=task.key, correct=result.correct, accuracy=result.accuracy,
                               build_seconds=build_seconds, eval_seconds=result.model_seconds,
                               overhead_seconds=wall - build_seconds - result.model_seconds, worker=self.name)

    # INTERFACES.md's driver section calls the method `evaluate`; WorkerPool calls `run` by default.
    evaluate = run


def _layers_used(recipe: DFSRecipe) -> list[set[int]]:
    """Per DFS source, the decoder layers its path runs."""
    used: list[set[int]] = [set() for _ in recipe.sources]
    for source, layer in recipe.path():
        used[source].add(layer)
    return used


def copy_to(model: torch.nn.Module, device: torch.device, layers: set[int]) -> torch.nn.Module:
    """A copy of `model` on `device` holding only what a DFS path reads: its decoder `layers` and the modules
    around the stack (embeddings, norm, head); the other layers stay behind on the meta device."""
    decoder = getattr(model, model.base_model_prefix)
    skipped = {id(t) for i, layer in enumerate(decoder.layers) if i not in layers
               for t in [*layer.parameters(), *layer.buffers()]}
    memo: dict[int, object] = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        if id(tensor) in memo:
            continue  # tied weights: one copy
        target = "meta" if id(tensor) in skipped else device
        moved = tensor.detach().to(target, non_blocking=True)
        memo[id(tensor)] = torch.nn.Parameter(moved, requires_grad=False) if isinstance(
            tensor, torch.nn.Parameter) else moved
    return copy.deepcopy(model, memo)


def candidate_pool(workers, sources: list[str], tasks_from: Union[TaskSource, list[str]], tasks: list[str],
                   num_workers: Optional[int] = None, scoring: Optional[dict] = None):
    """An unstarted Ray `WorkerPool` of CandidateWorkers as a job's or calibration's `workers` section
    (`evosearch.search.sections.WorkersSpec`) asks, on a Ray already joined or started
    (`evosearch.search.ray_session.ensure_ray`)."""
    return WorkerPool(CandidateWorker, (sources, tasks_from, tasks, workers.batch_size, workers.device, workers.dtype,
                                        False, scoring, workers.resident),
                      num_workers=num_workers or workers.count,
                      options=ActorOptions(num_cpus=workers.num_cpus, num_gpus=workers.num_gpus),
                      call="run", max_retries=workers.max_retries, start_timeout_s=workers.start_timeout_s)
