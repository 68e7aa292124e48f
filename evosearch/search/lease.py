"""The driver lease: while a driver runs a job it holds the job's lease in the store and renews it from a
background thread every few seconds (the way Optuna's heartbeat marks stale trials). A driver killed with
SIGKILL stops renewing, the lease expires, and `status` and the dashboard call the job `dead`; `resume`
takes the lease only once it has expired (or with `--force`), so two drivers never run one job unknowingly.
A driver whose lease was taken over (a forced resume elsewhere) stops before its next write.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Optional

from evosearch.errors import RunFailure, UsageError
from storage import JobRecord, Store, StoreError

log = logging.getLogger(__name__)

LEASE_SECONDS_ENV = "EVOSEARCH_LEASE_SECONDS"
# Set by the supervisor of `evosearch submit --max-restarts`: its restarted drivers re-take their own lease.
LEASE_OWNER_ENV = "EVOSEARCH_LEASE_OWNER"
LEASE_EXIT = 3  # another driver holds the job, or took it over: a supervisor must not restart this one


class LeaseHeld(RunFailure):
    """The job's lease is live and another driver's."""

    exit_code = LEASE_EXIT


class LeaseLost(RunFailure):
    """This driver's lease was taken over by another driver."""

    exit_code = LEASE_EXIT


@dataclass(frozen=True)
class LeaseSettings:
    """A lease lasts `seconds` and is renewed every `seconds / renewals_per_lease`, so a few renewals can
    fail (a store restarting) before it expires."""

    seconds: float = 30.0
    renewals_per_lease: int = 6

    @property
    def renew_every(self) -> float:
        return self.seconds / self.renewals_per_lease

    @classmethod
    def from_env(cls) -> LeaseSettings:
        raw = os.environ.get(LEASE_SECONDS_ENV)
        if raw is None:
            return cls()
        try:
            seconds = float(raw)
        except ValueError:
            seconds = -1.0
        if not seconds > 0 or seconds == float("inf"):
            raise UsageError(f"{LEASE_SECONDS_ENV}={raw!r} is not a positive number of seconds")
        return cls(seconds=seconds)


def driver_identity() -> str:
    """host:pid:nonce, or the supervisor's name for its drivers."""
    return os.environ.get(LEASE_OWNER_ENV) or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _ago_or_in(when: Optional[datetime]) -> str:
    if when is None:
        return "never"
    seconds = (when - datetime.now(timezone.utc)).total_seconds()
    return f"for {seconds:.0f} s more" if seconds >= 0 else f"expired {-seconds:.0f} s ago"


class DriverLease:
    """One driver's hold on one job: `take`, then `kept()` around the run; `check()` before each write."""

    def __init__(self, store: Store, job: JobRecord, settings: LeaseSettings = LeaseSettings(),
                 owner: Optional[str] = None):
        self.store, self.job, self.settings = store, job, settings
        self.owner = owner or driver_identity()
        self._stop = threading.Event()
        self._lost_to: Optional[str] = None
        self._thread: Optional[threading.Thread] = None

    def take(self, force: bool = False) -> Optional[str]:
        """Take the lease; LeaseHeld (one line) when another driver's is live. Returns a warning to show
        when `force` took a live lease from another driver."""
        claim = self.store.take_lease(self.job.id, self.owner, self.settings.seconds, force=force)
        if not claim.taken:
            raise LeaseHeld(f"job {self.job.name!r} is being run by driver {claim.owner} (its lease is live "
                            f"{_ago_or_in(claim.expires_at)}); resume it once that lease has expired, or pass "
                            "--force if that driver is surely gone")
        live_before = (claim.previous_owner not in (None, self.owner) and claim.previous_expires_at is not None
                       and claim.previous_expires_at > datetime.now(timezone.utc))
        if force and live_before:
            return (f"took job {self.job.name!r} over from driver {claim.previous_owner}, whose lease was live "
                    f"{_ago_or_in(claim.previous_expires_at)}: if it still runs, it stops within "
                    f"{self.settings.renew_every:.0f} s, and the candidates it was evaluating are evaluated again")
        return None

    def check(self) -> None:
        """LeaseLost once another driver has taken the job over."""
        if self._lost_to is not None:
            raise LeaseLost(f"job {self.job.name!r} was taken over by driver {self._lost_to}; this driver stops "
                            "without writing more")

    def _renew_until_stopped(self) -> None:
        while not self._stop.wait(self.settings.renew_every):
            try:
                if self.store.renew_lease(self.job.id, self.owner, self.settings.seconds):
                    continue
                self._lost_to = self.store.get_job(self.job.id).lease_owner or "unknown"
                log.warning("job %s: lease taken over by %s", self.job.name, self._lost_to)
                return
            except StoreError as e:  # the store is down: keep trying; the lease may expire meanwhile
                log.warning("job %s: renewing the lease failed: %s", self.job.name, e)

    def start(self) -> None:
        # An in-memory store has one connection for every thread and no other process can see it: the
        # lease taken at the start is all it needs.
        if self.store.in_memory:
            return
        self._thread = threading.Thread(target=self._renew_until_stopped, name=f"lease-{self.job.name}",
                                        daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._lost_to is None:
            self.store.release_lease(self.job.id, self.owner)
