"""`evosearch run | resume | front | status`: the search verbs.

Exit codes: 0 ok, 2 usage (a bad job file, an unknown job or store), 1 a failure while running. Errors are
one line on stderr, never a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from evosearch.config_file import name_and_store
from evosearch.job import JobError, JobSpec, load_job

USAGE, FAILURE = 2, 1
_err = Console(stderr=True)


def _fail(message: str, code: int) -> None:
    _err.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _open_store(url: str, must_exist: bool):
    from storage import Store, StoreError

    if must_exist and url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        _fail(f"no store at {url.removeprefix('sqlite:///')} (pass --store URL)", USAGE)
    try:
        return Store.open(url)
    except StoreError as e:
        _fail(str(e), USAGE)


def _locate(job: str, store_url: Optional[str]):
    """(store, JobRecord) for a job given by name or by its job file."""
    from storage import StoreError

    try:
        name, url, _ = name_and_store(job, store_url, load_job, "job")
    except ValueError as e:  # JobError is one
        _fail(str(e), USAGE)
    store = _open_store(url, must_exist=True)
    try:
        return store, store.get_job(name)
    except StoreError as e:
        _fail(str(e), USAGE)


def _drive(spec: JobSpec, store, resume: bool) -> None:
    from evosearch.driver import DriverError, run_job
    from evosearch.progress import LiveProgress
    from storage import StoreError

    try:
        with LiveProgress() as view:
            summary = run_job(spec, store, resume=resume, on_event=view.update)
    except KeyboardInterrupt:
        _fail(f"interrupted; continue with `evosearch resume {spec.name}`", FAILURE)
    except (DriverError, StoreError) as e:
        _fail(str(e), FAILURE)
    except Exception as e:  # noqa: BLE001 - a worker or optimizer failure: one line, the store keeps the rest
        _fail(f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''} "
              f"(continue with `evosearch resume {spec.name}`)", FAILURE)
    typer.echo(f"{spec.name}: {summary.status} after {summary.generations} generation(s), "
               f"{summary.candidates} candidates ({summary.evaluated} evaluated this run), "
               f"front of {len(summary.front_ids)}; store {store.url_for_display}"
               + (f" ({summary.reason})" if summary.reason else ""))


def load_runnable_job(job_file: Path) -> JobSpec:
    """The job file validated, and its models checked against its space (headers only, about a second),
    before anything is stored or sent; a usage error (exit 2) otherwise."""
    from evosearch.merge.preflight import check_search_models
    from evosearch.merge.sources import SourceError

    try:
        spec = load_job(job_file)
        check_search_models(spec.source_paths, spec.search_space)
    except JobError as e:
        _fail(str(e), USAGE)
    except SourceError as e:
        _fail(f"{job_file}: {e}", USAGE)
    return spec


def run_command(job_file: Path = typer.Argument(..., help="the job YAML")) -> None:
    """Run a job on a local Ray (started if none is running), with a live progress view.

    Set RAY_ADDRESS to join a running cluster instead; to hand the job to a cluster and return, use
    `evosearch submit`.

    Examples:

      evosearch run examples/job_ps_cmaes.yaml

      RAY_ADDRESS=127.0.0.1:6379 evosearch run examples/job_dfs.yaml
    """
    from evosearch.merge.export import ExportError, output_dir

    spec = load_runnable_job(job_file)
    try:
        output_dir(spec.output_dir, force=True)  # a directory, or one that can be made; it may hold files
    except ExportError as e:
        _fail(f"{job_file}: output_dir: {e}", USAGE)
    # Nothing is made before the driver has taken the job: its default store (in output_dir) makes its folder.
    _drive(spec, _open_store(spec.store, must_exist=False), resume=False)


def resume_command(job: str = typer.Argument(..., help="job name or job file"),
                   store: Optional[str] = typer.Option(None, "--store", help="store URL (default: the job's)")) -> None:
    """Continue a stopped or killed job from its last committed generation.

    Candidates already recorded are reused, never evaluated again.

    Examples:

      evosearch resume zoo-ps-cmaes

      evosearch resume examples/job_ps_cmaes.yaml --store postgresql+psycopg://evo@db:5432/evosearch
    """
    from evosearch.driver import spec_of_job

    opened, record = _locate(job, store)
    _drive(spec_of_job(record), opened, resume=True)


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
    from evosearch.api import SPLITS, Job, QueryError
    from storage import StoreError

    if by not in SPLITS:
        _fail(f"--by must be 'search' or 'report', not {by!r}", USAGE)
    opened, record = _locate(job, store)
    query = Job(opened, record)
    try:
        rows = query.front(generation, by)
    except (QueryError, StoreError) as e:
        _fail(str(e), USAGE)
    spec = query.spec
    first = spec.objective_names[0]
    if as_json:
        typer.echo(json.dumps({"job": spec.name, "generation": generation, "ranked_by": by,
                               "objectives": dict(zip(spec.objective_names, spec.directions)), "front": rows},
                              indent=2))
        return
    table = Table(title=f"{spec.name}: front ({len(rows)}), ranked by {first} on the {by} split",
                  title_justify="left")
    for column in ("id", "gen", "#"):
        table.add_column(column, justify="right")
    for name in spec.objective_names:
        table.add_column(f"{name} (search)", justify="right")
        if name in {o.objective for o in spec.task_objectives}:
            table.add_column(f"{name} (report)", justify="right")
    task_names = {o.objective for o in spec.task_objectives}
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
    from evosearch.progress import status_rows, status_table

    if address is not None:
        from evosearch.submit_cli import print_cluster_status

        if job is None:
            _fail("--address needs a job (name or job file)", USAGE)
        print_cluster_status(job, address, store, as_json)
        return
    if job is not None:
        opened, record = _locate(job, store)
        rows = [(record, opened.progress(record.id))]
    else:
        stores = [_open_store(store, must_exist=True)] if store else [
            _open_store(f"sqlite:///{p.resolve()}", must_exist=True) for p in sorted(Path("runs").glob("*/evosearch.db"))]
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
