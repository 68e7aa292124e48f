"""The calibration file read by `evosearch calibrate`: which models, which tasks, how to fit and report.

`load_calibration_spec(path)` validates everything before Ray or a model starts; every error is ONE line
`FILE: field.path: message`. Models are named once under `sources` (name -> directory) as in a job file,
and the PS search space that draws the random merges may refer to them by name. Relative paths are
resolved against the current directory and kept absolute, so stored recipes carry real paths.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Optional

from pydantic import Field, field_validator, model_validator

from evosearch.config_file import known, model_dirs, read_yaml_file, safe_name, store_url
from evosearch.errors import UsageError
from evosearch.search.sections import Section, TasksSpec, WorkersSpec, resolve_models, resolve_tasks, validated
from evosearch.spaces import PSSpaceConfig, SpaceError, parse_space_config
from fitness.anchors import ANCHOR_STRATEGIES
from fitness.calibration import DEFAULT_STRATEGIES
from fitness.estimators import ESTIMATORS
from fitness.irt import ABILITY_SCOPES, IRTFitSettings


class CalibrationSpecError(UsageError, ValueError):
    """A calibration file that cannot run; the message is one line naming the file and the field."""


class IRTSpec(Section):
    """2PL by default; `dims` > 1 is the multidimensional model, `ability_scope: shared` one ability for
    every task (tinyBenchmarks' choice) instead of one per task."""

    dims: int = Field(default=1, ge=1)
    ability_scope: str = "per_task"

    @field_validator("ability_scope")
    @classmethod
    def _known_scope(cls, v: str) -> str:
        return known(v, ABILITY_SCOPES, "ability scope")

    def settings(self, seed: int) -> IRTFitSettings:
        return IRTFitSettings(dims=self.dims, ability_scope=self.ability_scope, seed=seed)


def stored_irt_settings(stored_spec: Optional[dict]) -> IRTFitSettings:
    """The IRT settings a stored calibration was fitted with (its spec as `CalibrationSpec.to_dict` wrote it;
    defaults where a hand-made calibration stored none). ValueError when they do not validate."""
    stored_spec = stored_spec or {}
    return IRTSpec.model_validate(stored_spec.get("irt", {})).settings(int(stored_spec.get("seed", 0)))


class ReportSettings(Section):
    """What `evosearch fitness report` measures on the held-out members: every estimator x strategy x k."""

    estimators: list[str] = Field(default_factory=lambda: list(ESTIMATORS), min_length=1)
    strategies: list[str] = Field(default_factory=lambda: list(DEFAULT_STRATEGIES), min_length=1)
    ks: list[int] = Field(default_factory=lambda: [10, 30, 100], min_length=1)

    @field_validator("estimators")
    @classmethod
    def _known_estimators(cls, v: list[str]) -> list[str]:
        return [known(name, ESTIMATORS, "estimator") for name in v]

    @field_validator("strategies")
    @classmethod
    def _known_strategies(cls, v: list[str]) -> list[str]:
        return [known(name, ANCHOR_STRATEGIES, "anchor strategy") for name in v]

    @field_validator("ks")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        bad = [k for k in v if k < 1]
        if bad:
            raise ValueError(f"anchor sizes must be >= 1, got {bad[0]}")
        return v


class ScoringSpec(Section):
    """What a calibration reads of a task's results (default: its first metric and first filter)."""

    metric: Optional[str] = None
    filter: Optional[str] = None


class CalibrationTasks(TasksSpec):
    """A job's `tasks` section, and the tasks to score (`names`) with their metric and filter (`scoring`)."""

    names: list[str] = Field(min_length=1, description="lm-eval task names, scored on every doc")
    scoring: dict[str, ScoringSpec] = Field(default_factory=dict)

    @field_validator("names")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"task {next(t for t in v if v.count(t) > 1)!r} is listed twice")
        return v

    def metric_filter(self) -> dict[str, tuple[Optional[str], Optional[str]]]:
        """Task -> (metric, filter) as asked, None for the task's first."""
        return {t: (self.scoring[t].metric, self.scoring[t].filter) if t in self.scoring else (None, None)
                for t in self.names}


class CalibrationSpec(Section):
    name: str
    store: Optional[str] = None
    sources: dict[str, str] = Field(min_length=1, description="model name -> HF directory")
    base_model: Optional[str] = None
    search_space: PSSpaceConfig
    n_random: int = Field(default=48, ge=0, description="random merges in the fit")
    n_heldout: int = Field(default=16, ge=0, description="merges scored for the report only, never fitted")
    seed: int = 0
    tasks: CalibrationTasks
    workers: WorkersSpec = Field(default_factory=WorkersSpec)
    irt: IRTSpec = Field(default_factory=IRTSpec)
    report: ReportSettings = Field(default_factory=ReportSettings)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        return safe_name(v, "calibration")

    @model_validator(mode="after")
    def _defaults(self) -> "CalibrationSpec":
        self.store = store_url(self.store, self.name)
        return self

    @property
    def source_paths(self) -> list[str]:
        return model_dirs(self.sources, self.base_model)

    @property
    def task_names(self) -> list[str]:
        return list(self.tasks.names)

    @property
    def irt_settings(self) -> IRTFitSettings:
        return self.irt.settings(self.seed)

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


def parse_calibration_spec(raw: Any, where: str = "calibration") -> CalibrationSpec:
    """Validate an already-loaded calibration mapping; `where` prefixes every error (the file name)."""
    if not isinstance(raw, dict):
        raise CalibrationSpecError(f"{where}: a calibration file is a YAML mapping of fields, "
                                   f"got {type(raw).__name__}")
    raw = copy.deepcopy(raw)
    for field in ("name", "sources", "search_space", "tasks"):
        if field not in raw:
            raise CalibrationSpecError(f"{where}: {field}: required field is missing")
    if isinstance(raw["tasks"], list):  # the short form: `tasks: [names]`, with a top-level `include_path`
        raw["tasks"] = {"names": raw["tasks"], **({"include_path": raw.pop("include_path")}
                                                  if "include_path" in raw else {})}
    resolve_models(raw, where, CalibrationSpecError)
    space = raw["search_space"]
    if isinstance(space, dict) and space.get("kind", "ps") != "ps":
        raise CalibrationSpecError(f"{where}: search_space.kind: random calibration merges are drawn from a PS "
                                   f"space, not {space.get('kind')!r}")
    try:
        raw["search_space"] = parse_space_config(space)
    except SpaceError as e:
        raise CalibrationSpecError(f"{where}: {e}") from None
    spec = validated(CalibrationSpec, raw, where, CalibrationSpecError)
    _check_tasks(spec, where)
    return spec


def _check_tasks(spec: CalibrationSpec, where: str) -> None:
    unknown = [t for t in spec.tasks.scoring if t not in spec.tasks.names]
    if unknown:
        raise CalibrationSpecError(f"{where}: tasks.scoring.{unknown[0]}: not one of tasks.names")
    resolve_tasks(spec.tasks, where, CalibrationSpecError)


def load_calibration_spec(path: str | Path) -> CalibrationSpec:
    """Read and validate a calibration YAML; raises CalibrationSpecError (one line naming file and field)."""
    return parse_calibration_spec(read_yaml_file(path, "calibration", CalibrationSpecError), where=str(Path(path)))
