"""The candidate worker on the tiny zoo with real lm-eval (and real Ray): builds recipes in memory, scores
the asked doc ids, and turns every failure into one line naming the candidate."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from evosearch.merge.ps import build_merged_model
from evosearch.merge.sources import SourceError
from evosearch.recipe import PSRecipe
from fitness.evaluator import LmEvalEvaluator
from workers.candidate import CandidateError, CandidateResult, CandidateTask, CandidateWorker
from workers.pool import ActorOptions, WorkerPool

TASKS = ["zoo_math", "zoo_lang"]
ANCHORS = {"zoo_math": [0, 7, 99, 250, 499], "zoo_lang": [3, 4, 5]}


@pytest.fixture(scope="module")
def zoo_paths(tiny_zoo, tmp_path_factory):
    """The zoo's models plus a copy of `math` whose embeddings hold a NaN (a broken source)."""
    paths = {name: str(path) for name, path in tiny_zoo.models.items()}
    poisoned = tmp_path_factory.mktemp("poisoned") / "math_nan"
    shutil.copytree(tiny_zoo.models["math"], poisoned)
    state = load_file(poisoned / "model.safetensors")
    state["model.embed_tokens.weight"][:, 0] = float("nan")
    save_file(state, poisoned / "model.safetensors", metadata={"format": "pt"})
    paths["nan"] = str(poisoned)
    return paths


@pytest.fixture(scope="module")
def worker(tiny_zoo, zoo_paths):
    torch.set_num_threads(1)
    return CandidateWorker(list(zoo_paths.values()), str(tiny_zoo.include_path), TASKS, device="auto")


def _ta(paths, weights: dict[str, float]) -> dict:
    return {"kind": "ps", "merge_method": "task_arithmetic", "base_model": paths["base"],
            "parameters": {"normalize": False},
            "models": [{"model": paths[m], "parameters": {"weight": w}} for m, w in weights.items()]}


def _identity(path: str) -> dict:
    return {"kind": "ps", "merge_method": "linear", "models": [{"model": path, "parameters": {"weight": 1.0}}]}


def test_source_recipe_scores_like_the_model_loaded_by_transformers(worker, tiny_zoo, zoo_paths):
    result = worker.run(CandidateTask(key="calib/source-math", recipe=_identity(zoo_paths["math"]), samples=None))
    direct = LmEvalEvaluator(tiny_zoo.include_path, TASKS).evaluate(
        AutoModelForCausalLM.from_pretrained(zoo_paths["math"]).eval(), AutoTokenizer.from_pretrained(zoo_paths["math"]))
    assert result.correct == direct.correct
    assert result.accuracy == pytest.approx(direct.accuracy)
    assert set(result.correct["zoo_math"]) == set(range(500))
    assert result.key == "calib/source-math" and result.worker.count(":") >= 1


def test_ps_merge_on_anchors_returns_only_those_items(worker, tiny_zoo, zoo_paths):
    recipe = _ta(zoo_paths, {"math": 0.7, "lang": 0.5})
    result = worker.run(CandidateTask(key="job1/g0/i3", recipe=recipe, samples=ANCHORS))
    assert isinstance(result, CandidateResult)
    assert {t: sorted(c) for t, c in result.correct.items()} == ANCHORS
    for task, items in result.correct.items():
        assert set(items.values()) <= {0, 1}
        assert result.accuracy[task] == pytest.approx(sum(items.values()) / len(items))

    # The same merge built outside the worker gives the same answers on those items.
    tensors = {p: load_file(f"{p}/model.safetensors") for p in (zoo_paths["base"], zoo_paths["math"], zoo_paths["lang"])}
    merged = build_merged_model(PSRecipe(**recipe), tensors, config=AutoConfig.from_pretrained(zoo_paths["base"]))
    direct = LmEvalEvaluator(tiny_zoo.include_path, TASKS).evaluate(
        merged, AutoTokenizer.from_pretrained(zoo_paths["base"]), samples=ANCHORS)
    assert result.correct == direct.correct

    assert result.build_seconds > 0 and result.eval_seconds > 0 and result.overhead_seconds > 0
    assert result.overhead_seconds < 2.0  # the < 0.5 s target is measured in the report, not on a busy CI box

    only_math = worker.run(CandidateTask(key="k", recipe=recipe, samples=None, tasks=["zoo_math"]))
    assert set(only_math.correct) == {"zoo_math"} and len(only_math.correct["zoo_math"]) == 500
    assert {i: only_math.correct["zoo_math"][i] for i in ANCHORS["zoo_math"]} == result.correct["zoo_math"]


def test_dfs_and_ps_dfs_recipes_run(worker, zoo_paths):
    ps = _ta(zoo_paths, {"math": 0.5, "strings": 0.5})
    for sources in ([zoo_paths["math"], zoo_paths["lang"]], [ps, zoo_paths["lang"]]):
        recipe = {"kind": "dfs", "sources": sources, "num_layers": 2, "indicator": [True, False, True, True],
                  "scales": [[1.0, 1.3], [0.8, 1.0]]}
        result = worker.run(CandidateTask(key="dfs", recipe=recipe, samples=ANCHORS))
        assert {t: sorted(c) for t, c in result.correct.items()} == ANCHORS


@pytest.mark.parametrize("recipe, cause", [
    ({"kind": "ps", "merge_method": "nope", "models": [{"model": "x"}]}, "unknown merge_method 'nope'"),
    ({"kind": "ps", "merge_method": "linear", "models": [{"model": "/no/such/model"}]},
     "model /no/such/model is not among this worker's sources"),
    ({"kind": "dfs", "sources": ["/no/such/model"], "num_layers": 2, "indicator": [True, True], "scales": [[1.0]]},
     "model /no/such/model is not among this worker's sources"),
])
def test_bad_recipes_fail_with_one_line_naming_the_candidate(worker, recipe, cause):
    with pytest.raises(CandidateError) as info:
        worker.run(CandidateTask(key="job2/g1/i4", recipe=recipe, samples=ANCHORS))
    message = str(info.value)
    assert message.startswith("candidate job2/g1/i4: build failed") and cause in message
    assert "\n" not in message


def test_nan_logits_and_bad_doc_ids_are_failures(worker, zoo_paths):
    with pytest.raises(CandidateError, match=r"^candidate calib/nan: the model produced NaN or infinite logits$"):
        worker.run(CandidateTask(key="calib/nan", recipe=_identity(zoo_paths["nan"]), samples=ANCHORS))
    with pytest.raises(CandidateError, match=r"^candidate c1: evaluation failed: .*out of range") as info:
        worker.run(CandidateTask(key="c1", recipe=_identity(zoo_paths["math"]), samples={"zoo_math": [500]}))
    assert "\n" not in str(info.value)
    with pytest.raises(CandidateError, match=r"^candidate c3: samples name no doc id"):
        worker.run(CandidateTask(key="c3", recipe=_identity(zoo_paths["math"]), samples={"zoo_math": []}))
    with pytest.raises(CandidateError, match="not loaded by this evaluator"):
        worker.run(CandidateTask(key="c2", recipe=_identity(zoo_paths["math"]), samples=None, tasks=["zoo_target"]))


def test_worker_refuses_a_missing_source_at_start(tiny_zoo):
    from evosearch.merge.sources import SourceError

    with pytest.raises(SourceError, match="model /no/such/model: path does not exist"):
        CandidateWorker(["/no/such/model"], str(tiny_zoo.include_path), TASKS)


@pytest.mark.slow
def test_worker_runs_under_the_ray_pool(ray_local, tiny_zoo, zoo_paths):
    sources = [zoo_paths[m] for m in ("base", "math", "lang")]
    pool = WorkerPool(CandidateWorker, (sources, str(tiny_zoo.include_path), TASKS), num_workers=1,
                      options=ActorOptions(num_cpus=0.5)).start()
    tasks = [CandidateTask(key="ray/ok", recipe=_ta(zoo_paths, {"math": 0.4, "lang": 0.6}), samples=ANCHORS),
             CandidateTask(key="ray/bad", recipe=_identity(zoo_paths["strings"]), samples=ANCHORS)]
    try:
        outcomes = {o.item.key: o for o in pool.map_unordered(tasks, lambda t: (t,))}
    finally:
        pool.shutdown()
    ok = outcomes["ray/ok"]
    assert ok.ok and {t: sorted(c) for t, c in ok.value.correct.items()} == ANCHORS
    assert ok.value.worker.split(":")[1].isdigit()
    assert outcomes["ray/bad"].error.startswith("CandidateError: candidate ray/bad: build failed: SourceError: model ")
    assert outcomes["ray/bad"].attempts == 1


def test_host_resident_worker_scores_like_the_device_resident_one(worker, tiny_zoo, zoo_paths):
    """`workers.resident: host`: the sources stay in host memory, each candidate is staged tensor by tensor
    (PS) or copied layer by layer (DFS) onto the device; the answers are the device-resident worker's."""
    paths = [zoo_paths[m] for m in ("base", "math", "strings", "lang")]
    host = CandidateWorker(paths, str(tiny_zoo.include_path), TASKS, device="auto", resident="host")
    ps = _ta(zoo_paths, {"math": 0.5, "strings": 0.5})
    dfs = {"kind": "dfs", "sources": [ps, zoo_paths["lang"]], "num_layers": 2,
           "indicator": [True, False, False, True], "scales": [[1.0, 1.3], [0.8, 1.0]]}
    for recipe in (ps, dfs):
        task = CandidateTask(key="host", recipe=recipe, samples=ANCHORS)
        assert host.run(task).correct == worker.run(task).correct
    layers = host._modules[next(iter(host._modules))].model.layers
    assert all(p.device == host._home for p in layers.parameters())  # the sources were not moved
    with pytest.raises(SourceError, match="worker: resident 'gpu' is not one of device, host"):
        CandidateWorker(paths, str(tiny_zoo.include_path), TASKS, resident="gpu")
