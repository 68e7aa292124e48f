"""The `evosearch` command line. Each verb lives beside the code it drives; this module only wires them."""

from __future__ import annotations

import typer

from evosearch.merge.cli import merge_command
from evosearch.run_cli import register as register_search_commands
from evosearch.zoo.cli import zoo_app

app = typer.Typer(
    name="evosearch",
    help="Evolutionary merge-recipe search: build merges, search recipes on Ray, export the best model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(zoo_app, name="zoo")
app.command("merge")(merge_command)
register_search_commands(app)


def main() -> None:
    app()
