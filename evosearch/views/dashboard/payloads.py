"""The JSON of every dashboard view, read from the store (never written): plain dicts of numbers and
strings, with every timestamp in ISO 8601 UTC and no value that JSON cannot hold (a missing number is
null). The pages draw from these and nothing else; README.md ("JSON endpoints") lists them."""

from __future__ import annotations

import math
import shlex
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable, Optional

import yaml

from evosearch.recipe import PSRecipe, parse_recipe, recipe_to_yaml
from evosearch.search.job import JobSpec, TaskObjective, spec_of_job
from evosearch.spaces import build_space
from evosearch.views.dashboard.liveness import RULE, driver_seems_dead, typical_candidate_seconds
from evosearch.views.dashboard.recipe_picture import recipe_picture
from evosearch.views.dashboard.stores import StoreSet
from evosearch.views.progress import status_rows
from evosearch.views.scores import QueryError, split_scores
from fitness.splits import describe
from storage import CandidateSummary, JobRecord, Store, StoreError

# What a score row stored before rows named their metric and filter was read from.
LEGACY_SCORE_METRIC = {"metric": "acc", "filter": "none"}


def _iso(when: Optional[datetime]) -> Optional[str]:
    return None if when is None else when.isoformat()


def _number(value: Optional[float]) -> Optional[float]:
    return None if value is None or not math.isfinite(value) else float(value)


def first_line(text: Optional[str]) -> Optional[str]:
    """A stored error as one line, as the tables show it."""
    if text is None:
        return None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else ""


@dataclass(frozen=True)
class JobView:
    """A job opened for viewing: where it is, its record, its validated spec and its genes' names."""

    store_key: str
    store: Store
    record: JobRecord
    spec: JobSpec
    gene_names: list[str]

    @property
    def name(self) -> str:
        return self.record.name


class JobViews:
    """Opens jobs by (store key, name); a job's spec and space are read once (they never change)."""

    def __init__(self, stores: StoreSet):
        self.stores = stores
        self._specs: dict[tuple, tuple[JobSpec, list[str]]] = {}
        self._lock = threading.Lock()

    def open(self, store_key: str, name: str) -> JobView:
        store = self.stores.get(store_key)
        try:
            record = store.get_job(name)
        except StoreError as e:
            if str(e).startswith("unknown job"):
                raise QueryError(f"{e} in store {store_key!r}") from None
            raise
        key = (store_key, record.id, record.created_at)
        with self._lock:
            if key not in self._specs:
                spec = spec_of_job(record)
                self._specs[key] = (spec, build_space(spec.search_space).gene_names())
            spec, genes = self._specs[key]
        return JobView(store_key, store, record, spec, genes)


# --- jobs and calibrations ---------------------------------------------------------------------------

def objectives_of(spec: JobSpec) -> list[dict[str, Any]]:
    out = []
    for objective in spec.objectives:
        row = {"name": objective.objective, "direction": objective.direction}
        if isinstance(objective, TaskObjective):
            row.update(kind="task", task=objective.task, report_task=objective.report,
                       report_holdout=objective.report_holdout)
        else:
            row.update(kind="cost", cost=objective.cost)
        out.append(row)
    return out


def liveness(status: str, seconds_quiet: Optional[float], worker_seconds: list[float],
             lease_expired: Optional[bool] = None) -> dict[str, Any]:
    typical = typical_candidate_seconds(worker_seconds)
    return {"typical_candidate_seconds": typical, "dead_after_seconds": RULE.quiet_limit(typical),
            "dead_suspected": driver_seems_dead(status, seconds_quiet, typical, lease_expired=lease_expired)}


def job_row(store_key: str, store: Store, record: JobRecord) -> dict[str, Any]:
    """A job as the jobs table shows it: `status` rows of `evosearch status --json`, and liveness."""
    progress = store.progress(record.id)
    row = status_rows([(record, progress)])[0]
    row.update(store=store_key, objectives=dict(record.objectives), last_write=_iso(progress.last_write),
               created_at=_iso(record.created_at),
               **liveness(row["status"], row["seconds_since_last_write"], store.worker_seconds(record.id),
                          row["driver_dead"]))
    return row


def jobs_payload(stores: StoreSet) -> dict[str, Any]:
    jobs, listed = [], []
    for key in stores.keys():
        store = stores.get(key)
        listed.append({"key": key, "url": store.url_for_display})
        jobs += [job_row(key, store, record) for record in store.list_jobs()]
    return {"stores": listed, "jobs": jobs}


def calibrations_payload(stores: StoreSet) -> dict[str, Any]:
    rows = []
    for key in stores.keys():
        rows += [{"store": key, "name": c.name, "tasks": c.tasks, "fit_version": c.fit_version,
                  "fitted": c.fit_version > 0, "created_at": _iso(c.created_at), "models_by_role": c.models_by_role}
                 for c in stores.get(key).calibration_summaries()]
    return {"calibrations": rows}


# --- one job -----------------------------------------------------------------------------------------

def job_payload(view: JobView) -> dict[str, Any]:
    """The job's header: spec in short, progress, liveness, and `version`, which changes whenever the job
    writes a candidate, a generation or a status (the page polls it and reloads its data then)."""
    row = job_row(view.store_key, view.store, view.record)
    spec = view.spec
    generations = view.store.generations(view.record.id)
    version = f"{row['done']}:{row['failed']}:{row['generation']}:{row['status']}:{row['last_write']}"
    return {**row, "objectives": objectives_of(spec), "space": spec.search_space.kind,
            "optimizer": spec.optimizer.name, "population_size": spec.population_size,
            "max_generations": spec.optimizer.max_generations, "budget": spec.budget,
            "fitness": {"mode": spec.fitness.mode, "estimator": spec.fitness.estimator, "k": spec.fitness.k,
                        "calibration": spec.fitness.calibration},
            "report_when": spec.report.when, "gene_names": view.gene_names, "store_url": view.store.url_for_display,
            "committed_generations": len(generations), "version": version}


def _scores(candidate) -> dict[str, dict[str, Optional[float]]]:
    return {split: {name: _number(value) for name, value in split_scores(candidate, split).items()}
            for split in ("search", "report")}


def candidate_row(c: CandidateSummary) -> dict[str, Any]:
    return {"id": c.id, "generation": c.generation, "index": c.index, "status": c.status, "worker": c.worker,
            "attempts": c.attempts, "build_seconds": _number(c.build_seconds), "eval_seconds": _number(c.eval_seconds),
            "overhead_seconds": _number(c.overhead_seconds), "error": first_line(c.error),
            "cached_from": c.cached_from, "recipe_hash": c.recipe_hash, "recorded_at": _iso(c.recorded_at),
            **_scores(c)}


def candidates_payload(view: JobView) -> dict[str, Any]:
    rows = [candidate_row(c) for c in view.store.candidate_summaries(view.record.id)]
    return {"job": view.name, "count": len(rows), "candidates": rows}


def front_payload(view: JobView, generation: Optional[int] = None) -> dict[str, Any]:
    """The front committed with `generation` (default: the last), as `evosearch front` lists it, with the
    genes of each member."""
    try:
        front = view.store.front(view.record.id, generation)
    except StoreError as e:
        raise QueryError(str(e)) from None
    last = view.store.last_generation(view.record.id)
    shown = generation if generation is not None else (None if last is None else last.generation)
    return {"job": view.name, "generation": shown, "gene_names": view.gene_names,
            "ids": [c.id for c in front],
            "candidates": [{"id": c.id, "generation": c.generation, "index": c.index, "recipe_hash": c.recipe_hash,
                            "genome": [_number(g) for g in c.genome], **_scores(c)} for c in front]}


def _best(values: Iterable[Optional[float]], direction: str) -> Optional[float]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return None
    return max(finite) if direction == "max" else min(finite)


def convergence_payload(view: JobView) -> dict[str, Any]:
    """Per objective and generation: the best search-split value so far over every done candidate, and the
    best report-split score of that generation's front (held out; null where it was not scored), as
    `evosearch plot` draws them; and the hypervolume of every committed front."""
    summaries = view.store.candidate_summaries(view.record.id)
    done = [c for c in summaries if c.status == "done"]
    committed = view.store.generations(view.record.id)
    by_id = {c.id: c for c in summaries}
    last = max([g.generation for g in committed] + [c.generation for c in done], default=-1)
    generations = list(range(last + 1))
    fronts = {g.generation: [by_id[i] for i in g.front_candidate_ids if i in by_id] for g in committed}
    by_generation: dict[int, list[dict]] = {}
    for c in done:
        by_generation.setdefault(c.generation, []).append(split_scores(c, "search"))
    objectives = []
    for objective in objectives_of(view.spec):
        name, direction = objective["name"], objective["direction"]
        so_far, best_so_far, report = None, [], []
        for g in generations:
            best_here = _best((scores.get(name) for scores in by_generation.get(g, [])), direction)
            so_far = _best([so_far, best_here], direction)
            best_so_far.append(so_far)
            report.append(_best((split_scores(c, "report").get(name) for c in fronts.get(g, [])), direction))
        objectives.append({**objective, "search_best_so_far": best_so_far, "report_front_best": report})
    return {"job": view.name, "generations": generations, "objectives": objectives,
            "hypervolume": [{"generation": g.generation, "hypervolume": _number(g.hypervolume),
                             "front_size": len(g.front_candidate_ids), "committed_at": _iso(g.committed_at)}
                            for g in committed]}


def workers_payload(view: JobView) -> dict[str, Any]:
    """Per worker, each candidate it evaluated as a build bar then an evaluation bar, placed so that it ends
    when the driver recorded it (`start` in seconds from the job's first candidate start), and the busy
    share: build + evaluation seconds over the window from that first start to the last record."""
    evaluated = [c for c in view.store.candidate_summaries(view.record.id)
                 if c.worker and c.cached_from is None and c.attempts > 0]
    timed = [c for c in evaluated if c.build_seconds is not None or c.eval_seconds is not None]
    spans = {c.id: (c.build_seconds or 0.0) + (c.eval_seconds or 0.0) + (c.overhead_seconds or 0.0) for c in timed}
    starts = {c.id: c.recorded_at.timestamp() - spans[c.id] for c in timed}
    origin = min(starts.values(), default=0.0)
    window = max((c.recorded_at.timestamp() for c in timed), default=origin) - origin
    workers: dict[str, dict[str, Any]] = {}
    for c in evaluated:
        row = workers.setdefault(c.worker, {"worker": c.worker, "candidates": 0, "failed": 0, "build_seconds": 0.0,
                                            "eval_seconds": 0.0, "segments": []})
        row["candidates"] += 1
        row["failed"] += c.status == "failed"
        if c.id not in spans:
            continue
        row["build_seconds"] += c.build_seconds or 0.0
        row["eval_seconds"] += c.eval_seconds or 0.0
        row["segments"].append({"id": c.id, "generation": c.generation, "index": c.index, "status": c.status,
                                "start": starts[c.id] - origin, "build_seconds": c.build_seconds or 0.0,
                                "eval_seconds": c.eval_seconds or 0.0})
    for row in workers.values():
        busy = row["build_seconds"] + row["eval_seconds"]
        row["busy_share"] = busy / window if window > 0 else None
    return {"job": view.name, "window_seconds": window, "workers": sorted(workers.values(), key=lambda r: r["worker"])}


# --- one candidate -----------------------------------------------------------------------------------

def export_command(view: JobView, candidate_id: int) -> str:
    """The `evosearch export` line that rebuilds this candidate (a PostgreSQL password shows as ***)."""
    out = f"out/{view.name}-c{candidate_id}"
    return shlex.join(["evosearch", "export", view.name, out, "--candidate", str(candidate_id),
                       "--store", view.store.url_for_display])


def score_rows(view: JobView, candidate) -> list[dict[str, Any]]:
    """Each stored score with the docs it was measured on, its metric and filter."""
    splits = view.store.task_splits(view.record.id)
    objectives = {o.objective: o for o in view.spec.objectives}
    rows = []
    for score in candidate.scores:
        objective = objectives.get(score.objective)
        row = {"objective": score.objective, "split": score.split, "estimated": _number(score.estimated),
               "anchor_accuracy": _number(score.anchor_accuracy), "full": _number(score.full),
               "direction": None if objective is None else objective.direction}
        if isinstance(objective, TaskObjective):
            task = objective.task if score.split == "search" else objective.report
            read = ({"metric": score.metric, "filter": score.filter} if score.metric is not None
                    else LEGACY_SCORE_METRIC)
            row.update(measured_on=describe(task, splits, score.split).replace("`", ""), **read)
        else:
            row.update(measured_on="cost read off the recipe", metric="cost", filter=None)
        rows.append(row)
    return rows


def candidate_payload(view: JobView, candidate_id: int) -> dict[str, Any]:
    try:
        c = view.store.candidate(view.record.id, candidate_id)
    except StoreError as e:
        raise QueryError(str(e)) from None
    recipe = parse_recipe(c.recipe, source=f"recipe of candidate {c.id}")
    spec = view.spec
    return {"job": view.name, "store": view.store_key, "id": c.id, "generation": c.generation, "index": c.index,
            "status": c.status, "worker": c.worker, "attempts": c.attempts,
            "build_seconds": _number(c.build_seconds), "eval_seconds": _number(c.eval_seconds),
            "overhead_seconds": _number(c.overhead_seconds), "error": c.error, "cached_from": c.cached_from,
            "recipe_hash": c.recipe_hash, "kind": recipe.kind, **_scores(c), "scores": score_rows(view, c),
            "genome": [{"gene": name, "value": _number(value)} for name, value in zip(view.gene_names, c.genome)],
            "recipe": c.recipe, "recipe_yaml": recipe_to_yaml(recipe),
            "mergekit_yaml": yaml.safe_dump(recipe.to_mergekit(), sort_keys=False)
            if isinstance(recipe, PSRecipe) else None,
            "picture": recipe_picture(recipe, spec.sources, spec.search_space.model_dump(mode="json")),
            "export_command": export_command(view, c.id) if c.status == "done" else None}
