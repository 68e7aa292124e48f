"""Whether a running job's driver looks dead, from what the store says today.

A driver killed with SIGKILL cannot mark its job stopped, so its job stays `running`. Its lease tells:
once the lease has expired the driver is dead. A job of an older store has no lease; for it, only the age
of its last write tells. This module is the one place that rule lives.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Optional, Sequence


@dataclass(frozen=True)
class LivenessRule:
    """Dead when the last write is older than `candidate_times` typical candidates, and never sooner than
    `floor_seconds`: workers loading their sources before the first candidate, or scoring the front in
    full on the report split (which writes nothing until each candidate is done), stay quiet for a while."""

    floor_seconds: float = 600.0
    candidate_times: float = 20.0

    def quiet_limit(self, typical_candidate_seconds: Optional[float]) -> float:
        return max(self.floor_seconds, self.candidate_times * (typical_candidate_seconds or 0.0))


RULE = LivenessRule()


def typical_candidate_seconds(worker_seconds: Sequence[float]) -> Optional[float]:
    """The median time of the job's candidates (build + evaluation + overhead), None before the first."""
    return statistics.median(worker_seconds) if worker_seconds else None


def driver_seems_dead(status: str, seconds_since_last_write: Optional[float],
                      typical_seconds: Optional[float], rule: LivenessRule = RULE,
                      lease_expired: Optional[bool] = None) -> bool:
    """True for a `running` job whose lease has expired (`lease_expired`, None for a job without one:
    then, that has written nothing for longer than the rule allows)."""
    if lease_expired is not None:
        return lease_expired and status in ("running", "dead")
    if status != "running" or seconds_since_last_write is None:
        return False
    return seconds_since_last_write > rule.quiet_limit(typical_seconds)
