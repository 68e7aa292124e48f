"""`evosearch calibrate` and `evosearch fitness report`: the calibration run and its honest error figures."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from evosearch.cli.common import err_console, open_store, verb
from evosearch.config_file import name_and_store
from evosearch.errors import RunFailure, UsageError, first_line

DEFAULT_REPORT_OUT = Path("bench/results/fitness_report.json")

fitness_app = typer.Typer(help="The reduced fitness: honest error figures of a stored calibration.",
                          no_args_is_help=True)


@verb
def calibrate_command(calibration_file: Path = typer.Argument(..., help="the calibration YAML")) -> None:
    """Score the sources, the base and random merges on the full tasks over Ray, then fit IRT.

    Each model's per-item answers are stored as soon as it finishes, so a killed run loses nothing
    scored; running the same file again skips the models already stored and refits.

    Examples:

      evosearch calibrate examples/calibrate_zoo.yaml

      evosearch fitness report zoo-calib
    """
    from evosearch.search.calibrate import members_to_score, open_calibration, refit, score_members  # start-up
    from evosearch.search.calibration_spec import load_calibration_spec
    from evosearch.search.preflight import TaskCheckError, check_calibration_tasks
    from fitness.calibration import calibration_population

    spec = load_calibration_spec(calibration_file)
    try:  # before anything is stored: fills in each task's metric and filter, stored with the calibration
        check_calibration_tasks(spec)
    except TaskCheckError as e:
        raise TaskCheckError(f"{calibration_file}: {e}") from None
    members = calibration_population(spec.search_space, spec.n_random, seed=spec.seed, n_heldout=spec.n_heldout)
    fitted = sum(1 for m in members if m.role != "heldout")
    if fitted < 2:
        raise UsageError(f"{calibration_file}: n_random: {fitted} model(s) to fit IRT on (sources, base and random "
                         "merges); at least 2 are needed, many more for a stable fit")
    store = open_store(spec.store, must_exist=False)
    record = open_calibration(store, spec)
    todo = members_to_score(store, record, members)
    typer.echo(f"{spec.name}: {len(members)} models ({spec.n_random} random, {spec.n_heldout} held out), "
               f"{len(members) - len(todo)} already stored, {len(todo)} to score on {', '.join(spec.task_names)}")
    try:
        if todo:
            with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          console=err_console, transient=False) as progress:
                bar = progress.add_task("scoring", total=len(todo))

                def on_stored(model) -> None:
                    acc = " ".join(f"{t}={v:.3f}" for t, v in model.accuracy.items())
                    progress.console.print(f"  {model.label} ({model.role}) {acc} [{model.seconds:.1f}s]",
                                           markup=False, highlight=False, soft_wrap=True)
                    progress.advance(bar)

                score_members(spec, todo, store, record.id, on_stored)
        # Its models matched this file's, so this file's settings (sizes, report) now describe it.
        store.set_calibration_spec(record.id, spec.to_dict())
        version, new, note = refit(store, spec)
    except KeyboardInterrupt:
        raise RunFailure(f"interrupted; models scored so far are stored; run `evosearch calibrate "
                         f"{calibration_file}` again to continue") from None
    except Exception as e:  # noqa: BLE001 - a worker, the store or the fit: what was scored is kept
        raise RunFailure(f"{first_line(e)} (models scored so far are stored; run again to continue)") from None
    if note is not None:
        typer.echo(f"note: {note}")
    typer.echo(f"{spec.name}: IRT fit version {version}{' (new)' if new else ' (unchanged)'} on "
               f"{len(members) - spec.n_heldout} models; store {store.url_for_display}")


def _table(name: str, rows: list[dict[str, Any]]) -> Table:
    table = Table(title=f"{name}: reduced fitness on {rows[0]['n_heldout']} held-out merges "
                        f"({rows[0]['n_calibration']} models fitted)", title_justify="left")
    for column in ("estimator", "strategy", "k", "items/candidate", "reduction x", "MAE points", "worst points",
                   "Spearman", "bar"):
        table.add_column(column, justify="left" if column in ("estimator", "strategy") else "right")
    for r in sorted(rows, key=lambda r: (r["mae_points"], r["estimator"])):
        rho = "n/a" if r["spearman"] is None else f"{r['spearman']:.3f}"
        table.add_row(r["estimator"], r["strategy"], str(r["k"]), str(r["items_per_candidate"]),
                      f"{r['reduction']:.1f}", f"{r['mae_points']:.2f}", f"{r['worst_points']:.2f}", rho,
                      "yes" if r["meets_bar"] else "")
    return table


@fitness_app.command("report")
@verb
def report_command(
        calibration: str = typer.Argument(..., help="calibration name, or its calibration file"),
        store: Optional[str] = typer.Option(None, "--store", help="store URL (default: the calibration's)"),
        as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
        out: Path = typer.Option(DEFAULT_REPORT_OUT, "--out", help="where the JSON report is written")) -> None:
    """Error of every estimator x anchor strategy x k on the held-out merges, against their full scores.

    Fits IRT on the calibration's non-held-out models, lets every held-out merge answer only the anchors,
    and compares the estimates with its true full-task accuracy. Rows meeting the bar (>= 20x fewer
    items, MAE <= 3 points, Spearman >= 0.9) are marked.

    Examples:

      evosearch fitness report zoo-calib

      evosearch fitness report examples/calibrate_zoo.yaml --json --out bench/results/zoo.json
    """
    from evosearch.search.calibrate import calibration_report  # start-up time
    from evosearch.search.calibration_spec import load_calibration_spec
    from fitness.calibration import BAR
    from storage import StoreError

    try:
        name, url, spec = name_and_store(calibration, store, load_calibration_spec, "calibration")
    except ValueError as e:  # CalibrationSpecError is one
        raise UsageError(str(e)) from None
    opened = open_store(url, must_exist=True)
    try:
        record = opened.get_calibration(name)
    except StoreError as e:
        raise UsageError(str(e)) from None
    report = calibration_report(opened, record, spec)
    rows = report["rows"]
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    except OSError as e:
        raise RunFailure(f"{out}: cannot write the report ({type(e).__name__})") from None
    if as_json:
        typer.echo(json.dumps(report, indent=2, allow_nan=False))
        return
    # Piped output keeps whole rows (rich would squeeze the table to 80 columns).
    Console(width=None if sys.stdout.isatty() else 160).print(_table(name, rows))
    passing = [r for r in rows if r["meets_bar"]]
    if passing:
        best = min(passing, key=lambda r: r["mae_points"])
        typer.echo(f"{len(passing)} of {len(rows)} rows meet the bar; best: {best['estimator']} / "
                   f"{best['strategy']} / k={best['k']} ({best['reduction']:.1f}x, MAE {best['mae_points']:.2f} "
                   f"points, Spearman {best['spearman']:.3f})")
    else:
        typer.echo(f"no row meets the bar (>= {BAR['min_reduction']:.0f}x fewer items, MAE <= "
                   f"{BAR['max_mae_points']:.0f} points, Spearman >= {BAR['min_spearman']})")
    typer.echo(f"report written to {out}")


def register(app: typer.Typer) -> None:
    """Adds `calibrate` and `fitness report` to the evosearch app."""
    app.command("calibrate")(calibrate_command)
    app.add_typer(fitness_app, name="fitness")
