"""Score an in-memory model on lm-eval tasks, with per-item correctness, reusing task objects.

lm-eval's `TaskManager` indexes task YAMLs and builds `Task` objects (loading their datasets); both are
slow next to scoring a tiny model, so an `LmEvalEvaluator` does them once and every `evaluate` call
only builds requests for the asked doc ids and runs the model through lm-eval's HF wrapper.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from evosearch.errors import RunFailure, one_line


class EvaluationError(RunFailure, RuntimeError):
    """A task lm-eval cannot load or run; the message is one line naming the task or file."""


@dataclass
class EvalResult:
    """Scores of one model on the asked tasks and doc ids."""

    accuracy: dict[str, float]  # task -> mean of `metric` over the evaluated docs
    correct: dict[str, dict[int, int]]  # task -> doc id -> 1 if the model got the item right, else 0
    metric: str = "acc"
    seconds: float = 0.0  # wall time of the call
    model_seconds: float = 0.0  # part of it spent inside the model's forward passes

    @property
    def overhead_seconds(self) -> float:
        return self.seconds - self.model_seconds


@dataclass
class _ForwardTimer:
    """Adds up the wall time spent in a module's forward (hooks, removed after each call)."""

    total: float = 0.0
    _start: float = field(default=0.0, repr=False)

    def attach(self, model: torch.nn.Module) -> list:
        return [model.register_forward_pre_hook(self._pre), model.register_forward_hook(self._post)]

    def _pre(self, *_):
        self._start = time.perf_counter()

    def _post(self, *_):
        self.total += time.perf_counter() - self._start


@functools.cache
def _quiet_hflm():
    """lm-eval's HF wrapper without its per-call progress bars (two per task for every candidate)."""
    from lm_eval.models.huggingface import HFLM  # lm-eval only when evaluating: it takes seconds to import

    class QuietHFLM(HFLM):
        def loglikelihood(self, requests, disable_tqdm: bool = True):
            return super().loglikelihood(requests, disable_tqdm=True)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = True):
            return super().loglikelihood_rolling(requests, disable_tqdm=True)

        def generate_until(self, requests, disable_tqdm: bool = True):
            return super().generate_until(requests, disable_tqdm=True)

    return QuietHFLM


class LmEvalEvaluator:
    """Build once per process (or Ray actor); call `evaluate` for every candidate model."""

    def __init__(self, include_path: str | Path | Sequence[str | Path], tasks: Sequence[str],
                 batch_size: int = 64, device: str = "cpu", metric: str = "acc",
                 include_defaults: bool = False) -> None:
        from lm_eval.tasks import TaskManager  # see `_quiet_hflm`: views of a job never load lm-eval

        paths = [include_path] if isinstance(include_path, (str, Path)) else list(include_path)
        for p in paths:
            if not Path(p).exists():
                raise EvaluationError(f"task include path not found: {p}")
        self.batch_size, self.device, self.metric = batch_size, device, metric
        # The built-in task index is slow to build and never needed for the zoo: leave it out by default.
        self._manager = TaskManager(include_path=[str(p) for p in paths], include_defaults=include_defaults)
        self._tasks: dict = {}
        for name in tasks:
            self._tasks[name] = self._load(name)

    @property
    def task_names(self) -> list[str]:
        return list(self._tasks)

    def _load(self, name: str):
        entry = self._manager.task_index.get(name)
        where = f" ({entry.yaml_path})" if entry is not None and getattr(entry, "yaml_path", None) else ""
        if entry is None:
            raise EvaluationError(f"unknown lm-eval task {name!r}: not found under the include path")
        try:
            loaded = self._manager.load([name])["tasks"]
        except Exception as e:  # lm-eval raises many types for a bad YAML or dataset
            raise EvaluationError(f"lm-eval rejected task {name!r}{where}: {one_line(e)}") from None
        if name not in loaded:
            raise EvaluationError(f"{name!r}{where} is a group or tag, not a task; name its tasks instead")
        task = loaded[name]
        if task.OUTPUT_TYPE not in ("multiple_choice", "loglikelihood", "generate_until"):
            raise EvaluationError(f"task {name!r}{where}: unsupported output_type {task.OUTPUT_TYPE!r}")
        return task

    def doc_ids(self, task: str) -> list[int]:
        """Every doc id of a task (its evaluation split), in order."""
        return list(range(len(self._task(task).eval_docs)))

    def _task(self, name: str):
        if name not in self._tasks:
            raise EvaluationError(f"task {name!r} was not loaded by this evaluator; loaded: "
                                  f"{', '.join(self._tasks) or 'none'}")
        return self._tasks[name]

    def evaluate(self, model: torch.nn.Module, tokenizer, tasks: list[str] | None = None,
                 samples: dict[str, list[int]] | None = None) -> EvalResult:
        """Score `model` on `tasks` (default: all loaded), restricted to `samples[task]` doc ids if given."""
        import lm_eval.evaluator  # see `_quiet_hflm`

        started = time.perf_counter()
        names = list(tasks) if tasks is not None else (list(samples) if samples else self.task_names)
        chosen = {n: self._task(n) for n in names}
        if samples is not None:
            for n, ids in samples.items():
                n_docs = len(self._task(n).eval_docs)
                bad = [i for i in ids if not 0 <= i < n_docs]
                if bad:
                    raise EvaluationError(f"task {n!r}: doc ids {bad[:5]} out of range 0..{n_docs - 1}")
            samples = {n: sorted(set(samples[n])) for n in names if n in samples}

        model.eval()
        # lm-eval warns on every call that the model came in as an object, which is how we use it.
        quiet = logging.getLogger("lm_eval").level
        logging.getLogger("lm_eval").setLevel(logging.ERROR)
        timer = _ForwardTimer()
        hooks = timer.attach(model)
        try:
            lm = _quiet_hflm()(pretrained=model, tokenizer=tokenizer, batch_size=self.batch_size, device=self.device)
            with torch.inference_mode():
                out = lm_eval.evaluator.evaluate(
                    lm, {"tasks": chosen, "groups": {}, "group_map": {}}, samples=samples or None,
                    bootstrap_iters=0, log_samples=True)
        except EvaluationError:
            raise
        except Exception as e:
            raise EvaluationError(f"lm-eval failed on tasks {names}: {one_line(e)}") from None
        finally:
            for h in hooks:
                h.remove()
            logging.getLogger("lm_eval").setLevel(quiet)

        accuracy, correct = {}, {}
        for n in names:
            items = {int(s["doc_id"]): int(round(float(s[self.metric]))) for s in out["samples"][n]}
            correct[n] = dict(sorted(items.items()))
            accuracy[n] = float(out["results"][n][f"{self.metric},none"])
        return EvalResult(accuracy=accuracy, correct=correct, metric=self.metric,
                          seconds=time.perf_counter() - started, model_seconds=timer.total)
