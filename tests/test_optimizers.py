"""Ask/tell optimizers: convergence on toy problems, exact resume from a saved state, NaN penalties, Pareto
utilities on hand-worked examples."""

from __future__ import annotations

import numpy as np
import pytest

from evosearch.optimizers import (
    NO_DATA_PENALTY,
    OPTIMIZERS,
    CMAESConfig,
    GAConfig,
    NSGA2Config,
    OptimizerError,
    ParetoFront,
    RandomSearchConfig,
    hypervolume,
    knee_index,
    make_optimizer,
    non_dominated_sort,
    parse_optimizer_config,
)


def sphere(x: np.ndarray) -> np.ndarray:
    return ((x - 0.3) ** 2).sum(axis=1, keepdims=True)


def zdt1(x: np.ndarray) -> np.ndarray:
    f1 = x[:, 0]
    g = 1 + 9 * x[:, 1:].mean(axis=1)
    return np.stack([f1, g * (1 - np.sqrt(f1 / g))], axis=1)


def run(opt, fn, generations=None):
    asked = []
    while not opt.done() and (generations is None or len(asked) < generations):
        x = opt.ask()
        asked.append(x)
        opt.tell(x, fn(x))
    return asked


CONFIGS = {
    "cmaes": (CMAESConfig(popsize=8, max_generations=12), sphere, ["min"]),
    "nsga2": (NSGA2Config(pop_size=12, max_generations=8), zdt1, ["min", "min"]),
    "ga": (GAConfig(pop_size=12, max_generations=8), sphere, ["min"]),
    "random": (RandomSearchConfig(pop_size=6, max_generations=8), zdt1, ["min", "min"]),
}


def test_registry_covers_every_config():
    assert set(OPTIMIZERS) == set(CONFIGS)


def test_cmaes_converges_on_a_quadratic_in_the_box():
    opt = make_optimizer(CMAESConfig(popsize=10, max_generations=80), 5, ["min"], seed=3)
    run(opt, sphere)
    x, f = opt.best()
    assert x.shape == (1, 5) and f[0, 0] < 1e-6
    np.testing.assert_allclose(x[0], 0.3, atol=1e-3)


def test_cmaes_survives_a_flat_generation_and_stops_on_a_flat_history():
    # Coarse anchor accuracies often tie a whole generation; that alone must not end the search.
    flat = lambda x: np.zeros((len(x), 1))
    opt = make_optimizer(CMAESConfig(popsize=6, max_generations=30), 3, ["max"], seed=0)
    assert 5 < len(run(opt, flat)) < 30
    eager = make_optimizer(CMAESConfig(popsize=6, max_generations=30, tolfun=1e-11), 3, ["max"], seed=0)
    assert len(run(eager, flat)) == 1


def test_cmaes_respects_the_box_when_the_optimum_is_outside():
    opt = make_optimizer(CMAESConfig(popsize=8, max_generations=40), 3, ["max"], seed=0)
    for x in run(opt, lambda x: x.sum(axis=1, keepdims=True)):
        assert x.min() >= 0 and x.max() <= 1
    assert opt.best()[1][0, 0] > 2.99


def test_cmaes_scalarises_several_objectives_with_declared_weights():
    with pytest.raises(OptimizerError, match="weights"):
        make_optimizer(CMAESConfig(), 3, ["max", "min"], seed=0)
    opt = make_optimizer(CMAESConfig(popsize=8, max_generations=40, weights=[1.0, 0.5]), 2, ["max", "min"], seed=0)
    # maximise x0, minimise x1: both push to a corner.
    run(opt, lambda x: x.copy())
    x, f = opt.best()
    assert x[0, 0] > 0.99 and x[0, 1] < 0.01 and f.shape == (1, 2)


def test_nsga2_finds_a_good_zdt1_front_in_few_generations():
    opt = make_optimizer(NSGA2Config(pop_size=30, max_generations=30), 6, ["min", "min"], seed=1)
    run(opt, zdt1)
    _, front = opt.best()
    assert len(front) >= 10
    # The true front's hypervolume w.r.t. (1.1, 1.1) is about 0.877; random points reach far less.
    assert hypervolume(front, ["min", "min"], [1.1, 1.1]) > 0.7
    baseline = make_optimizer(RandomSearchConfig(pop_size=30, max_generations=30), 6, ["min", "min"], seed=1)
    run(baseline, zdt1)
    assert hypervolume(baseline.best()[1], ["min", "min"], [1.1, 1.1]) < 0.6


def test_ga_and_random_improve_on_a_maximised_objective():
    for cfg in (GAConfig(pop_size=16, max_generations=15), RandomSearchConfig(pop_size=16, max_generations=15)):
        opt = make_optimizer(cfg, 4, ["max"], seed=0)
        run(opt, lambda x: -sphere(x))
        assert opt.best()[1][0, 0] > -0.05


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_resume_from_state_gives_the_uninterrupted_sequence(name):
    config, fn, directions = CONFIGS[name]
    whole = make_optimizer(config, 4, directions, seed=7)
    uninterrupted = run(whole, fn)

    first = make_optimizer(config, 4, directions, seed=7)
    asked = run(first, fn, generations=3)
    asked.append(first.ask())  # saved between ask and tell: the resumed optimizer must re-ask the same batch
    blob = first.state_dict()
    resumed = make_optimizer(config, 4, directions, seed=7)
    resumed.load_state(blob)
    assert resumed.generation == 3
    np.testing.assert_array_equal(resumed.ask(), asked.pop())
    asked += run(resumed, fn)

    assert len(asked) == len(uninterrupted) == config.max_generations
    for a, b in zip(asked, uninterrupted):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(resumed.best(), whole.best()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_same_seed_same_run_other_seed_other_run(name):
    config, fn, directions = CONFIGS[name]
    a = run(make_optimizer(config, 4, directions, seed=1), fn, generations=2)
    b = run(make_optimizer(config, 4, directions, seed=1), fn, generations=2)
    c = run(make_optimizer(config, 4, directions, seed=2), fn, generations=2)
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_cmaes_leaves_numpys_global_rng_alone():
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    run(make_optimizer(CMAESConfig(popsize=6, max_generations=3), 3, ["min"], seed=0), sphere)
    assert np.random.rand() == expected


def test_state_from_another_optimizer_is_refused():
    blob = make_optimizer(RandomSearchConfig(), 4, ["min"], seed=0).state_dict()
    with pytest.raises(OptimizerError, match="dim"):
        make_optimizer(RandomSearchConfig(), 5, ["min"], seed=0).load_state(blob)
    with pytest.raises(OptimizerError, match="optimizer"):
        make_optimizer(CMAESConfig(), 4, ["min"], seed=0).load_state(blob)
    with pytest.raises(OptimizerError, match="unpickle"):
        make_optimizer(RandomSearchConfig(), 4, ["min"], seed=0).load_state(b"junk")


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_nan_objectives_become_a_penalty_worse_than_anything_seen(name):
    config, fn, directions = CONFIGS[name]
    opt = make_optimizer(config, 4, directions, seed=0)
    seen = []

    def record(x, f):
        seen.append(f.copy())

    original = opt._tell
    opt._tell = lambda x, f: (record(x, f), original(x, f))
    x = opt.ask()
    f = fn(x)
    f[0] = np.nan
    f[1, -1] = np.inf
    opt.tell(x, f)
    told = seen[0]
    assert np.all(np.isfinite(told))
    finite_max = np.nanmax(np.where(np.isfinite(f), f, np.nan), axis=0)
    assert np.all(told[0] > finite_max) and told[1, -1] > finite_max[-1]
    # The failed rows never count as best.
    assert not any(np.array_equal(b, x[0]) or np.array_equal(b, x[1]) for b in opt.best()[0])


def test_a_batch_that_all_failed_gets_the_fixed_penalty():
    opt = make_optimizer(RandomSearchConfig(pop_size=3), 2, ["max"], seed=0)
    got = []
    opt._tell = lambda x, f: got.append(f)
    x = opt.ask()
    opt.tell(x, np.full((3, 1), np.nan))
    assert np.all(got[0] == NO_DATA_PENALTY)
    assert opt.best()[0].shape == (0, 2)


def test_protocol_misuse_is_refused_with_one_line():
    opt = make_optimizer(RandomSearchConfig(pop_size=3, max_generations=1), 2, ["min"], seed=0)
    with pytest.raises(OptimizerError, match="without a pending ask"):
        opt.tell(np.zeros((3, 2)), np.zeros((3, 1)))
    x = opt.ask()
    np.testing.assert_array_equal(opt.ask(), x)  # asking twice returns the same batch
    with pytest.raises(OptimizerError, match="last asked"):
        opt.tell(x[::-1], np.zeros((3, 1)))
    with pytest.raises(OptimizerError, match="shape"):
        opt.tell(x, np.zeros((3, 2)))
    with pytest.raises(OptimizerError, match="directions"):
        opt.tell(x, np.zeros((3, 1)), directions=["max"])
    opt.tell(x, np.zeros((3, 1)), directions=["min"])
    assert opt.done()
    with pytest.raises(OptimizerError, match="done"):
        opt.ask()


def test_optimizer_config_errors_are_one_line():
    with pytest.raises(OptimizerError) as e:
        parse_optimizer_config({"name": "cmaes", "sigma0": -1})
    assert str(e.value).startswith("optimizer.sigma0:") and "\n" not in str(e.value)
    with pytest.raises(OptimizerError, match="does not match"):
        parse_optimizer_config({"name": "bogus"})
    assert parse_optimizer_config({"name": "nsga2", "pop_size": 8}).pop_size == 8


# --- Pareto utilities ---------------------------------------------------------------------------------
F = np.array([
    [1.0, 5.0],   # front 0
    [2.0, 3.0],   # front 0
    [3.0, 3.5],   # dominated by [2, 3] -> front 1
    [4.0, 1.0],   # front 0
    [5.0, 5.0],   # front 2 (dominated by [3, 3.5])
    [np.nan, 0.0],  # failed: last
])


def test_non_dominated_sort_on_a_hand_example():
    fronts = non_dominated_sort(F, ["min", "min"])
    assert [sorted(f.tolist()) for f in fronts] == [[0, 1, 3], [2], [4], [5]]
    # Maximising the first objective instead reorders everything.
    fronts = non_dominated_sort(F, ["max", "min"])
    assert sorted(fronts[0].tolist()) == [3, 4]


def test_pareto_front_knee_and_hypervolume_on_a_hand_example():
    front = ParetoFront.from_objectives(F, ["min", "min"])
    assert front.indices.tolist() == [0, 1, 3]
    assert front.knee() == 1
    # Reference (6, 6): union of boxes [1,6]x[5,6], [2,6]x[3,6], [4,6]x[1,6] = 5*1 + 4*2 + 2*2 = 17.
    assert front.hypervolume([6.0, 6.0]) == pytest.approx(17.0)
    # Maximised objectives: negate and the numbers stay the same.
    neg = ParetoFront.from_objectives(-F, ["max", "max"])
    assert neg.indices.tolist() == [0, 1, 3] and neg.knee() == 1
    assert neg.hypervolume([-6.0, -6.0]) == pytest.approx(17.0)


def test_knee_falls_back_to_the_ideal_point_in_three_objectives():
    pts = np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.4, 0.4, 0.4]])
    assert knee_index(pts, ["min"] * 3) == 3
    assert hypervolume(pts, ["min"] * 3, [0.1, 0.1, 0.1]) == 0.0


def run_ahead(opt, fn, lookahead=2, stop_at=None):
    """Steady-state use: keep `lookahead` batches out, tell the oldest; returns every batch asked, in order."""
    asked = []
    while opt.asked < opt.config.max_generations or opt.pending():
        while len(opt.pending()) < lookahead and opt.can_ask_ahead():
            asked.append(opt.ask_ahead())
            if stop_at is not None and len(asked) == stop_at:
                return asked
        x = opt.pending()[0]
        opt.tell(x, fn(x))
    return asked


@pytest.mark.parametrize("name", ["nsga2", "ga", "random"])
def test_asking_ahead_resumes_exactly_and_still_optimises(name):
    config, fn, directions = CONFIGS[name]
    whole = make_optimizer(config, 4, directions, seed=3)
    uninterrupted = run_ahead(whole, fn)
    assert len(uninterrupted) == config.max_generations and whole.generation == config.max_generations
    if name != "random":  # before the initial population is told, a batch asked ahead is sampled afresh
        fresh = make_optimizer(config, 4, directions, seed=3)
        first_two = [fresh.ask_ahead(), fresh.ask_ahead()]
        assert first_two[0].shape == first_two[1].shape and not np.array_equal(*first_two)
        for x in first_two:
            fresh.tell(x, fn(x))
        assert fresh.generation == 2 and fresh.can_ask_ahead()

    first = make_optimizer(config, 4, directions, seed=3)
    asked = run_ahead(first, fn, stop_at=4)  # two batches out when the state is saved
    assert len(first.pending()) == 2
    resumed = make_optimizer(config, 4, directions, seed=3)
    resumed.load_state(first.state_dict())
    for a, b in zip(resumed.pending(), asked[-2:]):
        np.testing.assert_array_equal(a, b)
    asked += run_ahead(resumed, fn)
    for a, b in zip(asked, uninterrupted):
        np.testing.assert_array_equal(a, b)
    if name == "ga":
        assert whole.best()[1][0, 0] < sphere(uninterrupted[0]).min()  # it learnt from what it was told


def test_cmaes_cannot_ask_ahead():
    config, _, directions = CONFIGS["cmaes"]
    opt = make_optimizer(config, 4, directions, seed=0)
    opt.ask()
    assert not opt.can_ask_ahead()
    with pytest.raises(OptimizerError, match="cannot ask another batch"):
        opt.ask_ahead()


@pytest.mark.parametrize("name", ["nsga2", "ga", "random"])
def test_a_start_genome_is_the_first_candidate_of_a_population_optimizer(name):
    config, fn, directions = CONFIGS[name]
    start = np.linspace(0.1, 0.9, 4)
    opt = make_optimizer(config, 4, directions, seed=0, start=start)
    plain = make_optimizer(config, 4, directions, seed=0)
    first, others = opt.ask(), plain.ask()
    assert np.array_equal(first[0], start)
    # The rest of the batch is the seed's own draw, and only the first batch holds the start.
    np.testing.assert_array_equal(first[1:], others[1:])
    opt.tell(first, fn(first))
    assert not (opt.ask() == start).all(axis=1).any()


def test_a_start_genome_is_cmaes_initial_mean():
    start = np.array([0.1, 0.2, 0.8])
    opt = make_optimizer(CMAESConfig(popsize=400, sigma0=0.02, max_generations=3), 3, ["min"], seed=0, start=start)
    np.testing.assert_allclose(opt.ask().mean(axis=0), start, atol=0.01)
    with pytest.raises(OptimizerError, match="x0 or a start genome"):
        make_optimizer(CMAESConfig(x0=0.3), 3, ["min"], seed=0, start=start)
    with pytest.raises(OptimizerError, match="start genome has 2 values for 3 genes"):
        make_optimizer(CMAESConfig(), 3, ["min"], seed=0, start=start[:2])
