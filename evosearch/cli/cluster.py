"""`evosearch submit | logs | stop`, and the cluster half of `evosearch status JOB --address`.

A bad job file is a usage error found before any network call; an unreachable cluster, a refused token or
no such submission is a failure (`evosearch.search.submit.SubmitError`)."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from evosearch.cli.common import load_job_file, load_runnable_job, verb
from evosearch.config_file import SQLITE_PREFIX
from evosearch.errors import UsageError

ADDRESS_HELP = "the Ray dashboard of the head, e.g. http://HEAD:8265 (default: $RAY_ADDRESS)"


def _address(address: Optional[str]) -> str:
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise UsageError("no cluster address: pass --address http://HEAD:8265 or set RAY_ADDRESS")
    return address


def _job_name(job: str) -> str:
    """A job given by its file is named by the file (validated); otherwise it is a name or submission id."""
    if job.endswith((".yaml", ".yml")) or Path(job).is_file():
        return load_job_file(job).name
    return job


def _find(job: str, address: Optional[str]):
    from evosearch.search import submit as cluster  # start-up time: Ray's job client

    name = _job_name(job)
    ray_client = cluster.client(_address(address))
    return ray_client, cluster.find(ray_client, name)


@verb
def submit_command(
        job_file: Path = typer.Argument(..., help="the job YAML"),
        address: Optional[str] = typer.Option(None, "--address", help=ADDRESS_HELP),
        resume: bool = typer.Option(False, "--resume", help="continue the stored job of this name "
                                                           "(after `evosearch stop`) instead of starting it"),
        max_restarts: int = typer.Option(0, "--max-restarts", min=0, help="resume the driver after a crash up to "
                                         "N times (each restart is recorded in the store)")) -> None:
    """Submit a job to a Ray cluster through the Ray Jobs API; prints the submission id and returns.

    The job file and its local task YAML directories travel with the job; model directories must exist at
    the same paths on the cluster. Use a PostgreSQL store URL for a remote cluster: a SQLite path is opened
    on the head node.

    With --max-restarts N the driver runs under a supervisor that resumes it when it crashes (killed,
    out of memory, a store outage it could not outlast), up to N times.

    Example: evosearch submit examples/job_ps_cmaes.yaml --address http://127.0.0.1:8265 --max-restarts 3
    """
    # Checked here, not on the cluster: a misfit found there would be one more failed submission to read.
    spec = load_runnable_job(job_file)
    from evosearch.search import submit as cluster  # start-up time

    typer.echo(cluster.submit(spec, job_file, _address(address), resume=resume, max_restarts=max_restarts))


@verb
def supervise_command(job_file: Path = typer.Argument(..., help="the job YAML"),
                      max_restarts: int = typer.Option(..., "--max-restarts", min=0),
                      resume: bool = typer.Option(False, "--resume")) -> None:
    """The entrypoint of `evosearch submit --max-restarts N` on the cluster: runs the driver and resumes it
    after a crash, up to N times.

    Example (what the cluster runs): evosearch supervise evosearch_job.yaml --max-restarts 3
    """
    from evosearch.search.supervisor import SupervisedJob, supervise  # start-up time

    spec = load_job_file(job_file)
    code = supervise(SupervisedJob(job_file=job_file, job_name=spec.name, store_url=spec.store,
                                   max_restarts=max_restarts, resume=resume))
    if code != 0:
        raise typer.Exit(code if code > 0 else 1)


@verb
def logs_command(job: str = typer.Argument(..., help="job name, job file or submission id"),
                 address: Optional[str] = typer.Option(None, "--address", help=ADDRESS_HELP),
                 follow: bool = typer.Option(False, "--follow", "-f", help="keep printing until the job ends")) -> None:
    """The log of a job's latest submission.

    Example: evosearch logs my-job --address http://127.0.0.1:8265 --follow
    """
    from evosearch.search import submit as cluster  # start-up time

    ray_client, found = _find(job, address)
    if follow:
        for chunk in cluster.follow_logs(ray_client, found.submission_id):
            typer.echo(chunk, nl=False)
    else:
        typer.echo(cluster.logs(ray_client, found.submission_id), nl=False)


@verb
def stop_command(job: str = typer.Argument(..., help="job name, job file or submission id"),
                 address: Optional[str] = typer.Option(None, "--address", help=ADDRESS_HELP)) -> None:
    """Stop a job's latest submission; its store keeps every committed generation.

    Example: evosearch stop my-job --address http://127.0.0.1:8265
    (continue later with: evosearch submit my-job.yaml --address ... --resume)
    """
    from evosearch.search import submit as cluster  # start-up time

    ray_client, found = _find(job, address)
    if found.status in cluster.TERMINAL_STATES:
        typer.echo(f"{found.submission_id}: already {found.status}")
        return
    state = cluster.stop(ray_client, found.submission_id)
    if state not in cluster.TERMINAL_STATES:
        raise cluster.SubmitError(f"{found.submission_id}: still {state} after the stop request")
    typer.echo(f"{found.submission_id}: {state}; continue it with `evosearch submit <job file> --address "
               f"{_address(address)} --resume`")


def _when(ms: Optional[int]) -> str:
    return "-" if not ms else dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def print_cluster_status(job: str, address: Optional[str], store_url: Optional[str], as_json: bool = False) -> None:
    """`status JOB --address`: the Ray state of the job's latest submission, then the store's progress
    when the store can be opened from here (a SQLite store lives on the head)."""
    from evosearch.views.progress import status_rows, status_table  # start-up time

    _, found = _find(job, address)
    cluster_row = {"submission": found.submission_id, "ray_state": found.status, "started": _when(found.start_time),
                   "ended": _when(found.end_time), "message": found.message.splitlines()[0] if found.message else ""}
    progress, why_not = _store_progress(job, found.job_name, store_url)
    if as_json:
        typer.echo(json.dumps({"cluster": cluster_row, "progress": None if progress is None else status_rows(progress)[0],
                               "progress_error": why_not}, indent=2))
        return
    table = Table(title=f"{found.job_name} on the cluster", title_justify="left")
    for column in ("submission", "ray state", "started", "ended", "message"):
        table.add_column(column)
    table.add_row(*cluster_row.values())
    console = Console()
    console.print(table)
    if progress is None:
        console.print(f"progress: {why_not}", markup=False, highlight=False)
    else:
        console.print(status_table(progress))


def _store_progress(job: str, job_name: str, store_url: Optional[str]) -> tuple[Optional[list], Optional[str]]:
    """([(JobRecord, JobProgress)], None) from the job's store, or (None, why) when it cannot be read here."""
    from storage import Store, StoreError  # start-up time

    is_file = job.endswith((".yaml", ".yml")) or Path(job).is_file()
    url = store_url or (load_job_file(job).store if is_file else None)
    if url is None:
        default = Path("runs") / job_name / "evosearch.db"
        url = f"{SQLITE_PREFIX}{default.resolve()}" if default.is_file() else None
    if url is None or (url.startswith(SQLITE_PREFIX) and not Path(url.removeprefix(SQLITE_PREFIX)).is_file()):
        return None, "the store is not reachable from here (pass --store URL or the job file)"
    try:
        store = Store.open(url)
        record = store.get_job(job_name)
        return [(record, store.progress(record.id))], None
    except StoreError as e:
        return None, str(e)


def register(app: typer.Typer) -> None:
    app.command("submit")(submit_command)
    app.command("logs")(logs_command)
    app.command("stop")(stop_command)
    app.command("supervise", hidden=True)(supervise_command)
