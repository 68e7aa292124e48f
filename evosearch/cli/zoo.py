"""`evosearch zoo build DIR` and `evosearch zoo report DIR`."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from evosearch.cli.common import verb

zoo_app = typer.Typer(help="The tiny offline model zoo: build it, score it, see how well it merges.",
                      no_args_is_help=True)


def _offline() -> None:
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class _BuildView:
    """Progress of a zoo build per model (step, loss, time left): a rich progress bar per model on a terminal,
    else one plain line per model at every tenth of its steps."""

    def __init__(self, console: Console):
        self.console = console
        self.progress = (Progress(TextColumn("{task.description:<8}"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("loss {task.fields[loss]:.3f}"), TextColumn("left {task.fields[left]}"),
                                  TimeElapsedColumn(), console=console)
                         if console.is_terminal else None)
        self.bars: dict[str, int] = {}

    def __enter__(self) -> "_BuildView":
        if self.progress is not None:
            self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def update(self, event) -> None:
        left = _duration(event.seconds_left)
        if self.progress is None:
            if event.step == event.steps or event.step % max(1, event.steps // 10) == 0:
                self.console.print(f"zoo build: {event.model} step {event.step}/{event.steps} loss {event.loss:.3f} "
                                   f"left {left}", markup=False, highlight=False)
            return
        if event.model not in self.bars:
            self.bars[event.model] = self.progress.add_task(event.model, total=event.steps, loss=event.loss, left=left)
        self.progress.update(self.bars[event.model], completed=event.step, loss=event.loss, left=left)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}:{secs:02d}"


@zoo_app.command("build")
@verb
def build_command(
    out_dir: Path = typer.Argument(..., help="Directory for the zoo (models/, tasks/, zoo.json)."),
    preset: str = typer.Option("full", help="full (README figures, a few minutes), interference (the bed where "
                                            "merging is hard), tiny or interference-tiny (tests)."),
    force: bool = typer.Option(False, "--force", help="Rebuild even if zoo.json matches the preset."),
) -> None:
    """Train the base and the specialists (CPU, one thread, deterministic) and write the lm-eval tasks.

    Shows each model's steps, loss and time left while it trains. A second call with the same settings
    returns at once.

    Examples:

      evosearch zoo build runs/zoo

      evosearch zoo build runs/zoo-interference --preset interference

      evosearch zoo build runs/zoo-tiny --preset tiny
    """
    _offline()
    from evosearch.zoo.build import build_zoo  # start-up time: torch

    with _BuildView(Console(stderr=True)) as view:
        manifest = build_zoo(out_dir, preset=preset, force=force, on_progress=view.update)
    typer.echo(f"zoo {manifest.preset} ({manifest.settings_hash}) at {manifest.root}: "
               f"{len(manifest.models)} models, {len(manifest.tasks)} tasks, built in {manifest.build_seconds}s "
               f"({manifest.build_cpu_seconds} CPU s)")


def _pct(x: float) -> str:
    return "-" if x is None or math.isnan(x) else f"{100 * x:.1f}"


@zoo_app.command("report")
@verb
def report_command(
    zoo_dir: Path = typer.Argument(..., help="A directory written by `evosearch zoo build`."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    split: str = typer.Option("report", help="Which split to score: report (held out) or search."),
) -> None:
    """Score every model and the reference merges on every zoo task, and print the mergeability figures.

    Examples:

      evosearch zoo report runs/zoo

      evosearch zoo report runs/zoo --split search --json
    """
    _offline()
    import torch  # start-up time

    from evosearch.zoo.build import ZooManifest
    from evosearch.zoo.report import scored_tasks, zoo_report

    torch.set_num_threads(1)  # tiny models: more threads only contend
    manifest = ZooManifest.load(zoo_dir)
    report = zoo_report(manifest, split=split)
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
        return

    console = Console()
    tasks = scored_tasks(manifest)
    table = Table(title=f"zoo accuracy (%), {split} split, lm-eval acc (multiple choice) or exact_match (_gen)")
    table.add_column("model")
    for t in tasks:
        table.add_column(t, justify="right")
    for model, scores in report.accuracy.items():
        table.add_row(model, *(_pct(scores.get(t)) if t in scores else "" for t in tasks))
    console.print(table)
    console.print("[bold]specialist gain over base on its own task[/] (points): " + ", ".join(
        f"{s} {100 * g:+.1f}" for s, g in report.gains.items()))
    b = report.best_target
    if report.bed == "interference":
        console.print(f"[bold]target[/]: best of the {len(report.target_grid)}-merge default grid {b['merge']} "
                      f"{_pct(b['accuracy'])}%, best source {b['best_source']} {_pct(b['best_source_accuracy'])}%")
    else:
        for w, kept in report.retention.items():
            console.print(f"[bold]math+strings task arithmetic ({w} each, normalize false) keeps[/]: " + ", ".join(
                f"{s} {_pct(k)}% of its gain" for s, k in kept.items()))
        console.print(f"[bold]target[/]: best math+lang task arithmetic (w_math,w_lang = "
                      f"{b['weights (math,lang)']}) {_pct(b['accuracy'])}%, {100 * b['minus_math']:+.1f} vs math, "
                      f"{100 * b['minus_lang']:+.1f} vs lang")
    bars = Table(title=f"the {report.bed} bed's bars ({split} split)")
    for column, justify in (("bar", "left"), ("measured", "right"), ("margin", "right"), ("", "left")):
        bars.add_column(column, justify=justify)
    for bar in report.bars:
        bars.add_row(bar.text, f"{bar.measured:.1f}", f"{bar.margin:+.1f}", "pass" if bar.passed else "FAIL")
    console.print(bars)
