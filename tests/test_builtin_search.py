"""Searches on lm-eval's own gsm8k, mgsm_direct_ja and arc_easy (loaded by name, pointed by overrides at tiny
datasets in their schemas): scores stored under their metric and filter, the front, `export --verify`, a
calibration and reduced fitness on the generative task, and a job whose first generation fails whole."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from builtin_tasks import overrides
from evosearch.api import Job
from evosearch.cli import app
from evosearch.optimizers.pareto import non_dominated_mask
from evosearch.search.driver import DriverError, run_job
from evosearch.search.job import parse_job
from storage import Store
from test_driver import _source_with_nan_layer
from test_job import zoo_job

pytestmark = pytest.mark.slow

# Each search task is a built-in task made to score its train split; the report split is the task itself.
SEARCH = {"gsm8k_search": ("gsm8k", "exact_match", "flexible-extract"),
          "mgsm_search": ("mgsm_direct_ja", "exact_match", "remove_whitespace"),
          "arc_search": ("arc_easy", "acc_norm", "none")}


def _tasks(tmp_path) -> dict:
    found = overrides(tmp_path / "data")
    found.update({"mgsm_search": {"from": "mgsm_direct_ja", "test_split": "train"},
                  "arc_search": {"from": "arc_easy", "test_split": "train"}})
    return {"overrides": found}


def _store(tmp_path) -> Store:
    return Store.open(f"sqlite:///{tmp_path / 'evosearch.db'}")


def test_three_builtin_tasks_searched_scored_ranked_and_verified(ray_local, tiny_zoo, tmp_path):
    torch.set_num_threads(1)
    objectives = [{"task": "gsm8k_search", "report_task": "gsm8k", "filter": "flexible-extract", "direction": "max"},
                  {"task": "mgsm_search", "report_task": "mgsm_direct_ja", "direction": "max"},
                  {"task": "arc_search", "report_task": "arc_easy", "metric": "acc_norm", "direction": "max"}]
    spec = parse_job({**zoo_job(tiny_zoo, name="builtin", generations=1, objectives=objectives,
                                optimizer={"name": "nsga2", "pop_size": 4}, tasks=_tasks(tmp_path),
                                fitness={"mode": "full"}),
                      "output_dir": str(tmp_path / "builtin")})
    store = _store(tmp_path)
    summary = run_job(spec, store)
    assert summary.status == "finished" and summary.candidates == 4

    stored = store.get_job("builtin")
    assert [(o["metric"], o["filter"]) for o in stored.spec["objectives"]] == [v[1:] for v in SEARCH.values()]
    done = [c for c in store.candidates(summary.job_id, status="done") if c.cached_from is None]
    assert len(done) >= 2
    for c in done:
        for s in c.scores:
            _, metric, filter_ = SEARCH[s.objective]
            value = s.estimated if s.split == "search" else s.full
            assert (s.metric, s.filter) == (metric, filter_) and 0.0 <= value <= 1.0
    # The front is the non-dominated set of the stored search scores.
    values = np.array([[next(s.estimated for s in c.scores if s.objective == o and s.split == "search")
                        for o in SEARCH] for c in done])
    front = {c.id for c in store.front(summary.job_id)}
    assert front == {c.id for c, keep in zip(done, non_dominated_mask(values, ["max"] * 3)) if keep}

    job = Job(store, stored)
    chosen = store.front(summary.job_id)[0]
    out = job.export(tmp_path / "export", candidate=chosen.id, verify=True)
    card = (out / "README.md").read_text()
    report = {s.objective: s.full for s in chosen.scores if s.split == "report"}
    for objective, (task, metric, filter_) in SEARCH.items():
        row = next(line for line in card.splitlines() if line.startswith(f"| {objective} |"))
        assert f"| {metric}/{filter_} |" in row
        assert float(row.split("|")[-2].split()[0]) == pytest.approx(report[objective], abs=1e-9)


def test_calibration_and_reduced_fitness_on_a_generative_builtin_task(ray_local, tiny_zoo, tmp_path):
    torch.set_num_threads(1)
    tasks = _tasks(tmp_path)
    calibration = {"name": "gsm-calib", "store": f"sqlite:///{tmp_path / 'evosearch.db'}", "seed": 0,
                   "sources": {k: str(v) for k, v in tiny_zoo.models.items()}, "base_model": "base",
                   "search_space": {"kind": "ps", "sources": ["math", "lang"], "methods": "task_arithmetic",
                                    "bounds": {"weight": [0.0, 3.0]}, "fixed_per_model": {"density": 1.0}},
                   "n_random": 3, "n_heldout": 0,
                   "tasks": {"names": ["gsm8k_search"], "scoring": {"gsm8k_search": {"filter": "flexible-extract"}},
                             **tasks},
                   "workers": {"count": 2, "num_cpus": 0.5}}  # generation is slow: both cores
    path = tmp_path / "calib.yaml"
    path.write_text(yaml.safe_dump(calibration, sort_keys=False))
    result = CliRunner().invoke(app, ["calibrate", str(path)])
    assert result.exit_code == 0, result.output
    store = _store(tmp_path)
    record = store.get_calibration("gsm-calib")
    assert record.spec["tasks"]["scoring"]["gsm8k_search"] == {"metric": "exact_match", "filter": "flexible-extract"}
    assert all(set(m.responses["gsm8k_search"].values()) <= {0, 1} for m in record.models)

    objective = {"task": "gsm8k_search", "report_task": "gsm8k", "direction": "max"}
    reduced = {"mode": "reduced", "calibration": "gsm-calib", "estimator": "gpirt", "k": 4, "strategy": "random"}
    mismatched = parse_job({**zoo_job(tiny_zoo, name="mismatch", generations=1, objectives=[objective],
                                      fitness=reduced, tasks=tasks), "output_dir": str(tmp_path / "mismatch")})
    with pytest.raises(DriverError, match="scored task 'gsm8k_search' by exact_match/flexible-extract, the "
                                          "objective by exact_match/strict-match"):
        run_job(mismatched, store)
    spec = parse_job({**zoo_job(tiny_zoo, name="reduced", generations=1,
                                objectives=[{**objective, "filter": "flexible-extract"}], fitness=reduced,
                                tasks=tasks), "output_dir": str(tmp_path / "reduced")})
    summary = run_job(spec, store)
    assert summary.status == "finished" and summary.candidates == 4
    for c in store.candidates(summary.job_id, status="done"):
        (search,) = [s for s in c.scores if s.split == "search"]
        assert (search.metric, search.filter) == ("exact_match", "flexible-extract")
        assert search.anchor_accuracy is not None and round(search.anchor_accuracy * 4, 6) % 1 == 0


def test_a_first_generation_that_fails_whole_ends_the_job_with_its_first_error(ray_local, tiny_zoo, tmp_path,
                                                                                 monkeypatch):
    broken = _source_with_nan_layer(tiny_zoo.models["lang"], tmp_path / "broken", layer=1)
    job = zoo_job(tiny_zoo, name="broken", generations=2,
                  search_space={"kind": "ps", "sources": ["broken"], "methods": "task_arithmetic",
                                "bounds": {"weight": [0.5, 1.0]}, "fixed_per_model": {"density": 1.0}})
    job["sources"]["broken"] = str(broken)
    job["output_dir"] = str(tmp_path / "out")
    job_file = tmp_path / "broken.yaml"
    job_file.write_text(yaml.safe_dump(job, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["run", str(job_file)])
    assert result.exit_code == 1, result.output
    assert result.stderr.count("\n") == 1 and "finished" not in result.output
    assert result.stderr.startswith("error: job broken: every candidate of the first generation failed; the first: ")
    assert "NaN or infinite logits" in result.stderr
    record = Store.open(f"sqlite:///{tmp_path / 'out' / 'evosearch.db'}").get_job("broken")
    assert record.status == "failed" and "NaN or infinite logits" in record.message
