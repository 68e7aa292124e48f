"""Parameter resolution, random methods (DARE, DELLA), in-memory merging and recipe errors."""

from __future__ import annotations

import pytest
import torch

from evosearch.merge.methods import METHODS
from evosearch.merge.parameters import evaluate_setting, layer_position
from evosearch.merge.ps import PSMerger, build_merged_model, merge_state_dict, tensor_seed
from evosearch.merge.sources import SourceModel
from evosearch.recipe import RecipeError, parse_recipe
from tiny_llama import save_llama_family

WEIGHT = METHODS["ties"].parameter("weight")
FLAG = METHODS["ties"].parameter("normalize")


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return [str(p) for p in save_llama_family(tmp_path_factory.mktemp("methods"), n_finetunes=3)]


@pytest.fixture(scope="module")
def resident(family):
    return {p: SourceModel.open(p).load_all() for p in family}


def _recipe(method: str, family, seed: int = 0, **params):
    models = [{"model": m, "parameters": {"weight": 1.0, "density": params.pop("density", 0.3)}} for m in family[1:]]
    return parse_recipe({"kind": "ps", "merge_method": method, "base_model": family[0], "models": models,
                         "parameters": params, "seed": seed})


def test_layer_position_follows_mergekit():
    assert layer_position("model.layers.0.mlp.up_proj.weight", 4) == 0
    assert layer_position("model.layers.2.mlp.up_proj.weight", 5) == 0.5
    assert layer_position("model.layers.3.self_attn.q_proj.weight", 4) == 1
    assert layer_position("model.layers.0.mlp.up_proj.weight", 1) == 1
    for outside in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        assert layer_position(outside, 4) == 0


def test_gradients_filters_and_precedence(family):
    assert evaluate_setting([0.0, 1.0, 0.0], WEIGHT, "x", 0.25, "w") == pytest.approx(0.5)
    assert evaluate_setting([0.0, 1.0, 0.0], WEIGHT, "x", 1.0, "w") == 0.0
    assert evaluate_setting([True, False], FLAG, "x", 0.4, "n") is True
    conds = parse_recipe({"merge_method": "linear", "models": [{"model": "a", "parameters": {"weight": [
        {"filter": "mlp", "value": [1.0, 3.0]}, {"filter": "self_attn", "value": 5}]}}]}).models[0].parameters["weight"]
    assert evaluate_setting(conds, WEIGHT, "model.layers.1.mlp.up_proj.weight", 0.5, "w") == 2.0
    assert evaluate_setting(conds, WEIGHT, "model.layers.1.self_attn.q_proj.weight", 0.5, "w") == 5
    assert evaluate_setting(conds, WEIGHT, "model.norm.weight", 0.5, "w") is None
    # A per-model setting that does not apply falls back to the top-level one, then to the default.
    recipe = parse_recipe({"merge_method": "ties", "base_model": family[0], "parameters": {"weight": 0.7},
                           "models": [{"model": family[1], "parameters": {"weight": [{"filter": "mlp", "value": 2}]}}]})
    merger = PSMerger.open(recipe)
    mlp = merger.parameters_for("model.layers.0.mlp.up_proj.weight")
    norm = merger.parameters_for("model.norm.weight")
    assert mlp.per_model[family[1]]["weight"] == 2 and norm.per_model[family[1]]["weight"] == 0.7
    assert norm.per_model[family[1]]["density"] == 1.0 and norm.shared["normalize"] is True


@pytest.mark.parametrize("method", ["dare_ties", "dare_linear", "della", "della_linear"])
def test_random_methods_are_seeded(method, family, resident):
    a = merge_state_dict(_recipe(method, family, seed=1), resident)
    b = merge_state_dict(_recipe(method, family, seed=1), resident)
    c = merge_state_dict(_recipe(method, family, seed=2), resident)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c[n]) for n in a)
    # Each tensor's randomness depends on its name only, not on what was merged before it.
    name = "model.layers.2.mlp.down_proj.weight"
    assert torch.equal(PSMerger(_recipe(method, family, seed=1), resident_sources(resident)).merge_tensor(name), a[name])


def resident_sources(resident):
    from evosearch.merge.ps import as_sources

    return as_sources(resident)


@pytest.mark.parametrize("method", ["dare_linear", "della_linear"])
@pytest.mark.parametrize("rescale", [True, False])
def test_drop_rate_and_rescaling(method, rescale, family, resident):
    """One fine-tune, weight 1: the merged delta is the kept part of its delta, rescaled or not."""
    density = 0.3
    recipe = parse_recipe({"kind": "ps", "merge_method": method, "base_model": family[0], "seed": 3,
                           "models": [{"model": family[1], "parameters": {"weight": 1.0, "density": density}}],
                           "parameters": {"rescale": rescale}})
    name = "model.layers.1.mlp.gate_proj.weight"
    merged = PSMerger(recipe, resident_sources(resident)).merge_tensor(name)
    delta = resident[family[1]][name] - resident[family[0]][name]
    out_delta = merged - resident[family[0]][name]
    kept = out_delta.abs() > 1e-9
    assert kept.float().mean().item() == pytest.approx(density, abs=0.02)
    ratio = (out_delta[kept] / delta[kept])
    if rescale:
        # mergekit's rescale restores the task vector's L1 norm: ~1/density for DARE's uniform drop,
        # less for DELLA, which keeps the larger deltas.
        l1_factor = (delta.abs().sum() / delta[kept].abs().sum()).item()
        assert ratio.mean().item() == pytest.approx(l1_factor, rel=1e-3)
        if method == "dare_linear":
            assert l1_factor == pytest.approx(1 / density, rel=0.1)
        assert ratio.std().item() < 1e-3  # one common factor for the whole tensor
    else:
        assert ratio.allclose(torch.ones_like(ratio), atol=1e-4)
    if method == "della_linear":  # MagPrune keeps large deltas more often than small ones
        big = delta.abs() > delta.abs().median()
        assert kept[big].float().mean() > kept[~big].float().mean() + 0.1


def test_resident_merge_equals_lazy_disk_merge(family, resident):
    recipe = _recipe("ties", family)
    lazy = PSMerger.open(recipe).merge_all()
    in_memory = merge_state_dict(recipe, resident)
    assert all(torch.equal(lazy[n], in_memory[n]) for n in lazy)


def test_build_merged_model_runs(family, resident):
    recipe = _recipe("dare_ties", family, seed=4)
    model = build_merged_model(recipe, {p: SourceModel.open(p) for p in family})
    state = merge_state_dict(recipe, resident)
    assert all(torch.equal(model.state_dict()[n], state[n]) for n in state)
    logits = model(torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, 128) and torch.isfinite(logits).all()


def test_tensor_seed_is_stable():
    assert tensor_seed(0, "a") == tensor_seed(0, "a") != tensor_seed(0, "b") != tensor_seed(1, "a")


@pytest.mark.parametrize("case,expected", [
    ({"merge_method": "frobnicate"}, "unknown merge_method 'frobnicate'"),
    ({"parameters": {"temperature": 1}}, "parameters.temperature: unknown parameter"),
    ({"models_params": {"weight": []}}, "models[0].parameters.weight: empty list"),
    ({"models_params": {"weight": [0.1, "heavy"]}}, "models[0].parameters.weight[1]: expected a number"),
    ({"models_params": {"density": 0.5}}, "parameter 'weight' is required"),
    ({"merge_method": "della", "models_params": {"weight": 1, "density": 0.9, "epsilon": 0.2}}, "della needs"),
    ({"merge_method": "model_stock", "models": 1}, "model_stock needs at least two models"),
])
def test_bad_recipes_fail_before_merging(case, expected, family):
    data = {"kind": "ps", "merge_method": case.get("merge_method", "ties"), "base_model": family[0],
            "models": [{"model": m, "parameters": case.get("models_params", {"weight": 1})}
                       for m in family[1:1 + case.get("models", 3)]],
            "parameters": case.get("parameters", {})}
    if data["merge_method"] == "model_stock":
        data["models"] = [{"model": m} for m in family[1:1 + case["models"]]]
    with pytest.raises(RecipeError) as e:
        PSMerger.open(parse_recipe(data))
    assert expected in str(e.value) and "\n" not in str(e.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", ["ties", "dare_ties", "slerp", "model_stock"])
def test_merges_on_cuda(method, family, resident):
    on_gpu = {p: {n: t.cuda() for n, t in sd.items()} for p, sd in resident.items()}
    if method == "slerp":
        recipe = parse_recipe({"merge_method": "slerp", "base_model": family[0], "parameters": {"t": [0.2, 0.8]},
                               "models": [{"model": family[0]}, {"model": family[1]}]})
    elif method == "model_stock":
        recipe = parse_recipe({"merge_method": "model_stock", "base_model": family[0],
                               "models": [{"model": m} for m in family[1:]]})
    else:
        recipe = _recipe(method, family, seed=5)
    gpu = merge_state_dict(recipe, on_gpu)
    assert all(t.is_cuda for t in gpu.values())
    assert all(torch.equal(a, b) for a, b in zip(merge_state_dict(recipe, on_gpu).values(), gpu.values()))
    # Every method agrees with the CPU result: DARE's drops are counter-based, the same on every device.
    cpu = merge_state_dict(recipe, resident)
    assert max((gpu[n].cpu() - cpu[n]).abs().max().item() for n in cpu) < 1e-5
    if method == "dare_ties":
        base = resident[family[0]]
        assert all(torch.equal(gpu[n].cpu() != base[n], cpu[n] != base[n]) for n in cpu)  # the same drops
    model = build_merged_model(recipe, on_gpu)
    assert next(model.parameters()).is_cuda
