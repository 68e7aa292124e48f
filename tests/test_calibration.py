"""Calibration population, calibration runs (in-process and on Ray, stored model by model in a real SQLite
store) and the honesty report, on a simulated 2PL population and on the tiny zoo with real lm-eval."""

from __future__ import annotations

import functools
import json
import math

import pytest
import torch

from evosearch.recipe import parse_recipe, recipe_hash
from evosearch.search.calibrate import run_calibration
from fitness.calibration import (CalibrationMember, calibration_population, fitness_report, format_report,
                                 identity_recipe)
from fitness.errors import FitnessError
from fitness.reduced import ReducedFitness, fit_calibration
from test_reduced_fitness import simulated_calibration
from workers.candidate import CandidateWorker
from workers.pool import ActorOptions, WorkerPool

ROW_FIELDS = {"estimator", "strategy", "k", "items_per_candidate", "full_items", "reduction", "mae_points",
              "worst_points", "spearman", "mae_points_per_task", "spearman_per_task", "n_heldout", "n_calibration"}


def _space(paths: dict[str, str]) -> dict:
    return {"kind": "ps", "methods": ["task_arithmetic"], "base_model": paths["base"],
            "sources": [paths["math"], paths["strings"], paths["lang"]], "parameters": {"normalize": False},
            "bounds": {"weight": [0.0, 1.5]}}


FAKE = {name: f"/zoo/models/{name}" for name in ("base", "math", "strings", "lang")}


def test_population_has_sources_base_random_and_distinct_heldout_merges():
    members = calibration_population(_space(FAKE), n_random=6, seed=3, n_heldout=4)
    assert [(m.label, m.role) for m in members[:4]] == [("base", "base"), ("math", "source"),
                                                        ("strings", "source"), ("lang", "source")]
    assert members[1].recipe == identity_recipe(FAKE["math"])
    assert [m.role for m in members[4:]] == ["random"] * 6 + ["heldout"] * 4
    assert [m.label for m in members[4:6]] == ["random-000", "random-001"]
    hashes = [recipe_hash(parse_recipe(m.recipe)) for m in members]
    assert len(set(hashes)) == len(hashes)  # no merge repeats another, held-out ones included
    for m in members[4:]:
        recipe = parse_recipe(m.recipe)
        assert recipe.merge_method == "task_arithmetic" and recipe.base_model == FAKE["base"]
        assert all(0.0 <= x.parameters["weight"] <= 1.5 for x in recipe.models)

    assert calibration_population(_space(FAKE), n_random=6, seed=3, n_heldout=4) == members
    other = calibration_population(_space(FAKE), n_random=6, seed=4, n_heldout=4)
    assert [m.recipe for m in other[4:]] != [m.recipe for m in members[4:]]
    # asking for more held-out merges leaves the random ones as they were (independent seed streams)
    more = calibration_population(_space(FAKE), n_random=6, seed=3, n_heldout=8)
    assert more[:14] == members
    with pytest.raises(FitnessError, match="n_random and n_heldout must be >= 0"):
        calibration_population(_space(FAKE), n_random=-1)


def test_report_on_a_simulated_population_finds_the_good_estimators():
    world = simulated_calibration(seed=9, n_heldout=20)
    models = world["calibration"].models
    calibration = [m for m in models if m.role != "heldout"]
    rows = fitness_report(calibration, world["heldout"], estimators=["weighted_anchor", "gpirt", "mgpirt"],
                          ks=(10, 150), strategies=("random", "irt_clustering"), seed=0)
    assert len(rows) == 3 * 2 * 2
    json.dumps(rows, allow_nan=False)  # strict JSON: no NaN anywhere
    for row in rows:
        assert set(row) == ROW_FIELDS
        assert row["full_items"] == 600 and row["items_per_candidate"] == 2 * row["k"]
        assert row["reduction"] == pytest.approx(600 / (2 * row["k"]))
        assert 0 <= row["mae_points"] <= row["worst_points"] <= 100
        assert row["n_heldout"] == 20 and row["n_calibration"] == len(calibration)
    best = {(r["estimator"], r["strategy"], r["k"]): r for r in rows}
    # Held-out merges are convex mixes of three sources, so their scores are close together: only many
    # anchors rank them well. The report must show more anchors helping every estimator.
    gp = best[("gpirt", "random", 150)]
    assert gp["mae_points"] < 3.0 and gp["spearman"] > 0.7
    for (name, strategy, k), row in best.items():
        if k == 10:
            assert best[(name, strategy, 150)]["mae_points"] < row["mae_points"], (name, strategy)
    table = format_report(rows)
    assert table.count("\n") == len(rows) + 1 and "| gpirt | random | 150 | 300 | 2.0x |" in table

    with pytest.raises(FitnessError, match="needs held-out models"):
        fitness_report(calibration, [], ks=(10,))
    with pytest.raises(FitnessError, match="unknown estimator 'psychic'"):
        fitness_report(calibration, world["heldout"], estimators=["psychic"])


@pytest.fixture(scope="module")
def zoo_paths(tiny_zoo):
    return {name: str(path) for name, path in tiny_zoo.models.items()}


def test_failed_members_are_reported_after_the_others_are_handed_over(tiny_zoo, zoo_paths):
    torch.set_num_threads(1)
    factory = functools.partial(CandidateWorker, [zoo_paths["base"], zoo_paths["math"]], str(tiny_zoo.include_path),
                                ["zoo_math"])
    members = [CalibrationMember("broken", "random", identity_recipe("/not/loaded")),
               CalibrationMember("base", "base", identity_recipe(zoo_paths["base"]))]
    seen = []
    with pytest.raises(FitnessError, match=r"^1 of 2 calibration models failed; first: broken: CandidateError: "
                                           r"candidate calib/broken: build failed: SourceError: model /not/loaded"):
        run_calibration(members, factory, on_model=seen.append)
    assert [m.label for m in seen] == ["base"]
    assert len(seen[0].responses["zoo_math"]) == 500 and seen[0].seconds > 0


@pytest.mark.slow
def test_calibration_on_ray_stored_model_by_model_then_fitness_and_report(ray_local, tiny_zoo, zoo_paths, tmp_path):
    from storage import CalibrationModelRecord, CalibrationRecord, Store

    tasks = ["zoo_math", "zoo_lang"]
    members = calibration_population(_space(zoo_paths), n_random=6, seed=0, n_heldout=3)
    store = Store.open(f"sqlite:///{tmp_path / 'calib.db'}")
    calibration_id = store.save_calibration(CalibrationRecord(name="zoo-tiny", tasks=tasks, spec={"n_random": 6}))
    stored_as_they_finish = []

    def store_one(model):
        store.add_calibration_model(calibration_id, CalibrationModelRecord(
            label=model.label, role=model.role, recipe=model.recipe, responses=model.responses,
            accuracy=model.accuracy, seconds=model.seconds))
        stored_as_they_finish.append(model.label)

    pool = WorkerPool(CandidateWorker, (list(zoo_paths.values()), str(tiny_zoo.include_path), tasks),
                      num_workers=2, options=ActorOptions(num_cpus=0.5)).start()
    try:
        models = run_calibration(members, pool, on_model=store_one)
    finally:
        pool.shutdown()
    assert [m.label for m in models] == [m.label for m in members]
    assert sorted(stored_as_they_finish) == sorted(m.label for m in members)

    record = store.get_calibration("zoo-tiny")
    assert len(record.models) == len(members)
    for model in record.models:
        assert {t: len(r) for t, r in model.responses.items()} == {"zoo_math": 500, "zoo_lang": 500}

    params = fit_calibration(record)
    store.set_calibration_fit(calibration_id, params.to_dict(), fit_version=1)
    record = store.get_calibration("zoo-tiny")
    fitness = ReducedFitness.from_calibration(record, estimator="gpirt", k=10, strategy="correctness_clustering")
    assert fitness.context.params.item_ids == params.item_ids and fitness.n_full_items == 1000
    heldout = [m for m in record.models if m.role == "heldout"]
    for model in heldout:
        estimate = fitness.estimate(model.responses)
        assert all(abs(estimate[t] - model.accuracy[t]) < 0.15 for t in tasks)

    # The fitness ships to Ray workers: estimates made there are the driver's.
    remote_estimate = ray_local.remote(lambda f, answers: f.estimate(answers))
    assert ray_local.get(remote_estimate.remote(fitness, heldout[0].responses)) == fitness.estimate(heldout[0].responses)

    rows = fitness_report([m for m in record.models if m.role != "heldout"], heldout,
                          estimators=["weighted_anchor", "pirt", "mgpirt"], ks=(5, 20),
                          strategies=("random", "irt_clustering"), seed=0, tasks=tasks)
    assert len(rows) == 12
    json.dumps(rows, allow_nan=False)
    for row in rows:
        assert row["n_heldout"] == 3 and row["reduction"] == pytest.approx(1000 / row["items_per_candidate"])
        assert 0 <= row["mae_points"] <= row["worst_points"] <= 100
        assert row["spearman"] is None or -1 <= row["spearman"] <= 1 and not math.isnan(row["spearman"])
