"""Anchor selection, full-task estimators and report metrics on a simulated 2PL population: held-out
"models" answer the anchors, and each estimator's error against their real full-task accuracy is measured.

Reference point for the thresholds: with abilities per task and k=30 random anchors of 600 items, p-IRT
using the TRUE item parameters errs by ~4.5-5.5 accuracy points on average here (the information in 30
binary answers), so fitted estimators are held to that floor rather than to a fixed small number."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fitness.anchors import AnchorSelector, AnchorSet
from fitness.errors import FitnessError
from fitness.estimators import (ESTIMATORS, CandidateAnswers, EstimationContext, fit_anchor_regression,
                                get_estimator, gpirt_lambda)
from fitness.irt import IRTParams, fit_irt
from fitness.report_math import (item_reduction_factor, mean_absolute_error_points, spearman_rank_correlation,
                                 summarise_errors, worst_error_points)
from irt_simulation import draw_abilities, fitted_population, make_bench, merge_abilities

N_CALIBRATION, N_SOURCES = 40, 3


@pytest.fixture(scope="module")
def world():
    rng = np.random.default_rng(11)
    # The first N_SOURCES models are the merge sources.
    bench, calibration, responses, model_ids, params = fitted_population(rng, N_CALIBRATION)
    held_out = bench.answer(draw_abilities(rng, 50, 3), rng)
    merged, merge_weights = merge_abilities(rng, calibration[:N_SOURCES], 50)
    return dict(bench=bench, responses=responses, params=params, model_ids=model_ids, held_out=held_out,
                merged=bench.answer(merged, rng), merge_weights=merge_weights)


def _mae(context: EstimationContext, name: str, answers: np.ndarray, truth: dict[str, np.ndarray],
         sources: list[str] = (), weights: np.ndarray | None = None) -> float:
    anchor_ids = context.anchors.item_ids()
    columns = context.params.item_index(anchor_ids)
    estimator = get_estimator(name)
    errors = []
    for i, row in enumerate(answers):
        estimate = estimator(context, CandidateAnswers(dict(zip(anchor_ids, row[columns])), sources,
                                                       None if weights is None else weights[i]))
        errors += [estimate[task] - truth[task][i] for task in context.anchors.tasks]
    return mean_absolute_error_points(errors, np.zeros(len(errors)))


def _context(world, strategy: str, k: int) -> EstimationContext:
    anchors = AnchorSelector(strategy, k, seed=0).select(world["params"], world["responses"])
    return EstimationContext.build(world["params"], anchors, world["responses"])


@pytest.mark.parametrize("strategy", ["random", "irt_clustering", "correctness_clustering"])
def test_anchor_sets_are_valid_deterministic_and_serialisable(world, strategy):
    params = world["params"]
    anchors = AnchorSelector(strategy, 12, seed=3).select(params, world["responses"])
    assert list(anchors.tasks) == params.tasks
    for task, chosen in anchors.tasks.items():
        assert len(set(chosen.item_ids)) == 12
        assert all(params.item_tasks[j] == task for j in params.item_index(chosen.item_ids))
        assert sum(chosen.weights) == pytest.approx(1.0)
    assert AnchorSelector(strategy, 12, seed=3).select(params, world["responses"]) == anchors
    assert AnchorSelector(strategy, 12, seed=4).select(params, world["responses"]) != anchors
    assert AnchorSet.from_dict(json.loads(json.dumps(anchors.to_dict()))) == anchors


def test_clustering_weights_count_cluster_sizes_even_with_identical_items():
    # Six items, only two distinct correctness columns: k=4 anchors must still be distinct and weighted.
    responses = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0], [0, 0, 0, 0, 0, 1]], dtype=float)
    params = IRTParams(item_ids=[f"t/{i}" for i in range(6)], item_tasks=["t"] * 6, a=np.ones(6), b=np.zeros(6),
                       model_ids=["x", "y", "z"], theta=np.zeros((3, 1, 1)))
    anchors = AnchorSelector("correctness_clustering", 4, seed=0).select(params, responses).tasks["t"]
    assert len(set(anchors.item_ids)) == 4
    assert sum(anchors.weights) == pytest.approx(1.0)


def test_anchor_selection_errors(world):
    params = world["params"]
    with pytest.raises(FitnessError, match="task 'task0' has 600 items, fewer than k=601"):
        AnchorSelector("random", 601).select(params)
    with pytest.raises(FitnessError, match="unknown anchor strategy 'medoids'"):
        AnchorSelector("medoids", 5)
    with pytest.raises(FitnessError, match="need the calibration response matrix"):
        AnchorSelector("correctness_clustering", 5).select(params)


def test_irt_estimators_beat_random_anchors_near_the_information_floor(world):
    truth = world["bench"].accuracy(world["held_out"])
    baseline = _mae(_context(world, "random", 30), "weighted_anchor", world["held_out"], truth)
    bench = world["bench"]
    true_params = IRTParams(bench.item_ids, bench.item_tasks, bench.a, bench.b, ["x"], np.zeros((1, 3, 1)))
    for strategy in ("random", "correctness_clustering"):
        context = _context(world, strategy, 30)
        oracle_context = EstimationContext(true_params, context.anchors, pirt_sq_bias={})
        oracle = _mae(oracle_context, "pirt", world["held_out"], truth)
        for name in ("irt", "pirt", "gpirt"):
            mae = _mae(context, name, world["held_out"], truth)
            assert mae < baseline, (strategy, name, mae, baseline)
            assert mae < min(6.0, 1.2 * oracle), (strategy, name, mae, oracle)


def test_more_anchors_estimate_better(world):
    truth = world["bench"].accuracy(world["held_out"])
    few = _mae(_context(world, "correctness_clustering", 5), "pirt", world["held_out"], truth)
    many = _mae(_context(world, "correctness_clustering", 60), "pirt", world["held_out"], truth)
    assert many < 0.7 * few


def test_merge_aware_estimators_use_the_sources_prior(world):
    """Candidates whose ability really is a mix of three calibrated sources, seen through 5 anchors per task."""
    truth = world["bench"].accuracy(world["merged"])
    context = _context(world, "correctness_clustering", 5)
    sources = world["model_ids"][:N_SOURCES]
    plain = _mae(context, "pirt", world["merged"], truth)
    fitted_mix = _mae(context, "mpirt", world["merged"], truth, sources)
    recipe_mix = _mae(context, "mpirt", world["merged"], truth, sources, world["merge_weights"])
    assert recipe_mix < fitted_mix < plain
    assert recipe_mix < 0.75 * plain
    assert _mae(context, "mgpirt", world["merged"], truth, sources, world["merge_weights"]) < \
        _mae(context, "gpirt", world["merged"], truth)


def test_estimates_are_deterministic_and_survive_json(world):
    context = _context(world, "irt_clustering", 10)
    restored = EstimationContext.from_dict(json.loads(json.dumps(context.to_dict())))
    anchor_ids = context.anchors.item_ids()
    row = world["held_out"][0][context.params.item_index(anchor_ids)]
    answers = CandidateAnswers(dict(zip(anchor_ids, row)), world["model_ids"][:2], [0.3, 0.7])
    for name, estimator in ESTIMATORS.items():
        estimate = estimator(context, answers)
        assert estimate == estimator(restored, answers), name
        assert set(estimate) == set(context.anchors.tasks) and all(0 <= v <= 1 for v in estimate.values())


def test_anchor_regression_is_the_ridge_a_reference_implementation_fits():
    from sklearn.linear_model import RidgeCV

    rng = np.random.default_rng(4)
    X = rng.integers(0, 2, (60, 40)).astype(float)
    y = 0.6 * X[:, :5].mean(axis=1) + rng.normal(0, 0.05, 60)
    ours = fit_anchor_regression(X, y, alphas=np.logspace(-2, 3, 31))
    reference = RidgeCV(alphas=np.logspace(-2, 3, 31)).fit(X, y)  # leave-one-out by default, as ours
    assert ours.alpha == pytest.approx(reference.alpha_)
    np.testing.assert_allclose(ours.coef, reference.coef_, atol=1e-10)
    assert ours.intercept == pytest.approx(reference.intercept_, abs=1e-10)
    assert 0 < ours.loo_mae < 0.1


def test_anchor_regression_borrows_from_the_other_tasks_anchors():
    """Tasks whose abilities move together (as merges of the same sources do): with 5 anchors per task, a
    regression on all 15 answers beats each task's own anchors, and the IRT estimate built from them."""
    rng = np.random.default_rng(3)
    bench = make_bench(rng, n_tasks=3, items_per_task=300)
    responses = bench.answer(draw_abilities(rng, 40, 3, task_correlation=0.9), rng)
    params = fit_irt(responses, bench.item_ids, bench.item_tasks, [f"m{i}" for i in range(40)])
    held_out = bench.answer(draw_abilities(rng, 40, 3, task_correlation=0.9), rng)
    context = _context(dict(params=params, responses=responses), "correctness_clustering", 5)
    truth = bench.accuracy(held_out)
    regression = _mae(context, "anchor_regression", held_out, truth)
    assert regression < 0.7 * _mae(context, "weighted_anchor", held_out, truth)
    assert regression < _mae(context, "gpirt", held_out, truth)


def test_anchor_regression_needs_enough_calibration_models(world):
    few = world["responses"][:3]
    anchors = AnchorSelector("random", 5, seed=0).select(world["params"], world["responses"])
    context = EstimationContext.build(world["params"], anchors, np.vstack([few, np.full((37, few.shape[1]), np.nan)]))
    anchor_ids = anchors.item_ids()
    answers = CandidateAnswers(dict(zip(anchor_ids, few[0][world["params"].item_index(anchor_ids)])))
    with pytest.raises(FitnessError, match="anchor_regression needs at least 4 calibration models"):
        get_estimator("anchor_regression")(context, answers)


def test_gpirt_lambda_heuristic():
    assert gpirt_lambda(0.0, 0.01) == 0.0  # unbiased IRT: trust p-IRT
    assert gpirt_lambda(0.01, 0.0) == 1.0  # noiseless anchors: trust them
    assert gpirt_lambda(0.01, 0.03) == pytest.approx(0.25)
    assert gpirt_lambda(0.0, 0.0) == 0.0


def test_estimator_input_errors(world):
    context = _context(world, "random", 3)
    anchor_ids = context.anchors.item_ids()
    full = {item: 1.0 for item in anchor_ids}
    with pytest.raises(FitnessError, match="unknown estimator 'tiny'"):
        get_estimator("tiny")
    with pytest.raises(FitnessError, match="responses are empty"):
        get_estimator("pirt")(context, CandidateAnswers({}))
    with pytest.raises(FitnessError, match=f"'{anchor_ids[1]}' is NaN"):
        get_estimator("irt")(context, CandidateAnswers({**full, anchor_ids[1]: float("nan")}))
    with pytest.raises(FitnessError, match=f"no response to anchor '{anchor_ids[0]}'"):
        get_estimator("gpirt")(context, CandidateAnswers({k: v for k, v in full.items() if k != anchor_ids[0]}))
    with pytest.raises(FitnessError, match="not an anchor"):
        get_estimator("weighted_anchor")(context, CandidateAnswers({**full, "task0/599x": 1.0}))
    with pytest.raises(FitnessError, match="need the candidate's source models"):
        get_estimator("mpirt")(context, CandidateAnswers(full))
    with pytest.raises(FitnessError, match="'stranger' is not in the IRT calibration population"):
        get_estimator("mgpirt")(context, CandidateAnswers(full, ["model0", "stranger"]))
    with pytest.raises(FitnessError, match="source weights"):
        get_estimator("mpirt")(context, CandidateAnswers(full, ["model0", "model1"], [1.0]))


def test_report_math():
    estimates, truths = [0.50, 0.70, 0.20], [0.45, 0.75, 0.30]
    assert mean_absolute_error_points(estimates, truths) == pytest.approx(20 / 3)
    assert worst_error_points(estimates, truths) == pytest.approx(10.0)
    assert spearman_rank_correlation(estimates, truths) == pytest.approx(1.0)
    assert spearman_rank_correlation([0.1, 0.2, 0.3], [0.3, 0.2, 0.1]) == pytest.approx(-1.0)
    assert spearman_rank_correlation([0.1, 0.3, 0.2], [0.1, 0.2, 0.3]) == pytest.approx(0.5)
    assert np.isnan(spearman_rank_correlation([0.5, 0.5], [0.1, 0.2]))
    assert item_reduction_factor(600, 30) == 20.0
    summary = summarise_errors(estimates, truths, full_items=1800, anchor_items=90)
    assert (summary.n_candidates, summary.reduction) == (3, 20.0)
    with pytest.raises(FitnessError, match="equally many"):
        mean_absolute_error_points([0.1], [0.1, 0.2])
    with pytest.raises(FitnessError, match="NaN"):
        worst_error_points([np.nan], [0.1])
    with pytest.raises(FitnessError, match="anchor_items"):
        item_reduction_factor(10, 0)
