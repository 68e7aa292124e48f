"""Malformed input through the `evosearch` command line: every row of one table is a file, flag or URL a
user could get wrong. Each must fail with the right exit code (2 usage, 1 failure: the same for every verb,
`evosearch.cli.common.verb`) and ONE line naming the
file, field, model, tensor or URL at fault, while a real SQLite store that already holds a finished job,
and every file on disk, stay exactly as they were."""

from __future__ import annotations

import shutil
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
import yaml
from typer.testing import CliRunner

from evosearch.cli import app
from pg import free_port
from test_job import _set, zoo_job

pytestmark = pytest.mark.slow

FINISHED_JOB = "done"
_FINISHED: dict[str, str] = {}  # store URL of the finished job, shared with test_security (one run per session)


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def small_job(zoo, name: str, root: Path, **overrides) -> dict:
    """One generation of two PS candidates on 20 docs: seconds on the tiny zoo."""
    return {**zoo_job(zoo, name=name, generations=1, optimizer={"name": "cmaes", "popsize": 2},
                      fitness={"mode": "full", "limit": 20}), "output_dir": str(root / name), **overrides}


def write_yaml(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def finished_store(zoo, root: Path) -> str:
    """The store URL of a job run to the end by `evosearch run` (once per session)."""
    if "url" not in _FINISHED:
        root.mkdir(parents=True, exist_ok=True)
        job = write_yaml(root / "done.yaml", small_job(zoo, FINISHED_JOB, root))
        result = invoke("run", job)
        assert result.exit_code == 0, result.output
        _FINISHED["url"] = f"sqlite:///{root / FINISHED_JOB / 'evosearch.db'}"
    return _FINISHED["url"]


def model_copy(source: Path, target: Path, config_edit: Callable[[dict], None] | None = None) -> Path:
    shutil.copytree(source, target)
    if config_edit is not None:
        import json

        config = json.loads((target / "config.json").read_text())
        config_edit(config)
        (target / "config.json").write_text(json.dumps(config))
    return target


def make_misfits(zoo, root: Path) -> Path:
    """Models that do not belong with the zoo's: another architecture (same tensors), other shapes, no
    tokenizer, pickle weights only."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    base = Path(zoo.models["base"])
    model_copy(base, root / "mistral", lambda c: c.update(architectures=["MistralForCausalLM"], model_type="mistral"))
    config = AutoConfig.from_pretrained(base)
    config.intermediate_size *= 2
    AutoModelForCausalLM.from_config(config).save_pretrained(root / "wide")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(base / f, root / "wide" / f)
    for f in model_copy(base, root / "no-tokenizer").glob("tokenizer*"):
        f.unlink()
    pickled = model_copy(base, root / "pickled")
    torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    return root


@dataclass
class Bed:
    """What a row needs: its own empty directory (also the working directory), the zoo, the finished store."""

    tmp: Path
    zoo: object
    store: str
    misfits: Path

    def job(self, *edits: Callable[[dict], dict], **overrides) -> Path:
        """A job file aimed at the finished job's store: a rejection that wrote anything would show there."""
        job = small_job(self.zoo, overrides.pop("name", "bad"), self.tmp, **{"store": self.store, **overrides})
        for edit in edits:
            job = edit(job)
        return write_yaml(self.tmp / "job.yaml", job)

    def source(self, name: str, path: str | Path) -> Path:
        return self.job(_set(f"sources.{name}", str(path)))

    def recipe(self, data: dict) -> Path:
        return write_yaml(self.tmp / "recipe.yaml", data)

    def model(self, name: str) -> str:
        return str(self.zoo.models[name])

    def dfs(self, indicator: list[bool], scales=((1.0, 1.0), (1.0, 1.0)), sources=("math", "lang")) -> Path:
        return self.recipe({"kind": "dfs", "sources": [self.model(s) if s in self.zoo.models else s for s in sources],
                            "num_layers": 2, "indicator": indicator, "scales": [list(r) for r in scales]})

    def text(self, name: str, content: str) -> Path:
        (self.tmp / name).write_text(content)
        return self.tmp / name

    def broken(self, file: str, content: str) -> Path:
        """A copy of the zoo's `lang` model with `file` overwritten."""
        model = model_copy(Path(self.model("lang")), self.tmp / "broken")
        (model / file).write_text(content)
        return model

    def taken(self) -> Path:
        out = self.tmp / "taken"
        out.mkdir()
        (out / "keep.txt").write_text("mine")
        return out

    def file(self) -> Path:
        return self.text("a-file", "not a directory")


def _ta(bed: Bed, weight) -> dict:
    return {"merge_method": "task_arithmetic", "base_model": bed.model("base"),
            "models": [{"model": bed.model("math"), "parameters": {"weight": weight}}]}


def _pg(bed: Bed) -> str:
    return f"postgresql+psycopg://evosearch:pw@127.0.0.1:{free_port()}/evosearch"


# (id, exit code, text the one line must hold, the argv). The text may name {tmp}, {misfits}, {zoo}.
CASES: list[tuple[str, int, str, Callable[[Bed], list]]] = [
    # --- job files: `evosearch run JOB` -------------------------------------------------------------------
    ("job: missing field", 2, "job.yaml: objectives: required field is missing",
     lambda b: ["run", b.job(_set("objectives", ...))]),
    ("job: wrong type (seed)", 2, "job.yaml: seed: Input should be a valid integer",
     lambda b: ["run", b.job(seed="abc")]),
    ("job: wrong type (sources)", 2, "job.yaml: sources: give a mapping of model name -> model directory",
     lambda b: ["run", b.job(sources=["math", "lang"])]),
    ("job: unknown merge method", 2, "job.yaml: search_space.methods: unknown merge method 'magic'",
     lambda b: ["run", b.job(_set("search_space.methods", "magic"))]),
    ("job: unknown optimizer", 2, "job.yaml: optimizer: ",
     lambda b: ["run", b.job(optimizer={"name": "sgd"})]),
    ("job: unknown estimator", 2, "job.yaml: fitness.estimator: unknown estimator 'magic'",
     lambda b: ["run", b.job(fitness={"mode": "reduced", "calibration": "c", "estimator": "magic"})]),
    ("job: bounds inverted", 2, "job.yaml: search_space.bounds.weight: range needs finite low < high",
     lambda b: ["run", b.job(_set("search_space.bounds", {"weight": [2.0, 0.5]}))]),
    ("job: objective without direction", 2, "job.yaml: objectives[0].direction: required (max or min)",
     lambda b: ["run", b.job(objectives=[{"task": "zoo_target"}])]),
    ("job: DFS cap below the forced ends", 2, "job.yaml: search_space: max_path 1 is shorter than the 2 forced",
     lambda b: ["run", b.job(search_space={"kind": "dfs", "sources": ["math", "lang"], "num_layers": 2,
                                           "anchor_ends": True, "max_path": 1})]),
    ("job: DFS layers the models lack", 2, "job.yaml: search_space: DFS source 0 ({zoo}/models/math)",
     lambda b: ["run", b.job(search_space={"kind": "dfs", "sources": ["math", "lang"], "num_layers": 5})]),
    ("job: output_dir under a regular file", 2, "job.yaml: output_dir: output {tmp}/a-file/out: cannot be created",
     lambda b: ["run", b.job(output_dir=str(b.file() / "out"))]),
    ("job: name taken in the store", 1, "job name 'done' is taken in store sqlite:///",
     lambda b: ["run", b.job(name=FINISHED_JOB)]),
    ("job: bad YAML", 2, "job.yaml: not valid YAML at line 1",
     lambda b: ["run", b.text("job.yaml", "name: [unclosed")]),
    ("job: file missing", 2, "{tmp}/nope.yaml: job file not found",
     lambda b: ["run", b.tmp / "nope.yaml"]),
    # --- model sets: the job's sources -------------------------------------------------------------------
    ("models: different architectures", 2, "architecture MistralForCausalLM differs",
     lambda b: ["run", b.source("lang", b.misfits / "mistral")]),
    ("models: shape mismatch", 2, "{misfits}/wide: tensor model.layers.0.mlp.down_proj.weight has shape",
     lambda b: ["run", b.source("lang", b.misfits / "wide")]),
    ("models: missing tokenizer", 2, "{misfits}/no-tokenizer: no tokenizer",
     lambda b: ["run", b.source("lang", b.misfits / "no-tokenizer")]),
    ("models: pickle-only checkpoint", 2, "{misfits}/pickled: only pickle weights (pytorch_model.bin)",
     lambda b: ["run", b.source("lang", b.misfits / "pickled")]),
    ("models: corrupt config.json", 2, "sources: model {tmp}/broken: unreadable config.json",
     lambda b: ["run", b.source("lang", b.broken("config.json", "{"))]),
    ("models: corrupt safetensors", 2, "sources: model {tmp}/broken: unreadable model.safetensors",
     lambda b: ["run", b.source("lang", b.broken("model.safetensors", "not a header"))]),
    ("models: tokenizer source without one (merge)", 2, "model {misfits}/no-tokenizer: no tokenizer in",
     lambda b: ["merge", b.recipe(_ta(b, 0.5)), b.tmp / "out", "--tokenizer-source", b.misfits / "no-tokenizer"]),
    ("models: missing path", 2, "job.yaml: sources.lang: no model at {tmp}/gone",
     lambda b: ["run", b.source("lang", b.tmp / "gone")]),
    # --- recipes: `evosearch merge RECIPE OUT` ----------------------------------------------------------
    ("recipe: per-layer list empty", 2, "recipe.yaml: models[0].parameters.weight: empty list",
     lambda b: ["merge", b.recipe(_ta(b, [])), b.tmp / "out"]),
    ("recipe: per-layer list of a wrong type", 2, "weight",
     lambda b: ["merge", b.recipe(_ta(b, [0.5, "heavy"])), b.tmp / "out"]),
    ("recipe: DFS indicator of the wrong length", 2, "recipe.yaml: indicator has 3 slots, expected M*L*r = 4",
     lambda b: ["merge", b.dfs([True, False, True]), b.tmp / "out"]),
    ("recipe: DFS scales of the wrong size", 2, "recipe.yaml: scales must be a 2x2 table",
     lambda b: ["merge", b.dfs([True] * 4, scales=[[1.0, 1.0, 1.0], [1.0, 1.0]]), b.tmp / "out"]),
    ("recipe: DFS path longer than the cap", 2, "DFS path has 3 layers, more than max_path 2",
     lambda b: ["merge", b.dfs([True, True, False, True]), b.tmp / "out", "--max-path", "2"]),
    ("recipe: DFS path empty", 2, "recipe.yaml: indicator selects no layer: the path is empty",
     lambda b: ["merge", b.dfs([False] * 4), b.tmp / "out"]),
    ("recipe: file missing", 2, "{tmp}/nope.yaml: recipe file not found",
     lambda b: ["merge", b.tmp / "nope.yaml", b.tmp / "out"]),
    ("recipe: DFS sources that do not fit", 2, "{misfits}/wide",
     lambda b: ["merge", b.dfs([True] * 4, sources=("math", str(b.misfits / "wide"))), b.tmp / "out"]),
    ("recipe: bad YAML", 2, "recipe.yaml: not valid YAML at line 1, column 11",
     lambda b: ["merge", b.text("recipe.yaml", "kind: [dfs"), b.tmp / "out"]),
    # --- store URLs ---------------------------------------------------------------------------------------
    ("store: bad scheme", 2, "store URL scheme 'mysql' is not supported",
     lambda b: ["status", "--store", "mysql://user:pw@127.0.0.1/evosearch"]),
    ("store: not a URL", 2, "store URL 'runs/evosearch.db' is not a database URL",
     lambda b: ["front", FINISHED_JOB, "--store", "runs/evosearch.db"]),
    ("store: PostgreSQL unreachable (run)", 2, "store postgresql+psycopg://evosearch:***@127.0.0.1:",
     lambda b: ["run", b.job(store=_pg(b))]),
    ("store: PostgreSQL unreachable (status)", 2, "is unreachable",
     lambda b: ["status", FINISHED_JOB, "--store", _pg(b)]),
    ("store: SQLite file under a regular file", 2, "cannot be created: {tmp}/a-file is not a directory",
     lambda b: ["run", b.job(store=f"sqlite:///{b.file()}/evosearch.db")]),
    ("store: SQLite file missing", 2, "no store at {tmp}/none.db",
     lambda b: ["status", FINISHED_JOB, "--store", f"sqlite:///{b.tmp}/none.db"]),
    # --- export targets -----------------------------------------------------------------------------------
    ("export: non-empty directory without --force", 2, "output directory {tmp}/taken is not empty (use --force",
     lambda b: ["export", FINISHED_JOB, b.taken(), "--store", b.store]),
    ("export: parent is a regular file (no permission, even as root)", 2,
     "output {tmp}/a-file/out: cannot be created, {tmp}/a-file is not a directory",
     lambda b: ["export", FINISHED_JOB, b.file() / "out", "--store", b.store]),
    ("export: target is a regular file", 2, "output {tmp}/a-file: exists and is not a directory",
     lambda b: ["export", FINISHED_JOB, b.file(), "--store", b.store]),
    ("export: plot under a regular file", 2, "output {tmp}/a-file/front.png: cannot be created, {tmp}/a-file is not",
     lambda b: ["plot", FINISHED_JOB, b.file() / "front.png", "--store", b.store]),
    ("merge: non-empty directory without --force", 2, "output directory {tmp}/taken is not empty",
     lambda b: ["merge", b.recipe(_ta(b, 0.5)), b.taken()]),
    ("merge: parent is a regular file", 2, "output {tmp}/a-file/out: cannot be created",
     lambda b: ["merge", b.recipe(_ta(b, 0.5)), b.file() / "out"]),
]


@pytest.fixture(scope="module")
def world(ray_local, tiny_zoo, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-input")
    return tiny_zoo, finished_store(tiny_zoo, tmp_path_factory.getbasetemp() / "finished"), make_misfits(
        tiny_zoo, root)


def disk_and_store(store: str, tmp: Path) -> tuple[list[str], list[str]]:
    """Every row of the store (an SQL dump) and every file under the row's directory and the store's."""
    db = Path(store.removeprefix("sqlite:///"))
    with closing(sqlite3.connect(db)) as connection:
        dump = list(connection.iterdump())
    # SQLite's WAL side files come and go with readers; they hold no rows of their own once checkpointed.
    files = [f"{p}:{p.stat().st_size if p.is_file() else 'dir'}" for folder in (tmp, db.parent)
             for p in sorted(folder.rglob("*")) if not p.name.endswith(("-wal", "-shm"))]
    return dump, files


def test_the_table_covers_every_kind_of_input():
    kinds = {name.split(":")[0] for name, *_ in CASES}
    assert kinds == {"job", "models", "recipe", "store", "export", "merge"} and len(CASES) >= 24


@pytest.mark.parametrize("code,needle,argv", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(world, tmp_path, monkeypatch, code, needle, argv):
    zoo, store, misfits = world
    monkeypatch.chdir(tmp_path)  # a default `runs/NAME/` would land here, and be seen
    bed = Bed(tmp_path, zoo, store, misfits)
    args = argv(bed)
    before = disk_and_store(store, tmp_path)
    result = invoke(*args)
    assert result.exit_code == code, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and result.stdout == "", result.output
    assert needle.format(tmp=tmp_path, misfits=misfits, zoo=zoo.root) in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert disk_and_store(store, tmp_path) == before


def test_run_job_refuses_models_its_space_cannot_build_before_touching_the_store(world, tmp_path):
    from evosearch.search.driver import DriverError, run_job
    from evosearch.search.job import parse_job
    from storage import Store

    zoo = world[0]
    dfs_deeper_than_the_models = {"kind": "dfs", "sources": ["math", "lang"], "num_layers": 5}
    spec = parse_job(small_job(zoo, "misfit", tmp_path, search_space=dfs_deeper_than_the_models))
    with Store.open(f"sqlite:///{tmp_path / 'evosearch.db'}") as store:
        with pytest.raises((ValueError, DriverError), match="DFS source 0"):
            run_job(spec, store)
        assert store.list_jobs() == []
