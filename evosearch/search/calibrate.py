"""`evosearch calibrate` and `evosearch fitness report` without their terminal: scoring a calibration's
population on the full tasks over Ray workers, into the store as each model finishes, the IRT fit, and
the error report of a stored calibration."""

from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from typing import Any, Callable, Optional, Sequence

import torch

from evosearch.errors import UsageError, first_line
from evosearch.search.calibration_spec import CalibrationSpec, ReportSettings, stored_irt_settings
from evosearch.search.ray_session import ensure_ray
from fitness.calibration import BAR, CalibrationMember, fitness_report, meets_bar
from fitness.errors import FitnessError
from fitness.irt import IRTFitSettings, IRTParams
from fitness.reduced import ResponseMatrix, fit_calibration, fitted_in_finishing_order
from storage import CalibrationModelRecord, CalibrationRecord, Store, StoreError
from workers.candidate import CandidateError, CandidateTask, candidate_pool
from workers.pool import WorkerPool


def run_calibration(members: Sequence[CalibrationMember], runner: Any, tasks: Optional[list[str]] = None,
                    on_model: Optional[Callable[[CalibrationModelRecord], None]] = None,
                    key_prefix: str = "calib") -> list[CalibrationModelRecord]:
    """Score every member on every doc of `tasks` (default: all the worker's tasks) with `runner`: a
    `CandidateWorker` or a factory making one (in this process, one after another), or a `WorkerPool` of
    them. Each finished model goes to `on_model` at once. Members that fail are reported together at the end
    (one line, the first failure named) after every other member has been scored and handed over."""
    labels = [m.label for m in members]
    if len(set(labels)) != len(labels):
        raise FitnessError("calibration members' labels are not unique")
    by_key = {f"{key_prefix}/{m.label}": m for m in members}
    jobs = [CandidateTask(key=key, recipe=m.recipe, samples=None, tasks=tasks) for key, m in by_key.items()]

    if not isinstance(runner, WorkerPool) and not hasattr(runner, "run"):
        runner = runner()
    if isinstance(runner, WorkerPool):
        outcomes = ((o.item, o.value, o.error) for o in runner.map_unordered(jobs, lambda job: (job,)))
    else:
        outcomes = (_run_here(runner, job) for job in jobs)

    done: list[CalibrationModelRecord] = []
    failures: list[str] = []
    for job, result, error in outcomes:
        member = by_key[job.key]
        if error is not None:
            failures.append(f"{member.label}: {error}")
            continue
        model = CalibrationModelRecord(label=member.label, role=member.role, recipe=member.recipe,
                                       responses=result.correct, accuracy=result.accuracy,
                                       seconds=result.build_seconds + result.eval_seconds + result.overhead_seconds)
        done.append(model)
        if on_model is not None:
            on_model(model)
    if failures:
        raise FitnessError(f"{len(failures)} of {len(members)} calibration models failed; first: {failures[0]}")
    order = {label: i for i, label in enumerate(labels)}
    return sorted(done, key=lambda m: order[m.label])


def _run_here(worker: Any, job: CandidateTask) -> tuple[CandidateTask, Any, Optional[str]]:
    try:
        return job, worker.run(job), None
    except CandidateError as exc:
        return job, None, f"CandidateError: {exc}"


# --- evosearch calibrate --------------------------------------------------------------------------------

def open_calibration(store: Store, spec: CalibrationSpec) -> CalibrationRecord:
    """The stored calibration of this name, made now if new. One made from another population or task list
    is refused: its responses would not answer this file's members."""
    try:
        record = store.get_calibration(spec.name)
    except StoreError:
        store.save_calibration(CalibrationRecord(name=spec.name, tasks=spec.task_names, spec=spec.to_dict()))
        return store.get_calibration(spec.name)
    if list(record.tasks) != spec.task_names:
        raise UsageError(f"calibration {spec.name!r} in {store.url_for_display} has tasks {record.tasks}, this "
                         f"file {spec.task_names}; give the calibration another name")
    return record


def members_to_score(store: Store, record: CalibrationRecord,
                     members: Sequence[CalibrationMember]) -> list[CalibrationMember]:
    """The members not stored yet; UsageError when a stored model of the same label has another recipe."""
    stored = {m.label: m.recipe for m in record.models}
    for m in members:
        if m.label in stored and stored[m.label] != m.recipe:
            raise UsageError(f"calibration {record.name!r} in {store.url_for_display} holds another model named "
                             f"{m.label!r} (made from another population); give the calibration another name")
    return [m for m in members if m.label not in stored]


def score_members(spec: CalibrationSpec, members: list[CalibrationMember], store: Store, calibration_id: int,
                  on_stored: Callable[[CalibrationModelRecord], None]) -> None:
    """Every member on the full tasks over a Ray pool of CandidateWorkers, each stored as it finishes."""
    def store_one(model: CalibrationModelRecord) -> None:
        store.add_calibration_model(calibration_id, model)
        on_stored(model)

    w = spec.workers
    ensure_ray(num_cpus=max(os.cpu_count() or 1, w.count * w.num_cpus))
    pool = candidate_pool(w, spec.source_paths, spec.tasks.source(), spec.task_names,
                          num_workers=min(w.count, len(members)), scoring=spec.tasks.metric_filter())
    try:
        pool.start()
        run_calibration(members, pool, tasks=spec.task_names, on_model=store_one, key_prefix=spec.name)
    finally:
        pool.shutdown()


def refit(store: Store, spec: CalibrationSpec) -> tuple[int, bool, Optional[str]]:
    """Fit IRT on the stored non-held-out models; a new version unless the stored fit covers them already.
    Returns (fit version, whether it is new, a note when it replaced a fit made in finishing order)."""
    record = store.get_calibration(spec.name)
    note = None
    if record.irt_params:
        stored = IRTParams.from_dict(record.irt_params)
        matrix = ResponseMatrix.from_calibration(record)
        if (stored.model_ids, stored.item_ids, stored.settings) == \
                (matrix.model_ids, matrix.item_ids, spec.irt_settings):
            return record.fit_version, False, None
        if fitted_in_finishing_order(stored, record):
            note = _finishing_order_note(record.name, record.fit_version)
    params = fit_calibration(record, spec.irt_settings)
    version = record.fit_version + 1
    store.set_calibration_fit(record.id, params.to_dict(), fit_version=version)
    return version, True, note


def _finishing_order_note(name: str, version: int) -> str:
    return (f"calibration {name!r}: fit version {version} laid its models out in the order they finished; "
            f"refitted once as version {version + 1} with models in label order (its anchors may differ; "
            f"version {version} is kept)")


def refit_if_in_finishing_order(store: Store, record: CalibrationRecord) -> tuple[CalibrationRecord, Optional[str]]:
    """A calibration whose current fit was made with rows in finishing order, refitted once in label order
    (with its stored settings) and stored as the next version; returns it and a note, or it unchanged."""
    if not record.irt_params or not fitted_in_finishing_order(IRTParams.from_dict(record.irt_params), record):
        return record, None
    params = fit_calibration(record, stored_irt_settings(record.spec or {}))
    store.set_calibration_fit(record.id, params.to_dict(), fit_version=record.fit_version + 1)
    return store.get_calibration(record.name), _finishing_order_note(record.name, record.fit_version)


# --- evosearch fitness report ---------------------------------------------------------------------------

def report_settings(record: CalibrationRecord, spec: Optional[CalibrationSpec]) -> tuple[ReportSettings,
                                                                                         IRTFitSettings]:
    """The report and IRT settings of the file when given, else those stored with the calibration."""
    if spec is not None:
        return spec.report, spec.irt_settings
    stored = record.spec or {}
    try:
        return ReportSettings.model_validate(stored.get("report", {})), stored_irt_settings(stored)
    except ValueError as e:
        raise UsageError(f"calibration {record.name!r}: stored settings are unreadable: {first_line(e)}") from None


def machine() -> dict[str, Any]:
    """Where a figure was measured, for the JSON beside it."""
    return {"host": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def calibration_report(store: Store, record: CalibrationRecord, spec: Optional[CalibrationSpec]) -> dict[str, Any]:
    """Every estimator x anchor strategy x k on the calibration's held-out merges, as the report's JSON."""
    settings, irt_settings = report_settings(record, spec)
    fitted = [m for m in record.models if m.role != "heldout"]
    heldout = [m for m in record.models if m.role == "heldout"]
    if not heldout:
        raise UsageError(f"calibration {record.name!r} has no held-out models (set n_heldout and run "
                         "`evosearch calibrate` again)")
    try:
        rows = fitness_report(fitted, heldout, estimators=settings.estimators, ks=settings.ks,
                              strategies=settings.strategies, seed=irt_settings.seed, tasks=list(record.tasks),
                              irt_settings=irt_settings)
    except FitnessError as e:
        raise FitnessError(f"calibration {record.name!r}: {e}") from None
    for row in rows:
        row["meets_bar"] = meets_bar(row)
    return {"calibration": record.name, "store": store.url_for_display, "tasks": list(record.tasks),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
            "bar": BAR, "irt": {"dims": irt_settings.dims, "ability_scope": irt_settings.ability_scope},
            "n_calibration": len(fitted), "n_heldout": len(heldout), "rows": rows}
