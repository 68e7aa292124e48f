"""The one-pass task-arithmetic kernel (`merge/methods/fused.py`): its C and torch backends agree bit for
bit, and DARE/DELLA masks are counter-based, so the same whatever the tensor order, chunking, thread
count or backend, with mergekit's drop rate and rescaling."""

from __future__ import annotations

import pytest
import torch

from evosearch.merge.methods import METHODS, fused
from evosearch.merge.methods.counter_random import counter_hash, probability_threshold, stream_key
from evosearch.merge.ps import PSMerger, as_sources
from evosearch.merge.sources import SourceModel
from evosearch.recipe import parse_recipe
from tiny_llama import save_llama_family

GTA = ["task_arithmetic", "ties", "breadcrumbs", "breadcrumbs_ties", "dare_ties", "dare_linear", "della",
       "della_linear"]
RESCALED = {"dare_ties", "dare_linear", "della", "della_linear"}  # mergekit's default rescale=true


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return [str(p) for p in save_llama_family(tmp_path_factory.mktemp("fused"), n_finetunes=3)]


@pytest.fixture(scope="module")
def resident(family):
    return {p: SourceModel.open(p).load_all() for p in family}


@pytest.fixture(scope="module")
def tied_resident(resident):
    """Weights on a 1/64 grid: many equal magnitudes, so rank bounds fall inside runs of ties."""
    return {p: {n: torch.round(t * 64) / 64 for n, t in sd.items()} for p, sd in resident.items()}


@pytest.fixture
def kernel_setting(monkeypatch):
    threads = torch.get_num_threads()

    def use(backend: str, chunk: int = fused.CHUNK, n_threads: int = 1) -> None:
        monkeypatch.setenv(fused.KERNEL_ENV, backend)
        monkeypatch.setattr(fused, "CHUNK", chunk)
        torch.set_num_threads(n_threads)

    yield use
    torch.set_num_threads(threads)


def _recipe(method: str, family, seed: int = 5, n: int = 3, **shared):
    extra = {name: value for name, value in (("gamma", 0.05), ("epsilon", 0.1))
             if name in METHODS[method].per_model_names}
    models = [{"model": m, "parameters": {"weight": w, "density": d, **extra}}
              for m, w, d in zip(family[1:n + 1], [0.8, -0.4, 0.6], [0.3, 0.6, 0.45])]
    return parse_recipe({"kind": "ps", "merge_method": method, "base_model": family[0], "models": models,
                         "parameters": shared, "seed": seed})


def _merge(recipe, resident, order=None):
    merger = PSMerger(recipe, as_sources(resident))
    return {n: merger.merge_tensor(n) for n in (order or merger.tensor_names())}


def test_the_c_kernel_builds():
    assert fused.kernel() is not None  # CI machines have a C compiler; without one the torch backend runs


@pytest.mark.parametrize("method", GTA)
def test_c_and_torch_backends_agree(method, family, tied_resident, kernel_setting):
    recipe = _recipe(method, family)
    kernel_setting("c", n_threads=2)
    ours = _merge(recipe, tied_resident)
    kernel_setting("torch")
    theirs = _merge(recipe, tied_resident)
    for name in ours:
        if method in RESCALED:  # the L1 norms are summed in float64, in a different order: an ulp apart
            torch.testing.assert_close(ours[name], theirs[name], rtol=1e-6, atol=1e-7)
        else:
            assert torch.equal(ours[name], theirs[name]), name
    base = tied_resident[family[0]]
    assert any(not torch.equal(ours[n], base[n]) for n in base)


@pytest.mark.parametrize("grid", [None, 256])
def test_bracketed_rank_bounds_equal_the_exact_ones(grid, kernel_setting):
    """The sampled bracket (one pass for every task vector) finds the bounds the exact radix histogram and
    the torch backend find, with and without long runs of equal magnitudes."""
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(1024, 1100, generator=gen)
    models = [base + torch.randn(1024, 1100, generator=gen) * s for s in (0.01, 0.03)]
    if grid:
        models = [base + torch.round((m - base) * grid) / grid for m in models]
    requests = [(m, rank) for m in models for rank in (1, 5000, base.numel() // 3, base.numel() - 7)]
    kernel_setting("c", n_threads=2)
    bracketed = fused.rank_bounds(base, requests)
    exact = [fused._exact_bound(base, m, rank) for m, rank in requests]
    kernel_setting("torch")
    assert bracketed == exact == fused.rank_bounds(base, requests)


def test_counter_hash_is_the_same_in_c_and_torch():
    key = stream_key(123456789, 2)
    indices = [0, 1, 2, 1000, (1 << 31) + 5, (1 << 32) + 7, (1 << 40) + 3]
    lib = fused.kernel()
    for j in indices:
        assert int(counter_hash(key, j, j + 1, torch.device("cpu"))) == lib.counter_hash(key[0], key[1], j)
    # Chunk by chunk equals all at once: a hash depends on the index only.
    whole = counter_hash(key, 0, 10_000, torch.device("cpu"))
    assert torch.equal(torch.cat([counter_hash(key, s, min(s + 333, 10_000), torch.device("cpu"))
                                  for s in range(0, 10_000, 333)]), whole)


def test_draws_are_uniform_and_independent_between_task_vectors():
    n, density = 1 << 20, 0.3
    threshold = probability_threshold(density)
    a = counter_hash(stream_key(7, 0), 0, n, torch.device("cpu")) < threshold
    b = counter_hash(stream_key(7, 1), 0, n, torch.device("cpu")) < threshold
    assert a.float().mean().item() == pytest.approx(density, abs=0.003)
    assert b.float().mean().item() == pytest.approx(density, abs=0.003)
    assert (a & b).float().mean().item() == pytest.approx(density ** 2, abs=0.003)
    assert (a[1:] & a[:-1]).float().mean().item() == pytest.approx(density ** 2, abs=0.003)  # neighbours


@pytest.mark.parametrize("method", ["dare_linear", "della_linear", "dare_ties", "della"])
def test_masks_are_the_same_whatever_the_order_chunking_threads_and_backend(method, family, resident,
                                                                            kernel_setting):
    """The mask test of issue 16: one tensor built in two orders, two chunkings, one and two threads, C and
    torch; the drop masks (one task vector, no rescale: merged != base) and whole merges are bit-identical."""
    name = "model.layers.1.mlp.down_proj.weight"
    others = [n for n in resident[family[0]] if n != name]
    one = _recipe(method, family, n=1, rescale=False)
    three = _recipe(method, family)
    variants = [("c", 1 << 17, 1, [name, *others]), ("c", 1000, 2, [*others[::-1], name]),
                ("torch", 777, 1, [*others, name]), ("torch", 1 << 17, 2, [name])]
    masks, merges = [], []
    for backend, chunk, threads, order in variants:
        kernel_setting(backend, chunk, threads)
        masks.append(_merge(one, resident, order)[name] != resident[family[0]][name])
        merges.append(_merge(three, resident, order)[name])
    assert 0.2 < masks[0].float().mean().item() < 0.4  # density 0.3 (DELLA: on average)
    for (backend, *_), mask, merged in zip(variants[1:], masks[1:], merges[1:]):
        assert torch.equal(mask, masks[0])
        if method in RESCALED and backend == "torch":
            torch.testing.assert_close(merged, merges[0], rtol=1e-6, atol=1e-7)
        else:
            assert torch.equal(merged, merges[0])


@pytest.mark.parametrize("rule", ["random", "della"])
def test_drop_rate_and_rescaling_match_mergekit(rule):
    """mergekit's own sparsifiers and ours on one task vector, eight draws each: the same share kept and the
    same L1 rescale factor on average (ours draws by counter, mergekit by torch's generator)."""
    from mergekit.sparsify import RescaleNorm, bernoulli, della_magprune

    from evosearch.merge.methods.sparsify import keep_della, keep_random

    gen = torch.Generator().manual_seed(0)
    base = torch.randn(256, 256, generator=gen) * 0.02
    model = base + torch.randn(256, 256, generator=gen) * 0.01
    delta = model - base
    density, epsilon = 0.3, 0.1
    stats = {"ours": [], "mergekit": []}
    for draw in range(8):
        key = stream_key(draw, 0)
        keep = keep_random(density, key) if rule == "random" else keep_della(base, model, density, epsilon, key, "x")
        kept = fused.fused_combine(base, [model], [keep], [1.0], sign_consensus=False, normalize=False,
                                   lam=1.0) != base
        stats["ours"].append((kept.float().mean().item(), fused.l1_rescale_factor(base, model, keep)))
        torch.manual_seed(draw)
        theirs = (bernoulli(delta, density, RescaleNorm.l1) if rule == "random"
                  else della_magprune(delta, density, epsilon, RescaleNorm.l1))
        kept = theirs != 0
        stats["mergekit"].append((kept.float().mean().item(), (theirs[kept] / delta[kept]).mean().item()))
    mean = {tool: [sum(x[i] for x in rows) / len(rows) for i in range(2)] for tool, rows in stats.items()}
    assert mean["ours"][0] == pytest.approx(mean["mergekit"][0], abs=0.003)
    assert mean["ours"][1] == pytest.approx(mean["mergekit"][1], rel=0.01)
    if rule == "random":
        assert mean["ours"][1] == pytest.approx(1 / density, rel=0.02)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", ["ties", "breadcrumbs", "dare_ties", "della"])
def test_cuda_builds_the_masks_the_cpu_kernel_builds(method, family, tied_resident):
    """A candidate built on a GPU worker equals its export built on a CPU: the same elements kept (ties and
    draws alike), the values to float rounding (CUDA sums in its own order)."""
    recipe = _recipe(method, family)
    cpu = _merge(recipe, tied_resident)
    gpu = _merge(recipe, {p: {n: t.cuda() for n, t in sd.items()} for p, sd in tied_resident.items()})
    base = tied_resident[family[0]]
    for name in cpu:
        torch.testing.assert_close(gpu[name].cpu(), cpu[name], rtol=1e-5, atol=1e-6)
        one = _recipe(method, family, n=1, rescale=False)
        kept_cpu = _merge(one, tied_resident, [name])[name] != base[name]
        on_gpu = {p: {name: sd[name].cuda()} for p, sd in tied_resident.items()}
        kept_gpu = PSMerger(one, as_sources(on_gpu)).merge_tensor(name).cpu() != base[name]
        assert torch.equal(kept_gpu, kept_cpu), name
