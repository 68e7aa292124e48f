"""The architecture table: PS merge, export and DFS on random tiny models of each family, built with their
transformers config classes. PS merges with per-layer gradients (each family's own layer naming), export
loads in plain transformers and gives the in-memory candidate's logits; DFS folds exactly where it can and
refuses in one line, naming the family and the reason, where it cannot."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from evosearch.merge.dfs import DFSError
from evosearch.merge.dfs_model import build_dfs_model
from evosearch.merge.export import export_recipe
from evosearch.merge.ps import PSMerger, build_merged_model
from evosearch.merge.sources import SourceError, SourceModel
from evosearch.recipe import PSRecipe
from mergekit_reference import max_abs_diff, mergekit_merge
from test_dfs import FOLD_TOLERANCE, LAYERS, dfs_recipe, logits, tiny_config, tiny_sources

# model_type -> config overrides (AutoConfig.for_model builds each family's own config class)
ARCHITECTURES = {
    "llama": {},
    "mistral": {"sliding_window": 6},
    "qwen2": {},
    "qwen3": {},
    "gemma2": {"tie_word_embeddings": True},
    "gemma3_text": {"tie_word_embeddings": True, "sliding_window": 6},
    "phi3": {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2},  # fused qkv_proj and gate_up_proj
    "mixtral": {"num_local_experts": 4, "num_experts_per_tok": 2},  # stored per expert, built fused
}
DFS_REFUSED = {"gemma2", "gemma3_text", "mixtral"}
MOE = {"mixtral"}


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def family(request, tmp_path_factory):
    """(model_type, [base, a, b] paths, the loaded models)."""
    root = tmp_path_factory.mktemp(request.param)
    models = tiny_sources(tiny_config(request.param, **ARCHITECTURES[request.param]), n=3)
    paths = []
    for name, model in zip(("base", "a", "b"), models):
        model.save_pretrained(root / name, safe_serialization=True)
        paths.append(str(root / name))
    loaded = [AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32).eval() for p in paths]
    return request.param, paths, loaded


def test_ps_merge_follows_the_layer_naming_and_exports_a_loadable_model(family, tmp_path):
    model_type, paths, loaded = family
    recipe = PSRecipe(merge_method="ties", base_model=paths[0], models=[
        {"model": paths[1], "parameters": {"weight": [0.2, 1.0], "density": 0.6}},
        {"model": paths[2], "parameters": {"weight": 0.5, "density": 0.6}}])
    merger = PSMerger.open(recipe)
    assert merger.num_layers == LAYERS
    first, last = (next(n for n in merger.tensor_names() if n.startswith(f"model.layers.{i}.")) for i in (0, LAYERS - 1))
    weights = [merger.parameters_for(n).per_model[paths[1]]["weight"] for n in (first, last)]
    assert weights == pytest.approx([0.2, 1.0])

    out = export_recipe(recipe, tmp_path / "out")
    exported = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert exported.config.model_type == model_type
    resident = {p: SourceModel.open(p).load_all() for p in paths}  # as a search worker holds them
    if model_type in MOE:
        # Merged expert by expert, as the checkpoints store them (mergekit 0.1.5 on transformers 5 merges
        # the fused layout instead, so TIES's density applies per expert here and per layer there).
        assert any(".experts.3." in n for n in merger.tensor_names())
        assert (logits(exported) - logits(loaded[0])).abs().max().item() > 1e-3
        with pytest.raises(SourceError, match="merged state does not fit MixtralForCausalLM: missing "):
            build_merged_model(recipe, resident, config=loaded[0].config)
        return
    reference = mergekit_merge(recipe.to_mergekit(), tmp_path / "mergekit")
    assert max_abs_diff(load_file(out / "model.safetensors"), reference) <= 1e-5
    in_memory = build_merged_model(recipe, resident, config=loaded[0].config)
    assert (logits(exported) - logits(in_memory)).abs().max().item() <= 1e-5


def test_dfs_folds_exactly_or_refuses_in_one_line(family, tmp_path):
    model_type, paths, loaded = family
    recipe = dfs_recipe(sources=paths[:2])
    if model_type in DFS_REFUSED:
        with pytest.raises(DFSError) as err:
            build_dfs_model(recipe, loaded[:2])
        assert str(err.value).startswith(f"DFS source 0 ({paths[0]}): model_type {model_type!r} is refused by DFS: "
                                         f"{'its checkpoints store' if model_type in MOE else 'its sandwich norms'}")
        assert "\n" not in str(err.value)
        with pytest.raises(DFSError):
            export_recipe(recipe, tmp_path / "out")
        return
    in_memory = build_dfs_model(recipe, loaded[:2])
    out = export_recipe(recipe, tmp_path / "out")
    exported = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert exported.config.num_hidden_layers == len(recipe.path())
    expected = logits(in_memory)
    assert (logits(exported) - expected).abs().max().item() <= FOLD_TOLERANCE
    assert (expected - logits(loaded[0])).abs().max().item() > 100 * FOLD_TOLERANCE  # the path changes the model
