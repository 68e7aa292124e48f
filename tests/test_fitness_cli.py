"""`evosearch calibrate` and `evosearch fitness report` on the tiny zoo: real Ray, real lm-eval, a real SQLite
file; a table of bad calibration files and their one-line errors."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from evosearch.cli import app

ROW_FIELDS = {"estimator", "strategy", "k", "items_per_candidate", "full_items", "reduction", "mae_points",
              "worst_points", "spearman", "mae_points_per_task", "spearman_per_task", "n_heldout", "n_calibration",
              "meets_bar"}
TASKS = ["zoo_math", "zoo_lang"]


def calibration(zoo, tmp_path: Path, **overrides) -> dict:
    models = {name: str(path) for name, path in zoo.models.items()}
    spec = {
        "name": "tiny-calib", "store": f"sqlite:///{tmp_path / 'calib.db'}", "seed": 0,
        "sources": models, "base_model": "base",
        "search_space": {"kind": "ps", "sources": ["math", "strings", "lang"], "methods": "task_arithmetic",
                         "parameters": {"normalize": False}, "bounds": {"weight": [0.0, 1.5]}},
        "n_random": 6, "n_heldout": 3, "tasks": TASKS, "include_path": str(zoo.include_path),
        "workers": {"count": 2, "num_cpus": 0.5},  # two cores score the 13 models
        "report": {"estimators": ["weighted_anchor", "gpirt", "mgpirt"], "strategies": ["random", "irt_clustering"],
                   "ks": [5, 20]},
    }
    spec.update(overrides)
    return spec


def write(tmp_path: Path, spec: dict, name: str = "calib.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def _without(spec: dict, field: str) -> dict:
    return {k: v for k, v in spec.items() if k != field}


def _with(spec: dict, section: str, **values) -> dict:
    return {**spec, section: {**spec[section], **values}}


BAD_FILES = [
    ("missing name", lambda s: _without(s, "name"), r"name: required field is missing"),
    ("missing model", lambda s: {**s, "sources": {**s["sources"], "math": "/no/such/model"}},
     r"sources\.math: no model at /no/such/model \(missing config\.json\)"),
    ("base not a source", lambda s: {**s, "base_model": "llama"}, r"base_model: 'llama' is not one of sources"),
    ("unknown task", lambda s: {**s, "tasks": ["zoo_math", "zoo_nope"]},
     r"tasks\.names\[1\]: unknown lm-eval task 'zoo_nope': not under tasks\.include_path nor lm-eval's own tasks"),
    ("task twice", lambda s: {**s, "tasks": ["zoo_math", "zoo_math"]}, r"tasks\.names: task 'zoo_math' is listed twice"),
    ("missing include path", lambda s: {**s, "include_path": "/no/tasks"}, r"tasks\.include_path\[0\]: not found: /no/tasks"),
    ("unknown estimator", lambda s: _with(s, "report", estimators=["gpirt", "psychic"]),
     r"report\.estimators: unknown estimator 'psychic'; known: .*gpirt"),
    ("unknown strategy", lambda s: _with(s, "report", strategies=["medoids"]),
     r"report\.strategies: unknown anchor strategy 'medoids'"),
    ("zero anchors", lambda s: _with(s, "report", ks=[0, 10]), r"report\.ks: anchor sizes must be >= 1, got 0"),
    ("negative population", lambda s: {**s, "n_random": -1}, r"n_random: Input should be greater than or equal to 0"),
    ("no workers", lambda s: _with(s, "workers", count=0), r"workers\.count: Input should be greater than 0"),
    ("bad ability scope", lambda s: {**s, "irt": {"ability_scope": "global"}},
     r"irt\.ability_scope: unknown ability scope 'global'"),
    ("DFS space", lambda s: {**s, "search_space": {"kind": "dfs"}},
     r"search_space\.kind: random calibration merges are drawn from a PS space, not 'dfs'"),
    ("bad merge method", lambda s: _with(s, "search_space", methods="blend"),
     r"search_space\.methods: unknown merge method 'blend'"),
    ("unknown field", lambda s: {**s, "n_randoms": 4}, r"n_randoms: unknown field"),
    ("bad name", lambda s: {**s, "name": "../up"}, r"name: calibration name '\.\./up' must be"),
    ("too few to fit", lambda s: {**s, "sources": {"math": s["sources"]["math"]}, "base_model": None, "n_random": 0,
                                  "search_space": {"kind": "ps", "sources": ["math"], "methods": "linear"}},
     r"n_random: 1 model\(s\) to fit IRT on \(sources, base and random merges\); at least 2 are needed"),
    ("not a mapping", lambda s: ["name"], r"a calibration file is a YAML mapping of fields, got list"),
]


@pytest.mark.parametrize("case, edit, message", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_bad_calibration_files_are_one_line_usage_errors(tiny_zoo, tmp_path, case, edit, message):
    path = write(tmp_path, edit(calibration(tiny_zoo, tmp_path)))
    result = CliRunner().invoke(app, ["calibrate", str(path)])
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output
    assert result.stderr.startswith(f"error: {path}: ")
    assert re.search(message, result.stderr), result.stderr
    assert not (tmp_path / "calib.db").exists()  # refused before any store or worker starts


def test_unreadable_files_and_unknown_calibrations_are_usage_errors(tiny_zoo, tmp_path):
    runner = CliRunner()
    missing = runner.invoke(app, ["calibrate", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2 and missing.stderr == f"error: {tmp_path / 'nope.yaml'}: calibration file not found\n"
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n", encoding="utf-8")
    bad_yaml = runner.invoke(app, ["calibrate", str(broken)])
    assert bad_yaml.exit_code == 2 and "not valid YAML at line 2" in bad_yaml.stderr
    no_store = runner.invoke(app, ["fitness", "report", "tiny", "--store", f"sqlite:///{tmp_path / 'none.db'}"])
    assert no_store.exit_code == 2 and no_store.stderr == f"error: no store at {tmp_path / 'none.db'} (pass --store URL)\n"


@pytest.mark.slow
def test_calibrate_resumes_then_reports(ray_local, tiny_zoo, tmp_path):
    from storage import Store

    runner = CliRunner()
    url = f"sqlite:///{tmp_path / 'calib.db'}"
    # A first run stops short (4 random merges); the full file then scores only what is missing.
    first = runner.invoke(app, ["calibrate", str(write(tmp_path, calibration(tiny_zoo, tmp_path, n_random=4)))])
    assert first.exit_code == 0, first.output
    assert "0 already stored, 11 to score" in first.stdout and "IRT fit version 1 (new) on 8 models" in first.stdout
    path = write(tmp_path, calibration(tiny_zoo, tmp_path))
    second = runner.invoke(app, ["calibrate", str(path)])
    assert second.exit_code == 0, second.output
    assert "11 already stored, 2 to score" in second.stdout and "IRT fit version 2 (new) on 10 models" in second.stdout
    assert "random-005 (random)" in second.stderr and "random-003 (random)" not in second.stderr

    record = Store.open(url).get_calibration("tiny-calib")
    roles = [m.role for m in record.models]
    assert sorted(roles) == sorted(["base"] + ["source"] * 3 + ["random"] * 6 + ["heldout"] * 3)
    for model in record.models:
        assert {t: len(r) for t, r in model.responses.items()} == {"zoo_math": 500, "zoo_lang": 500}
        assert set(model.accuracy) == set(TASKS) and model.seconds > 0
    assert record.fit_version == 2 and "heldout-000" not in record.irt_params["model_ids"]
    assert len(record.irt_params["model_ids"]) == 10

    third = runner.invoke(app, ["calibrate", str(path)])
    assert third.exit_code == 0 and "13 already stored, 0 to score" in third.stdout
    assert "IRT fit version 2 (unchanged)" in third.stdout
    # The stored settings are those of the last file run (6 random merges, not the first run's 4).
    assert Store.open(url).get_calibration("tiny-calib").spec["n_random"] == 6

    out = tmp_path / "bench" / "report.json"
    shown = runner.invoke(app, ["fitness", "report", "tiny-calib", "--store", url, "--json", "--out", str(out)])
    assert shown.exit_code == 0, shown.output
    report = json.loads(shown.stdout)
    assert json.loads(out.read_text(encoding="utf-8")) == report
    assert report["calibration"] == "tiny-calib" and report["tasks"] == TASKS
    assert report["n_calibration"] == 10 and report["n_heldout"] == 3
    assert report["machine"]["cpu_count"] >= 1 and report["date"].startswith("20")
    assert len(report["rows"]) == 3 * 2 * 2
    for row in report["rows"]:
        assert set(row) == ROW_FIELDS
        assert row["full_items"] == 1000 and row["items_per_candidate"] == 2 * row["k"]
        assert 0 <= row["mae_points"] <= row["worst_points"] <= 100
        assert row["meets_bar"] == (row["reduction"] >= 20 and row["mae_points"] <= 3
                                    and row["spearman"] is not None and row["spearman"] >= 0.9)

    table = runner.invoke(app, ["fitness", "report", str(path), "--out", str(tmp_path / "r2.json")])
    assert table.exit_code == 0, table.output
    assert "MAE points" in table.stdout and "Spearman" in table.stdout
    assert ("meet the bar" in table.stdout) != ("no row meets the bar" in table.stdout)

    too_many = runner.invoke(app, ["calibrate", str(write(tmp_path, calibration(
        tiny_zoo, tmp_path, report={"ks": [600]}), "big.yaml"))])
    assert too_many.exit_code == 0 and "0 to score" in too_many.stdout
    refused = runner.invoke(app, ["fitness", "report", str(tmp_path / "big.yaml"), "--out", str(tmp_path / "r3.json")])
    assert refused.exit_code == 2 and refused.stderr.count("\n") == 1, refused.output
    assert refused.stderr.startswith("error: calibration 'tiny-calib': ")
    by_name = runner.invoke(app, ["fitness", "report", "tiny-calib", "--store", url, "--out", str(tmp_path / "r4.json")])
    assert by_name.exit_code == 2 and by_name.stderr == refused.stderr  # the stored report settings are big.yaml's

    unknown = runner.invoke(app, ["fitness", "report", "other", "--store", url])
    assert unknown.exit_code == 2 and "unknown calibration 'other'" in unknown.stderr


def _stored_models(db: Path, name: str) -> int:
    """Models stored so far, read with plain sqlite3 so the test never migrates the store the run is making."""
    if not db.is_file():
        return 0
    try:
        with closing(sqlite3.connect(db, timeout=1)) as conn:
            return conn.execute("SELECT count(*) FROM calibration_models m JOIN calibrations c "
                                "ON m.calibration_id = c.id WHERE c.name = ?", (name,)).fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.mark.slow
def test_killed_calibration_keeps_what_it_scored_and_resumes(ray_local, tiny_zoo, tmp_path):
    """`evosearch calibrate` in its own process, SIGKILLed after a few models: they stay, and are not redone."""
    from storage import Store

    path = write(tmp_path, calibration(tiny_zoo, tmp_path))
    db = tmp_path / "calib.db"
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    proc = subprocess.Popen([str(Path(sys.executable).parent / "evosearch"), "calibrate", str(path)], cwd=tmp_path,
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None and _stored_models(db, "tiny-calib") < 2:
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the calibration ended before it could be killed"
    before = {m.label: m for m in Store.open(f"sqlite:///{db}").get_calibration("tiny-calib").models}
    assert 2 <= len(before) < 13

    resumed = CliRunner().invoke(app, ["calibrate", str(path)])
    assert resumed.exit_code == 0, resumed.output
    assert f"{len(before)} already stored, {13 - len(before)} to score" in resumed.stdout
    after = Store.open(f"sqlite:///{db}").get_calibration("tiny-calib")
    assert len(after.models) == 13 and after.fit_version == 1
    for model in after.models:
        if model.label in before:  # untouched: not scored again
            assert (model.seconds, model.responses) == (before[model.label].seconds, before[model.label].responses)
