"""`Store`: the only door to the database. Every method is one short transaction of its own, retried with
backoff when the connection drops, so a crash or an outage between two calls never leaves half a write."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any, TypeVar

from sqlalchemy import Engine, event, func, or_, select, update
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session, selectinload, sessionmaker

from storage.engine import READ_ONLY, create_store_engine, display, mask_password, parse_url
from storage.errors import StoreError
from storage.migrate import schema_revisions, upgrade_to_head
from storage.models import (
    Calibration,
    CalibrationFit,
    CalibrationModel,
    Candidate,
    Generation,
    Job,
    Score,
    TaskSplit,
    utcnow,
)
from storage.records import (CALIBRATION_MODEL_ROLES, CANDIDATE_STATUSES, DIRECTIONS, JOB_STATUSES, SCORE_SPLITS,
                             CalibrationModelRecord, CalibrationRecord, CalibrationSummary, CandidateRecord,
                             CandidateSummary, GenerationRecord, GenerationSummary, JobProgress, JobRecord,
                             LeaseClaim, ScoreRecord, TaskSplitRecord)
from storage.retry import RetryPolicy, is_transient

log = logging.getLogger(__name__)
T = TypeVar("T")


class Store:
    def __init__(self, engine: Engine, url: URL, retry: RetryPolicy):
        """Use `Store.open`."""
        self._engine = engine
        self._url = url
        self._retry = retry
        self._writer = sessionmaker(bind=engine, expire_on_commit=False)
        self._reader = sessionmaker(bind=engine.execution_options(**{READ_ONLY: True}), expire_on_commit=False)

    @classmethod
    def open(cls, url: str | URL, *, retry: RetryPolicy = RetryPolicy(), sqlite_busy_timeout_s: float = 30.0,
             connect_timeout_s: float = 10.0) -> Store:
        """Connect and bring the schema to the newest migration. One try only: a wrong or unreachable URL
        should fail at once, not after a backoff (the backoff is for outages during a job)."""
        parsed = parse_url(url)
        engine = create_store_engine(parsed, sqlite_busy_timeout_s, connect_timeout_s)
        try:
            upgrade_to_head(engine)
        except DBAPIError as exc:
            engine.dispose()
            raise StoreError(f"store {display(parsed)} is unreachable: {_cause(exc, parsed)}") from None
        except Exception as exc:  # alembic: e.g. a database migrated by a newer evosearch
            engine.dispose()
            raise StoreError(f"store {display(parsed)} cannot be migrated: {_cause(exc, parsed)}") from None
        return cls(engine, parsed, retry)

    @classmethod
    def open_read_only(cls, url: str | URL, *, retry: RetryPolicy = RetryPolicy(),
                       sqlite_busy_timeout_s: float = 30.0, connect_timeout_s: float = 10.0) -> Store:
        """Connect for reading only (a viewer such as the dashboard): nothing is migrated, so a PostgreSQL
        role with SELECT alone suffices, and every connection refuses writes (SQLite `query_only`,
        PostgreSQL `default_transaction_read_only`), so no code path can write through this store. The
        schema must already be at this evosearch's newest migration."""
        parsed = parse_url(url)
        engine = create_store_engine(parsed, sqlite_busy_timeout_s, connect_timeout_s)
        sqlite = parsed.get_backend_name() == "sqlite"

        @event.listens_for(engine, "connect")
        def _refuse_writes(dbapi_connection, _record) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA query_only=ON" if sqlite else "SET default_transaction_read_only = on")
            cursor.close()
            if not sqlite:
                dbapi_connection.commit()  # psycopg opened a transaction for the SET; keep the setting

        try:
            with engine.execution_options(**{READ_ONLY: True}).connect() as connection:
                current, newest = schema_revisions(connection)
        except DBAPIError as exc:
            engine.dispose()
            raise StoreError(f"store {display(parsed)} is unreachable: {_cause(exc, parsed)}") from None
        if current != newest:
            engine.dispose()
            at = ", ".join(sorted(current)) or "no evosearch schema"
            raise StoreError(f"store {display(parsed)} is at schema {at}, this evosearch reads "
                             f"{', '.join(sorted(newest))}: open it once with a verb that may migrate it "
                             f"(e.g. `evosearch status --store URL`, as a role allowed to write)")
        return cls(engine, parsed, retry)

    @property
    def url_for_display(self) -> str:
        return display(self._url)

    @property
    def in_memory(self) -> bool:
        """An in-memory SQLite store: one connection, shared by every thread, seen by no other process."""
        return self._url.get_backend_name() == "sqlite" and self._url.database in (None, "", ":memory:")

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # jobs

    def create_job(self, name: str, spec: dict, seed: int, output_dir: str,
                   objectives: Mapping[str, str] | None = None) -> JobRecord:
        """A new job. `objectives` (name -> "max" or "min") tells `progress` which value of each is the best;
        an objective it does not name is maximised."""
        if not isinstance(name, str) or not name.strip():
            raise StoreError(f"job name {name!r} is empty")
        spec = _without_passwords(spec)
        objectives = dict(objectives or {})
        for objective, direction in objectives.items():
            _check_choice(f"direction of objective {objective!r}", direction, DIRECTIONS)

        tries = 0

        def write(session: Session) -> JobRecord:
            nonlocal tries
            tries += 1
            existing = session.scalar(select(Job).where(Job.name == name))
            if existing is not None and tries > 1 and existing.status == "created" and (
                    existing.spec, existing.seed, existing.output_dir) == (spec, int(seed), str(output_dir)):
                return _job_record(existing)  # our previous try committed, but the connection dropped before the ack
            if existing is not None:
                raise StoreError(f"job name {name!r} is taken in store {self.url_for_display}")
            now = utcnow()
            job = Job(name=name, spec=spec, seed=int(seed), status="created", message=None,
                      output_dir=str(output_dir), created_at=now, updated_at=now, objectives=objectives,
                      restarts=0)
            session.add(job)
            session.flush()
            return _job_record(job)

        return self._transaction(f"creating job {name!r}", write)

    def get_job(self, name_or_id: str | int) -> JobRecord:
        return self._transaction(f"reading job {name_or_id!r}",
                                 lambda session: _job_record(_find_job(session, name_or_id)), read_only=True)

    def list_jobs(self) -> list[JobRecord]:
        return self._transaction("listing jobs", lambda session: [
            _job_record(job) for job in session.scalars(select(Job).order_by(Job.id))], read_only=True)

    def set_job_status(self, job_id: int, status: str, message: str | None = None) -> None:
        _check_choice("job status", status, JOB_STATUSES)

        def write(session: Session) -> None:
            job = _job(session, job_id)
            job.status, job.message, job.updated_at = status, message, utcnow()

        self._transaction(f"setting job {job_id} status", write)

    # the driver lease: one driver per job. Each call is one conditional UPDATE, so two drivers racing for a
    # lease are settled by the database (SQLite: the writer lock of BEGIN IMMEDIATE; PostgreSQL: the row
    # lock, after which the second UPDATE re-checks its WHERE against the first one's row).
    # Expiry times come from the drivers' clocks: the machines of one cluster must keep them in step.

    def take_lease(self, job_id: int, owner: str, seconds: float, *, force: bool = False) -> LeaseClaim:
        """Take the job's lease for `seconds` if nobody holds it, it has expired, or `owner` already holds
        it (a restarted driver of the same supervisor); with `force`, whoever holds it."""
        def write(session: Session) -> LeaseClaim:
            job = _job(session, job_id)
            previous = (job.lease_owner, job.lease_expires_at)
            now = utcnow()
            statement = update(Job).where(Job.id == job_id)
            if not force:
                statement = statement.where(or_(Job.lease_expires_at.is_(None), Job.lease_expires_at <= now,
                                                Job.lease_owner == owner))
            taken = session.execute(statement.values(lease_owner=owner,
                                                     lease_expires_at=now + timedelta(seconds=seconds)),
                                    execution_options={"synchronize_session": False}).rowcount == 1
            session.expire(job)
            session.refresh(job)
            return LeaseClaim(taken=taken, owner=job.lease_owner, expires_at=job.lease_expires_at,
                              previous_owner=previous[0], previous_expires_at=previous[1])

        return self._transaction(f"taking the lease of job {job_id}", write)

    def renew_lease(self, job_id: int, owner: str, seconds: float) -> bool:
        """Extend `owner`'s lease by `seconds` from now; False when it is no longer `owner`'s (taken over)."""
        def write(session: Session) -> bool:
            statement = update(Job).where(Job.id == job_id, Job.lease_owner == owner).values(
                lease_expires_at=utcnow() + timedelta(seconds=seconds))
            return session.execute(statement, execution_options={"synchronize_session": False}).rowcount == 1

        return self._transaction(f"renewing the lease of job {job_id}", write)

    def release_lease(self, job_id: int, owner: str) -> None:
        """End `owner`'s lease now (the owner's name stays, for `status`); a no-op if another holds it."""
        def write(session: Session) -> None:
            session.execute(update(Job).where(Job.id == job_id, Job.lease_owner == owner).values(
                lease_expires_at=None), execution_options={"synchronize_session": False})

        self._transaction(f"releasing the lease of job {job_id}", write)

    def record_restart(self, job_id: int, message: str) -> int:
        """One more automatic restart of the job's driver, with why; returns the count so far."""
        def write(session: Session) -> int:
            job = _job(session, job_id)
            job.restarts, job.message, job.updated_at = job.restarts + 1, message, utcnow()
            return job.restarts

        return self._transaction(f"recording a restart of job {job_id}", write)

    # candidates

    def record_candidate(self, rec: CandidateRecord) -> int:
        """Insert, or update the row with the same (job_id, generation, index) and replace its scores, so a
        candidate recorded again (after a resume, or a retried write) is still one row."""
        _check_choice("candidate status", rec.status, CANDIDATE_STATUSES)
        if not all(math.isfinite(gene) for gene in rec.genome):
            raise StoreError(f"candidate job {rec.job_id} g{rec.generation} i{rec.index} has a genome that is not "
                             f"finite: {list(rec.genome)}")
        for score in rec.scores:
            _check_choice("score split", score.split, SCORE_SPLITS)

        def write(session: Session) -> int:
            _job(session, rec.job_id)
            row = session.scalar(select(Candidate).options(selectinload(Candidate.scores)).where(
                Candidate.job_id == rec.job_id, Candidate.generation == rec.generation,
                Candidate.index == rec.index))
            if row is None:
                row = Candidate(job_id=rec.job_id, generation=rec.generation, index=rec.index)
                session.add(row)
            row.genome = [float(gene) for gene in rec.genome]
            row.recipe, row.recipe_hash, row.status = rec.recipe, rec.recipe_hash, rec.status
            row.worker, row.attempts, row.error, row.cached_from = rec.worker, rec.attempts, rec.error, rec.cached_from
            row.build_seconds, row.eval_seconds = _number(rec.build_seconds), _number(rec.eval_seconds)
            row.overhead_seconds, row.recorded_at = _number(rec.overhead_seconds), utcnow()
            row.scores.clear()
            session.flush()  # the old scores' deletes go first: the new ones share their unique keys
            row.scores.extend(_score_row(score) for score in rec.scores)
            session.flush()
            return row.id

        return self._transaction(f"recording candidate job {rec.job_id} g{rec.generation} i{rec.index}", write)

    def candidates(self, job_id: int, generation: int | None = None, status: str | None = None
                   ) -> list[CandidateRecord]:
        def read(session: Session) -> list[CandidateRecord]:
            _job(session, job_id)
            query = select(Candidate).options(selectinload(Candidate.scores)).where(Candidate.job_id == job_id)
            if generation is not None:
                query = query.where(Candidate.generation == generation)
            if status is not None:
                query = query.where(Candidate.status == status)
            return [_candidate_record(row) for row in
                    session.scalars(query.order_by(Candidate.generation, Candidate.index))]

        return self._transaction(f"reading candidates of job {job_id}", read, read_only=True)

    def find_by_hash(self, job_id: int, recipe_hash: str) -> CandidateRecord | None:
        """The first done candidate of the job with this recipe: its scores can be reused (the cache)."""
        def read(session: Session) -> CandidateRecord | None:
            row = session.scalar(select(Candidate).options(selectinload(Candidate.scores)).where(
                Candidate.job_id == job_id, Candidate.recipe_hash == recipe_hash, Candidate.status == "done")
                .order_by(Candidate.id).limit(1))
            return None if row is None else _candidate_record(row)

        return self._transaction(f"looking up recipe {recipe_hash} in job {job_id}", read, read_only=True)

    def candidate(self, job_id: int, candidate_id: int) -> CandidateRecord:
        """One candidate of the job, with its genome, recipe and scores."""
        def read(session: Session) -> CandidateRecord:
            _job(session, job_id)
            row = session.scalar(select(Candidate).options(selectinload(Candidate.scores)).where(
                Candidate.job_id == job_id, Candidate.id == candidate_id))
            if row is None:
                raise StoreError(f"job id {job_id} has no candidate {candidate_id}")
            return _candidate_record(row)

        return self._transaction(f"reading candidate {candidate_id} of job {job_id}", read, read_only=True)

    def candidate_summaries(self, job_id: int) -> list[CandidateSummary]:
        """Every candidate of the job without genome and recipe, in (generation, index) order, with scores:
        two plain queries, for views of thousands of candidates."""
        def read(session: Session) -> list[CandidateSummary]:
            _job(session, job_id)
            scores: dict[int, list[ScoreRecord]] = {}
            for candidate_id, objective, split, estimated, anchor, full, metric, filter_ in session.execute(
                    select(Score.candidate_id, Score.objective, Score.split, Score.estimated,
                           Score.anchor_accuracy, Score.full, Score.metric, Score.filter)
                    .join(Candidate, Score.candidate_id == Candidate.id)
                    .where(Candidate.job_id == job_id).order_by(Score.id)):
                scores.setdefault(candidate_id, []).append(ScoreRecord(
                    objective=objective, split=split, estimated=estimated, anchor_accuracy=anchor, full=full,
                    metric=metric, filter=filter_))
            rows = session.execute(
                select(Candidate.id, Candidate.generation, Candidate.index, Candidate.recipe_hash, Candidate.status,
                       Candidate.worker, Candidate.attempts, Candidate.build_seconds, Candidate.eval_seconds,
                       Candidate.overhead_seconds, Candidate.error, Candidate.cached_from, Candidate.recorded_at)
                .where(Candidate.job_id == job_id).order_by(Candidate.generation, Candidate.index))
            return [CandidateSummary(id=row.id, job_id=job_id, generation=row.generation, index=row.index,
                                     recipe_hash=row.recipe_hash, status=row.status, worker=row.worker,
                                     attempts=row.attempts, build_seconds=row.build_seconds,
                                     eval_seconds=row.eval_seconds, overhead_seconds=row.overhead_seconds,
                                     error=row.error, cached_from=row.cached_from, recorded_at=row.recorded_at,
                                     scores=scores.get(row.id, [])) for row in rows]

        return self._transaction(f"reading the candidate summaries of job {job_id}", read, read_only=True)

    def worker_seconds(self, job_id: int) -> list[float]:
        """Build + evaluation + overhead seconds of every done candidate a worker evaluated (cache copies
        left out), in recording order: what a candidate of this job takes."""
        def read(session: Session) -> list[float]:
            _job(session, job_id)
            parts = (Candidate.build_seconds, Candidate.eval_seconds, Candidate.overhead_seconds)
            rows = session.execute(select(*parts).where(
                Candidate.job_id == job_id, Candidate.status == "done", Candidate.cached_from.is_(None))
                .order_by(Candidate.recorded_at))
            return [sum(value or 0.0 for value in row) for row in rows if any(value is not None for value in row)]

        return self._transaction(f"reading the candidate times of job {job_id}", read, read_only=True)

    def add_scores(self, candidate_id: int, scores: list[ScoreRecord]) -> None:
        """Add scores, or overwrite the ones with the same (objective, split)."""
        for score in scores:
            _check_choice("score split", score.split, SCORE_SPLITS)

        def write(session: Session) -> None:
            row = session.get(Candidate, candidate_id, options=[selectinload(Candidate.scores)])
            if row is None:
                raise StoreError(f"unknown candidate id {candidate_id} in store {self.url_for_display}")
            existing = {(score.objective, score.split): score for score in row.scores}
            for score in scores:
                target = existing.get((score.objective, score.split))
                if target is None:
                    row.scores.append(_score_row(score))
                else:
                    target.estimated, target.anchor_accuracy, target.full = (
                        _number(score.estimated), _number(score.anchor_accuracy), _number(score.full))

        self._transaction(f"adding scores to candidate {candidate_id}", write)

    # generations

    def commit_generation(self, job_id: int, generation: int, optimizer_state: bytes,
                          front_candidate_ids: list[int], hypervolume: float | None = None) -> None:
        """Optimizer state and front in one transaction; committing a generation again replaces it."""
        front_ids = [int(candidate_id) for candidate_id in front_candidate_ids]

        def write(session: Session) -> None:
            job = _job(session, job_id)
            found = set(session.scalars(select(Candidate.id).where(
                Candidate.job_id == job_id, Candidate.id.in_(front_ids))))
            missing = [candidate_id for candidate_id in front_ids if candidate_id not in found]
            if missing:
                raise StoreError(f"front of job {job_id} generation {generation} names candidates {missing} "
                                 f"that are not this job's")
            row = session.scalar(select(Generation).where(Generation.job_id == job_id,
                                                          Generation.generation == generation))
            if row is None:
                row = Generation(job_id=job_id, generation=generation)
                session.add(row)
            row.optimizer_state, row.front_candidate_ids = bytes(optimizer_state), front_ids
            row.hypervolume = _number(hypervolume)
            row.committed_at = job.updated_at = utcnow()

        self._transaction(f"committing job {job_id} generation {generation}", write)

    def last_generation(self, job_id: int) -> GenerationRecord | None:
        def read(session: Session) -> GenerationRecord | None:
            _job(session, job_id)
            row = _generation(session, job_id, None)
            return None if row is None else _generation_record(row)

        return self._transaction(f"reading the last generation of job {job_id}", read, read_only=True)

    def generations(self, job_id: int) -> list[GenerationSummary]:
        """Every committed generation of the job, oldest first, without the optimizer's state."""
        def read(session: Session) -> list[GenerationSummary]:
            _job(session, job_id)
            rows = session.execute(select(Generation.generation, Generation.front_candidate_ids,
                                          Generation.hypervolume, Generation.committed_at)
                                   .where(Generation.job_id == job_id).order_by(Generation.generation))
            return [GenerationSummary(job_id=job_id, generation=row.generation,
                                      front_candidate_ids=list(row.front_candidate_ids), hypervolume=row.hypervolume,
                                      committed_at=row.committed_at) for row in rows]

        return self._transaction(f"reading the generations of job {job_id}", read, read_only=True)

    def front(self, job_id: int, generation: int | None = None) -> list[CandidateRecord]:
        """The front committed with `generation` (default: the last one), in committed order, with scores."""
        def read(session: Session) -> list[CandidateRecord]:
            _job(session, job_id)
            row = _generation(session, job_id, generation)
            if row is None:
                if generation is None:
                    return []
                raise StoreError(f"job {job_id} has no committed generation {generation}")
            by_id = {candidate.id: candidate for candidate in session.scalars(
                select(Candidate).options(selectinload(Candidate.scores))
                .where(Candidate.id.in_(row.front_candidate_ids)))}
            return [_candidate_record(by_id[candidate_id]) for candidate_id in row.front_candidate_ids]

        return self._transaction(f"reading the front of job {job_id}", read, read_only=True)

    def record_task_splits(self, job_id: int, splits: Sequence[TaskSplitRecord]) -> None:
        """The job's carved hold-outs, all in one transaction; a task already recorded must not change."""
        def write(session: Session) -> None:
            _job(session, job_id)
            stored = {row.task: row for row in session.scalars(select(TaskSplit).where(TaskSplit.job_id == job_id))}
            for rec in splits:
                old = stored.get(rec.task)
                if old is None:
                    session.add(TaskSplit(job_id=job_id, task=rec.task, n_docs=rec.n_docs,
                                          report_fraction=rec.report_fraction, seed=rec.seed,
                                          search_doc_ids=list(rec.search_doc_ids),
                                          report_doc_ids=list(rec.report_doc_ids), created_at=utcnow()))
                elif _task_split_record(old) != rec:
                    raise StoreError(f"job {job_id}: task {rec.task!r} already has another hold-out recorded")

        self._transaction(f"recording the hold-out splits of job {job_id}", write)

    def task_splits(self, job_id: int) -> dict[str, TaskSplitRecord]:
        """Task -> its carved hold-out, for the tasks of the job that have one."""
        def read(session: Session) -> dict[str, TaskSplitRecord]:
            _job(session, job_id)
            rows = session.scalars(select(TaskSplit).where(TaskSplit.job_id == job_id).order_by(TaskSplit.task))
            return {row.task: _task_split_record(row) for row in rows}

        return self._transaction(f"reading the hold-out splits of job {job_id}", read, read_only=True)

    def progress(self, job_id: int) -> JobProgress:
        def read(session: Session) -> JobProgress:
            job = _job(session, job_id)
            generation = session.scalar(select(func.max(Generation.generation)).where(Generation.job_id == job_id))
            counts = dict(session.execute(select(Candidate.status, func.count()).where(
                Candidate.job_id == job_id).group_by(Candidate.status)).all())
            extremes = session.execute(
                select(Score.objective, func.max(Score.estimated), func.min(Score.estimated))
                .join(Candidate, Score.candidate_id == Candidate.id)
                .where(Candidate.job_id == job_id, Candidate.status == "done", Score.split == "search",
                       Score.estimated.is_not(None))
                .group_by(Score.objective)).all()
            best = {objective: lowest if job.objectives.get(objective) == "min" else highest
                    for objective, highest, lowest in extremes}
            end = utcnow() if job.status == "running" else job.updated_at
            elapsed = max(0.0, (end - job.created_at).total_seconds())
            done, failed = counts.get("done", 0), counts.get("failed", 0)
            recorded = session.scalar(select(func.max(Candidate.recorded_at)).where(Candidate.job_id == job_id))
            return JobProgress(job_id=job.id, status=job.status, generation=generation, done=done, failed=failed,
                               best=best, elapsed_seconds=elapsed,
                               candidates_per_minute=(done + failed) * 60.0 / elapsed if elapsed > 0 else 0.0,
                               last_write=max(filter(None, (job.updated_at, recorded))))

        return self._transaction(f"reading the progress of job {job_id}", read, read_only=True)

    # calibrations

    def save_calibration(self, rec: CalibrationRecord) -> int:
        """A new calibration with its models and, when given, its fit (as version `rec.fit_version`)."""
        for model in rec.models:
            _check_choice("calibration model role", model.role, CALIBRATION_MODEL_ROLES)

        def write(session: Session) -> int:
            if session.scalar(select(Calibration.id).where(Calibration.name == rec.name)) is not None:
                raise StoreError(f"calibration name {rec.name!r} is taken in store {self.url_for_display}")
            row = Calibration(name=rec.name, tasks=list(rec.tasks), spec=_without_passwords(rec.spec),
                              created_at=utcnow(), fit_version=rec.fit_version if rec.irt_params is not None else 0)
            row.models = [_calibration_model_row(model) for model in rec.models]
            session.add(row)
            session.flush()
            if rec.irt_params is not None:
                session.add(CalibrationFit(calibration_id=row.id, fit_version=rec.fit_version,
                                           irt_params=rec.irt_params, created_at=utcnow()))
            return row.id

        return self._transaction(f"saving calibration {rec.name!r}", write)

    def add_calibration_model(self, calibration_id: int, rec: CalibrationModelRecord) -> None:
        """One model's responses, committed alone; a label recorded again replaces its row."""
        _check_choice("calibration model role", rec.role, CALIBRATION_MODEL_ROLES)

        def write(session: Session) -> None:
            _calibration(session, calibration_id)
            session.execute(CalibrationModel.__table__.delete().where(
                CalibrationModel.calibration_id == calibration_id, CalibrationModel.label == rec.label))
            row = _calibration_model_row(rec)
            row.calibration_id = calibration_id
            session.add(row)

        self._transaction(f"adding model {rec.label!r} to calibration {calibration_id}", write)

    def get_calibration(self, name: str, fit_version: int | None = None) -> CalibrationRecord:
        """With its models and the current fit (or the fit `fit_version`, which older runs may have used)."""
        def read(session: Session) -> CalibrationRecord:
            row = session.scalar(select(Calibration).options(selectinload(Calibration.models))
                                 .where(Calibration.name == name))
            if row is None:
                raise StoreError(f"unknown calibration {name!r} in store {self.url_for_display}")
            version = row.fit_version if fit_version is None else fit_version
            fit = session.scalar(select(CalibrationFit).where(CalibrationFit.calibration_id == row.id,
                                                              CalibrationFit.fit_version == version))
            if fit is None and fit_version is not None:
                raise StoreError(f"calibration {name!r} has no fit version {fit_version}")
            return CalibrationRecord(
                name=row.name, tasks=list(row.tasks), spec=row.spec, id=row.id, created_at=row.created_at,
                models=[_calibration_model_record(model) for model in row.models],
                irt_params=None if fit is None else fit.irt_params, fit_version=version if fit else 0)

        return self._transaction(f"reading calibration {name!r}", read, read_only=True)

    def calibration_summaries(self) -> list[CalibrationSummary]:
        """Every stored calibration, without its responses and fits, oldest first."""
        def read(session: Session) -> list[CalibrationSummary]:
            counts: dict[int, dict[str, int]] = {}
            for calibration_id, role, count in session.execute(
                    select(CalibrationModel.calibration_id, CalibrationModel.role, func.count())
                    .group_by(CalibrationModel.calibration_id, CalibrationModel.role)):
                counts.setdefault(calibration_id, {})[role] = count
            return [CalibrationSummary(id=row.id, name=row.name, tasks=list(row.tasks), fit_version=row.fit_version,
                                       created_at=row.created_at, models_by_role=counts.get(row.id, {}))
                    for row in session.execute(select(Calibration.id, Calibration.name, Calibration.tasks,
                                                      Calibration.fit_version, Calibration.created_at)
                                               .order_by(Calibration.id))]

        return self._transaction("listing calibrations", read, read_only=True)

    def set_calibration_spec(self, calibration_id: int, spec: dict) -> None:
        """The settings of the file that last ran against this calibration (its models are unchanged)."""
        def write(session: Session) -> None:
            _calibration(session, calibration_id).spec = _without_passwords(spec)

        self._transaction(f"updating the settings of calibration {calibration_id}", write)

    def set_calibration_fit(self, calibration_id: int, irt_params: dict, fit_version: int) -> None:
        """Store a fit as `fit_version` and make it the current one; other versions are kept."""
        def write(session: Session) -> None:
            calibration = _calibration(session, calibration_id)
            fit = session.scalar(select(CalibrationFit).where(CalibrationFit.calibration_id == calibration_id,
                                                              CalibrationFit.fit_version == fit_version))
            if fit is None:
                fit = CalibrationFit(calibration_id=calibration_id, fit_version=fit_version)
                session.add(fit)
            fit.irt_params, fit.created_at = irt_params, utcnow()
            calibration.fit_version = fit_version

        self._transaction(f"setting fit {fit_version} of calibration {calibration_id}", write)

    # plumbing

    def _transaction(self, what: str, work: Callable[[Session], T], read_only: bool = False) -> T:
        """Run `work` in one transaction; retry it from scratch while the database is unreachable."""
        factory = self._reader if read_only else self._writer
        backend = self._url.get_backend_name()
        started = time.monotonic()
        delays = self._retry.delays()
        while True:
            try:
                with factory() as session, session.begin():
                    return work(session)
            except DBAPIError as exc:
                if not is_transient(exc, backend):
                    raise StoreError(f"{what} failed in store {self.url_for_display}: {_cause(exc, self._url)}"
                                     ) from None
                delay = next(delays, None)
                if delay is None:
                    raise StoreError(
                        f"store {self.url_for_display} is unreachable ({_cause(exc, self._url)}) after "
                        f"{self._retry.attempts} tries over {time.monotonic() - started:.1f} s while {what}; "
                        f"nothing was half-written: the job can be resumed once the store is back") from None
                log.warning("store %s: %s failed (%s); retrying in %.1f s", self.url_for_display, what,
                            _cause(exc, self._url), delay)
                time.sleep(delay)
            except StoreError:
                raise
            except SQLAlchemyError as exc:
                raise StoreError(f"{what} failed in store {self.url_for_display}: {_cause(exc, self._url)}"
                                 ) from None


def _cause(exc: BaseException, url: URL) -> str:
    """The driver's own words, first line only, never the password."""
    original = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(original).splitlines() if line.strip()]
    text = lines[0] if lines else type(original).__name__
    if url.password:
        text = text.replace(str(url.password), "***")
    return mask_password(text)


def _without_passwords(spec: Any) -> Any:
    """A job or calibration spec as stored: the password of every URL in it (its `store`) masked. Whoever
    may read the store need not be able to write it (a read-only role), and a resumed job connects with the
    URL it is given, never the stored one."""
    if isinstance(spec, str):
        return mask_password(spec)
    if isinstance(spec, dict):
        return {key: _without_passwords(value) for key, value in spec.items()}
    if isinstance(spec, list):
        return [_without_passwords(value) for value in spec]
    return spec


def _check_choice(what: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise StoreError(f"{what} {value!r} is not one of {', '.join(choices)}")


def _find_job(session: Session, name_or_id: str | int) -> Job:
    job = None
    if isinstance(name_or_id, str):
        job = session.scalar(select(Job).where(Job.name == name_or_id))
    if job is None and str(name_or_id).strip().isdigit():
        job = session.get(Job, int(name_or_id))
    if job is None:
        raise StoreError(f"unknown job {name_or_id!r}")
    return job


def _job(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise StoreError(f"unknown job id {job_id}")
    return job


def _calibration(session: Session, calibration_id: int) -> Calibration:
    calibration = session.get(Calibration, calibration_id)
    if calibration is None:
        raise StoreError(f"unknown calibration id {calibration_id}")
    return calibration


def _generation(session: Session, job_id: int, generation: int | None) -> Generation | None:
    query = select(Generation).where(Generation.job_id == job_id)
    if generation is not None:
        query = query.where(Generation.generation == generation)
    return session.scalar(query.order_by(Generation.generation.desc()).limit(1))


def _job_record(job: Job) -> JobRecord:
    return JobRecord(id=job.id, name=job.name, spec=job.spec, seed=job.seed, status=job.status,
                     message=job.message, output_dir=job.output_dir, created_at=job.created_at,
                     updated_at=job.updated_at, objectives=dict(job.objectives or {}),
                     lease_owner=job.lease_owner, lease_expires_at=job.lease_expires_at, restarts=job.restarts or 0)


def _number(value: float | None) -> float | None:
    """NaN (a candidate whose logits blew up) is stored as no value: SQLite cannot keep it apart from NULL, and
    both backends must answer alike."""
    return None if value is None or math.isnan(value) else float(value)


def _score_row(score: ScoreRecord) -> Score:
    return Score(objective=score.objective, split=score.split, estimated=_number(score.estimated),
                 anchor_accuracy=_number(score.anchor_accuracy), full=_number(score.full), metric=score.metric,
                 filter=score.filter)


def _candidate_record(row: Candidate) -> CandidateRecord:
    return CandidateRecord(
        job_id=row.job_id, generation=row.generation, index=row.index, genome=list(row.genome), recipe=row.recipe,
        recipe_hash=row.recipe_hash, status=row.status, worker=row.worker, attempts=row.attempts,
        build_seconds=row.build_seconds, eval_seconds=row.eval_seconds, overhead_seconds=row.overhead_seconds,
        error=row.error, id=row.id, cached_from=row.cached_from,
        scores=[ScoreRecord(objective=score.objective, split=score.split, estimated=score.estimated,
                            anchor_accuracy=score.anchor_accuracy, full=score.full, metric=score.metric,
                            filter=score.filter) for score in row.scores])


def _generation_record(row: Generation) -> GenerationRecord:
    return GenerationRecord(job_id=row.job_id, generation=row.generation, optimizer_state=bytes(row.optimizer_state),
                            front_candidate_ids=list(row.front_candidate_ids), hypervolume=row.hypervolume,
                            committed_at=row.committed_at)


def _calibration_model_row(rec: CalibrationModelRecord) -> CalibrationModel:
    # JSON object keys are strings: doc ids go in as "12" and come back as 12 (_calibration_model_record).
    responses = {task: {str(doc_id): int(correct) for doc_id, correct in by_doc.items()}
                 for task, by_doc in rec.responses.items()}
    return CalibrationModel(label=rec.label, role=rec.role, recipe=rec.recipe, responses=responses,
                            accuracy={task: float(value) for task, value in rec.accuracy.items()},
                            seconds=rec.seconds)


def _calibration_model_record(row: CalibrationModel) -> CalibrationModelRecord:
    return CalibrationModelRecord(
        label=row.label, role=row.role, recipe=row.recipe, accuracy=dict(row.accuracy), seconds=row.seconds,
        responses={task: {int(doc_id): correct for doc_id, correct in by_doc.items()}
                   for task, by_doc in row.responses.items()})


def _task_split_record(row: TaskSplit) -> TaskSplitRecord:
    return TaskSplitRecord(task=row.task, n_docs=row.n_docs, report_fraction=row.report_fraction, seed=row.seed,
                           search_doc_ids=list(row.search_doc_ids), report_doc_ids=list(row.report_doc_ids))
