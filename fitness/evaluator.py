"""Score an in-memory model on lm-eval tasks, with per-item correctness, reusing task objects.

lm-eval indexes task YAMLs and builds `Task` objects (loading their datasets); both are slow next to
scoring a tiny model, so an `LmEvalEvaluator` does them once (`fitness.tasks.TaskCatalog`) and every
`evaluate` call only builds requests for the asked doc ids and runs the model through lm-eval's HF wrapper
(batched, generation included, with each task's own generation settings). Every candidate of a search is
scored on the same prompts with the same tokenizer, so their token ids are kept per tokenizer object
(`_EncodingMemo`): on a small model, tokenizing the prompts again cost as much as the forward passes. A
task's score and per-item correctness are read for one metric under one filter (`Scoring`), from lm-eval's
logged samples.
"""

from __future__ import annotations

import functools
import math
import numbers
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

import torch

from evosearch.errors import one_line
from fitness.tasks import EvaluationError, Scoring, TaskCatalog, TaskSource, choose_scoring, quiet_lm_eval


@dataclass
class EvalResult:
    """Scores of one model on the asked tasks and doc ids."""

    accuracy: dict[str, float]  # task -> its metric over the evaluated docs, as lm-eval aggregates it
    correct: dict[str, dict[int, float]]  # task -> doc id -> the item's metric value (0/1 for a binary metric)
    scoring: dict[str, Scoring] = field(default_factory=dict)  # task -> the metric and filter read
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


class _EncodingMemo:
    """Token ids of the strings lm-eval asked a tokenizer for, per tokenizer object (a worker keeps one per
    source, so every candidate of a search shares them; a tokenizer built for one candidate, such as a
    vocabulary union, takes its memo with it when it is collected). Bounded: past `max_entries` strings a
    tokenizer's memo starts over."""

    def __init__(self, max_entries: int = 1 << 18) -> None:
        self.max_entries = max_entries
        self._by_tokenizer: "weakref.WeakKeyDictionary[object, dict]" = weakref.WeakKeyDictionary()

    def encode(self, tokenizer, key: tuple, encode) -> list[int]:
        try:
            memo = self._by_tokenizer.setdefault(tokenizer, {})
            ids = memo.get(key)
        except TypeError:  # a tokenizer or an argument that cannot be a key: no memo for it
            return encode()
        if ids is None:
            if len(memo) >= self.max_entries:
                memo.clear()
            ids = memo[key] = tuple(encode())
        return list(ids)  # lm-eval may change the list it gets


_ENCODINGS = _EncodingMemo()


@functools.cache
def _quiet_hflm():
    """lm-eval's HF wrapper without its per-call progress bars (two per task for every candidate), its
    prompts' token ids kept across candidates (`_EncodingMemo`)."""
    from lm_eval.models.huggingface import HFLM  # lm-eval only when evaluating: it takes seconds to import

    class QuietHFLM(HFLM):
        def tok_encode(self, string: str, add_special_tokens: bool | None = None,
                       left_truncate_len: int | None = None, **kwargs) -> list[int]:
            # add_bos_token is part of the key: lm-eval reads it from the wrapper, not the tokenizer.
            key = (string, add_special_tokens, left_truncate_len, self.add_bos_token, tuple(sorted(kwargs.items())))
            return _ENCODINGS.encode(self.tokenizer, key, lambda: super(QuietHFLM, self).tok_encode(
                string, add_special_tokens=add_special_tokens, left_truncate_len=left_truncate_len, **kwargs))

        def loglikelihood(self, requests, disable_tqdm: bool = True):
            return super().loglikelihood(requests, disable_tqdm=True)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = True):
            return super().loglikelihood_rolling(requests, disable_tqdm=True)

        def generate_until(self, requests, disable_tqdm: bool = True):
            return super().generate_until(requests, disable_tqdm=True)

    return QuietHFLM


class LmEvalEvaluator:
    """Build once per process (or Ray actor); call `evaluate` for every candidate model."""

    def __init__(self, tasks_from: TaskSource | str | Path | Sequence[str | Path], tasks: Sequence[str],
                 batch_size: int = 64, device: str = "cpu",
                 scoring: Optional[Mapping[str, tuple[Optional[str], Optional[str]]]] = None) -> None:
        """`tasks_from`: a job's `TaskSource`, or local task directories; `scoring`: task -> (metric, filter),
        either None for the task's first."""
        self.source = TaskSource.of(tasks_from)
        self.batch_size, self.device = batch_size, device
        catalog = TaskCatalog(self.source)
        self._tasks: dict = {name: catalog.build_task(name) for name in tasks}
        self.scoring: dict[str, Scoring] = {
            name: choose_scoring(name, task, *(scoring or {}).get(name, (None, None)))
            for name, task in self._tasks.items()}

    @property
    def task_names(self) -> list[str]:
        return list(self._tasks)

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
        timer = _ForwardTimer()
        hooks = timer.attach(model)
        try:
            # lm-eval warns on every call that the model came in as an object, which is how we use it.
            with torch.inference_mode(), quiet_lm_eval():
                lm = _quiet_hflm()(pretrained=model, tokenizer=tokenizer, batch_size=self.batch_size,
                                   device=self.device)
                out = lm_eval.evaluator.evaluate(
                    lm, {"tasks": chosen, "groups": {}, "group_map": {}}, samples=samples or None,
                    bootstrap_iters=0, log_samples=True, **self.source.prompt_settings)
        except EvaluationError:
            raise
        except Exception as e:
            raise EvaluationError(f"lm-eval failed on tasks {names}: {one_line(e)}") from None
        finally:
            for h in hooks:
                h.remove()

        accuracy, correct = {}, {}
        for n in names:
            scoring = self.scoring[n]
            items = {int(s["doc_id"]): _item_value(s[scoring.metric], scoring) for s in out["samples"][n]
                     if s["filter"] == scoring.filter}
            correct[n] = dict(sorted(items.items()))
            accuracy[n] = float(out["results"][n][scoring.key])
        return EvalResult(accuracy=accuracy, correct=correct, scoring={n: self.scoring[n] for n in names},
                          seconds=time.perf_counter() - started, model_seconds=timer.total)


def _item_value(value, scoring: Scoring) -> float:
    """An item's metric value as stored: 0/1 (an int) for a binary metric, else the float; NaN for an item of
    a corpus metric (bleu logs a (reference, prediction) pair: only the aggregate is a score)."""
    if not isinstance(value, numbers.Real):
        return math.nan
    return int(round(float(value))) if scoring.binary else float(value)
