"""A candidate's numbers by split, as every view shows them, and the error a view's question can meet."""

from __future__ import annotations

from typing import Optional

from evosearch.errors import UsageError
from evosearch.search.job import TaskObjective
from storage import CandidateRecord

SPLITS = ("search", "report")


class QueryError(UsageError, ValueError):
    """A job, candidate or objective that does not exist, or a choice that cannot be made; one line."""


def split_scores(candidate: CandidateRecord, split: str) -> dict[str, Optional[float]]:
    """objective -> the candidate's number on `split`: the search-split estimate, or the report-split score."""
    return {s.objective: s.estimated if split == "search" else s.full for s in candidate.scores if s.split == split}


def measured_by(objective) -> str:
    """`metric/filter` of a task objective (jobs stored before objectives named them were scored by lm-eval's
    `acc` under its `none` filter); `cost` for a cost read off the recipe."""
    if not isinstance(objective, TaskObjective):
        return "cost"
    return f"{objective.metric or 'acc'}/{objective.filter or 'none'}"
