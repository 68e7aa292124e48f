"""`evosearch submit | logs | stop`, and the cluster half of `evosearch status JOB --address`.

Exit codes as for the other verbs: 0 ok, 2 usage (a bad job file, checked before any network call),
1 a failure (cluster unreachable, authentication refused, no such submission). Errors are one line.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from evosearch import submit as cluster
from evosearch.job import JobError, load_job
from evosearch.run_cli import FAILURE, USAGE, _fail, load_runnable_job

ADDRESS_HELP = "the Ray dashboard of the head, e.g. http://HEAD:8265 (default: $RAY_ADDRESS)"


def _address(address: Optional[str]) -> str:
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        _fail("no cluster address: pass --address http://HEAD:8265 or set RAY_ADDRESS", USAGE)
    return address


def _job_name(job: str) -> str:
    """A job given by its file is named by the file (validated); otherwise it is a name or submission id."""
    if job.endswith((".yaml", ".yml")) or Path(job).is_file():
        try:
            return load_job(job).name
        except JobError as e:
            _fail(str(e), USAGE)
    return job


def _find(job: str, address: Optional[str]):
    name = _job_name(job)
    try:
        ray_client = cluster.client(_address(address))
        return ray_client, cluster.find(ray_client, name)
    except cluster.SubmitError as e:
        _fail(str(e), FAILURE)


def submit_command(
        job_file: Path = typer.Argument(..., help="the job YAML"),
        address: Optional[str] = typer.Option(None, "--address", help=ADDRESS_HELP),
        resume: bool = typer.Option(False, "--resume", help="continue the stored job of this name "
                                                           "(after `evosearch stop`) instead of starting it")) -> None:
    """Submit a job to a Ray cluster through the Ray Jobs API; prints the submission id and returns.

    The job file and its local task YAML directories travel with the job; model directories must exist at
    the same paths on the cluster. Use a PostgreSQL store URL for a remote cluster: a SQLite path is opened
    on the head node.

    Example: evosearch submit examples/job_ps_cmaes.yaml --address http://127.0.0.1:8265
    """
    # Checked here, not on the cluster: a misfit found there would be one more failed submission to read.
    spec = load_runnable_job(job_file)
    address = _address(address)
    try:
        submission_id = cluster.submit(spec, job_file, address, resume=resume)
    except cluster.SubmitError as e:
        _fail(str(e), FAILURE)
    typer.echo(submission_id)


def logs_command(job: str = typer.Argument(..., help="job name, job file or submission id"),
                 address: Optional[str] = typer.Option(None, "--address", help=ADDRESS_HELP),
                 follow: bool = typer.Option(False, "--follow", "-f", help="keep printing until the job ends")) -> None:
    """The log of a job's latest submission.

    Example: evosearch logs my-job --address http://127.0.0.1:8265 --follow
    """
    ray_client, found = _find(job, address)
    try:
        if follow:
            for chunk in cluster.follow_logs(ray_client, found.submission_id):
                typer.echo(chunk, nl=False)
        else:
            typer.echo(cluster.logs(ray_client, found.submission_id), nl=False)
    except cluster.SubmitError as e:
        _fail(str(e), FAILURE)


def stop_command(job: str = typer.Argument(..., help="job name, job file or submission id"),
                 address: Optional[str] = typer.Option(None, "--address", help=ADDRESS_HELP)) -> None:
    """Stop a job's latest submission; its store keeps every committed generation.

    Example: evosearch stop my-job --address http://127.0.0.1:8265
    (continue later with: evosearch submit my-job.yaml --address ... --resume)
    """
    ray_client, found = _find(job, address)
    if found.status in cluster.TERMINAL_STATES:
        typer.echo(f"{found.submission_id}: already {found.status}")
        return
    try:
        state = cluster.stop(ray_client, found.submission_id)
    except cluster.SubmitError as e:
        _fail(str(e), FAILURE)
    if state not in cluster.TERMINAL_STATES:
        _fail(f"{found.submission_id}: still {state} after the stop request", FAILURE)
    typer.echo(f"{found.submission_id}: {state}; continue it with `evosearch submit <job file> --address "
               f"{_address(address)} --resume`")


def _when(ms: Optional[int]) -> str:
    return "-" if not ms else dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def print_cluster_status(job: str, address: Optional[str], store_url: Optional[str], as_json: bool = False) -> None:
    """`status JOB --address`: the Ray state of the job's latest submission, then the store's progress
    when the store can be opened from here (a SQLite store lives on the head)."""
    from evosearch.progress import status_rows, status_table

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
    from storage import Store, StoreError

    is_file = job.endswith((".yaml", ".yml")) or Path(job).is_file()
    url = store_url or (load_job(job).store if is_file else None)
    if url is None:
        default = Path("runs") / job_name / "evosearch.db"
        url = f"sqlite:///{default.resolve()}" if default.is_file() else None
    if url is None or (url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file()):
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
