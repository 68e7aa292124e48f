"""`evosearch export | plot`: a job's chosen model as an HF directory with its card, and its fronts as a PNG.

Exit codes: 0 ok, 2 usage (unknown job, candidate or objective, a non-empty OUT), 1 a failure while building,
verifying or drawing. Errors are one line on stderr.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from evosearch.run_cli import FAILURE, USAGE, _fail, _locate


def _job(job: str, store: Optional[str]):
    from evosearch.api import Job

    return Job(*_locate(job, store))


def export_command(
    job: str = typer.Argument(..., help="job name or job file"),
    out: Path = typer.Argument(..., help="output directory (must be empty unless --force)"),
    candidate: Optional[int] = typer.Option(None, "--candidate", help="export this candidate id"),
    best: Optional[str] = typer.Option(None, "--best", help="the best on this objective: on the held-out report "
                                                            "split where scored, else on the search split"),
    knee: bool = typer.Option(False, "--knee", help="the knee of the last front"),
    store: Optional[str] = typer.Option(None, "--store", help="store URL (default: the job's)"),
    force: bool = typer.Option(False, "--force", help="replace a non-empty OUT"),
    verify: bool = typer.Option(False, "--verify", help="re-measure the export on the report split with lm-eval"),
) -> None:
    """Rebuild a job's candidate from its stored recipe into an HF directory with recipe, mergekit YAML (PS)
    and a model card of its search-split and report-split scores. Default: --best on the first objective.

    Examples: `evosearch export zoo-ps out/best`, `evosearch export zoo-dfs out/knee --knee`,
    `evosearch export zoo-ps out/c12 --candidate 12 --verify`.
    """
    from evosearch.api import QueryError
    from evosearch.merge.export import ExportError, output_dir

    if sum((candidate is not None, best is not None, knee)) > 1:
        _fail("give at most one of --candidate, --best and --knee", USAGE)
    try:
        out = output_dir(out, force)
    except ExportError as e:
        _fail(str(e), USAGE)
    chosen = _job(job, store)
    try:
        choice = chosen.choose(candidate, best, knee)
    except QueryError as e:
        _fail(str(e), USAGE)
    try:
        chosen.export_choice(choice, out, force=force, verify=verify)
    except (QueryError, ExportError) as e:
        _fail(str(e), FAILURE)
    except Exception as e:  # noqa: BLE001 - a source, merge or lm-eval failure: one line
        text = str(e).strip().splitlines()
        _fail(f"{type(e).__name__}: {text[0] if text else ''}", FAILURE)
    typer.echo(f"{chosen.name}: candidate {choice.candidate.id} ({choice.rule}) exported to {out}")


def plot_command(
    job: str = typer.Argument(..., help="job name or job file"),
    out: Path = typer.Argument(..., help="the PNG to write"),
    store: Optional[str] = typer.Option(None, "--store", help="store URL (default: the job's)"),
) -> None:
    """The front of every generation (2 objectives: scatter and front line; 1: best so far; more: parallel
    coordinates) and the convergence of the best per objective, search split beside report split.

    Example: `evosearch plot zoo-ps runs/zoo-ps/front.png`.
    """
    from evosearch.api import QueryError
    from evosearch.merge.export import ExportError, check_creatable

    try:
        check_creatable(out.absolute())
    except ExportError as e:
        _fail(str(e), USAGE)
    chosen = _job(job, store)
    try:
        chosen.plot(out)
    except QueryError as e:
        _fail(str(e), USAGE)
    except OSError as e:
        _fail(f"cannot write {out}: {e.strerror}", FAILURE)
    typer.echo(f"{chosen.name}: plot written to {out}")


def register(app: typer.Typer) -> None:
    app.command("export")(export_command)
    app.command("plot")(plot_command)
