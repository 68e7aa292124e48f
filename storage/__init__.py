"""The SQL store of jobs, candidates, scores, generations and calibrations (SQLite or PostgreSQL)."""

from storage.errors import StoreError
from storage.records import (
    CalibrationModelRecord,
    CalibrationRecord,
    CalibrationSummary,
    CandidateRecord,
    CandidateSummary,
    GenerationRecord,
    GenerationSummary,
    JobProgress,
    JobRecord,
    LeaseClaim,
    ScoreRecord,
    TaskSplitRecord,
)
from storage.retry import RetryPolicy
from storage.store import Store

__all__ = [
    "CalibrationModelRecord", "CalibrationRecord", "CalibrationSummary", "CandidateRecord", "CandidateSummary",
    "GenerationRecord", "GenerationSummary", "JobProgress", "JobRecord", "LeaseClaim", "RetryPolicy", "ScoreRecord", "Store",
    "StoreError", "TaskSplitRecord",
]
