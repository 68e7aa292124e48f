"""Hold-outs carved from single-split tasks: deterministic, disjoint, and never seen by the search (the
IRT fit and the anchors are made without them)."""

from __future__ import annotations

import pytest

from fitness.errors import FitnessError
from fitness.reduced import ReducedFitness
from fitness.splits import carve_holdout, describe, search_only, split_docs
from test_reduced_fitness import ITEMS, simulated_calibration


def test_carve_is_deterministic_disjoint_and_covers_the_task():
    split = carve_holdout("qa", 500, 0.2, seed=3)
    assert split == carve_holdout("qa", 500, 0.2, seed=3)
    assert len(split.report_doc_ids) == 100 and len(split.search_doc_ids) == 400
    assert sorted(split.search_doc_ids + split.report_doc_ids) == list(range(500))
    assert split.report_doc_ids == sorted(split.report_doc_ids)
    # Another seed or another task draws another hold-out; not just the first or last docs.
    assert carve_holdout("qa", 500, 0.2, seed=4).report_doc_ids != split.report_doc_ids
    assert carve_holdout("qa2", 500, 0.2, seed=3).report_doc_ids != split.report_doc_ids
    assert split.report_doc_ids != list(range(100)) and split.report_doc_ids != list(range(400, 500))


@pytest.mark.parametrize("n_docs, fraction, message", [
    (1, 0.2, "task 'qa' has 1 doc"),
    (10, 0.0, "hold-out fraction must be between 0 and 1"),
    (10, 1.0, "hold-out fraction must be between 0 and 1"),
])
def test_a_task_too_small_or_a_bad_fraction_is_one_line(n_docs, fraction, message):
    with pytest.raises(FitnessError, match=message) as error:
        carve_holdout("qa", n_docs, fraction, seed=0)
    assert "\n" not in str(error.value)


def test_split_docs_gives_each_side_cut_to_the_limit_and_leaves_other_tasks_whole():
    splits = {"qa": carve_holdout("qa", 50, 0.2, seed=0)}
    assert split_docs(["qa", "other"], splits, "search") == {"qa": splits["qa"].search_doc_ids}
    assert split_docs(["qa", "other"], splits, "report") == {"qa": splits["qa"].report_doc_ids}
    assert split_docs(["qa", "other"], splits, "report", limit=3) == {"qa": splits["qa"].report_doc_ids[:3],
                                                                       "other": [0, 1, 2]}
    assert split_docs(["other"], splits, "search") is None
    with pytest.raises(FitnessError, match="split must be 'search' or 'report'"):
        split_docs(["qa"], splits, "test")
    assert "hold-out (10 of 50 docs, 20% carved with seed 0)" in describe("qa", splits, "report")
    assert describe("other", splits, "report") == "`other`"


def test_anchors_and_fit_never_touch_the_hold_out():
    calibration = simulated_calibration()["calibration"]
    task = calibration.tasks[0]
    split = carve_holdout(task, ITEMS, 0.25, seed=0)
    seen = search_only(calibration, {task: split.search_doc_ids})
    assert seen.irt_params is None  # the stored fit covered the hold-out: it is redone
    for model in seen.models:
        assert set(model.responses[task]) == set(split.search_doc_ids)
        assert model.accuracy[task] == pytest.approx(sum(model.responses[task].values()) / len(split.search_doc_ids))
    # The original calibration is left as it was.
    assert len(calibration.models[0].responses[task]) == ITEMS

    fitness = ReducedFitness.from_calibration(seen, estimator="gpirt", k=30, strategy="irt_clustering")
    assert set(fitness.samples[task]) <= set(split.search_doc_ids)
    assert fitness.full_items[task] == len(split.search_doc_ids)
    held_out = {f"{task}/{d}" for d in split.report_doc_ids}
    assert not held_out & set(fitness.context.params.item_ids)
