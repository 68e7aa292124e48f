"""The same calibration gives the same IRT fit and anchors whatever order its models finished (and so were
stored) in; a stored fit made the old way (rows in finishing order) is refitted once, with a note."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evosearch.search.calibrate import refit_if_in_finishing_order
from fitness.anchors import AnchorSelector
from fitness.irt import IRTFitSettings, fit_irt
from fitness.reduced import ResponseMatrix, fit_calibration, fitted_in_finishing_order
from irt_simulation import draw_abilities, make_bench
from storage import CalibrationModelRecord, CalibrationRecord, Store

SETTINGS = IRTFitSettings()  # what a calibration stored without settings is refitted with
QUICK = IRTFitSettings(max_iter=200)


@pytest.fixture(autouse=True)
def one_thread():
    """Fits this small run in seconds on one thread; threads of a shared 2-core machine only fight."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _models(n_models: int = 8) -> tuple[list[str], list[CalibrationModelRecord]]:
    rng = np.random.default_rng(3)
    bench = make_bench(rng, n_tasks=2, items_per_task=20)
    answers = bench.answer(draw_abilities(rng, n_models, len(bench.tasks)), rng)
    models = []
    for i in range(n_models):
        responses = {task: {} for task in bench.tasks}
        for j, task in enumerate(bench.item_tasks):
            responses[task][len(responses[task])] = int(answers[i, j])  # doc ids 0, 1, ... per task
        models.append(CalibrationModelRecord(label=f"m{i:02d}", role="source" if i < 2 else "random", recipe=None,
                                             responses=responses, accuracy={t: 0.5 for t in bench.tasks}))
    return bench.tasks, models


def _anchors(record: CalibrationRecord, params) -> dict:
    return AnchorSelector("irt_clustering", 5, 0).select(params, ResponseMatrix.from_calibration(record).values
                                                         ).to_dict()


def test_the_fit_and_the_anchors_do_not_depend_on_finishing_order():
    tasks, models = _models()
    finished_one_way = CalibrationRecord(name="c", tasks=tasks, models=models)
    finished_another = CalibrationRecord(name="c", tasks=tasks, models=list(reversed(models)))
    one, other = (ResponseMatrix.from_calibration(r) for r in (finished_one_way, finished_another))
    assert one.model_ids == other.model_ids == sorted(m.label for m in models)
    assert np.array_equal(one.values, other.values, equal_nan=True)
    fit_one, fit_other = fit_calibration(finished_one_way, QUICK), fit_calibration(finished_another, QUICK)
    assert fit_one.to_dict() == fit_other.to_dict()
    assert _anchors(finished_one_way, fit_one) == _anchors(finished_another, fit_other)


def test_a_stored_fit_in_finishing_order_is_refitted_once_with_a_note(tmp_path):
    tasks, models = _models()
    finishing = [models[i] for i in np.random.default_rng(0).permutation(len(models))]
    with Store.open(f"sqlite:///{tmp_path / 'evosearch.db'}") as store:
        # What an older evosearch stored: rows laid out in the order the models finished (= stored order).
        matrix = ResponseMatrix.from_calibration(CalibrationRecord(name="old", tasks=tasks, models=models))
        order = [matrix.model_ids.index(m.label) for m in finishing]
        old_fit = fit_irt(matrix.values[order], matrix.item_ids, matrix.item_tasks,
                          [m.label for m in finishing], SETTINGS)
        store.save_calibration(CalibrationRecord(name="old", tasks=tasks, models=finishing, fit_version=1,
                                                 irt_params=old_fit.to_dict(), spec={}))
        stored = store.get_calibration("old")
        assert [m.label for m in stored.models] == [m.label for m in finishing]  # stored order = finishing order
        assert fitted_in_finishing_order(old_fit, stored)

        refitted, note = refit_if_in_finishing_order(store, stored)
        assert note is not None and "\n" not in note
        assert "fit version 1 laid its models out in the order they finished; refitted once as version 2" in note
        assert refitted.fit_version == 2 and refitted.irt_params["model_ids"] == sorted(m.label for m in models)
        assert store.get_calibration("old", fit_version=1).irt_params == old_fit.to_dict()  # kept
        again, second_note = refit_if_in_finishing_order(store, store.get_calibration("old"))
        assert second_note is None and again.fit_version == 2


@pytest.mark.parametrize("change", ["items", "models"])
def test_a_fit_of_other_models_or_items_is_not_taken_for_an_old_order_fit(change):
    tasks, models = _models(6)
    record = CalibrationRecord(name="c", tasks=tasks, models=models)
    fit = fit_calibration(record, QUICK)
    other = CalibrationRecord(name="c", tasks=tasks, models=models[:-1] if change == "models" else [
        CalibrationModelRecord(**{**m.__dict__, "responses": {t: dict(list(d.items())[:-1]) for t, d in
                                                                m.responses.items()}}) for m in models])
    assert not fitted_in_finishing_order(fit, other)
