"""What a job file and a calibration file share: the `workers` and `tasks` sections, the naming of models, the
task index of the local task YAMLs, and turning pydantic's complaint into the file's one-line error."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from evosearch.config_file import OneOrMore
from evosearch.errors import UsageError, validation_error_line
from evosearch.merge.lora import ADAPTER_CONFIG
from evosearch.merge.sources import model_reference, source_key
from evosearch.optimizers import OPTIMIZERS
from evosearch.spaces import PS_SOURCE, SPACES
from fitness.tasks import DERIVED_FROM, TaskSource

# Union members show up in pydantic's error locations as their tag; they are not fields.
_UNION_TAGS = (*SPACES, *OPTIMIZERS)


class Section(BaseModel):
    """A part of a job or calibration file: unknown fields are errors, never silently ignored."""

    model_config = ConfigDict(extra="forbid")


class WorkersSpec(Section):
    count: int = Field(default=1, gt=0)
    num_cpus: float = Field(default=1.0, gt=0)
    num_gpus: float = Field(default=0.0, ge=0)
    batch_size: int = Field(default=64, gt=0)
    device: str = "auto"
    dtype: Optional[str] = None
    resident: Literal["device", "host"] = Field(default="device", description="where a worker keeps the sources: "
                                                "on its device, or in host memory with candidates built on the "
                                                "device tensor by tensor")
    eval_sequence_length: int = Field(default=512, gt=0, description="the longest evaluation request in tokens "
                                      "(prompt + answer) the memory preflight plans a batch for")
    max_retries: int = Field(default=2, ge=0)
    start_timeout_s: float = Field(default=600.0, gt=0, description="how long to wait for the first worker to "
                                                                    "be placed before the job fails")


# `datasets` loaders that read local files: their `data_files` are paths of the job's machine.
LOCAL_FILE_LOADERS = ("json", "csv", "parquet", "text", "arrow")


class TasksSpec(Section):
    """Where tasks come from: `include_path` (local task YAMLs, searched first), then lm-eval's own tasks;
    `overrides`: task -> lm-eval task-config fields merged into its registered config (`from: TASK` makes
    a new task of that name from a registered one); lm-eval's prompt flags of the same names."""

    include_path: OneOrMore = Field(default_factory=list)
    overrides: dict[str, dict[str, Any]] = Field(default_factory=dict)
    apply_chat_template: bool = False
    fewshot_as_multiturn: bool = False
    system_instruction: Optional[str] = None

    @model_validator(mode="after")
    def _multiturn_needs_template(self) -> "TasksSpec":
        if self.fewshot_as_multiturn and not self.apply_chat_template:
            raise ValueError("fewshot_as_multiturn needs apply_chat_template: true (as in lm-eval)")
        return self

    @property
    def derived(self) -> dict[str, str]:
        """New task name -> the registered task it is made from."""
        return {name: str(o[DERIVED_FROM]) for name, o in self.overrides.items() if DERIVED_FROM in o}

    def source(self) -> TaskSource:
        return TaskSource(include_path=tuple(self.include_path), overrides=self.overrides,
                          apply_chat_template=self.apply_chat_template,
                          fewshot_as_multiturn=self.fewshot_as_multiturn, system_instruction=self.system_instruction)

    def data_files(self) -> list[tuple[str, Path]]:
        """(field path, file) of every local data file the overrides name (already resolved)."""
        found = []
        for name, override in self.overrides.items():
            files = (override.get("dataset_kwargs") or {}).get("data_files")
            if override.get("dataset_path") not in LOCAL_FILE_LOADERS or files is None:
                continue
            for key, path in _each_file(files, f"tasks.overrides.{name}.dataset_kwargs.data_files"):
                found.append((key, Path(path)))
        return found


def _each_file(files: Any, key: str):
    """(field path, path) of each entry of a `data_files` value: a path, a list, or split -> path(s)."""
    if isinstance(files, dict):
        for split, value in files.items():
            yield from _each_file(value, f"{key}.{split}")
    elif isinstance(files, list):
        for i, value in enumerate(files):
            yield from _each_file(value, f"{key}[{i}]")
    else:
        yield key, str(files)


def _resolved_files(files: Any) -> Any:
    if isinstance(files, dict):
        return {split: _resolved_files(value) for split, value in files.items()}
    if isinstance(files, list):
        return [_resolved_files(value) for value in files]
    return str(Path(str(files)).expanduser().resolve())


def resolve_tasks(tasks: TasksSpec, where: str, error: type[UsageError]) -> dict[str, dict]:
    """Makes the section's paths absolute (include paths and local data files, which must exist) and returns
    the local task index (`task_index`), derived tasks included under their new names with their base's
    local YAML when it has one."""
    include = resolve_include_paths(tasks.include_path, "tasks.include_path", where, error)
    tasks.include_path = [str(p) for p in include]
    for name, override in tasks.overrides.items():
        kwargs = override.get("dataset_kwargs")
        if override.get("dataset_path") in LOCAL_FILE_LOADERS and isinstance(kwargs, dict) and "data_files" in kwargs:
            override["dataset_kwargs"] = {**kwargs, "data_files": _resolved_files(kwargs["data_files"])}
    for key, path in tasks.data_files():
        if not path.is_file():
            raise error(f"{where}: {key}: not found: {path}")
    known = task_index(include)
    for name, override in tasks.overrides.items():
        if name in known and DERIVED_FROM not in override:
            known[name] = {**known[name], **override}
    for name, base in tasks.derived.items():
        if name == base:
            raise error(f"{where}: tasks.overrides.{name}.from: a task cannot be made from itself")
        known[name] = {**known.get(base, {}), **tasks.overrides.get(base, {}), **tasks.overrides[name], "task": name}
    return known


def validated(model: type[BaseModel], raw: Any, where: str, error: type[UsageError]) -> Any:
    """`model` validated from `raw`; `error` with pydantic's first complaint as `WHERE: field: message`."""
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise error(validation_error_line(e, where=where, skip=_UNION_TAGS)) from None


def resolve_models(raw: dict, where: str, error: type[UsageError]) -> None:
    """Absolute source paths (that must exist); names in the search space replaced by their paths."""
    sources = raw.get("sources")
    if not isinstance(sources, dict) or not sources:
        raise error(f"{where}: sources: give a mapping of model name -> model directory")
    resolved: dict[str, str] = {}
    for name, path in sources.items():
        if not isinstance(path, (str, Path)):
            raise error(f"{where}: sources.{name}: expected a directory path")
        # A source may be a LoRA adapter: `MODEL+ADAPTER` or an adapter directory naming its base.
        model, adapter = model_reference(str(path))
        for part, marker in ((model, "config.json"), (adapter, ADAPTER_CONFIG)):
            p = Path(part).expanduser().resolve() if part is not None else None
            if p is not None and not (p / marker).is_file():
                raise error(f"{where}: sources.{name}: no {'model' if part == model else 'adapter'} at {p} "
                            f"(missing {marker})")
        resolved[str(name)] = source_key(str(path))
    raw["sources"] = resolved

    def by_name(value):
        if isinstance(value, str) and value in resolved:
            return resolved[value]
        return value

    base = raw.get("base_model")
    if base is not None:
        if not isinstance(base, str) or base not in resolved:
            raise error(f"{where}: base_model: {base!r} is not one of sources ({', '.join(resolved)})")
        raw["base_model"] = resolved[base]
    space = raw.get("search_space")
    if isinstance(space, dict):
        parts = [space[k] for k in ("ps", "dfs") if isinstance(space.get(k), dict)] or [space]
        ps_part = space.get("ps") if space.get("kind") == "ps+dfs" else space if space.get("kind") == "ps" else None
        for part in parts:
            if isinstance(part.get("sources"), list):
                unknown = [s for s in part["sources"]
                           if not isinstance(s, str) or (s not in resolved and s != PS_SOURCE)]
                if unknown:
                    raise error(f"{where}: search_space.sources: {unknown[0]!r} is not one of sources "
                                f"({', '.join(resolved)})")
                part["sources"] = [by_name(s) for s in part["sources"]]
            for key in ("base_model", "tokenizer_source"):
                if key in part:
                    part[key] = by_name(part[key])
        # The job's base model is the PS space's default base.
        if isinstance(ps_part, dict) and "base_model" not in ps_part and raw.get("base_model"):
            ps_part["base_model"] = raw["base_model"]


class _LenientLoader(yaml.SafeLoader):
    pass


# lm-eval YAMLs may carry `!function` tags; they do not matter to the index.
_LenientLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def task_index(include_paths: list[Path]) -> dict[str, dict]:
    """Task name -> its lm-eval YAML (one level of `include:` merged), read without lm-eval: fast."""
    def read(f: Path) -> Optional[dict]:
        try:
            data = yaml.load(f.read_text(encoding="utf-8"), Loader=_LenientLoader)
        except (yaml.YAMLError, OSError, UnicodeDecodeError):
            return None
        return data if isinstance(data, dict) else None

    tasks: dict[str, dict] = {}
    for root in include_paths:
        for f in [root] if root.is_file() else sorted(root.rglob("*.yaml")):
            data = read(f)
            if data is None or not isinstance(data.get("task"), str):
                continue
            if isinstance(data.get("include"), str):
                data = {**(read(f.parent / data["include"]) or {}), **data}
            tasks[data["task"]] = data
    return tasks


def resolve_include_paths(paths: list[str], field: str, where: str, error: type[UsageError]) -> list[Path]:
    """The local task directories as absolute paths; `error` naming the first that does not exist."""
    include = [Path(p).expanduser().resolve() for p in paths]
    for i, p in enumerate(include):
        if not p.exists():
            raise error(f"{where}: {field}[{i}]: not found: {p}")
    return include
