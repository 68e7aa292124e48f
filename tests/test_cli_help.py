"""Every verb's --help shows examples, and every example file it names exists."""

from __future__ import annotations

import re
from pathlib import Path

import typer
from typer.testing import CliRunner

from evosearch.cli import app

ROOT = Path(__file__).resolve().parents[1]


def _leaf_commands(group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    leaves = []
    for name, command in group.commands.items():
        path = prefix + (name,)
        # typer ships its own click: a group is whatever has sub-commands.
        leaves += _leaf_commands(command, path) if hasattr(command, "commands") else [path]
    return leaves


def test_every_verb_has_examples_naming_real_files():
    verbs = _leaf_commands(typer.main.get_command(app))
    assert len(verbs) >= 14
    runner = CliRunner()
    for verb in verbs:
        result = runner.invoke(app, [*verb, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, (verb, result.output)
        assert "Example" in result.output, f"`evosearch {' '.join(verb)} --help` shows no example"
        for example_file in re.findall(r"examples/[\w./-]+\.ya?ml", result.output):
            assert (ROOT / example_file).is_file(), f"{' '.join(verb)}: {example_file} does not exist"
