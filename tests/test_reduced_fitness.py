"""ReducedFitness built from a calibration record: anchors to evaluate, estimates near the truth, and the
whole thing survives JSON and pickle (it ships to Ray workers). The calibration is a simulated 2PL
population with a wide ability spread, so an estimator that ignores the answers cannot pass."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from evosearch.recipe import recipe_sources
from fitness.calibration import identity_recipe
from fitness.errors import FitnessError
from fitness.irt import IRTParams
from fitness.reduced import ReducedFitness, ResponseMatrix, fit_calibration
from storage import CalibrationModelRecord, CalibrationRecord
from irt_simulation import draw_abilities, make_bench, merge_abilities

N_SOURCES, N_RANDOM, ITEMS = 3, 27, 300
SOURCE_PATHS = [f"/zoo/models/src{i}" for i in range(N_SOURCES)]


def _as_model(bench, label: str, role: str, row: np.ndarray, recipe: dict | None) -> CalibrationModelRecord:
    responses = {t: {} for t in bench.tasks}
    for item, value in zip(bench.item_ids, row):
        task, _ = item.split("/")
        responses[task][len(responses[task])] = int(value)
    return CalibrationModelRecord(label=label, role=role, recipe=recipe, responses=responses,
                           accuracy={t: float(np.mean(list(d.values()))) for t, d in responses.items()})


def _linear(weights) -> dict:
    return {"kind": "ps", "merge_method": "linear",
            "models": [{"model": p, "parameters": {"weight": float(w)}} for p, w in zip(SOURCE_PATHS, weights)]}


def simulated_calibration(seed: int = 5, n_heldout: int = 12) -> dict:
    """A calibration of sources, random models and held-out merges of the sources (recipes naming
    SOURCE_PATHS), with answers drawn from a known 2PL on two tasks of ITEMS items."""
    rng = np.random.default_rng(seed)
    bench = make_bench(rng, n_tasks=2, items_per_task=ITEMS)
    abilities = draw_abilities(rng, N_SOURCES + N_RANDOM, 2)
    answers = bench.answer(abilities, rng)
    models = [_as_model(bench, f"src{i}", "source", answers[i], identity_recipe(SOURCE_PATHS[i]))
              for i in range(N_SOURCES)]
    models += [_as_model(bench, f"random-{i:03d}", "random", answers[N_SOURCES + i], None) for i in range(N_RANDOM)]
    merged, weights = merge_abilities(rng, abilities[:N_SOURCES], n_heldout)
    heldout = [_as_model(bench, f"heldout-{i:03d}", "heldout", row, _linear(w))
               for i, (row, w) in enumerate(zip(bench.answer(merged, rng), weights))]
    calibration = CalibrationRecord(tasks=list(bench.tasks), models=models + heldout, name="sim")
    return dict(bench=bench, calibration=calibration, heldout=heldout)


@pytest.fixture(scope="module")
def world():
    return simulated_calibration()


@pytest.fixture(scope="module")
def fitness(world):
    return ReducedFitness.from_calibration(world["calibration"], estimator="gpirt", k=30, strategy="irt_clustering")


def test_samples_are_k_doc_ids_per_task(fitness, world):
    assert list(fitness.samples) == world["bench"].tasks
    for task, docs in fitness.samples.items():
        assert len(docs) == 30 == len(set(docs)) and all(0 <= d < ITEMS for d in docs)
        assert docs == sorted(docs)
    assert fitness.n_items == 60 and fitness.n_full_items == 2 * ITEMS
    # held-out models never enter the fit
    assert fitness.context.params.model_ids == sorted(m.label for m in world["calibration"].models if m.role != "heldout")


def test_estimate_from_full_responses_is_near_true_accuracy(fitness, world):
    fit_models = [m for m in world["calibration"].models if m.role != "heldout"]
    errors, constant_errors = [], []
    population_mean = {t: np.mean([m.accuracy[t] for m in fit_models]) for t in world["bench"].tasks}
    for model in fit_models + world["heldout"]:
        estimate = fitness.estimate(model.responses)  # every doc given; only the anchors are read
        assert set(estimate) == set(world["bench"].tasks)
        for task, value in estimate.items():
            assert 0.0 <= value <= 1.0
            errors.append(abs(value - model.accuracy[task]))
            constant_errors.append(abs(population_mean[task] - model.accuracy[task]))
    # 30 binary answers per task carry ~5 points of error (see test_anchors_estimators.py); predicting the
    # population mean for everyone errs about twice that here.
    assert 100 * np.mean(errors) < 7.0
    assert np.mean(errors) < 0.6 * np.mean(constant_errors)


def test_anchor_only_answers_give_the_same_estimate(fitness, world):
    model = world["heldout"][0]
    anchors_only = {t: {d: model.responses[t][d] for d in docs} for t, docs in fitness.samples.items()}
    assert fitness.estimate(anchors_only) == fitness.estimate(model.responses)
    # doc ids as strings, the way a JSON column returns them
    as_json = json.loads(json.dumps(anchors_only))
    assert fitness.estimate(as_json) == fitness.estimate(anchors_only)
    assert fitness.anchor_accuracy(anchors_only) == {
        t: pytest.approx(np.mean(list(d.values()))) for t, d in anchors_only.items()}


def test_json_and_pickle_round_trips_keep_every_estimate(fitness, world):
    restored = ReducedFitness.from_dict(json.loads(json.dumps(fitness.to_dict())))
    unpickled = pickle.loads(pickle.dumps(fitness))
    for other in (restored, unpickled):
        assert other.samples == fitness.samples and other.n_full_items == fitness.n_full_items
        for model in world["heldout"][:4]:
            assert other.estimate(model.responses) == pytest.approx(fitness.estimate(model.responses), abs=1e-12)
    with pytest.raises(FitnessError, match="format version"):
        ReducedFitness.from_dict({**fitness.to_dict(), "version": 99})


def test_stored_irt_params_are_reused_and_a_stale_fit_is_redone(world):
    calibration = world["calibration"]
    params = fit_calibration(calibration)
    shifted = IRTParams.from_dict(params.to_dict())
    shifted.b += 0.5  # a stored fit that differs from a fresh one shows whether it was used
    stored = CalibrationRecord(name="", tasks=calibration.tasks, models=calibration.models, irt_params=shifted.to_dict())
    reused = ReducedFitness.from_calibration(stored, k=10)
    assert np.allclose(reused.context.params.b, shifted.b)

    stale = IRTParams.from_dict({**params.to_dict(), "model_ids": [f"other{i}" for i in range(len(params.model_ids))]})
    refit = ReducedFitness.from_calibration(
        CalibrationRecord(name="", tasks=calibration.tasks, models=calibration.models, irt_params=stale.to_dict()), k=10)
    assert refit.context.params.model_ids == params.model_ids
    assert np.allclose(refit.context.params.b, params.b)


def test_merge_aware_estimators_take_source_paths_or_labels(world):
    fitness = ReducedFitness.from_calibration(world["calibration"], estimator="mgpirt", k=30)
    model = world["heldout"][1]
    paths, weights = recipe_sources(model.recipe)
    assert paths == SOURCE_PATHS and weights == pytest.approx(
        [m.parameters["weight"] for m in _as_recipe(model.recipe).models])
    by_path = fitness.estimate(model.responses, paths, weights)
    by_label = fitness.estimate(model.responses, ["src0", "src1", "src2"], weights)
    spelled = fitness.estimate(model.responses, [p + "/" for p in paths], weights)
    assert by_path == by_label == spelled
    with pytest.raises(FitnessError, match=r"source model /zoo/models/other is not in the calibration population"):
        fitness.estimate(model.responses, ["/zoo/models/other"])
    with pytest.raises(FitnessError, match="need the candidate's source models"):
        fitness.estimate(model.responses)


def _as_recipe(data: dict):
    from evosearch.recipe import parse_recipe

    return parse_recipe(data)


def test_recipe_sources_reads_merge_weights():
    ta = {"kind": "ps", "merge_method": "task_arithmetic", "base_model": "/m/base",
          "models": [{"model": "/m/a", "parameters": {"weight": 0.7}}, {"model": "/m/b", "parameters": {"weight": 0.5}}]}
    assert recipe_sources(ta) == (["/m/base", "/m/a", "/m/b"], pytest.approx([-0.2, 0.7, 0.5]))
    slerp = {"kind": "ps", "merge_method": "slerp", "base_model": "/m/base", "parameters": {"t": 0.25},
             "models": [{"model": "/m/a"}]}
    assert recipe_sources(slerp) == (["/m/base", "/m/a"], [0.75, 0.25])
    per_layer = {**ta, "models": [{"model": "/m/a", "parameters": {"weight": [{"filter": "mlp", "value": 0.1},
                                                                           {"value": 0.3}]}}]}
    assert recipe_sources(per_layer) == (["/m/base", "/m/a"], None)
    linear = {"kind": "ps", "merge_method": "linear", "base_model": "/m/base", "parameters": {"weight": 0.5},
              "models": [{"model": "/m/a", "parameters": {"weight": 2.0}}]}
    assert recipe_sources(linear) == (["/m/base", "/m/a"], [0.5, 2.0])
    dfs = {"kind": "dfs", "sources": [ta, "/m/c"], "num_layers": 1, "indicator": [True, True], "scales": [[1, 1], [1, 1]]}
    assert recipe_sources(dfs) == (["/m/base", "/m/a", "/m/b", "/m/c"], None)


def test_bad_input_is_one_line(fitness, world):
    model = world["heldout"][0]
    task, doc = world["bench"].tasks[0], fitness.samples[world["bench"].tasks[0]][0]
    missing = {t: dict(d) for t, d in model.responses.items()}
    del missing[task][doc]
    with pytest.raises(FitnessError, match=rf"^task '{task}': no answer to anchor doc {doc}$"):
        fitness.estimate(missing)
    with pytest.raises(FitnessError, match=r"no answers for task 'task1'"):
        fitness.estimate({"task0": model.responses["task0"]})
    with pytest.raises(FitnessError, match="unknown estimator 'best'"):
        ReducedFitness.from_calibration(world["calibration"], estimator="best")
    with pytest.raises(FitnessError, match=rf"task 'task0' has {ITEMS} items, fewer than k={ITEMS + 1}"):
        ReducedFitness.from_calibration(world["calibration"], k=ITEMS + 1)
    lonely = CalibrationRecord(tasks=world["calibration"].tasks, models=world["calibration"].models[:1], name="tiny")
    with pytest.raises(FitnessError, match=r"calibration 'tiny' has 1 model\(s\) to fit IRT on"):
        ReducedFitness.from_calibration(lonely)
    assert ResponseMatrix.from_calibration(world["calibration"]).values.shape == (N_SOURCES + N_RANDOM, 2 * ITEMS)
