"""2PL IRT fit and ability estimation, checked against a simulated population with known parameters."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr

from fitness.errors import FitnessError
from fitness.irt import AbilityPrior, IRTFitSettings, IRTParams, fit_ability, fit_irt
from irt_simulation import draw_abilities, fitted_population, make_bench

N_MODELS = 40


@pytest.fixture(scope="module")
def calibrated():
    rng = np.random.default_rng(0)
    bench, abilities, responses, _, params = fitted_population(rng, N_MODELS, skipped=0.05)  # some items skipped
    return bench, abilities, responses, params, rng


def test_item_parameters_recover_truth(calibrated):
    bench, _, _, params, _ = calibrated
    assert spearmanr(params.b, bench.b)[0] > 0.9
    # 40 binary answers per item pin discrimination down only loosely; it must still carry signal.
    assert spearmanr(params.a[:, 0], bench.a[:, 0])[0] > 0.4


def test_calibration_abilities_recover_truth_per_task(calibrated):
    bench, abilities, _, params, _ = calibrated
    assert params.groups == bench.tasks
    for g in range(len(bench.tasks)):
        assert pearsonr(params.theta[:, g, 0], abilities[:, g, 0])[0] > 0.97
    # Standardised: the calibration population is N(0, 1) in the fitted units, as the default prior says.
    np.testing.assert_allclose(params.theta.mean(axis=0), 0, atol=1e-6)
    np.testing.assert_allclose(params.theta.std(axis=0), 1, atol=1e-6)


def test_new_model_ability_from_items(calibrated):
    bench, _, _, params, rng = calibrated
    new = draw_abilities(rng, 30, 3)
    answers = bench.answer(new, rng)
    task0 = params.task_items("task0")
    fitted = np.stack([fit_ability(params, [params.item_ids[j] for j in task0], row[task0]) for row in answers])
    assert pearsonr(fitted[:, 0, 0], new[:, 0, 0])[0] > 0.95
    # Groups without answered items keep the prior mean.
    np.testing.assert_array_equal(fitted[:, 1:], 0.0)


def test_fit_ability_follows_the_given_prior(calibrated):
    _, _, _, params, _ = calibrated
    items = [params.item_ids[j] for j in params.task_items("task1")[:5]]
    mean = np.full((3, 1), 1.5)
    tight = fit_ability(params, items, [0, 0, 0, 0, 0], AbilityPrior.isotropic(mean, 1e-3))
    loose = fit_ability(params, items, [0, 0, 0, 0, 0], AbilityPrior.isotropic(mean, 3.0))
    assert abs(tight[1, 0] - 1.5) < 0.01
    assert loose[1, 0] < tight[1, 0] - 0.5  # all wrong answers drag a loose prior down
    np.testing.assert_array_equal(tight[[0, 2]], mean[[0, 2]])


def test_params_round_trip_through_json(calibrated):
    _, _, _, params, _ = calibrated
    restored = IRTParams.from_dict(json.loads(json.dumps(params.to_dict())))
    np.testing.assert_array_equal(restored.a, params.a)
    np.testing.assert_array_equal(restored.b, params.b)
    np.testing.assert_array_equal(restored.theta, params.theta)
    assert restored.item_tasks == params.item_tasks and restored.settings == params.settings
    assert restored.dims == 1


def test_fit_is_deterministic_and_seed_matters():
    rng = np.random.default_rng(3)
    bench = make_bench(rng, n_tasks=2, items_per_task=150)
    responses = bench.answer(draw_abilities(rng, 15, 2), rng)
    ids = [f"m{i}" for i in range(15)]
    settings = IRTFitSettings(dims=2, ability_scope="shared", seed=7)
    first = fit_irt(responses, bench.item_ids, bench.item_tasks, ids, settings)
    again = fit_irt(responses, bench.item_ids, bench.item_tasks, ids, settings)
    np.testing.assert_array_equal(first.a, again.a)
    np.testing.assert_array_equal(first.theta, again.theta)
    other = fit_irt(responses, bench.item_ids, bench.item_tasks, ids, IRTFitSettings(dims=2, ability_scope="shared", seed=8))
    assert not np.array_equal(first.a, other.a)


def test_multidimensional_shared_fit_predicts_truth():
    rng = np.random.default_rng(4)
    bench = make_bench(rng, n_tasks=2, items_per_task=400, dims=2)
    shared = draw_abilities(rng, 40, 1, dims=2)
    abilities = np.repeat(shared, 2, axis=1)  # one 2-D ability for both tasks
    responses = bench.answer(abilities, rng)
    params = fit_irt(responses, bench.item_ids, bench.item_tasks, [f"m{i}" for i in range(40)],
                     IRTFitSettings(dims=2, ability_scope="shared"))
    assert params.theta.shape == (40, 1, 2) and params.a.shape == (800, 2)
    predicted = np.stack([params.probabilities(t) for t in params.theta])
    assert pearsonr(predicted.ravel(), bench.probabilities(abilities).ravel())[0] > 0.9


def test_fit_takes_seconds_for_40_models_by_3000_items():
    rng = np.random.default_rng(5)
    bench = make_bench(rng, n_tasks=5, items_per_task=600)
    responses = bench.answer(draw_abilities(rng, 40, 5), rng)
    start = time.perf_counter()
    fit_irt(responses, bench.item_ids, bench.item_tasks, [f"m{i}" for i in range(40)])
    assert time.perf_counter() - start < 20  # ~1-3 s alone; generous for a shared 2-core machine


@pytest.mark.parametrize("mutate, message", [
    (lambda R: R[:, :-1], "shape"),
    (lambda R: R * 2, r"\[0, 1\]"),
    (lambda R: np.where(np.arange(R.shape[1]) == 4, np.nan, R), "item 'task0/4' has no observed response"),
])
def test_fit_rejects_bad_responses(mutate, message):
    rng = np.random.default_rng(6)
    bench = make_bench(rng, n_tasks=1, items_per_task=20)
    responses = bench.answer(draw_abilities(rng, 5, 1), rng)
    with pytest.raises(FitnessError, match=message):
        fit_irt(mutate(responses), bench.item_ids, bench.item_tasks, [f"m{i}" for i in range(5)])


def test_bad_settings_and_ability_inputs(calibrated):
    _, _, _, params, _ = calibrated
    with pytest.raises(FitnessError, match="ability_scope"):
        IRTFitSettings(ability_scope="per_item")
    with pytest.raises(FitnessError, match="dims"):
        IRTFitSettings(dims=0)
    with pytest.raises(FitnessError, match="'nope' is not in the calibrated"):
        fit_ability(params, ["nope"], [1.0])
    with pytest.raises(FitnessError, match="'task0/0' is NaN"):
        fit_ability(params, ["task0/0"], [np.nan])
    with pytest.raises(FitnessError, match="ability prior"):
        fit_ability(params, ["task0/0"], [1.0], AbilityPrior.isotropic(np.zeros((1, 1)), 1.0))
    with pytest.raises(FitnessError, match="format version"):
        IRTParams.from_dict({**params.to_dict(), "version": 99})
