"""Plain records that cross the `Store` boundary: what callers read and write, free of any ORM session."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

JOB_STATUSES = ("created", "running", "stopped", "failed", "finished")
CANDIDATE_STATUSES = ("done", "failed")
DIRECTIONS = ("max", "min")
SCORE_SPLITS = ("search", "report")
CALIBRATION_MODEL_ROLES = ("source", "base", "random", "heldout")


@dataclass
class JobRecord:
    id: int
    name: str
    spec: dict[str, Any]
    seed: int
    status: str
    message: str | None
    output_dir: str
    created_at: datetime
    updated_at: datetime
    objectives: dict[str, str] = field(default_factory=dict)  # objective name -> "max" | "min"
    lease_owner: str | None = None  # the driver that holds (or last held) the job's lease
    lease_expires_at: datetime | None = None  # None: no driver holds it (or a job of an older store)
    restarts: int = 0  # automatic restarts of its driver (`evosearch submit --max-restarts`)

    def lease_live(self, now: datetime) -> bool:
        return self.lease_expires_at is not None and self.lease_expires_at > now

    def driver_dead(self, now: datetime) -> bool | None:
        """For a `running` job: True once its lease has expired, False while it is live; None when the job
        is not running or carries no lease (an older store's job: only the age of its writes tells)."""
        if self.status != "running" or self.lease_expires_at is None:
            return None
        return not self.lease_live(now)


@dataclass(frozen=True)
class LeaseClaim:
    """The outcome of trying to take a job's lease: who holds it now and until when."""

    taken: bool
    owner: str | None
    expires_at: datetime | None
    previous_owner: str | None  # who held it before the attempt (a live lease taken with force, say)
    previous_expires_at: datetime | None


@dataclass
class ScoreRecord:
    objective: str
    split: str  # "search" | "report"
    estimated: float | None = None
    anchor_accuracy: float | None = None
    full: float | None = None
    metric: str | None = None  # the lm-eval metric a task score was read from; None for a cost
    filter: str | None = None  # and its filter (`none` for a task without filters)


@dataclass
class CandidateRecord:
    job_id: int
    generation: int
    index: int
    genome: list[float]
    recipe: dict[str, Any]
    recipe_hash: str
    status: str  # "done" | "failed"
    worker: str | None = None
    attempts: int = 1
    build_seconds: float | None = None
    eval_seconds: float | None = None
    overhead_seconds: float | None = None
    error: str | None = None
    scores: list[ScoreRecord] = field(default_factory=list)
    id: int | None = None
    cached_from: int | None = None  # id of the done candidate whose scores this one reuses


@dataclass
class GenerationRecord:
    job_id: int
    generation: int
    optimizer_state: bytes
    front_candidate_ids: list[int]
    hypervolume: float | None
    committed_at: datetime


@dataclass
class CalibrationModelRecord:
    label: str
    role: str  # "source" | "base" | "random" | "heldout"
    recipe: dict[str, Any] | None
    responses: dict[str, dict[int, int]]  # task -> doc_id -> 0/1
    accuracy: dict[str, float]
    seconds: float | None = None


@dataclass
class CalibrationRecord:
    """A calibration: stored (with `id`), or in memory (a fitness report's fitted population)."""

    name: str
    tasks: list[str]
    spec: dict[str, Any] = field(default_factory=dict)
    id: int | None = None
    created_at: datetime | None = None
    models: list[CalibrationModelRecord] = field(default_factory=list)
    irt_params: dict[str, Any] | None = None
    fit_version: int = 0


@dataclass
class TaskSplitRecord:
    """A deterministic hold-out of one task: `report_doc_ids` are never shown to the search."""

    task: str
    n_docs: int
    report_fraction: float
    seed: int
    search_doc_ids: list[int]
    report_doc_ids: list[int]


@dataclass
class JobProgress:
    job_id: int
    status: str
    generation: int | None  # highest committed generation; None before the first commit
    done: int
    failed: int
    best: dict[str, float]  # objective -> best search-split estimate over done candidates
    elapsed_seconds: float
    candidates_per_minute: float
    # The job's latest write (a candidate, a generation, a status): a "running" job whose driver was killed
    # with SIGKILL stays "running", and only the age of this tells it from a live one.
    last_write: datetime | None = None


@dataclass
class CandidateSummary:
    """A candidate without its genome and recipe, and with the time it was recorded: what a view of
    thousands of candidates (a table, a scatter, a worker timeline) reads."""

    id: int
    job_id: int
    generation: int
    index: int
    recipe_hash: str
    status: str  # "done" | "failed"
    worker: str | None
    attempts: int
    build_seconds: float | None
    eval_seconds: float | None
    overhead_seconds: float | None
    error: str | None
    cached_from: int | None
    recorded_at: datetime
    scores: list[ScoreRecord] = field(default_factory=list)


@dataclass
class GenerationSummary:
    """A committed generation without the optimizer's state."""

    job_id: int
    generation: int
    front_candidate_ids: list[int]
    hypervolume: float | None
    committed_at: datetime


@dataclass
class CalibrationSummary:
    """A stored calibration without its responses: name, tasks, current fit and how many models of each role."""

    id: int
    name: str
    tasks: list[str]
    fit_version: int  # 0 = not fitted yet
    created_at: datetime
    models_by_role: dict[str, int] = field(default_factory=dict)
