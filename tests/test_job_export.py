"""`evosearch export` and `evosearch.api` on finished jobs: real Ray, SQLite, lm-eval and the tiny zoo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from evosearch.cli import app
from evosearch.optimizers.pareto import knee_index
from storage import Store
from test_driver import _spec

pytestmark = pytest.mark.slow

_FINISHED: dict[str, str] = {}  # job name -> store URL, shared with test_plot (one run per session)


def finished_job(zoo, root: Path, name: str) -> str:
    """Run (once per session) a small job and return its store URL: `ps` (one objective, PS CMA-ES),
    `dfs` (zoo_target and path length, NSGA-II on a DFS space, report split scored every generation) or
    `dfs3` (the same with zoo_math as a third objective)."""
    if name not in _FINISHED:
        from evosearch.search.driver import run_job

        objectives = [{"task": "zoo_target", "direction": "max"}, {"cost": "path_length", "direction": "min"}]
        if name == "dfs3":
            objectives.insert(1, {"task": "zoo_math", "direction": "max"})
        overrides = {} if name == "ps" else dict(
            search_space={"kind": "dfs", "sources": ["math", "lang"], "num_layers": 2, "max_path": 3},
            optimizer={"name": "nsga2", "pop_size": 4}, objectives=objectives, report={"when": "every_generation"})
        url = f"sqlite:///{root / name / 'evosearch.db'}"
        (root / name).mkdir(parents=True, exist_ok=True)
        with Store.open(url) as store:
            summary = run_job(_spec(zoo, root, name=name, **overrides), store)
        assert summary.status == "finished", summary
        _FINISHED[name] = url
    return _FINISHED[name]


@pytest.fixture(scope="module")
def ps_store(ray_local, tiny_zoo, tmp_path_factory) -> str:
    return finished_job(tiny_zoo, tmp_path_factory.getbasetemp() / "jobs", "ps")


@pytest.fixture(scope="module")
def dfs_store(ray_local, tiny_zoo, tmp_path_factory) -> str:
    return finished_job(tiny_zoo, tmp_path_factory.getbasetemp() / "jobs", "dfs")


def _export(*args: str):
    return CliRunner().invoke(app, ["export", *args])


def _card_candidate(out: Path) -> int:
    card = (out / "README.md").read_text()
    return int(card.split("candidate id ")[1].split(" ")[0])


def _score(candidate, objective: str, split: str):
    from evosearch.api import split_scores

    return split_scores(candidate, split).get(objective)


def test_best_export_loads_with_plain_transformers_and_matches_the_in_memory_merge(ps_store, tmp_path):
    from transformers import AutoModelForCausalLM

    from evosearch.api import open_job
    from evosearch.merge.ps import build_merged_model
    from evosearch.merge.sources import SourceModel
    from evosearch.recipe import parse_recipe

    out = tmp_path / "best"
    result = _export("ps", str(out), "--best", "zoo_target", "--store", ps_store)
    assert result.exit_code == 0, result.output
    job = open_job("ps", store=ps_store)
    reported = [c for c in job.candidates() if _score(c, "zoo_target", "report") is not None]
    best = max(_score(c, "zoo_target", "report") for c in reported)
    chosen = next(c for c in job.candidates() if c.id == _card_candidate(out))
    assert _score(chosen, "zoo_target", "report") == best

    model = AutoModelForCausalLM.from_pretrained(out)
    recipe = parse_recipe(chosen.recipe)
    reference = build_merged_model(recipe, {p: SourceModel.open(p) for p in recipe.source_paths()})
    ids = torch.tensor([[2, 3, 4, 5, 6, 7]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=0, atol=0)

    assert yaml.safe_load((out / "mergekit_config.yml").read_text())["merge_method"] == recipe.merge_method
    assert parse_recipe(yaml.safe_load((out / "evosearch_recipe.yaml").read_text())) == recipe
    card = (out / "README.md").read_text()
    assert "Job: `ps`" in card and f"generation {chosen.generation}" in card and "PS (task_arithmetic)" in card
    assert "search split: estimate" in card and "report split: score (held out)" in card
    assert "(`zoo_target`)" in card and "(`zoo_target_report`)" in card
    assert f"{_score(chosen, 'zoo_target', 'search'):.4f} (`zoo_target`)" in card
    assert f"{best:.4f} (`zoo_target_report`)" in card
    assert "on the report split (held out from the search)" in card
    assert all(str(p) in card for p in recipe.source_paths())


def test_verify_remeasures_the_export_with_the_stored_report_score(ps_store, tmp_path):
    from evosearch.api import open_job

    job = open_job("ps", store=ps_store)
    out = tmp_path / "verified"
    result = _export("ps", str(out), "--store", ps_store, "--verify")
    assert result.exit_code == 0, result.output
    chosen = next(c for c in job.candidates() if c.id == _card_candidate(out))
    card = (out / "README.md").read_text()
    row = next(line for line in card.splitlines() if line.startswith("| zoo_target |"))
    remeasured = float(row.split("|")[-2].split()[0])
    assert "re-measured on this export" in card and "first 100 docs" in card
    # The same docs the driver scored on the report split, now from the exported directory.
    stored = _score(chosen, "zoo_target", "report")
    assert remeasured == pytest.approx(stored, abs=1e-9)

    # And the lm_eval CLI itself, `--model hf` on the directory, gives the score the store holds.
    results = tmp_path / "lm_eval"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    subprocess.run([str(Path(sys.executable).parent / "lm_eval"), "--model", "hf", "--model_args",
                    f"pretrained={out}", "--tasks", "zoo_target_report", "--include_path",
                    job.spec.tasks.include_path[0], "--limit", "100", "--device", "cpu", "--batch_size", "64",
                    "--output_path", str(results)], check=True, capture_output=True, env=env, timeout=600)
    measured = json.loads(next(results.rglob("results_*.json")).read_text())["results"]["zoo_target_report"]
    assert measured["acc,none"] == pytest.approx(stored, abs=1e-9)


def test_candidate_knee_and_best_choose_as_documented(dfs_store, tmp_path):
    from evosearch.api import open_job

    job = open_job("dfs", store=dfs_store)
    done = job.candidates()

    out = tmp_path / "by-id"
    assert _export("dfs", str(out), "--candidate", str(done[1].id), "--store", dfs_store).exit_code == 0
    assert _card_candidate(out) == done[1].id and "DFS (layer path)" in (out / "README.md").read_text()
    assert not (out / "mergekit_config.yml").exists()

    front = job.front_candidates()
    table = np.array([[_score(c, o, "search") for o in ("zoo_target", "path_length")] for c in front])
    out = tmp_path / "knee"
    assert _export("dfs", str(out), "--knee", "--store", dfs_store).exit_code == 0
    assert _card_candidate(out) == front[knee_index(table, ["max", "min"])].id

    out = tmp_path / "best-target"
    assert _export("dfs", str(out), "--best", "zoo_target", "--store", dfs_store).exit_code == 0
    chosen = next(c for c in done if c.id == _card_candidate(out))
    assert _score(chosen, "zoo_target", "report") == max(
        v for c in done if (v := _score(c, "zoo_target", "report")) is not None)

    # A cost objective has no report split: ranked on the search split, and the card says so.
    out = tmp_path / "best-cost"
    assert _export("dfs", str(out), "--best", "path_length", "--store", dfs_store).exit_code == 0
    chosen = next(c for c in done if c.id == _card_candidate(out))
    assert _score(chosen, "path_length", "search") == min(_score(c, "path_length", "search") for c in done)
    assert "on the search split (no candidate has a report-split score for it)" in (out / "README.md").read_text()


def test_bad_input_is_a_one_line_error_with_its_exit_code(ps_store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    cases = [
        (["nojob", str(tmp_path / "a")], 2, "no store at"),
        (["nojob", str(tmp_path / "a"), "--store", ps_store], 2, "nojob"),
        (["ps", str(tmp_path / "a"), "--candidate", "99999", "--store", ps_store], 2, "no candidate 99999"),
        (["ps", str(tmp_path / "a"), "--best", "vibes", "--store", ps_store], 2, "no objective 'vibes'"),
        (["ps", str(tmp_path / "a"), "--knee", "--best", "zoo_target", "--store", ps_store], 2, "at most one"),
    ]
    for args, code, needle in cases:
        result = _export(*args)
        assert result.exit_code == code, (args, result.output)
        assert result.output.startswith("error: ") and result.output.count("\n") == 1, result.output
        assert needle in result.output and "Traceback" not in result.output
    assert not (tmp_path / "a").exists() and [p.name for p in full.iterdir()] == ["keep.txt"]

    forced = _export("ps", str(full), "--store", ps_store, "--force")
    assert forced.exit_code == 0, forced.output
    assert (full / "model.safetensors").is_file() and not (full / "keep.txt").exists()


def test_a_missing_source_and_a_failed_candidate_are_refused_with_exit_2(ps_store, tmp_path):
    import shutil
    import sqlite3
    from contextlib import closing

    db = tmp_path / "copy.db"
    shutil.copy(ps_store.removeprefix("sqlite:///"), db)
    with closing(sqlite3.connect(db)) as conn, conn:
        (first, recipe), (second, _) = conn.execute("SELECT id, recipe FROM candidates ORDER BY id LIMIT 2").fetchall()
        source = json.loads(recipe)["models"][-1]["model"]
        conn.execute("UPDATE candidates SET recipe = ? WHERE id = ?",
                     (recipe.replace(source, str(tmp_path / "gone")), first))
        conn.execute("UPDATE candidates SET status = 'failed', error = 'CUDA OOM\nmore' WHERE id = ?", (second,))
    store = f"sqlite:///{db}"
    for candidate, code, needle in ((first, 2, str(tmp_path / "gone")), (second, 2, "failed (CUDA OOM)")):
        out = tmp_path / f"c{candidate}"
        result = _export("ps", str(out), "--candidate", str(candidate), "--store", store)
        assert result.exit_code == code, result.output
        assert result.output.startswith("error: ") and result.output.count("\n") == 1, result.output
        assert needle in result.output and not out.exists()


def test_api_front_is_the_cli_front(dfs_store):
    from evosearch.api import open_job

    job = open_job("dfs", store=dfs_store)
    for by in ("search", "report"):
        for generation in (None, 0):
            args = ["front", "dfs", "--json", "--by", by, "--store", dfs_store]
            if generation is not None:
                args += ["--generation", str(generation)]
            shown = CliRunner().invoke(app, args)
            assert shown.exit_code == 0, shown.output
            assert job.front(generation=generation, by=by) == json.loads(shown.stdout)["front"]
    assert len(job.candidates()) == 8


def test_api_export_by_knee_and_its_errors(dfs_store, tmp_path, monkeypatch):
    from evosearch.api import QueryError, open_job
    from storage import StoreError

    job = open_job("dfs", store=dfs_store)
    out = job.export(tmp_path / "knee", knee=True)
    assert (out / "model.safetensors").is_file() and "knee of the last front" in (out / "README.md").read_text()
    with pytest.raises(QueryError, match="no candidate 12345"):
        job.export(tmp_path / "x", candidate=12345)
    with pytest.raises(QueryError, match="give at most one"):
        job.choose(candidate=1, knee=True)
    with pytest.raises(StoreError, match="nojob"):
        open_job("nojob", store=dfs_store)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(QueryError, match="no store at"):
        open_job("nojob")
