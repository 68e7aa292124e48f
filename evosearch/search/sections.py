"""What a job file and a calibration file share: the `workers` section, the naming of models, the task index
of the local task YAMLs, and turning pydantic's complaint into the file's one-line error."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from evosearch.errors import UsageError, validation_error_line
from evosearch.optimizers import OPTIMIZERS
from evosearch.spaces import PS_SOURCE, SPACES

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
    max_retries: int = Field(default=2, ge=0)
    start_timeout_s: float = Field(default=600.0, gt=0, description="how long to wait for the first worker to "
                                                                    "be placed before the job fails")


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
        p = Path(path).expanduser().resolve()
        if not (p / "config.json").is_file():
            raise error(f"{where}: sources.{name}: no model at {p} (missing config.json)")
        resolved[str(name)] = str(p)
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
