"""Terminal views of a search: the live view of `evosearch run` and the tables of `status` and `front`."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Optional

from rich.console import Console
from rich.live import Live
from rich.table import Table

from evosearch.search.events import RunEvent


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _best(best: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.4g}" for name, value in best.items()) or "-"


def event_table(event: RunEvent) -> Table:
    table = Table(title=f"evosearch · {event.job}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    per_minute = event.evaluated * 60.0 / event.elapsed_seconds if event.elapsed_seconds > 0 else 0.0
    table.add_row("generation", f"{event.generation + 1} / {event.max_generations} ({event.phase})")
    table.add_row("candidates", f"{event.done} done · {event.failed} failed · {event.running} running · "
                                f"{event.cached} from cache")
    table.add_row("best (search split)", _best(event.best))
    table.add_row("front", f"{event.front_size} candidate(s)")
    table.add_row("elapsed", _duration(event.elapsed_seconds))
    table.add_row("throughput", f"{per_minute:.1f} evaluated / min")
    return table


class LiveProgress:
    """`with LiveProgress() as view: run_job(..., on_event=view.update)`; quiet when stdout is no terminal."""

    def __init__(self, console: Optional[Console] = None):
        self.console = console or Console()
        self._live: Optional[Live] = None
        self.last: Optional[RunEvent] = None

    def __enter__(self) -> "LiveProgress":
        if self.console.is_terminal:
            self._live = Live(console=self.console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def update(self, event: RunEvent) -> None:
        self.last = event
        if self._live is not None:
            self._live.update(event_table(event))

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)
        elif self.last is not None:
            self.console.print(event_table(self.last))


def _seconds_since(when: Optional[datetime]) -> Optional[float]:
    return None if when is None else max(0.0, (datetime.now(timezone.utc) - when).total_seconds())


def status_rows(jobs_progress: list[tuple]) -> list[dict]:
    """One record per (JobRecord, JobProgress): what `status --json` prints and the table shows. A running
    job whose driver lease has expired is `dead` (its driver was killed: `evosearch resume` continues it)."""
    now = datetime.now(timezone.utc)
    rows = []
    for job, progress in jobs_progress:
        dead = job.driver_dead(now) if job.status == progress.status else None
        rows.append({"job": job.name, "status": "dead" if dead else progress.status, "message": job.message,
                     "generation": progress.generation, "done": progress.done, "failed": progress.failed,
                     "best_search": dict(progress.best), "elapsed_seconds": progress.elapsed_seconds,
                     "candidates_per_minute": progress.candidates_per_minute,
                     "seconds_since_last_write": _seconds_since(progress.last_write),
                     "driver": job.lease_owner, "driver_dead": dead,
                     "lease_seconds_left": None if job.lease_expires_at is None else
                     (job.lease_expires_at - now).total_seconds(), "restarts": job.restarts})
    return rows


def _status_cell(row: dict) -> str:
    """`running` alone says nothing of a driver killed with SIGKILL: its lease does, or, for a job of an
    older store without one, the age of its last write."""
    quiet = row["seconds_since_last_write"]
    if row["status"] == "dead":
        return f"dead (driver {row['driver']} gone; last write {_duration(quiet or 0)} ago)"
    if row["status"] != "running" or quiet is None:
        return row["status"]
    if row["driver_dead"] is False:
        return f"running (driver {row['driver']}, last write {_duration(quiet)} ago)"
    return f"running (last write {_duration(quiet)} ago)"


def status_table(jobs_progress: list[tuple]) -> Table:
    """One row per (JobRecord, JobProgress)."""
    table = Table(title="evosearch jobs", title_justify="left")
    for column in ("job", "status", "generation", "done", "failed", "best (search split)", "elapsed", "per min"):
        table.add_column(column)
    for row in status_rows(jobs_progress):
        table.add_row(row["job"], _status_cell(row), "-" if row["generation"] is None else str(row["generation"]),
                      str(row["done"]), str(row["failed"]), _best(row["best_search"]),
                      _duration(row["elapsed_seconds"]), f"{row['candidates_per_minute']:.1f}")
    return table
