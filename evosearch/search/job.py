"""The job file: what to search (sources, space), how (optimizer, fitness, workers), for what (objectives).

`load_job(path)` reads the YAML and validates everything up front, so a bad job stops before Ray or a
model starts; every error is ONE line `FILE: field.path: message`. Relative paths are resolved against the
current directory (jobs are run from the project root, where `runs/zoo` lives) and stored absolute.

`sources` names the models once (`name: dir`); the search space may refer to them by name, and every name
is replaced by its directory before the space is parsed, so recipes always carry real paths.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import numpy as np
from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from evosearch.config_file import known, model_dirs, read_yaml_file, safe_name, store_url
from evosearch.errors import RecipeError, UsageError
from evosearch.merge.sources import source_key
from evosearch.optimizers import OPTIMIZERS, AnyOptimizerConfig, OptimizerError, parse_optimizer_config
from evosearch.optimizers.base import ScalarisingConfig
from evosearch.search.costs import COST_TERMS
from evosearch.search.sections import Section, TasksSpec, WorkersSpec, resolve_models, resolve_tasks, validated
from evosearch.spaces import SpaceConfig, SpaceError, build_space, parse_space_config
from fitness.anchors import ANCHOR_STRATEGIES
from fitness.estimators import ESTIMATORS
from storage import JobRecord

REPORT_SUFFIX = "_report"


class JobError(UsageError, ValueError):
    """A job file that cannot run; the message is one line naming the file and the field."""


class _Objective(Section, ABC):
    """One thing the search optimises, by `name` (default: what it measures) in a `direction`."""

    direction: Literal["max", "min"]
    name: Optional[str] = None

    @model_validator(mode="after")
    def _named(self) -> "_Objective":
        self.name = self.name or self._default_name()
        return self

    @abstractmethod
    def _default_name(self) -> str: ...

    @property
    def objective(self) -> str:
        return self.name


class TaskObjective(_Objective):
    """A task's score, computed on its search split; the front is re-scored on a report split the search
    never sees: `report_task`, by default `<task>_report` when the task set defines it, else a hold-out
    carved from the task's own docs (`report_holdout`, which the job's `holdout` section sizes). `metric`
    and `filter` name what is read of lm-eval's results (default: the task's first metric and filter,
    filled in by the preflight before the job is stored)."""

    task: str
    report_task: Optional[str] = None
    report_holdout: bool = False
    metric: Optional[str] = None
    filter: Optional[str] = None

    def _default_name(self) -> str:
        return self.task

    @property
    def report(self) -> str:
        """The lm-eval task the report split is scored with (the task itself for a carved hold-out)."""
        if self.report_holdout:
            return self.task
        return self.report_task or f"{self.task}{REPORT_SUFFIX}"


class CostObjective(_Objective):
    """A cost read off the recipe (e.g. the DFS path length), never evaluated."""

    cost: str

    def _default_name(self) -> str:
        return self.cost

    @field_validator("cost")
    @classmethod
    def _known(cls, v: str) -> str:
        return known(v, COST_TERMS, "cost term")


def _objective_kind(value: Any) -> str:
    is_cost = isinstance(value, CostObjective) or (isinstance(value, dict) and "cost" in value)
    return "CostObjective" if is_cost else "TaskObjective"


Objective = Annotated[Union[Annotated[TaskObjective, Tag("TaskObjective")], Annotated[CostObjective, Tag("CostObjective")]],
                      Discriminator(_objective_kind)]


class FitnessSpec(Section):
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
        return known(v, ESTIMATORS, "estimator")

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, v: str) -> str:
        return known(v, ANCHOR_STRATEGIES, "anchor strategy")

    @model_validator(mode="after")
    def _calibrated(self) -> "FitnessSpec":
        if self.mode == "reduced" and self.calibration is None:
            raise ValueError("mode 'reduced' needs a calibration (the name of a stored calibration)")
        return self


class HoldoutSpec(Section):
    """For tasks without a report split of their own: the share of their docs set aside, never searched on.
    Which docs is fixed by the job's seed and the task's name, and recorded in the store."""

    fraction: float = Field(default=0.2, gt=0.0, lt=1.0)


class ReportSpec(Section):
    """When the front is re-scored in full on the report split: after every generation, at the end, never."""

    when: Literal["every_generation", "end", "never"] = "end"


class JobSpec(Section):
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
    scheduling: Literal["generational", "steady_state"] = Field(
        default="generational", description="steady_state: a worker that finishes gets a candidate at once, "
                                            "from a generation asked ahead (ga, nsga2, random)")
    start_from: Optional[dict] = Field(default=None, description="a recipe (mergekit YAML path or mapping; models "
                                                                 "by source name or path) the search starts from")
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
    def scoring(self) -> dict[str, tuple[Optional[str], Optional[str]]]:
        """Task -> (metric, filter) its objective reads, for the search and the report task alike."""
        out: dict[str, tuple[Optional[str], Optional[str]]] = {}
        for o in self.task_objectives:
            out[o.task] = out[o.report] = (o.metric, o.filter)
        return out

    @property
    def worker_tasks(self) -> list[str]:
        """Every task a worker loads: the search splits and the report splits."""
        return list(dict.fromkeys(self.search_tasks + self.report_tasks))

    @property
    def source_paths(self) -> list[str]:
        return model_dirs(self.sources, self.base_model)

    def start_genome(self) -> Optional[np.ndarray]:
        """`start_from` encoded in the search space (None without one)."""
        if self.start_from is None:
            return None
        # recipes import the merge registry (torch): reading a job stays torch-free for `submit`'s checks
        from evosearch.recipe import parse_recipe

        return build_space(self.search_space).encode(parse_recipe(self.start_from, source="start_from"))

    @property
    def population_size(self) -> int:
        """Candidates per generation (CMA-ES's default depends on the space's dimension)."""
        return self.optimizer.population_size(build_space(self.search_space).dim)

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


# Public benchmarks whose test split must not be optimised on (issue 8): name or dataset prefixes.
PUBLIC_BENCHMARKS = ("mmlu", "gsm8k", "arc_", "ai2_arc", "hellaswag", "mgsm", "truthfulqa", "winogrande", "piqa",
                     "boolq", "humaneval", "openai_humaneval", "mbpp", "bbh", "gpqa", "hendrycks_math", "drop",
                     "lambada", "cais/mmlu", "allenai/ai2_arc", "rowan/hellaswag", "openai/gsm8k", "juletxara/mgsm")


def public_test_split(task: str, config: dict, registered_test_split: Optional[str] = None) -> bool:
    """Whether lm-eval would score `task` (its `config` after overrides) on the test split of a known public
    benchmark: its `test_split` is set and is the registered task's own test split or is named `test...`.
    A task made to score another split (`test_split: train`) is not."""
    names = (task.lower(), str(config.get("dataset_path", "")).lower())
    split = config.get("test_split")
    if not split or not any(n.startswith(PUBLIC_BENCHMARKS) for n in names):
        return False
    return split == registered_test_split or str(split).lower().startswith("test")


def guard_test_split(spec: JobSpec, where: str, configs: dict[str, dict],
                     registered_test_splits: Optional[dict[str, Optional[str]]] = None) -> None:
    """JobError when an objective's search task scores a public benchmark's test split and the job does not
    allow it; `configs`: task -> its config after overrides (those it has)."""
    registered_test_splits = registered_test_splits or {}
    for i, obj in enumerate(spec.objectives):
        if not isinstance(obj, TaskObjective) or obj.task not in configs or spec.allow_test_split_fitness:
            continue
        if public_test_split(obj.task, configs[obj.task], registered_test_splits.get(obj.task)):
            raise JobError(f"{where}: objectives[{i}].task: {obj.task!r} scores a public benchmark's test "
                           f"split ({configs[obj.task].get('test_split')}); searching on it contaminates the result "
                           "(derive a task on another split, `from:` in tasks.overrides, or set "
                           "allow_test_split_fitness: true)")


def _check_semantics(spec: JobSpec, where: str) -> None:
    known = resolve_tasks(spec.tasks, where, JobError)
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
                # A single-split task: its report split is carved from it. (Built-in tasks are looked up,
                # and every name checked, by the preflight: lm-eval's own index takes seconds to build.)
                obj.report_holdout = True
            if obj.report_task == obj.task:
                raise JobError(f"{where}: objectives[{i}].report_task: the report split must differ from "
                               "the search split (report_holdout: true carves one out of the task)")
        else:
            kind, spaces = spec.search_space.kind, COST_TERMS[obj.cost].spaces
            if kind not in spaces:
                raise JobError(f"{where}: objectives[{i}].cost: {obj.cost!r} needs a "
                               f"{' or '.join(spaces)} search space, not {kind!r}")
    guard_test_split(spec, where, known)
    scorings: dict[str, tuple] = {}
    for i, obj in enumerate(spec.task_objectives):
        for task in (obj.task, obj.report):
            if scorings.setdefault(task, (obj.metric, obj.filter)) != (obj.metric, obj.filter):
                raise JobError(f"{where}: objectives: task {task!r} is scored by two metric/filter pairs; make "
                               f"a task of its own for one (tasks.overrides: {{NEW: {{from: {task}}}}})")
    n_obj = len(spec.objectives)
    weights = getattr(spec.optimizer, "weights", None)
    if isinstance(spec.optimizer, ScalarisingConfig) and n_obj > 1 and weights is None:
        raise JobError(f"{where}: optimizer.weights: {spec.optimizer.name} with {n_obj} objectives needs "
                       "one weight per objective (or use nsga2)")
    if weights is not None and len(weights) != n_obj:
        raise JobError(f"{where}: optimizer.weights: {len(weights)} weights for {n_obj} objectives")
    if spec.start_from is not None:
        try:
            spec.start_genome()
        except (RecipeError, SpaceError) as e:
            raise JobError(f"{where}: start_from: {e}") from None
        if spec.optimizer.name == "cmaes" and "x0" in spec.optimizer.model_fields_set:
            raise JobError(f"{where}: start_from: sets CMA-ES's initial mean; give it or optimizer.x0, not both")
    if spec.scheduling == "steady_state" and not OPTIMIZERS[spec.optimizer.name].asynchronous:
        raise JobError(f"{where}: scheduling: steady_state needs an optimizer that can ask a generation before "
                       f"the last is told (ga, nsga2, random), not {spec.optimizer.name}")
    if spec.scheduling == "steady_state" and spec.report.when == "every_generation":
        raise JobError(f"{where}: report.when: every_generation scores the front between generations, and "
                       "steady_state never pauses between them; use end")
    if spec.budget is not None and spec.budget < spec.population_size:
        raise JobError(f"{where}: budget: {spec.budget} candidates is less than one generation "
                       f"({spec.population_size})")


def parse_job(raw: Any, where: str = "job") -> JobSpec:
    """Validate an already-loaded job mapping; `where` prefixes every error (the file name)."""
    if not isinstance(raw, dict):
        raise JobError(f"{where}: a job file is a YAML mapping of fields, got {type(raw).__name__}")
    raw = copy.deepcopy(raw)
    for field in ("name", "sources", "search_space", "optimizer", "objectives", "tasks"):
        if field not in raw:
            raise JobError(f"{where}: {field}: required field is missing")
    resolve_models(raw, where, JobError)
    if raw.get("start_from") is not None:
        raw["start_from"] = _start_recipe(raw["start_from"], raw["sources"], where)
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


def _start_recipe(value: Any, sources: dict[str, str], where: str) -> dict:
    """`start_from` as a recipe mapping (a file read, a mergekit config converted) whose models are the
    job's resolved source paths, so the space can encode it."""
    # recipes import the merge registry (torch): only a job with `start_from` pays for it
    from evosearch.recipe import parse_recipe

    try:
        data = read_yaml_file(value, "recipe", RecipeError) if isinstance(value, (str, Path)) else value
    except RecipeError as e:
        raise JobError(f"{where}: start_from: {e}") from None
    if not isinstance(data, dict):
        raise JobError(f"{where}: start_from: give a recipe file or mapping, got {type(data).__name__}")
    paths = set(sources.values())

    def resolved(ref: Any) -> Any:
        if not isinstance(ref, str):
            return ref
        if ref in sources:
            return sources[ref]
        key = source_key(ref)
        return key if key in paths else ref

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: resolved(v) if k in ("model", "base_model") else
                    [resolved(s) if isinstance(s, str) else walk(s) for s in v] if k == "sources" and isinstance(v, list)
                    else walk(v)
                    for k, v in node.items()}
        return [walk(v) for v in node] if isinstance(node, list) else node

    try:
        return parse_recipe(walk(data), source="start_from").model_dump(mode="json")
    except RecipeError as e:
        raise JobError(f"{where}: {e}") from None


def spec_of_job(job: JobRecord) -> JobSpec:
    """The validated spec a stored job was created with (paths already resolved)."""
    return JobSpec.model_validate(job.spec)


def load_job(path: str | Path) -> JobSpec:
    """Read and validate a job YAML; raises JobError (one line naming the file and field)."""
    return parse_job(read_yaml_file(path, "job", JobError), where=str(Path(path)))
