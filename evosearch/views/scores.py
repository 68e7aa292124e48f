"""A candidate's numbers by split, as every view shows them, and the error a view's question can meet."""

from __future__ import annotations

from typing import Optional

from evosearch.errors import UsageError
from storage import CandidateRecord

SPLITS = ("search", "report")


class QueryError(UsageError, ValueError):
    """A job, candidate or objective that does not exist, or a choice that cannot be made; one line."""


def split_scores(candidate: CandidateRecord, split: str) -> dict[str, Optional[float]]:
    """objective -> the candidate's number on `split`: the search-split estimate, or the report-split score."""
    return {s.objective: s.estimated if split == "search" else s.full for s in candidate.scores if s.split == split}
