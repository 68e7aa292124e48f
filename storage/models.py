"""SQLAlchemy ORM models. The schema itself is created by the Alembic migrations in `storage/migrations`;
a test checks that the migrations and these models agree."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC timestamps on every backend (SQLite drops the zone, so it is put back on read)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    seed: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    message: Mapped[str | None] = mapped_column(Text)
    output_dir: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # objective name -> "max" | "min": what `progress` needs to tell the best value of each
    objectives: Mapped[dict[str, str]] = mapped_column(JSON, server_default="{}")
    # The driver lease: which driver process runs the job, until when (it renews it every few seconds).
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    restarts: Mapped[int] = mapped_column(Integer, server_default="0")  # by `evosearch submit --max-restarts`


class Calibration(Base):
    __tablename__ = "calibrations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    tasks: Mapped[list[str]] = mapped_column(JSON)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    fit_version: Mapped[int] = mapped_column(Integer)  # the current fit; 0 = not fitted yet
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    models: Mapped[list[CalibrationModel]] = relationship(order_by="CalibrationModel.id")


class CalibrationFit(Base):
    """Every IRT fit of a calibration, kept by version so earlier searches stay reproducible."""

    __tablename__ = "calibration_fits"
    __table_args__ = (UniqueConstraint("calibration_id", "fit_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    calibration_id: Mapped[int] = mapped_column(ForeignKey("calibrations.id", ondelete="CASCADE"))
    fit_version: Mapped[int] = mapped_column(Integer)
    irt_params: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class CalibrationModel(Base):
    __tablename__ = "calibration_models"
    __table_args__ = (UniqueConstraint("calibration_id", "label"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    calibration_id: Mapped[int] = mapped_column(ForeignKey("calibrations.id", ondelete="CASCADE"))
    label: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    recipe: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    responses: Mapped[dict[str, dict[str, int]]] = mapped_column(JSON)  # JSON keys: doc ids as strings
    accuracy: Mapped[dict[str, float]] = mapped_column(JSON)
    seconds: Mapped[float | None] = mapped_column(Float)


class Candidate(Base):
    __tablename__ = "candidates"
    __table_args__ = (
        UniqueConstraint("job_id", "generation", "index"),
        Index("ix_candidates_job_id_recipe_hash", "job_id", "recipe_hash"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    generation: Mapped[int] = mapped_column(Integer)
    index: Mapped[int] = mapped_column(Integer)
    genome: Mapped[list[float]] = mapped_column(JSON)
    recipe: Mapped[dict[str, Any]] = mapped_column(JSON)
    recipe_hash: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))
    worker: Mapped[str | None] = mapped_column(String(255))
    attempts: Mapped[int] = mapped_column(Integer)
    build_seconds: Mapped[float | None] = mapped_column(Float)
    eval_seconds: Mapped[float | None] = mapped_column(Float)
    overhead_seconds: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    cached_from: Mapped[int | None] = mapped_column(ForeignKey("candidates.id", ondelete="SET NULL"))
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime)

    scores: Mapped[list[Score]] = relationship(order_by="Score.id", cascade="all, delete-orphan")


class Score(Base):
    __tablename__ = "scores"
    __table_args__ = (UniqueConstraint("candidate_id", "objective", "split"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    candidate_id: Mapped[int] = mapped_column(ForeignKey("candidates.id", ondelete="CASCADE"))
    objective: Mapped[str] = mapped_column(String(255))
    split: Mapped[str] = mapped_column(String(16))
    estimated: Mapped[float | None] = mapped_column(Float)
    anchor_accuracy: Mapped[float | None] = mapped_column(Float)
    full: Mapped[float | None] = mapped_column(Float)
    metric: Mapped[str | None] = mapped_column(String(64))  # lm-eval's metric; None for a cost
    filter: Mapped[str | None] = mapped_column(String(64))  # lm-eval's filter (`none` when the task has none)


class Generation(Base):
    """One committed generation: the optimizer's state after `tell` and the front, written together."""

    __tablename__ = "generations"
    __table_args__ = (UniqueConstraint("job_id", "generation"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    generation: Mapped[int] = mapped_column(Integer)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    optimizer_state: Mapped[bytes] = mapped_column(LargeBinary)
    front_candidate_ids: Mapped[list[int]] = mapped_column(JSON)
    hypervolume: Mapped[float | None] = mapped_column(Float)
    committed_at: Mapped[datetime] = mapped_column(UTCDateTime)


class TaskSplit(Base):
    """A hold-out carved from a task that has one split only: which docs the search sees and which it
    never does, fixed when the job first ran so a resumed or re-reported job scores the same docs."""

    __tablename__ = "task_splits"
    __table_args__ = (UniqueConstraint("job_id", "task"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    task: Mapped[str] = mapped_column(String(255))
    n_docs: Mapped[int] = mapped_column(Integer)
    report_fraction: Mapped[float] = mapped_column(Float)
    seed: Mapped[int] = mapped_column(BigInteger)
    search_doc_ids: Mapped[list[int]] = mapped_column(JSON)
    report_doc_ids: Mapped[list[int]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
