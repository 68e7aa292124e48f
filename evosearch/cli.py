"""The `evosearch` command line. Each verb lives beside the code it drives; this module only wires them."""

from __future__ import annotations

import os

# lm-eval, datasets and transformers draw a tqdm bar per task, split and model load, hundreds per search;
# evosearch shows its own progress. tqdm reads this once, when it is first imported, hence before the rest.
os.environ.setdefault("TQDM_DISABLE", "1")

import typer  # noqa: E402

from evosearch.export_cli import register as register_export_commands  # noqa: E402
from evosearch.merge.cli import merge_command  # noqa: E402
from evosearch.run_cli import register as register_search_commands  # noqa: E402
from evosearch.submit_cli import register as register_submit_commands  # noqa: E402
from evosearch.zoo.cli import zoo_app  # noqa: E402
from fitness.cli import register as register_fitness_commands  # noqa: E402

app = typer.Typer(
    name="evosearch",
    help="Evolutionary merge-recipe search: build merges, search recipes on Ray, export the best model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(zoo_app, name="zoo")
app.command("merge")(merge_command)
register_search_commands(app)
register_submit_commands(app)
register_export_commands(app)
register_fitness_commands(app)


def main() -> None:
    app()
