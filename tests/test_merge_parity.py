"""Numerical parity with mergekit (the reference implementation) for every deterministic method.

Each case uses per-layer gradients and per-group filters, so the parameter resolution is checked
together with the kernels. mergekit runs in-process on CPU with float32 output.
"""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file

from evosearch.merge.ps import PSMerger
from evosearch.recipe import parse_recipe
from mergekit_reference import mergekit_merge
from tiny_llama import save_llama_family

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return [str(p) for p in save_llama_family(tmp_path_factory.mktemp("parity"), n_finetunes=3)]


def _cases(base: str, fts: list[str]) -> dict[str, dict]:
    by_group = lambda attn, mlp, rest: [{"filter": "self_attn", "value": attn}, {"filter": "mlp", "value": mlp},
                                        {"value": rest}]
    gta_models = [
        {"model": fts[0], "parameters": {"weight": [0.2, 0.9, 0.5], "density": by_group(0.3, [0.9, 0.2], 0.6)}},
        {"model": fts[1], "parameters": {"weight": by_group([1.0, 0.1], 0.4, 0.7), "density": 0.5}},
        {"model": fts[2], "parameters": {"weight": -0.3}},
    ]
    ta_models = copy.deepcopy(gta_models)
    for m in ta_models:
        m["parameters"].pop("density", None)
    breadcrumbs_models = copy.deepcopy(gta_models)
    breadcrumbs_models[0]["parameters"]["gamma"] = by_group(0.05, [0.0, 0.1], 0.02)
    return {
        "linear": {"merge_method": "linear", "models": [
            {"model": base, "parameters": {"weight": [1.0, 0.0]}},
            {"model": fts[0], "parameters": {"weight": by_group([0.1, 0.9], 0.5, 0.25)}},
            {"model": fts[1], "parameters": {"weight": 0.4}}]},
        "linear_unnormalized": {"merge_method": "linear", "parameters": {"normalize": False},
                                "models": [{"model": fts[0], "parameters": {"weight": [0.3, 0.7]}},
                                           {"model": fts[1], "parameters": {"weight": 0.6}}]},
        "task_arithmetic": {"merge_method": "task_arithmetic", "base_model": base, "models": ta_models,
                            "parameters": {"lambda": [0.5, 1.5]}},
        "ties": {"merge_method": "ties", "base_model": base, "models": gta_models,
                 "parameters": {"normalize": by_group(False, True, True)}},
        "breadcrumbs": {"merge_method": "breadcrumbs", "base_model": base, "models": breadcrumbs_models,
                        "parameters": {"density": 0.9}},
        "breadcrumbs_ties": {"merge_method": "breadcrumbs_ties", "base_model": base,
                             "models": breadcrumbs_models, "parameters": {"gamma": 0.03, "lambda": 1.2}},
        "model_stock": {"merge_method": "model_stock", "base_model": base,
                        "models": [{"model": m} for m in fts]},
        "model_stock_filter_wise": {"merge_method": "model_stock", "base_model": base,
                                    "models": [{"model": m} for m in [base] + fts],
                                    "parameters": {"filter_wise": True}},
        "slerp": {"merge_method": "slerp", "base_model": base, "models": [{"model": base}, {"model": fts[0]}],
                  "parameters": {"t": by_group([0.0, 0.5, 1.0], [1.0, 0.2], 0.3)}},
        "sce": {"merge_method": "sce", "base_model": base, "models": [{"model": m} for m in fts],
                "parameters": {"select_topk": by_group(0.5, [0.3, 0.9], 1.0)}},
        "nuslerp": {"merge_method": "nuslerp", "base_model": base, "models": [
            {"model": fts[0], "parameters": {"weight": [0.2, 0.9]}},
            {"model": fts[1], "parameters": {"weight": by_group(0.5, [1.0, 0.3], 0.6)}}]},
        "nuslerp_row_wise": {"merge_method": "nuslerp", "models": [
            {"model": fts[0], "parameters": {"weight": [0.7, 0.1]}}, {"model": fts[1], "parameters": {"weight": 0.4}}],
            "parameters": {"nuslerp_flatten": False, "nuslerp_row_wise": by_group(True, False, True)}},
        "multislerp": {"merge_method": "multislerp", "base_model": base, "models": [
            {"model": fts[0], "parameters": {"weight": [0.2, 0.9]}},
            {"model": fts[1], "parameters": {"weight": by_group(0.5, [1.0, 0.3], 0.6)}},
            {"model": fts[2], "parameters": {"weight": 0.3}}],
            "parameters": {"normalize_weights": by_group(True, False, True)}},
        "karcher": {"merge_method": "karcher", "models": [{"model": m} for m in [base] + fts],
                    "parameters": {"max_iter": by_group(3, 10, 1), "tol": [1e-5, 1e-3]}},
        "nearswap": {"merge_method": "nearswap", "base_model": base, "models": [{"model": fts[0]}],
                     "parameters": {"t": by_group([0.001, 0.03], 0.01, 0.02)}},
        "arcee_fusion": {"merge_method": "arcee_fusion", "base_model": base, "models": [{"model": fts[1]}]},
        "ram": {"merge_method": "ram", "base_model": base, "models": [{"model": m} for m in fts],
                "parameters": {"epsilon": by_group(0.01, [0.005, 0.03], 0.02)}},
        "ramplus_tl": {"merge_method": "ramplus_tl", "base_model": base, "models": [{"model": m} for m in fts],
                       "parameters": {"epsilon": 0.015, "r": [0.1, 0.9], "alpha": by_group(0.2, 0.05, 0.5)}},
        "passthrough": {"merge_method": "passthrough", "models": [
            {"model": fts[2], "parameters": {"scale": by_group([0.5, 2.0], 1.5, 0.9)}}]},
    }


CASE_NAMES = ["linear", "linear_unnormalized", "task_arithmetic", "ties", "breadcrumbs", "breadcrumbs_ties",
              "model_stock", "model_stock_filter_wise", "slerp", "sce", "nuslerp", "nuslerp_row_wise", "multislerp",
              "karcher", "nearswap", "arcee_fusion", "ram", "ramplus_tl", "passthrough"]


@pytest.mark.parametrize("case", CASE_NAMES)
def test_matchesmergekit_merge(case, family, tmp_path):
    torch.manual_seed(0)
    config = _cases(family[0], family[1:])[case]
    recipe = parse_recipe(copy.deepcopy(config))
    # mergekit builds the config evosearch writes back for the recipe (its mergekit YAML out).
    reference = mergekit_merge(recipe.to_mergekit(), tmp_path / "mergekit")
    ours = PSMerger.open(recipe).merge_all()
    assert set(ours) == set(reference)
    worst = max((ours[n] - reference[n]).abs().max().item() for n in reference)
    print(f"parity {case}: max abs diff {worst:.3g}")
    assert worst <= TOLERANCE, f"{case}: max abs diff {worst:g}"
    base = load_file(f"{family[0]}/model.safetensors")
    # The merge must actually change something, or parity would be vacuous.
    assert any((ours[n] - base[n]).abs().max() > 1e-3 for n in base)


@pytest.fixture(scope="module")
def tied_family(tmp_path_factory):
    """Weights on a coarse grid (as bf16 checkpoints nearly are): task vectors are exact multiples of 1/64,
    so many entries share a magnitude and the density cut falls inside a run of equal ones."""
    from safetensors.torch import save_file

    paths = save_llama_family(tmp_path_factory.mktemp("tied"), n_finetunes=2)
    base = {n: torch.round(t * 256) / 256 for n, t in load_file(f"{paths[0]}/model.safetensors").items()}
    save_file(base, f"{paths[0]}/model.safetensors", metadata={"format": "pt"})
    gen = torch.Generator().manual_seed(7)
    for path in paths[1:]:
        tuned = {n: t + torch.randint(-3, 4, t.shape, generator=gen).float() / 64 for n, t in base.items()}
        save_file(tuned, f"{path}/model.safetensors", metadata={"format": "pt"})
    return [str(p) for p in paths]


def test_ties_with_equal_magnitudes_at_the_cut_differs_from_mergekit_only_there(tied_family, tmp_path):
    """mergekit keeps whichever tied elements its unstable sort happens to put first (no rule a selection
    can reproduce); evosearch keeps the lowest indices among them. Everywhere else the two agree exactly,
    and the number kept is mergekit's."""
    from evosearch.merge.methods.sparsify import keep_windows, magnitude_window

    base, ft0 = tied_family[:2]
    config = {"merge_method": "ties", "base_model": base,
              "models": [{"model": ft0, "parameters": {"weight": 1.0, "density": 0.35}}]}
    reference = mergekit_merge(copy.deepcopy(config), tmp_path / "mergekit")
    ours = PSMerger.open(parse_recipe(copy.deepcopy(config))).merge_all()
    b, m = load_file(f"{base}/model.safetensors"), load_file(f"{ft0}/model.safetensors")
    straddled = 0
    for name in reference:
        delta = (m[name] - b[name]).reshape(-1)
        k = max(1, int(0.35 * delta.numel()))
        bound = keep_windows(b[name], [m[name]], [magnitude_window(delta.numel(), 0.35)])[0].upper
        tied = delta.abs() == bound.threshold
        differs = (ours[name] != reference[name]).reshape(-1)
        assert not differs[~tied].any(), name
        kept = (ours[name] - b[name]).reshape(-1) != 0
        assert int(kept.sum()) == int((reference[name] - b[name]).ne(0).sum()) == k
        kept_tied = torch.nonzero(kept & tied).reshape(-1)
        assert torch.equal(kept_tied, torch.nonzero(tied).reshape(-1)[:kept_tied.numel()])  # lowest indices
        straddled += int(differs.any())
    assert straddled  # the family does put ties across the cut
