"""DFS merge: the in-memory candidate (shared source layers, residual scales) and its folded export.

Tolerance of the fold. Hop k of the folded model carries the stream g_k = h_k / P_k, where h_k is the
in-memory stream, and RMSNorm(h_k; eps) = RMSNorm(g_k; eps / P_k^2). So each norm differs by a
relative eps·|P_k^-2 - 1| / (2·mean(g_k^2)): small when P_k is near 1 or the stream is large, and
growing when scales below 1 compound (a path with P_k down to 0.075 gave 1e-3 on logits of 0.6).
Here eps = 1e-5 (Llama 2's), the stream's mean square starts at 0.25 and grows (`tiny_sources`), and
SCALES span 0.5..2.0 with P_k in [0.78, 2.44] along the path, so each norm is off by at most
1e-5·0.64 / 0.5 = 1.3e-5 relative; on logits of magnitude <= 1.6 over ten hops that stays under the
1e-4 asserted (measured 4e-6..9e-6). With eps = 0 only float32 rounding is left and the logits agree
to 1e-5 (measured 3e-7), with the unfolded model as the control that must fail.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, PretrainedConfig

from evosearch.merge.dfs import DFSError, DFSPlan, dfs_hops
from evosearch.merge.dfs_model import build_dfs_model
from evosearch.merge.ps import build_merged_model, build_model
from evosearch.recipe import DFSRecipe, PSRecipe

FOLD_TOLERANCE = 1e-4
LAYERS = 4
# Slots 0..7 are repeat 0 (source 0 layers 0-3, source 1 layers 0-3), 8..15 repeat 1. Layers (0,1),
# (0,2) and (0,3) run twice; every cross-source hop and both same-source scales are used.
REPEATED_PATH_SLOTS = [0, 1, 2, 3, 5, 6, 9, 10, 11, 15]
SCALES = [[1.25, 0.5], [2.0, 0.8]]
FAMILIES = {
    "llama": {},
    "llama_biases": {"attention_bias": True, "mlp_bias": True},  # o_proj/down_proj biases are folded too
    "llama_tied": {"tie_word_embeddings": True},
    "mistral": {"sliding_window": 6},
    "qwen2": {},
    # layers 2-3 use sliding-window attention: each hop keeps its source layer's type
    "qwen2_sliding": {"use_sliding_window": True, "sliding_window": 6, "max_window_layers": 2},
    "qwen3": {},
}


def tiny_config(model_type: str = "llama", eps: float = 1e-5, **overrides) -> PretrainedConfig:
    kwargs = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=LAYERS,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
                  rms_norm_eps=eps, tie_word_embeddings=False)
    return AutoConfig.for_model(model_type, **{**kwargs, **overrides})


def tiny_sources(config: PretrainedConfig, n: int = 2, seed: int = 0) -> list[torch.nn.Module]:
    """`n` random float32 models with trained-model-like magnitudes: the stream's mean square starts at
    0.25 (embeddings of std 0.5) and every layer moves the logits by O(0.1), so a wrong layer, scale or
    cache entry shows (HF's init of std 0.02 leaves the logits nearly layer-independent)."""
    torch.manual_seed(seed)
    models = []
    for _ in range(n):
        model = AutoModelForCausalLM.from_config(config).float().eval()
        with torch.no_grad():
            model.get_input_embeddings().weight.normal_(0.0, 0.5)
            for name, p in model.named_parameters():
                if name.endswith(".bias"):
                    p.normal_(0.0, 0.1)
                elif name.endswith("proj.weight"):
                    p.normal_(0.0, 0.08)
            if config.tie_word_embeddings:  # a std-0.5 head would give logits ~30; keep them O(1)
                model.model.norm.weight.fill_(1 / 16)
        models.append(model)
    return models


def dfs_recipe(slots=REPEATED_PATH_SLOTS, scales=SCALES, sources=("a", "b"), repeats=2, **extra) -> DFSRecipe:
    m = len(sources)
    indicator = [j in slots for j in range(m * LAYERS * repeats)]
    return DFSRecipe(sources=list(sources), num_layers=LAYERS, repeats=repeats, indicator=indicator,
                     scales=scales, **extra)


def folded_model(recipe: DFSRecipe, sources: list[torch.nn.Module]) -> torch.nn.Module:
    """The plain model made of the plan's export tensors, read from the sources' state dicts."""
    plan = DFSPlan.from_recipe(recipe, [s.config for s in sources])
    states = [s.state_dict() for s in sources]
    tensors = {n: plan.output_tensor(n, lambda i, name: states[i][name]) for n in plan.output_tensor_names()}
    return build_model(plan.output_config(), tensors)


def token_batch(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def logits(model: torch.nn.Module, ids: torch.Tensor | None = None) -> torch.Tensor:
    return model(token_batch() if ids is None else ids).logits


@pytest.mark.parametrize("family", list(FAMILIES))
def test_folded_export_matches_in_memory_model(family):
    model_type = family.split("_")[0]
    sources = tiny_sources(tiny_config(model_type, **FAMILIES[family]))
    recipe = dfs_recipe()
    dfs = build_dfs_model(recipe, sources)
    plain = folded_model(recipe, sources)

    assert type(plain) is type(sources[0]) and plain.config.num_hidden_layers == len(recipe.path())
    source_types = getattr(sources[0].config, "layer_types", None)
    if source_types is not None:  # both sources share one config here
        assert plain.config.layer_types == [source_types[layer] for _, layer in recipe.path()]
    expected = logits(dfs)
    diff = (logits(plain) - expected).abs().max().item()
    assert diff <= FOLD_TOLERANCE, f"{family}: max |logit diff| {diff:.2e} (logits up to {expected.abs().max():.2f})"


def test_fold_is_exact_up_to_rounding_without_eps_and_needed():
    sources = tiny_sources(tiny_config(eps=0.0))
    recipe = dfs_recipe()
    expected = logits(build_dfs_model(recipe, sources))
    assert (logits(folded_model(recipe, sources)) - expected).abs().max().item() <= 1e-5

    unit_scales = recipe.model_copy(update={"scales": [[1.0, 1.0], [1.0, 1.0]]})
    unfolded = folded_model(unit_scales, sources)  # same layers, scales ignored
    assert (logits(unfolded) - expected).abs().max().item() > 1e-2


def test_hops_carry_scales_and_their_running_product():
    recipe = dfs_recipe()
    hops = dfs_hops(recipe)
    assert [(h.source, h.layer) for h in hops] == recipe.path()
    assert [h.scale for h in hops] == recipe.hop_scales()
    assert [h.product for h in hops] == pytest.approx(list(itertools.accumulate(recipe.hop_scales(),
                                                                                lambda a, b: a * b)))
    plan = DFSPlan.from_recipe(recipe, [tiny_config(), tiny_config()])
    names = plan.output_tensor_names()
    assert len(names) == 3 + 9 * len(hops) and names[0] == "model.embed_tokens.weight"
    assert names[-2:] == ["model.norm.weight", "lm_head.weight"]
    tied = DFSPlan.from_recipe(recipe, [tiny_config(tie_word_embeddings=True)] * 2)
    assert "lm_head.weight" not in tied.output_tensor_names()


def test_unit_scales_along_one_source_reproduce_that_source_exactly():
    sources = tiny_sources(tiny_config())
    recipe = dfs_recipe(slots=range(LAYERS, 2 * LAYERS), scales=[[1.0, 1.0], [1.0, 1.0]], repeats=1,
                        embed_source=1)
    dfs = build_dfs_model(recipe, sources)
    assert torch.equal(logits(dfs), logits(sources[1]))


def test_candidate_shares_source_tensors_and_is_deterministic():
    sources = tiny_sources(tiny_config())
    recipe = dfs_recipe()
    dfs = build_dfs_model(recipe, sources)

    source_ptrs = {t.data_ptr() for s in sources for t in itertools.chain(s.parameters(), s.buffers())}
    assert {t.data_ptr() for t in itertools.chain(dfs.parameters(), dfs.buffers())} <= source_ptrs
    for k, (source, layer) in enumerate(recipe.path()):
        hop = dfs.model.layers[k]
        assert hop.self_attn.q_proj.weight is sources[source].model.layers[layer].self_attn.q_proj.weight
        assert hop.self_attn.layer_idx == k
    assert dfs.lm_head.weight is sources[recipe.embed_source].lm_head.weight
    # The sources are untouched: their layer indices and forward hooks are their own.
    assert [l.self_attn.layer_idx for l in sources[0].model.layers] == list(range(LAYERS))
    assert not any(l._forward_pre_hooks for s in sources for l in s.model.layers)

    assert torch.equal(logits(dfs), logits(build_dfs_model(recipe, sources)))


def test_kv_cache_keeps_repeated_layers_apart():
    sources = tiny_sources(tiny_config())
    dfs = build_dfs_model(dfs_recipe(), sources)
    ids = token_batch()
    with torch.no_grad():
        step = dfs(ids[:, :8], use_cache=True)
        cache, pieces = step.past_key_values, [step.logits]
        for t in range(8, ids.shape[1]):
            step = dfs(ids[:, t:t + 1], past_key_values=cache, use_cache=True)
            cache = step.past_key_values
            pieces.append(step.logits)
    assert cache.get_seq_length() == ids.shape[1]
    assert (torch.cat(pieces, dim=1) - logits(dfs, ids)).abs().max().item() <= 1e-5

    prompt = ids[:1]
    cached = dfs.generate(prompt, max_new_tokens=10, do_sample=False, use_cache=True, pad_token_id=0)
    uncached = dfs.generate(prompt, max_new_tokens=10, do_sample=False, use_cache=False, pad_token_id=0)
    assert cached.shape == (1, prompt.shape[1] + 10)
    assert torch.equal(cached, uncached)


def test_ps_merged_model_as_dfs_source():
    config = tiny_config()
    a, b, c = tiny_sources(config, n=3)
    ps = PSRecipe(merge_method="linear", models=[{"model": "a", "parameters": {"weight": 0.7}},
                                                 {"model": "b", "parameters": {"weight": 0.3}}])
    merged = build_merged_model(ps, {"a": a.state_dict(), "b": b.state_dict()}, config=config)
    recipe = dfs_recipe(sources=(ps, "c"))
    dfs = build_dfs_model(recipe, [merged, c])

    plain = folded_model(recipe, [merged, c])
    assert (logits(plain) - logits(dfs)).abs().max().item() <= FOLD_TOLERANCE
    # The merged source really is the 0.7/0.3 average (so the DFS ran the PS merge's layers).
    q = "model.layers.0.self_attn.q_proj.weight"
    torch.testing.assert_close(merged.state_dict()[q], 0.7 * a.state_dict()[q] + 0.3 * b.state_dict()[q])


def _one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("other, expected", [
    (dict(hidden_size=32, head_dim=8), "hidden_size is 32"),
    (dict(num_attention_heads=2, head_dim=32), "num_attention_heads is 2"),
    (dict(num_hidden_layers=3), "has 3 layers but the recipe's num_layers is 4"),
    (dict(rms_norm_eps=1e-6), "rms_norm_eps"),
])
def test_incompatible_sources_are_refused(other, expected):
    configs = [tiny_config(), tiny_config(**other)]
    with pytest.raises(DFSError) as excinfo:
        DFSPlan.from_recipe(dfs_recipe(), configs)
    assert expected in _one_line_error(excinfo) and "DFS source 1 (b)" in str(excinfo.value)
    with pytest.raises(DFSError):
        build_dfs_model(dfs_recipe(), [tiny_sources(configs[0], n=1)[0], tiny_sources(configs[1], n=1)[0]])


def test_unsupported_architecture_is_refused_by_name():
    gpt2 = GPT2Config(vocab_size=128, n_embd=64, n_layer=LAYERS, n_head=4, n_positions=64)
    with pytest.raises(DFSError) as excinfo:
        build_dfs_model(dfs_recipe(), [GPT2LMHeadModel(gpt2), GPT2LMHeadModel(gpt2)])
    assert "model_type 'gpt2' is not supported" in _one_line_error(excinfo)
    gemma = AutoConfig.for_model("gemma2", num_hidden_layers=LAYERS)  # sandwich norms: not foldable
    with pytest.raises(DFSError, match="model_type 'gemma2'"):
        DFSPlan.from_recipe(dfs_recipe(scales=[[1.0, 1.0], [1.0, 1.0]]), [gemma, gemma])


def test_path_length_source_count_and_placement_are_checked():
    sources = tiny_sources(tiny_config())
    with pytest.raises(DFSError) as excinfo:
        build_dfs_model(dfs_recipe(), sources, max_path=len(REPEATED_PATH_SLOTS) - 1)
    assert "more than max_path 9" in _one_line_error(excinfo)
    with pytest.raises(DFSError, match="2 sources but 1"):
        build_dfs_model(dfs_recipe(), sources[:1])
    with pytest.raises(DFSError, match="DFS source 1 .* is torch.float64 on cpu but .* is torch.float32"):
        build_dfs_model(dfs_recipe(), [sources[0], sources[1].double()])


@pytest.mark.slow
@pytest.mark.parametrize("with_ps_source", [False, True])
def test_exported_directory_loads_as_plain_model_matching_in_memory(tmp_path, with_ps_source):
    from evosearch.merge.export import export_recipe

    config = tiny_config()
    models = tiny_sources(config, n=3)
    paths = []
    for name, model in zip("abc", models):
        model.save_pretrained(tmp_path / name, safe_serialization=True)
        paths.append(str(tmp_path / name))
    loaded = [AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32).eval() for p in paths]
    if with_ps_source:
        ps = PSRecipe(merge_method="linear", models=[{"model": paths[0], "parameters": {"weight": 0.7}},
                                                     {"model": paths[1], "parameters": {"weight": 0.3}}])
        recipe = dfs_recipe(sources=(ps, paths[2]))
        merged = build_merged_model(ps, {p: m.state_dict() for p, m in zip(paths, loaded)}, config=config)
        in_memory = build_dfs_model(recipe, [merged, loaded[2]])
    else:
        recipe = dfs_recipe(sources=paths[:2])
        in_memory = build_dfs_model(recipe, loaded[:2])

    out = export_recipe(recipe, tmp_path / "out")
    exported = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(exported).__name__ == "LlamaForCausalLM"
    assert exported.config.num_hidden_layers == len(recipe.path())
    assert (logits(exported) - logits(in_memory)).abs().max().item() <= FOLD_TOLERANCE


@pytest.mark.slow
def test_lm_eval_scores_the_in_memory_candidate():
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, **{f"w{i}": i + 1 for i in range(100)}}
    word_level = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=word_level, unk_token="<unk>", eos_token="<unk>")
    dfs = build_dfs_model(dfs_recipe(), tiny_sources(tiny_config()))

    lm = HFLM(pretrained=dfs, tokenizer=tokenizer, batch_size=2)
    [(score, _)] = lm.loglikelihood([Instance("loglikelihood", {}, ("w1 w2 w3", " w4 w5"), 0)])
    ids = torch.tensor([[2, 3, 4, 5, 6]])  # w1..w5
    log_probs = torch.log_softmax(logits(dfs, ids)[0, 2:4], dim=-1)
    assert score == pytest.approx((log_probs[0, 5] + log_probs[1, 6]).item(), abs=1e-5)
