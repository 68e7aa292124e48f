"""The `evosearch` command line: one module per group of verbs, wired here; `common` holds what they share
(the one mapping of errors to exit codes, opening stores, finding jobs)."""

from __future__ import annotations

import os

# lm-eval, datasets and transformers draw a tqdm bar per task, split and model load, hundreds per search;
# evosearch shows its own progress. tqdm reads this once, when it is first imported, hence before the rest.
os.environ.setdefault("TQDM_DISABLE", "1")

import typer  # noqa: E402

from evosearch.cli import cluster, dashboard, fitness, results, search  # noqa: E402
from evosearch.cli.merge import merge_command  # noqa: E402
from evosearch.cli.zoo import zoo_app  # noqa: E402

app = typer.Typer(
    name="evosearch",
    help="Evolutionary merge-recipe search: build merges, search recipes on Ray, export the best model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(zoo_app, name="zoo")
app.command("merge")(merge_command)
search.register(app)
cluster.register(app)
results.register(app)
fitness.register(app)
dashboard.register(app)


def main() -> None:
    app()
