"""Every verb's --help shows examples, every example file it names exists, every verb maps its errors to exit
codes through `evosearch.cli.common.verb`, and `--help` and `status` stay light."""

from __future__ import annotations

import re
import subprocess
import sys
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


def test_every_verb_maps_its_errors_in_one_place():
    group = typer.main.get_command(app)
    unmapped = []
    for path in _leaf_commands(group):
        command = group
        for name in path:
            command = command.commands[name]
        if not getattr(command.callback, "__evosearch_verb__", False):
            unmapped.append(" ".join(path))
    assert not unmapped, f"verbs not decorated with evosearch.cli.common.verb: {unmapped}"


def test_help_and_status_load_no_heavy_library(tmp_path):
    """`--help` and `status` start in well under a second because they never import torch, Ray or lm-eval:
    the verbs import those inside themselves (bench/cli_startup.py has the times)."""
    probe = ("import sys\nfrom typer.testing import CliRunner\nfrom evosearch.cli import app\n"
             "for args in (['--help'], ['status'], ['status', 'nope']):\n    CliRunner().invoke(app, args)\n"
             "print(sorted({'torch', 'ray', 'lm_eval', 'transformers'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout
