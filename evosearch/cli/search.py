"""`evosearch run | resume | front | status`: the search verbs."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from evosearch.cli.common import load_runnable_job, locate_job, open_store, verb
from evosearch.config_file import SQLITE_PREFIX
from evosearch.errors import RunFailure, UsageError, one_line


def _drive(spec, store, resume: bool, force: bool = False) -> None:
    from evosearch.search.driver import DriverError, run_job  # start-up time: Ray, torch, lm-eval
    from evosearch.search.lease import LeaseHeld, LeaseLost
    from evosearch.views.progress import LiveProgress
    from storage import StoreError

    # `evosearch stop` (Ray) and a supervisor's stop send SIGTERM: end as Ctrl-C does, marking the job
    # stopped and releasing its lease, so that it can be resumed at once.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with LiveProgress() as view:
            summary = run_job(spec, store, resume=resume, on_event=view.update, force=force,
                              on_notice=lambda notice: typer.echo(f"warning: {notice}", err=True),
                              on_info=typer.echo)
    except KeyboardInterrupt:
        raise RunFailure(f"interrupted; continue with `evosearch resume {spec.name}`") from None
    except (DriverError, StoreError, LeaseHeld, LeaseLost, UsageError):  # UsageError: the preflight's verdict
        raise
    except Exception as e:  # noqa: BLE001 - a worker or optimizer failure: the store keeps the rest
        raise RunFailure(f"{one_line(e)} (continue with `evosearch resume {spec.name}`)") from None
    typer.echo(f"{spec.name}: {summary.status} after {summary.generations} generation(s), "
               f"{summary.candidates} candidates ({summary.evaluated} evaluated this run), "
               f"front of {len(summary.front_ids)}; store {store.url_for_display}"
               + (f" ({summary.reason})" if summary.reason else ""))


@verb
def run_command(job_file: Path = typer.Argument(..., help="the job YAML")) -> None:
    """Run a job on a local Ray of its own (never one that happens to run on the machine), with a live
    progress view.

    Set RAY_ADDRESS to join a running cluster instead (RAY_ADDRESS=auto: the machine's `ray start`
    cluster); to hand the job to a cluster and return, use `evosearch submit`.

    Examples:

      evosearch run examples/job_ps_cmaes.yaml

      RAY_ADDRESS=127.0.0.1:6379 evosearch run examples/job_dfs.yaml
    """
    from evosearch.merge.export import ExportError, output_dir  # start-up time

    spec = load_runnable_job(job_file)
    try:
        output_dir(spec.output_dir, force=True)  # a directory, or one that can be made; it may hold files
    except ExportError as e:
        raise UsageError(f"{job_file}: output_dir: {e}") from None
    # Nothing is made before the driver has taken the job: its default store (in output_dir) makes its folder.
    _drive(spec, open_store(spec.store, must_exist=False), resume=False)


@verb
def resume_command(job: str = typer.Argument(..., help="job name or job file"),
                   store: Optional[str] = typer.Option(None, "--store", help="store URL (default: the job's)"),
                   force: bool = typer.Option(False, "--force", help="take the job even while another driver's "
                                              "lease on it is live (that driver, if alive, stops at its next "
                                              "renewal; what it was evaluating is evaluated again)")) -> None:
    """Continue a stopped or killed job from its last committed generation.

    Candidates already recorded are reused, never evaluated again. A job whose driver still holds its
    lease (renewed every few seconds; `status` says `dead` once it has expired) is refused (exit 3)
    unless --force.

    Examples:

      evosearch resume zoo-ps-cmaes

      evosearch resume examples/job_ps_cmaes.yaml --store postgresql+psycopg://evo@db:5432/evosearch
    """
    from evosearch.search.job import spec_of_job  # start-up time

    opened, record = locate_job(job, store)
    _drive(spec_of_job(record), opened, resume=True, force=force)


@verb
def front_command(job: str = typer.Argument(..., help="job name or job file"),
                  as_json: bool = typer.Option(False, "--json", help="print JSON"),
                  generation: Optional[int] = typer.Option(None, "--generation", help="default: the last"),
                  by: str = typer.Option("search", "--by", help="rank by the search or the report split"),
                  store: Optional[str] = typer.Option(None, "--store", help="store URL (default: the job's)")) -> None:
    """The Pareto front of a job, with search-split and report-split scores side by side.

    Examples:

      evosearch front zoo-ps-cmaes --by report

      evosearch front zoo-dfs-nsga2 --generation 3 --json
    """
    from evosearch.api import Job  # start-up time
    from evosearch.views.scores import SPLITS, measured_by
    from storage import StoreError

    if by not in SPLITS:
        raise UsageError(f"--by must be 'search' or 'report', not {by!r}")
    query = Job(*locate_job(job, store))
    try:
        rows = query.front(generation, by)
    except StoreError as e:  # a store that fails here failed on the user's --generation or --store
        raise UsageError(str(e)) from None
    spec = query.spec
    first = spec.objective_names[0]
    if as_json:
        typer.echo(json.dumps({"job": spec.name, "generation": generation, "ranked_by": by,
                               "objectives": dict(zip(spec.objective_names, spec.directions)),
                               "measured_by": {o.objective: measured_by(o) for o in spec.objectives}, "front": rows},
                              indent=2))
        return
    table = Table(title=f"{spec.name}: front ({len(rows)}), ranked by {first} on the {by} split",
                  title_justify="left")
    for column in ("id", "gen", "#"):
        table.add_column(column, justify="right")
    task_names = {o.objective for o in spec.task_objectives}
    for objective in spec.objectives:
        name = objective.objective
        by = "" if name not in task_names else f" {measured_by(objective)}"
        table.add_column(f"{name}{by} (search)", justify="right")
        if name in task_names:
            table.add_column(f"{name}{by} (report)", justify="right")
    for row in rows:
        cells = [str(row["id"]), str(row["generation"]), str(row["index"])]
        for name in spec.objective_names:
            cells.append(_fmt(row["search"].get(name)))
            if name in task_names:
                cells.append(_fmt(row["report"].get(name)))
        table.add_row(*cells)
    Console().print(table)


def _fmt(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.4f}"


@verb
def status_command(job: Optional[str] = typer.Argument(None, help="job name or job file (default: every job)"),
                   store: Optional[str] = typer.Option(None, "--store", help="store URL (default: runs/*/)"),
                   address: Optional[str] = typer.Option(None, "--address", help="a Ray head's dashboard "
                                                         "(http://HEAD:8265): show the submitted job's Ray state too"),
                   as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Progress of one job, or of every job in the store (or under runs/); with --address, the Ray state of
    a job submitted with `evosearch submit` as well.

    Examples:

      evosearch status

      evosearch status zoo-ps-cmaes --address http://127.0.0.1:8265

      evosearch status --json
    """
    from evosearch.views.progress import status_rows, status_table  # start-up time

    if address is not None:
        from evosearch.cli.cluster import print_cluster_status  # start-up time: Ray's job client

        if job is None:
            raise UsageError("--address needs a job (name or job file)")
        print_cluster_status(job, address, store, as_json)
        return
    if job is not None:
        opened, record = locate_job(job, store)
        rows = [(record, opened.progress(record.id))]
    else:
        stores = [open_store(store, must_exist=True)] if store else [
            open_store(f"{SQLITE_PREFIX}{p.resolve()}", must_exist=True)
            for p in sorted(Path("runs").glob("*/evosearch.db"))]
        rows = [(r, s.progress(r.id)) for s in stores for r in s.list_jobs()]
        if not rows and not as_json:
            typer.echo("no jobs (pass --store URL, or run from the directory holding runs/)")
            return
    if as_json:
        typer.echo(json.dumps(status_rows(rows), indent=2))
    else:
        Console().print(status_table(rows))


def register(app: typer.Typer) -> None:
    app.command("run")(run_command)
    app.command("resume")(resume_command)
    app.command("front")(front_command)
    app.command("status")(status_command)
