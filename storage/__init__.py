"""The SQL store of jobs, candidates, scores, generations and calibrations (SQLite or PostgreSQL)."""

from storage.errors import StoreError
from storage.records import (
    CalibrationModelRecord,
    CalibrationRecord,
    CandidateRecord,
    GenerationRecord,
    JobProgress,
    JobRecord,
    ScoreRecord,
    TaskSplitRecord,
)
from storage.retry import RetryPolicy
from storage.store import Store

__all__ = [
    "CalibrationModelRecord", "CalibrationRecord", "CandidateRecord", "GenerationRecord", "JobProgress",
    "JobRecord", "RetryPolicy", "ScoreRecord", "Store", "StoreError", "TaskSplitRecord",
]
