"""`evosearch export | plot`: a job's chosen model as an HF directory with its card, and its fronts as a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from evosearch.cli.common import locate_job, verb
from evosearch.errors import RunFailure


@verb
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
    from evosearch.api import Job, QueryError  # start-up time: torch, transformers, lm-eval
    from evosearch.merge.export import output_dir

    if sum((candidate is not None, best is not None, knee)) > 1:
        raise QueryError("give at most one of --candidate, --best and --knee")
    out = output_dir(out, force)
    chosen = Job(*locate_job(job, store))
    choice = chosen.choose(candidate, best, knee)
    chosen.export_choice(choice, out, force=force, verify=verify)
    typer.echo(f"{chosen.name}: candidate {choice.candidate.id} ({choice.rule}) exported to {out}")


@verb
def plot_command(
    job: str = typer.Argument(..., help="job name or job file"),
    out: Path = typer.Argument(..., help="the PNG to write"),
    store: Optional[str] = typer.Option(None, "--store", help="store URL (default: the job's)"),
) -> None:
    """The front of every generation (2 objectives: scatter and front line; 1: best so far; more: parallel
    coordinates) and the convergence of the best per objective, search split beside report split.

    Example: `evosearch plot zoo-ps runs/zoo-ps/front.png`.
    """
    from evosearch.api import Job  # start-up time: matplotlib
    from evosearch.merge.export import check_creatable

    check_creatable(out.absolute())
    chosen = Job(*locate_job(job, store))
    try:
        chosen.plot(out)
    except OSError as e:
        raise RunFailure(f"cannot write {out}: {e.strerror}") from None
    typer.echo(f"{chosen.name}: plot written to {out}")


def register(app: typer.Typer) -> None:
    app.command("export")(export_command)
    app.command("plot")(plot_command)
