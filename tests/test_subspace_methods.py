"""The subspace methods (Iso-C, Iso-CTS, TSV-M) do what their papers define, on tensors built so the answer is
known; `bench/subspace_methods.py` compares them with FusionBench's implementations."""

from __future__ import annotations

import pytest
import torch

from evosearch.merge.methods import METHODS, TensorMerge, TensorParameters
from evosearch.merge.methods.subspace import common_and_task_dims, iso_c, iso_cts, tsv_m
from evosearch.merge.ps import PSMerger
from evosearch.recipe import parse_recipe
from tiny_llama import save_llama_family


def _merge(method: str, base, deltas, weights=None, **shared) -> torch.Tensor:
    names = [f"m{i}" for i in range(len(deltas))]
    tensors = {n: base + d for n, d in zip(names, deltas)} | {"base": base}
    values = {p.name: p.default for p in METHODS[method].parameters if not p.per_model} | shared
    per_model = {n: {"weight": w} for n, w in zip(names, weights or [1.0] * len(deltas))}
    return METHODS[method].merge(TensorMerge("t", tensors, "base", TensorParameters(values, per_model), seed=0))


def test_iso_c_flattens_the_spectrum_of_the_task_arithmetic_sum():
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(48, 32, generator=gen, dtype=torch.float64)
    deltas = [torch.randn(48, 32, generator=gen, dtype=torch.float64) for _ in range(3)]
    merged = _merge("iso_c", base, deltas, **{"lambda": 1.0}) - base
    u, s, vh = torch.linalg.svd(sum(deltas), full_matrices=False)
    assert torch.allclose(torch.linalg.svdvals(merged), s.mean().expand(32), atol=1e-10)
    assert torch.allclose(merged, s.mean() * u @ vh, atol=1e-10)


def test_tsv_m_keeps_each_tasks_top_subspace_when_they_do_not_interfere():
    """Task vectors in mutually orthogonal subspaces: TSV-M is the sum of their rank-(r/T) truncations."""
    q_left, _ = torch.linalg.qr(torch.randn(40, 40, dtype=torch.float64))
    q_right, _ = torch.linalg.qr(torch.randn(30, 30, dtype=torch.float64))
    deltas, expected = [], 0
    for i in range(3):  # task i lives in directions 10i..10i+9; its top 10 = 1/3 of rank 30
        s = torch.linspace(3.0, 1.0, 10, dtype=torch.float64) * (i + 1)
        top = q_left[:, 10 * i:10 * i + 10] @ torch.diag(s) @ q_right[:, 10 * i:10 * i + 10].T
        deltas.append(top)
        expected = expected + top
    assert torch.allclose(tsv_m(deltas, {}), expected, atol=1e-10)
    # Interference: the same task vector twice is not counted twice in its shared directions.
    assert torch.linalg.matrix_norm(tsv_m([deltas[0], deltas[0]], {})) < 2 * torch.linalg.matrix_norm(deltas[0])


def test_iso_cts_with_all_of_the_rank_in_common_is_iso_c():
    gen = torch.Generator().manual_seed(1)
    deltas = [torch.randn(24, 20, generator=gen, dtype=torch.float64) for _ in range(2)]
    assert torch.allclose(iso_cts(deltas, {"common_space_fraction": 1.0}), iso_c(deltas, {}), atol=1e-9)
    assert common_and_task_dims(64, 2, 0.8) == (52, 6) and common_and_task_dims(4, 3, 0.8) == (4, 0)
    merged = iso_cts(deltas, {"common_space_fraction": 0.5})
    assert torch.allclose(torch.linalg.svdvals(merged), torch.linalg.svdvals(merged).mean().expand(20), atol=1e-9)


@pytest.mark.parametrize("method", ["iso_c", "iso_cts", "tsv_m"])
def test_vectors_take_the_mean_and_weights_scale_task_vectors(method):
    base = torch.zeros(5)
    deltas = [torch.tensor([1.0, 2, 3, 4, 5]), torch.tensor([3.0, 0, 3, 0, 3])]
    merged = _merge(method, base, deltas, weights=[1.0, 0.5], **{"lambda": 2.0})
    assert torch.allclose(merged, 2.0 * (deltas[0] + 0.5 * deltas[1]) / 2)


@pytest.mark.parametrize("method", ["iso_c", "iso_cts", "tsv_m"])
def test_subspace_methods_merge_a_model_with_per_layer_parameters(method, tmp_path):
    base, *fts = [str(p) for p in save_llama_family(tmp_path, n_finetunes=2)]
    recipe = parse_recipe({"kind": "ps", "merge_method": method, "base_model": base, "models": [
        {"model": fts[0], "parameters": {"weight": [0.3, 1.0]}}, {"model": fts[1]}],
        "parameters": {"lambda": [{"filter": "mlp", "value": 1.5}, {"value": 1.0}]}})
    merged = PSMerger.open(recipe).merge_all()
    assert all(torch.isfinite(t).all() for t in merged.values())
    assert recipe.mergekit_blocker() and "evosearch's own" in recipe.mergekit_blocker()
