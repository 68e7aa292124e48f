"""Before a search starts: can its workers load the models, build its space's recipes from them, and load
and score its tasks?

The workers would find a misfit only once the job is in the store and Ray is up, and then fail every
candidate. The model check reads checkpoint headers and configs only, in about a second; the task check
builds the tasks as a worker does (seconds: lm-eval's own index when a built-in task is named, datasets)."""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np

from evosearch.errors import UsageError
from evosearch.merge.dfs import DFSError
from evosearch.merge.export import check_buildable
from evosearch.merge.sources import SourceError, check_model_set, load_tokenizer
from evosearch.recipe import RecipeError
from evosearch.search.calibration_spec import CalibrationSpec, ScoringSpec
from evosearch.search.job import JobError, JobSpec, TaskObjective, guard_test_split
from evosearch.search.sections import TasksSpec
from evosearch.spaces import SpaceConfig, build_space
from evosearch.spaces.combined import CombinedSpaceConfig
from evosearch.spaces.ps import PSSpaceConfig
from fitness.tasks import EvaluationError, Scoring, TaskCatalog, choose_scoring, task_metrics


def check_search_models(source_paths: Sequence[str], space_config: SpaceConfig) -> None:
    """SourceError, one line starting with the job field at fault (`sources:` or `search_space:`), unless
    every model opens with a tokenizer and fits the others (vocabularies may differ when the PS space has a
    tokenizer_source), and the recipe at the space's centre builds."""
    try:
        check_model_set(source_paths, tokenizer_source=_ps_tokenizer_source(space_config))
    except SourceError as e:
        raise SourceError(f"sources: {e}") from None
    space = build_space(space_config)
    try:
        check_buildable(space.decode(np.full(space.dim, 0.5)))
    except (SourceError, RecipeError, DFSError) as e:
        raise SourceError(f"search_space: {e}") from None


class TaskCheckError(UsageError, ValueError):
    """A task, metric, filter, override or dataset a job cannot use; one line naming the field."""


def check_chat_templates(tasks: TasksSpec, sources: Mapping[str, str]) -> None:
    """TaskCheckError naming the first source without a chat template when the tasks section asks for one."""
    if not tasks.apply_chat_template:
        return
    for name, path in sources.items():
        if getattr(load_tokenizer(path), "chat_template", None) is None:
            raise TaskCheckError(f"sources.{name}: the model at {path} has no chat template, but "
                                 "tasks.apply_chat_template is true")


def check_search_tasks(spec: JobSpec) -> dict[str, Scoring]:
    """Builds every task a job's workers will load, as they will (lm-eval's own index only if a name is not
    local; every dataset loaded), and fills in each objective's metric and filter (the task's first by
    default). TaskCheckError, one line naming the field, for an unknown task, an override lm-eval rejects, a
    dataset that cannot be loaded, a metric or filter the task has not, a metric that is not 0/1 per item
    in reduced mode, a public benchmark's test split, or a model without the chat template asked for.
    Returns task -> its scoring."""
    check_chat_templates(spec.tasks, spec.sources)
    catalog = TaskCatalog(spec.tasks.source())
    fields = {o.task: ("task", i) for i, o in reversed(list(enumerate(spec.objectives)))
              if isinstance(o, TaskObjective)}
    for i, o in reversed(list(enumerate(spec.objectives))):
        if isinstance(o, TaskObjective):
            fields.setdefault(o.report, ("report_task", i))
    built, scoring = {}, {}
    for task in spec.worker_tasks:
        field, i = fields[task]
        try:
            built[task] = catalog.build_task(task)
        except EvaluationError as e:
            raise TaskCheckError(f"objectives[{i}].{field}: {e}") from None
        metric, filter_ = spec.scoring[task]
        try:
            scoring[task] = choose_scoring(task, built[task], metric, filter_)
        except EvaluationError as e:
            field = "metric" if metric is not None and metric not in task_metrics(built[task]) else "filter"
            raise TaskCheckError(f"objectives[{i}].{field}: {e}") from None
    for i, o in enumerate(spec.objectives):
        if not isinstance(o, TaskObjective):
            continue
        o.metric, o.filter = scoring[o.task].metric, scoring[o.task].filter
        if spec.fitness.mode == "reduced" and not scoring[o.task].binary:
            raise TaskCheckError(f"objectives[{i}].metric: {o.metric!r} of task {o.task!r} is not 0/1 per item, "
                                 "which fitness mode 'reduced' (IRT, anchors) needs; use mode: full")
    configs = {task: {"test_split": built[task].config.test_split, "dataset_path": built[task].config.dataset_path}
               for task in spec.search_tasks}
    try:
        guard_test_split(spec, "job", configs, {t: catalog.registered_config(t).get("test_split")
                                                for t in spec.search_tasks})
    except JobError as e:
        raise TaskCheckError(str(e).removeprefix("job: ")) from None
    return scoring


def check_calibration_tasks(spec: CalibrationSpec) -> dict[str, Scoring]:
    """As `check_search_tasks`, for a calibration's tasks (every metric must be 0/1 per item: the IRT fit
    needs it); fills in `tasks.scoring` with each task's metric and filter."""
    check_chat_templates(spec.tasks, spec.sources)
    catalog = TaskCatalog(spec.tasks.source())
    scoring = {}
    for i, (task, asked) in enumerate(spec.tasks.metric_filter().items()):
        try:
            scoring[task] = choose_scoring(task, catalog.build_task(task), *asked)
        except EvaluationError as e:
            raise TaskCheckError(f"tasks.names[{i}]: {e}") from None
        if not scoring[task].binary:
            raise TaskCheckError(f"tasks.scoring.{task}.metric: {scoring[task].metric!r} is not 0/1 per item, "
                                 "which a calibration (IRT) needs")
        spec.tasks.scoring[task] = ScoringSpec(metric=scoring[task].metric, filter=scoring[task].filter)
    return scoring


def _ps_tokenizer_source(space_config: SpaceConfig) -> Optional[str]:
    """The tokenizer_source of the space's PS merges, which map vocabularies (a DFS copies one source's)."""
    ps = space_config.ps if isinstance(space_config, CombinedSpaceConfig) else space_config
    return ps.tokenizer_source if isinstance(ps, PSSpaceConfig) else None
