"""Where a task comes from: the job's own task YAMLs first, then lm-eval's own task index; `overrides`
merged into the registered config; the metric and filter a task is scored by.

`TaskSource` is what a job's or calibration's `tasks` section says (plain data: it travels to the Ray
workers). `TaskCatalog` turns a name into lm-eval `Task` objects. lm-eval's built-in index takes seconds to
build, so it is built only when a name is not found locally, once per process (`_builtin_index`).

Overrides go through lm-eval's task factory with the registered entry (`build_task`, the one place that
calls it): in lm-eval 0.4.13 `TaskManager.load([{"task": "gsm8k", ...}])` builds an inline task from the
dict alone and drops the registered config (no test split, no generation settings), while the factory
merges the overrides into the registered YAML. `tests/test_builtin_tasks.py` fails if that changes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from evosearch.errors import RunFailure, one_line

DERIVED_FROM = "from"  # an overrides entry naming a new task made from a registered one
NO_FILTER = "none"  # lm-eval's name for the scores of a task without a filter_list
# Metrics whose per-item value is 0 or 1: the only ones IRT, anchors and estimators can use.
BINARY_METRICS = frozenset({"acc", "acc_norm", "acc_mutual_info", "exact_match", "em"})


class EvaluationError(RunFailure, RuntimeError):
    """A task lm-eval cannot find, build, load or run; one line naming the task (and the field at fault)."""


@dataclass(frozen=True)
class TaskSource:
    """Local task directories (searched first), per-task overrides of lm-eval config fields, and the
    prompt settings lm-eval applies to every request (its flags of the same names)."""

    include_path: tuple[str, ...] = ()
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    apply_chat_template: bool = False
    fewshot_as_multiturn: bool = False
    system_instruction: Optional[str] = None

    @classmethod
    def of(cls, value: Union["TaskSource", str, Path, Sequence[Union[str, Path]], None]) -> "TaskSource":
        """A TaskSource as given, or one of local task directories only (the zoo's and the benches' way)."""
        if isinstance(value, TaskSource):
            return value
        if value is None:
            return cls()
        paths = [value] if isinstance(value, (str, Path)) else list(value)
        return cls(include_path=tuple(str(p) for p in paths))

    @property
    def prompt_settings(self) -> dict[str, Any]:
        """Keyword arguments of `lm_eval.evaluator.evaluate` for these prompt settings."""
        return {"apply_chat_template": self.apply_chat_template, "fewshot_as_multiturn": self.fewshot_as_multiturn,
                "system_instruction": self.system_instruction}


@dataclass(frozen=True)
class Scoring:
    """The metric and filter a task's score and per-item correctness are read from."""

    metric: str
    filter: str = NO_FILTER

    @property
    def key(self) -> str:
        """lm-eval's results key for it (`exact_match,strict-match`)."""
        return f"{self.metric},{self.filter}"

    @property
    def binary(self) -> bool:
        return self.metric in BINARY_METRICS


def task_metrics(task) -> list[str]:
    """The metrics a built lm-eval task reports, in its config's order."""
    return list(task.aggregation())


def task_filters(task) -> list[str]:
    """The filters a built lm-eval task applies, in its config's order (`none` when it has no filter_list)."""
    filters = task.config.filter_list
    return [str(f["name"]) for f in filters] if filters else [NO_FILTER]


def choose_scoring(name: str, task, metric: Optional[str] = None, filter: Optional[str] = None) -> Scoring:
    """The scoring asked for (default: the task's first metric and first filter); EvaluationError, listing
    what the task has, when it has no such metric or filter."""
    metrics, filters = task_metrics(task), task_filters(task)
    if metric is not None and metric not in metrics:
        raise EvaluationError(f"task {name!r} has no metric {metric!r} (it has {', '.join(metrics)})")
    if filter is not None and filter not in filters:
        raise EvaluationError(f"task {name!r} has no filter {filter!r} (it has {', '.join(filters)})")
    return Scoring(metric=metric or metrics[0], filter=filter or filters[0])


@contextlib.contextmanager
def quiet_lm_eval():
    """lm-eval's warnings off (a model passed as an object, a config's defaults filled in): a preflight's and a
    worker's stderr is their one-line verdict."""
    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def config_fields() -> set[str]:
    """Every field lm-eval's task config accepts (an override naming another is rejected up front)."""
    from lm_eval.config.task import TaskConfig  # lm-eval only where tasks are built: seconds to import

    return {f.name for f in dataclasses.fields(TaskConfig)}


@functools.cache
def _builtin_index() -> dict:
    """lm-eval's own task index (seconds to build): once per process, and only when a name needs it."""
    from lm_eval.tasks import TaskManager  # see `config_fields`

    return TaskManager(include_defaults=True).task_index


@functools.cache
def _local_index(include_path: tuple[str, ...]) -> dict:
    from lm_eval.tasks import TaskManager  # see `config_fields`

    return TaskManager(include_path=list(include_path), include_defaults=False).task_index if include_path else {}


def _registered_yaml(entry) -> dict:
    from lm_eval.tasks._yaml_loader import load_yaml  # see `config_fields`

    return load_yaml(entry.yaml_path, resolve_func=False) if entry.yaml_path else dict(entry.cfg or {})


def merged_overrides(registered: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The overrides to hand lm-eval's factory: a field that is a mapping in both the registered config and
    the override gets the override's keys merged in (`generation_kwargs: {max_gen_toks: 8}` keeps `until`);
    any other field is replaced."""
    merged = {}
    for key, value in overrides.items():
        base = registered.get(key)
        merged[key] = {**base, **value} if isinstance(base, Mapping) and isinstance(value, Mapping) else value
    return merged


class TaskCatalog:
    """Finds and builds tasks for one `TaskSource`."""

    def __init__(self, source: TaskSource) -> None:
        self.source = source
        for p in source.include_path:
            if not Path(p).exists():
                raise EvaluationError(f"task include path not found: {p}")

    def _registered(self, name: str) -> tuple[Any, dict]:
        """(lm-eval index entry, that index) of a registered name: local first, then lm-eval's own."""
        local = _local_index(tuple(self.source.include_path))
        if name in local:
            return local[name], local
        builtin = _builtin_index()
        if name in builtin:
            return builtin[name], builtin
        where = "tasks.include_path nor " if self.source.include_path else ""
        raise EvaluationError(f"unknown lm-eval task {name!r}: not under {where}lm-eval's own tasks")

    def overrides_of(self, name: str) -> dict[str, Any]:
        """The overrides of `name`; a derived task's are its base's (as this source configures it) and then
        its own, `from` included."""
        own = dict(self.source.overrides.get(name, {}))
        base = own.get(DERIVED_FROM)
        if base is None:
            return own
        inherited = {k: v for k, v in self.source.overrides.get(base, {}).items() if k != DERIVED_FROM}
        return {**inherited, **own}

    def registered_config(self, name: str) -> dict:
        """The registered YAML (includes merged) of `name`, or of the task a derived `name` is made from."""
        base = self.source.overrides.get(name, {}).get(DERIVED_FROM, name)
        return _registered_yaml(self._registered(base)[0])

    def build_task(self, name: str):
        """The lm-eval Task `name` (its dataset loaded), with its overrides merged into the registered config;
        a derived task (`from:`) is its base's config, with the base's overrides and its own, under the new name."""
        overrides = self.overrides_of(name)
        base = overrides.pop(DERIVED_FROM, None)
        for owner in filter(None, (name, base)):  # named where it is written: a derived task inherits its base's
            unknown = sorted(set(self.source.overrides.get(owner, {})) - config_fields() - {DERIVED_FROM})
            if unknown:
                raise EvaluationError(f"tasks.overrides.{owner}.{unknown[0]}: not a field of lm-eval's task config")
        entry, registry = self._registered(base or name)
        named = sorted(overrides)
        if base is not None:
            overrides["task"] = name
        kind = getattr(entry.kind, "name", str(entry.kind))
        if kind not in ("TASK", "PY_TASK"):
            raise EvaluationError(f"{base or name!r} is a lm-eval {kind.lower()}, not a task; name its tasks instead")
        import datasets  # see `config_fields`
        from lm_eval.tasks._factory import TaskFactory

        # A preflight's stderr is its one-line verdict: no "Generating test split" bars.
        datasets.disable_progress_bars()
        where = f" ({entry.yaml_path})" if entry.yaml_path else ""
        if named:
            where += f" with overrides {', '.join(named)}"
        try:
            with quiet_lm_eval():
                built = TaskFactory().build(entry, registry=registry,
                                            overrides=merged_overrides(_registered_yaml(entry), overrides) or None)
        except Exception as e:  # lm-eval raises many types for a bad field value or a dataset it cannot load
            raise EvaluationError(f"lm-eval could not build task {name!r}{where}: {one_line(e)}") from None
        if isinstance(built, list) or getattr(built, "OUTPUT_TYPE", None) is None:
            raise EvaluationError(f"{name!r}{where} is a group or tag, not a task; name its tasks instead")
        if built.OUTPUT_TYPE not in ("multiple_choice", "loglikelihood", "generate_until"):
            raise EvaluationError(f"task {name!r}{where}: unsupported output_type {built.OUTPUT_TYPE!r}")
        return built
