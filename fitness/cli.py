"""`evosearch calibrate` and `evosearch fitness report`: the calibration run and its honest error figures.

Exit codes: 0 ok, 2 usage (a bad calibration file, an unknown calibration or store, settings the data
cannot meet), 1 a failure while running. Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from evosearch.config_file import name_and_store
from evosearch.run_cli import FAILURE, USAGE, _err, _fail, _open_store
from fitness.calibration_spec import CalibrationSpec, CalibrationSpecError, load_calibration_spec

# The bar for the reduced fitness on the held-out merges.
BAR = {"min_reduction": 20.0, "max_mae_points": 3.0, "min_spearman": 0.9}
DEFAULT_REPORT_OUT = Path("bench/results/fitness_report.json")

fitness_app = typer.Typer(help="The reduced fitness: honest error figures of a stored calibration.",
                          no_args_is_help=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --- calibrate -------------------------------------------------------------------------------------------

def _calibration_row(store, spec: CalibrationSpec):
    """The stored calibration of this name, made now if new. One made from another population or task list
    is refused: its responses would not answer this file's members."""
    from storage import CalibrationRecord, StoreError

    try:
        record = store.get_calibration(spec.name)
    except StoreError:
        store.save_calibration(CalibrationRecord(name=spec.name, tasks=list(spec.tasks), spec=spec.to_dict()))
        return store.get_calibration(spec.name)
    if list(record.tasks) != list(spec.tasks):
        _fail(f"calibration {spec.name!r} in {store.url_for_display} has tasks {record.tasks}, this file "
              f"{spec.tasks}; give the calibration another name", USAGE)
    return record


def _to_store(store, calibration_id: int, on_stored):
    from storage import CalibrationModelRecord

    def store_one(model) -> None:
        store.add_calibration_model(calibration_id, CalibrationModelRecord(
            label=model.label, role=model.role, recipe=model.recipe, responses=model.responses,
            accuracy=model.accuracy, seconds=model.seconds))
        on_stored(model)

    return store_one


def _evaluate(spec: CalibrationSpec, members: list, store_one) -> None:
    """Every member on the full tasks over a Ray pool of CandidateWorkers, each stored as it finishes."""
    from evosearch.driver import ensure_ray
    from fitness.calibration import run_calibration
    from workers.candidate import candidate_pool

    w = spec.workers
    ensure_ray(num_cpus=max(os.cpu_count() or 1, w.count * w.num_cpus))
    pool = candidate_pool(w, spec.source_paths, spec.include_path, list(spec.tasks),
                          num_workers=min(w.count, len(members)))
    try:
        pool.start()
        run_calibration(members, pool, tasks=list(spec.tasks), on_model=store_one, key_prefix=spec.name)
    finally:
        pool.shutdown()


def _fit(store, spec: CalibrationSpec) -> tuple[int, bool]:
    """Fit IRT on the stored non-held-out models; a new version unless the stored fit covers them already.
    Returns (fit version, whether it is new)."""
    from fitness.irt import IRTParams
    from fitness.reduced import ResponseMatrix, fit_calibration

    record = store.get_calibration(spec.name)
    if record.irt_params:
        stored = IRTParams.from_dict(record.irt_params)
        matrix = ResponseMatrix.from_calibration(record)
        if (stored.model_ids, stored.item_ids, stored.settings) == \
                (matrix.model_ids, matrix.item_ids, spec.irt_settings):
            return record.fit_version, False
    params = fit_calibration(record, spec.irt_settings)
    version = record.fit_version + 1
    store.set_calibration_fit(record.id, params.to_dict(), fit_version=version)
    return version, True


def calibrate_command(calibration_file: Path = typer.Argument(..., help="the calibration YAML")) -> None:
    """Score the sources, the base and random merges on the full tasks over Ray, then fit IRT.

    Each model's per-item answers are stored as soon as it finishes, so a killed run loses nothing
    scored; running the same file again skips the models already stored and refits.

    Examples:

      evosearch calibrate examples/calibrate_zoo.yaml

      evosearch fitness report zoo-calib
    """
    from fitness.calibration import calibration_population
    from fitness.errors import FitnessError
    from storage import StoreError
    from workers.pool import WorkerStartError

    try:
        spec = load_calibration_spec(calibration_file)
        members = calibration_population(spec.search_space, spec.n_random, seed=spec.seed,
                                         n_heldout=spec.n_heldout)
    except (CalibrationSpecError, FitnessError) as e:
        _fail(str(e), USAGE)
    fitted = sum(1 for m in members if m.role != "heldout")
    if fitted < 2:
        _fail(f"{calibration_file}: n_random: {fitted} model(s) to fit IRT on (sources, base and random merges); "
              "at least 2 are needed, many more for a stable fit", USAGE)
    store = _open_store(spec.store, must_exist=False)
    try:
        record = _calibration_row(store, spec)
        stored = {m.label: m.recipe for m in record.models}
        for m in members:
            if m.label in stored and stored[m.label] != m.recipe:
                _fail(f"calibration {spec.name!r} in {store.url_for_display} holds another model named "
                      f"{m.label!r} (made from another population); give the calibration another name", USAGE)
        todo = [m for m in members if m.label not in stored]
        typer.echo(f"{spec.name}: {len(members)} models ({spec.n_random} random, {spec.n_heldout} held out), "
                   f"{len(members) - len(todo)} already stored, {len(todo)} to score on {', '.join(spec.tasks)}")
        if todo:
            with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          console=_err, transient=False) as progress:
                bar = progress.add_task("scoring", total=len(todo))

                def on_stored(model) -> None:
                    acc = " ".join(f"{t}={v:.3f}" for t, v in model.accuracy.items())
                    progress.console.print(f"  {model.label} ({model.role}) {acc} [{model.seconds:.1f}s]",
                                           markup=False, highlight=False, soft_wrap=True)
                    progress.advance(bar)

                _evaluate(spec, todo, _to_store(store, record.id, on_stored))
        # Its models matched this file's, so this file's settings (sizes, report) now describe it.
        store.set_calibration_spec(record.id, spec.to_dict())
        version, new = _fit(store, spec)
    except KeyboardInterrupt:
        _fail(f"interrupted; models scored so far are stored; run `evosearch calibrate {calibration_file}` "
              "again to continue", FAILURE)
    except (FitnessError, StoreError, WorkerStartError) as e:
        _fail(f"{_first_line(e)} (models scored so far are stored; run again to continue)", FAILURE)
    typer.echo(f"{spec.name}: IRT fit version {version}{' (new)' if new else ' (unchanged)'} on "
               f"{len(members) - spec.n_heldout} models; store {store.url_for_display}")


# --- fitness report ------------------------------------------------------------------------------------

def _report_settings(record, spec: Optional[CalibrationSpec]):
    """The report and IRT settings of the file when given, else those stored with the calibration."""
    from fitness.calibration_spec import ReportSettings, stored_irt_settings

    if spec is not None:
        return spec.report, spec.irt_settings
    stored = record.spec or {}
    try:
        report = ReportSettings.model_validate(stored.get("report", {}))
        irt = stored_irt_settings(stored)
    except ValueError as e:
        _fail(f"calibration {record.name!r}: stored settings are unreadable: {_first_line(e)}", USAGE)
    return report, irt


def meets_bar(row: dict[str, Any]) -> bool:
    return (row["reduction"] >= BAR["min_reduction"] and row["mae_points"] <= BAR["max_mae_points"]
            and row["spearman"] is not None and row["spearman"] >= BAR["min_spearman"])


def _machine() -> dict[str, Any]:
    import torch

    return {"host": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


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
    from fitness.calibration import fitness_report
    from fitness.errors import FitnessError
    from storage import StoreError

    try:
        name, url, spec = name_and_store(calibration, store, load_calibration_spec, "calibration")
    except ValueError as e:  # CalibrationSpecError is one
        _fail(str(e), USAGE)
    opened = _open_store(url, must_exist=True)
    try:
        record = opened.get_calibration(name)
    except StoreError as e:
        _fail(str(e), USAGE)
    settings, irt_settings = _report_settings(record, spec)
    fitted = [m for m in record.models if m.role != "heldout"]
    heldout = [m for m in record.models if m.role == "heldout"]
    if not heldout:
        _fail(f"calibration {name!r} has no held-out models (set n_heldout and run `evosearch calibrate` again)",
              USAGE)
    try:
        rows = fitness_report(fitted, heldout, estimators=settings.estimators, ks=settings.ks,
                              strategies=settings.strategies, seed=irt_settings.seed, tasks=list(record.tasks),
                              irt_settings=irt_settings)
    except FitnessError as e:
        _fail(f"calibration {name!r}: {_first_line(e)}", USAGE)
    for row in rows:
        row["meets_bar"] = meets_bar(row)
    report = {"calibration": name, "store": opened.url_for_display, "tasks": list(record.tasks),
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": _machine(),
              "bar": BAR, "irt": {"dims": irt_settings.dims, "ability_scope": irt_settings.ability_scope},
              "n_calibration": len(fitted), "n_heldout": len(heldout), "rows": rows}
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    except OSError as e:
        _fail(f"{out}: cannot write the report ({type(e).__name__})", FAILURE)
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
