"""The job file: what to search (sources, space), how (optimizer, fitness, workers), for what (objectives).

`load_job(path)` reads the YAML and validates everything up front, so a bad job stops before Ray or a
model starts; every error is ONE line `FILE: field.path: message`. Relative paths are resolved against the
current directory (jobs are run from the project root, where `runs/zoo` lives) and stored absolute.

`sources` names the models once (`name: dir`); the search space may refer to them by name, and every name
is replaced by its directory before the space is parsed, so recipes always carry real paths.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator, \
    model_validator

from evosearch.config_file import OneOrMore, known, model_dirs, read_yaml_file, safe_name, store_url
from evosearch.optimizers import AnyOptimizerConfig, OptimizerError, parse_optimizer_config
from evosearch.spaces import PS_SOURCE, SpaceConfig, SpaceError, parse_space_config

REPORT_SUFFIX = "_report"
# Cost objectives computed from the recipe alone (no evaluation): name -> spaces it makes sense for.
COST_TERMS = {"path_length": ("dfs", "ps+dfs")}


class JobError(ValueError):
    """A job file that cannot run; the message is one line naming the file and the field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskObjective(_Section):
    """A task's score, computed on its search split; the front is re-scored on a report split the search
    never sees: `report_task`, by default `<task>_report` when the task set defines it, else a hold-out
    carved from the task's own docs (`report_holdout`, which the job's `holdout` section sizes)."""

    task: str
    direction: Literal["max", "min"]
    report_task: Optional[str] = None
    report_holdout: bool = False
    name: Optional[str] = None

    @model_validator(mode="after")
    def _named(self) -> "TaskObjective":
        self.name = self.name or self.task
        return self

    @property
    def objective(self) -> str:
        return self.name

    @property
    def report(self) -> str:
        """The lm-eval task the report split is scored with (the task itself for a carved hold-out)."""
        if self.report_holdout:
            return self.task
        return self.report_task or f"{self.task}{REPORT_SUFFIX}"


class CostObjective(_Section):
    """A cost read off the recipe (e.g. the DFS path length), never evaluated."""

    cost: str
    direction: Literal["max", "min"]
    name: Optional[str] = None

    @field_validator("cost")
    @classmethod
    def _known(cls, v: str) -> str:
        return known(v, COST_TERMS, "cost term")

    @model_validator(mode="after")
    def _named(self) -> "CostObjective":
        self.name = self.name or self.cost
        return self

    @property
    def objective(self) -> str:
        return self.name


def _objective_kind(value: Any) -> str:
    is_cost = isinstance(value, CostObjective) or (isinstance(value, dict) and "cost" in value)
    return "CostObjective" if is_cost else "TaskObjective"


Objective = Annotated[Union[Annotated[TaskObjective, Tag("TaskObjective")], Annotated[CostObjective, Tag("CostObjective")]],
                      Discriminator(_objective_kind)]


class FitnessSpec(_Section):
    """`full`: score = accuracy on every doc of the search split. `reduced`: IRT estimate from k anchors
    chosen on a stored calibration (`calibration` names it: run `evosearch calibrate` first, into the job's store)."""

    mode: Literal["reduced", "full"] = "reduced"
    calibration: Optional[str] = Field(default=None, description="name of a stored calibration")
    # The combination that met the bar on the zoo (README: 20x fewer items, MAE 2.5 points, Spearman 0.93).
    estimator: str = "anchor_regression"
    k: int = Field(default=25, gt=0)
    strategy: str = "correctness_clustering"
    limit: Optional[int] = Field(default=None, gt=0, description="smoke tests: score only the first `limit` "
                                                                 "docs of every search and report task")

    @field_validator("estimator")
    @classmethod
    def _known_estimator(cls, v: str) -> str:
        from fitness.estimators import ESTIMATORS

        return known(v, ESTIMATORS, "estimator")

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, v: str) -> str:
        from fitness.anchors import ANCHOR_STRATEGIES

        return known(v, ANCHOR_STRATEGIES, "anchor strategy")

    @model_validator(mode="after")
    def _calibrated(self) -> "FitnessSpec":
        if self.mode == "reduced" and self.calibration is None:
            raise ValueError("mode 'reduced' needs a calibration (the name of a stored calibration)")
        return self


class TasksSpec(_Section):
    include_path: OneOrMore = Field(min_length=1)


class WorkersSpec(_Section):
    count: int = Field(default=1, gt=0)
    num_cpus: float = Field(default=1.0, gt=0)
    num_gpus: float = Field(default=0.0, ge=0)
    batch_size: int = Field(default=64, gt=0)
    device: str = "auto"
    dtype: Optional[str] = None
    max_retries: int = Field(default=2, ge=0)
    start_timeout_s: float = Field(default=600.0, gt=0, description="how long to wait for the first worker to "
                                                                    "be placed before the job fails")


class HoldoutSpec(_Section):
    """For tasks without a report split of their own: the share of their docs set aside, never searched on.
    Which docs is fixed by the job's seed and the task's name, and recorded in the store."""

    fraction: float = Field(default=0.2, gt=0.0, lt=1.0)


class ReportSpec(_Section):
    """When the front is re-scored in full on the report split: after every generation, at the end, never."""

    when: Literal["every_generation", "end", "never"] = "end"


class JobSpec(_Section):
    name: str
    seed: int = 0
    output_dir: Optional[str] = None
    store: Optional[str] = None
    sources: dict[str, str] = Field(min_length=1, description="model name -> HF directory")
    base_model: Optional[str] = None
    search_space: SpaceConfig
    optimizer: AnyOptimizerConfig
    generations: Optional[int] = Field(default=None, gt=0, description="sets optimizer.max_generations")
    budget: Optional[int] = Field(default=None, gt=0, description="most candidates; a generation that "
                                                                  "would pass it is not started")
    objectives: list[Objective] = Field(min_length=1)
    fitness: FitnessSpec = Field(default_factory=FitnessSpec)
    tasks: TasksSpec
    workers: WorkersSpec = Field(default_factory=WorkersSpec)
    report: ReportSpec = Field(default_factory=ReportSpec)
    holdout: HoldoutSpec = Field(default_factory=HoldoutSpec)
    allow_test_split_fitness: bool = Field(default=False, description="allow searching on a public benchmark's "
                                                                      "test split (recorded with the job)")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        return safe_name(v, "job")

    @model_validator(mode="after")
    def _defaults(self) -> "JobSpec":
        if self.output_dir is None:
            self.output_dir = str(Path("runs") / self.name)
        self.output_dir = str(Path(self.output_dir).resolve())
        self.store = store_url(self.store, self.name) if self.store else f"sqlite:///{Path(self.output_dir) / 'evosearch.db'}"
        return self

    # --- what the driver reads -----------------------------------------------------------------------
    @property
    def objective_names(self) -> list[str]:
        return [o.objective for o in self.objectives]

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    @property
    def task_objectives(self) -> list[TaskObjective]:
        return [o for o in self.objectives if isinstance(o, TaskObjective)]

    @property
    def search_tasks(self) -> list[str]:
        return list(dict.fromkeys(o.task for o in self.task_objectives))

    @property
    def report_tasks(self) -> list[str]:
        return list(dict.fromkeys(o.report for o in self.task_objectives))

    @property
    def holdout_tasks(self) -> list[str]:
        """Tasks whose report split is carved out of their own docs."""
        return list(dict.fromkeys(o.task for o in self.task_objectives if o.report_holdout))

    @property
    def worker_tasks(self) -> list[str]:
        """Every task a worker loads: the search splits and the report splits."""
        return list(dict.fromkeys(self.search_tasks + self.report_tasks))

    @property
    def source_paths(self) -> list[str]:
        return model_dirs(self.sources, self.base_model)

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


_UNION_TAGS = {"ps", "dfs", "ps+dfs", "cmaes", "nsga2", "ga", "random"}


def _first_error(e: ValidationError) -> tuple[str, str]:
    err = e.errors()[0]
    loc = ""
    for part in err["loc"]:
        if isinstance(part, int):
            loc += f"[{part}]"
        # Union members show up in the location as their tag or class name; they are not fields.
        elif not (part[:1].isupper() or part in _UNION_TAGS or part.startswith("function-")):
            loc += f".{part}" if loc else part
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "missing":
        msg = "required field is missing"
    elif err["type"] == "extra_forbidden":
        msg = "unknown field"
    return loc, msg.splitlines()[0]


def validated(model: type[BaseModel], raw: Any, where: str, error: type[Exception]) -> Any:
    """`model` validated from `raw`; `error` with pydantic's first complaint as `WHERE: field: message`."""
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        loc, msg = _first_error(e)
        raise error(f"{where}: {loc + ': ' if loc else ''}{msg}") from None


def _resolve_models(raw: dict, where: str) -> None:
    """Absolute source paths (that must exist); names in the search space replaced by their paths."""
    sources = raw.get("sources")
    if not isinstance(sources, dict) or not sources:
        raise JobError(f"{where}: sources: give a mapping of model name -> model directory")
    resolved: dict[str, str] = {}
    for name, path in sources.items():
        if not isinstance(path, (str, Path)):
            raise JobError(f"{where}: sources.{name}: expected a directory path")
        p = Path(path).expanduser().resolve()
        if not (p / "config.json").is_file():
            raise JobError(f"{where}: sources.{name}: no model at {p} (missing config.json)")
        resolved[str(name)] = str(p)
    raw["sources"] = resolved

    def by_name(value):
        if isinstance(value, str) and value in resolved:
            return resolved[value]
        return value

    base = raw.get("base_model")
    if base is not None:
        if base not in resolved:
            raise JobError(f"{where}: base_model: {base!r} is not one of sources ({', '.join(resolved)})")
        raw["base_model"] = resolved[base]
    space = raw.get("search_space")
    if isinstance(space, dict):
        parts = [space[k] for k in ("ps", "dfs") if isinstance(space.get(k), dict)] or [space]
        ps_part = space.get("ps") if space.get("kind") == "ps+dfs" else space if space.get("kind") == "ps" else None
        for part in parts:
            if isinstance(part.get("sources"), list):
                unknown = [s for s in part["sources"] if s not in resolved and s != PS_SOURCE]
                if unknown:
                    raise JobError(f"{where}: search_space.sources: {unknown[0]!r} is not one of sources "
                                   f"({', '.join(resolved)})")
                part["sources"] = [by_name(s) for s in part["sources"]]
            for key in ("base_model", "tokenizer_source"):
                if key in part:
                    part[key] = by_name(part[key])
        # The job's base model is the PS space's default base.
        if isinstance(ps_part, dict) and "base_model" not in ps_part and raw.get("base_model"):
            ps_part["base_model"] = raw["base_model"]


# Public benchmarks whose test split must not be optimised on (issue 8): name or dataset prefixes.
PUBLIC_BENCHMARKS = ("mmlu", "gsm8k", "arc_", "ai2_arc", "hellaswag", "mgsm", "truthfulqa", "winogrande", "piqa",
                     "boolq", "humaneval", "openai_humaneval", "mbpp", "bbh", "gpqa", "hendrycks_math", "drop",
                     "lambada", "cais/mmlu", "allenai/ai2_arc", "rowan/hellaswag", "openai/gsm8k", "juletxara/mgsm")


def _task_index(include_paths: list[Path]) -> dict[str, dict]:
    """Task name -> its lm-eval YAML (one level of `include:` merged), read without lm-eval: fast."""
    def read(f: Path) -> Optional[dict]:
        try:
            # lm-eval YAMLs may carry `!function` tags; they do not matter here.
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


class _LenientLoader(yaml.SafeLoader):
    pass


_LenientLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def _public_test_split(task: str, config: dict) -> bool:
    """Whether lm-eval would score `task` on the test split of a known public benchmark."""
    names = (task.lower(), str(config.get("dataset_path", "")).lower())
    return bool(config.get("test_split")) and any(n.startswith(PUBLIC_BENCHMARKS) for n in names)


def _check_semantics(spec: JobSpec, where: str) -> None:
    include = [Path(p).expanduser().resolve() for p in spec.tasks.include_path]
    for i, p in enumerate(include):
        if not p.exists():
            raise JobError(f"{where}: tasks.include_path[{i}]: not found: {p}")
    spec.tasks.include_path = [str(p) for p in include]
    known = _task_index(include)
    names = spec.objective_names
    if len(set(names)) != len(names):
        raise JobError(f"{where}: objectives: two objectives share the name {next(n for n in names if names.count(n) > 1)!r}; "
                       "give one a `name`")
    if not spec.task_objectives:
        raise JobError(f"{where}: objectives: at least one objective must be a task score")
    for i, obj in enumerate(spec.objectives):
        if isinstance(obj, TaskObjective):
            if obj.report_holdout and obj.report_task is not None:
                raise JobError(f"{where}: objectives[{i}].report_holdout: give report_task or report_holdout, "
                               "not both")
            if obj.report_task is None and obj.report not in known:
                obj.report_holdout = True  # a single-split task: its report split is carved from it
            for field, task in (("task", obj.task), ("report_task", obj.report)):
                if task not in known:
                    raise JobError(f"{where}: objectives[{i}].{field}: task {task!r} is not defined under "
                                   f"tasks.include_path")
            if _public_test_split(obj.task, known[obj.task]) and not spec.allow_test_split_fitness:
                raise JobError(f"{where}: objectives[{i}].task: {obj.task!r} scores a public benchmark's test "
                               "split; searching on it contaminates the result (use another split, or set "
                               "allow_test_split_fitness: true)")
            if obj.report_task == obj.task:
                raise JobError(f"{where}: objectives[{i}].report_task: the report split must differ from "
                               "the search split (report_holdout: true carves one out of the task)")
        else:
            kind = spec.search_space.kind
            if kind not in COST_TERMS[obj.cost]:
                raise JobError(f"{where}: objectives[{i}].cost: {obj.cost!r} needs a "
                               f"{' or '.join(COST_TERMS[obj.cost])} search space, not {kind!r}")
    n_obj = len(spec.objectives)
    weights = getattr(spec.optimizer, "weights", None)
    if spec.optimizer.name in ("cmaes", "ga") and n_obj > 1 and weights is None:
        raise JobError(f"{where}: optimizer.weights: {spec.optimizer.name} with {n_obj} objectives needs "
                       "one weight per objective (or use nsga2)")
    if weights is not None and len(weights) != n_obj:
        raise JobError(f"{where}: optimizer.weights: {len(weights)} weights for {n_obj} objectives")
    if spec.budget is not None and spec.budget < population_size(spec):
        raise JobError(f"{where}: budget: {spec.budget} candidates is less than one generation "
                       f"({population_size(spec)})")


def population_size(spec: JobSpec) -> int:
    """Candidates per generation (CMA-ES's default depends on the space's dimension)."""
    opt = spec.optimizer
    if opt.name == "cmaes":
        if opt.popsize is not None:
            return opt.popsize
        import math

        from evosearch.spaces import build_space

        return 4 + int(3 * math.log(build_space(spec.search_space).dim))
    return getattr(opt, "n_offsprings", None) or opt.pop_size


def parse_job(raw: Any, where: str = "job") -> JobSpec:
    """Validate an already-loaded job mapping; `where` prefixes every error (the file name)."""
    if not isinstance(raw, dict):
        raise JobError(f"{where}: a job file is a YAML mapping of fields, got {type(raw).__name__}")
    raw = copy.deepcopy(raw)
    for field in ("name", "sources", "search_space", "optimizer", "objectives", "tasks"):
        if field not in raw:
            raise JobError(f"{where}: {field}: required field is missing")
    _resolve_models(raw, where)
    try:
        raw["search_space"] = parse_space_config(raw["search_space"])
    except SpaceError as e:
        raise JobError(f"{where}: {e}") from None
    optimizer = raw["optimizer"]
    if isinstance(optimizer, dict) and raw.get("generations") is not None:
        if "max_generations" in optimizer:
            raise JobError(f"{where}: generations: give either generations or optimizer.max_generations")
        optimizer = {**optimizer, "max_generations": raw["generations"]}
    try:
        raw["optimizer"] = parse_optimizer_config(optimizer)
    except OptimizerError as e:
        raise JobError(f"{where}: {e}") from None
    objectives = raw.get("objectives")
    if isinstance(objectives, list):
        for i, o in enumerate(objectives):
            if isinstance(o, dict) and "direction" not in o:
                raise JobError(f"{where}: objectives[{i}].direction: required (max or min)")
            if isinstance(o, dict) and not ({"task", "cost"} & set(o)):
                raise JobError(f"{where}: objectives[{i}]: needs `task` (a task score) or `cost` (a cost term)")
    spec = validated(JobSpec, raw, where, JobError)
    _check_semantics(spec, where)
    return spec


def load_job(path: str | Path) -> JobSpec:
    """Read and validate a job YAML; raises JobError (one line naming the file and field)."""
    return parse_job(read_yaml_file(path, "job", JobError), where=str(Path(path)))
