"""mergekit's `slices:` form: layer-for-layer slices read as exact PS recipes, layer stacks as DFS recipes,
each checked against mergekit 0.1.5 on the same models (max abs diff <= 1e-5), and what has no exact form
refused with one line."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from evosearch.cli import app
from evosearch.errors import RecipeError
from evosearch.merge.export import export_recipe
from evosearch.merge.ps import PSMerger
from evosearch.recipe import DFSRecipe, PSRecipe, parse_recipe
from mergekit_reference import max_abs_diff, mergekit_merge
from tiny_llama import save_llama_family

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return [str(p) for p in save_llama_family(tmp_path_factory.mktemp("slices"), n_finetunes=2)]


def _sources(models, start, stop, params=None):
    return [{"model": m, "layer_range": [start, stop], **({"parameters": params[i]} if params and params[i] else {})}
            for i, m in enumerate(models)]


def _cases(base, a, b):
    by_group = lambda attn, mlp, rest: [{"filter": "self_attn", "value": attn}, {"filter": "mlp", "value": mlp},  # noqa: E731
                                        {"value": rest}]
    return {
        # t runs over each slice's own layers: [0.2, 1.0] on a 3-layer slice is 0.2, 0.6, 1.0.
        "task_arithmetic_gradients": {"merge_method": "task_arithmetic", "base_model": base, "slices": [
            {"sources": _sources([a, b, base], 0, 1, [{"weight": 0.3}, {"weight": [0.9, 0.1]}, None])},
            {"sources": _sources([a, b, base], 1, 4, [{"weight": [0.2, 1.0]}, {"weight": by_group(0.5, [1.0, 0.0], 0.7)},
                                                      None]), "parameters": {"lambda": [1.5, 0.5]}}]},
        "ties_slice_parameters": {"merge_method": "ties", "base_model": base, "parameters": {"density": 0.6}, "slices": [
            {"sources": _sources([a, b, base], 0, 2, [{"weight": 0.8}, {"weight": 0.4, "density": 0.3}, None]),
             "parameters": {"density": by_group(0.2, 0.9, 0.5), "normalize": False}},
            {"sources": _sources([a, b, base], 2, 4, [{"weight": [1.0, 0.2]}, {"weight": 0.6}, None])}]},
        # mergekit-evolve's slerp: each slice its own base (the heavier model) and t.
        "slerp_per_slice_base": {"merge_method": "slerp", "slices": [
            {"sources": _sources([a, b], 0, 2), "base_model": a, "parameters": {"t": 0.3}},
            {"sources": _sources([b, a], 2, 4), "base_model": b, "parameters": {"t": [0.1, 0.9]}}]},
        "sce_slices": {"merge_method": "sce", "base_model": base, "slices": [
            {"sources": _sources([base, a, b], 0, 3), "parameters": {"select_topk": 0.4}},
            {"sources": _sources([base, a, b], 3, 4)}]},
        # Layer-for-layer passthrough: embeddings from a, final norm and head from b.
        "passthrough_aligned": {"merge_method": "passthrough", "slices": [
            {"sources": _sources([a], 0, 2, [{"scale": by_group(0.5, 1.0, 1.0)}])},
            {"sources": _sources([b], 2, 4)}]},
    }


CASES = ["task_arithmetic_gradients", "ties_slice_parameters", "slerp_per_slice_base", "sce_slices",
         "passthrough_aligned"]


@pytest.mark.parametrize("case", CASES)
def test_layer_for_layer_slices_are_exact_ps_recipes(case, family, tmp_path):
    config = _cases(*family)[case]
    recipe = parse_recipe(copy.deepcopy(config))
    assert isinstance(recipe, PSRecipe) and recipe.slices is not None
    reference = mergekit_merge(copy.deepcopy(config), tmp_path / "mergekit")
    worst = max_abs_diff(PSMerger.open(recipe).merge_all(), reference)
    print(f"parity slices {case}: max abs diff {worst:.3g}")
    assert worst <= TOLERANCE
    # ... and the recipe writes back the same mergekit config (it round-trips).
    assert parse_recipe(recipe.to_mergekit()) == recipe


def _stack_cases(base, a, b):
    return {
        # A frankenmerge: a's layers 0-2 then b's 1-3; embeddings from a, head from b.
        "passthrough_stack": {"merge_method": "passthrough", "slices": [
            {"sources": _sources([a], 0, 3)}, {"sources": _sources([b], 1, 4)}]},
        "passthrough_stack_scaled": {"merge_method": "passthrough", "slices": [
            {"sources": _sources([a], 0, 4)},
            {"sources": _sources([a], 2, 4, [{"scale": [{"filter": "o_proj", "value": 0.5}, {"value": 1.0}]}])}]},
        # Depth up-scaling by merged slices: two different merges of overlapping layer windows.
        "ties_stack": {"merge_method": "ties", "base_model": base, "slices": [
            {"sources": _sources([a, b, base], 0, 3, [{"weight": [0.2, 1.0], "density": 0.5}, {"weight": 0.5}, None])},
            {"sources": _sources([a, b, base], 1, 4, [{"weight": 0.7}, {"weight": [1.0, 0.3], "density": 0.4}, None])}]},
    }


@pytest.mark.parametrize("case", ["passthrough_stack", "passthrough_stack_scaled", "ties_stack"])
def test_layer_stacks_are_exact_dfs_recipes(case, family, tmp_path):
    config = _stack_cases(*family)[case]
    recipe = parse_recipe(copy.deepcopy(config))
    assert isinstance(recipe, DFSRecipe)
    assert len(recipe.path()) == sum(s["sources"][0]["layer_range"][1] - s["sources"][0]["layer_range"][0]
                                     for s in config["slices"])
    reference = mergekit_merge(copy.deepcopy(config), tmp_path / "mergekit")
    out = export_recipe(recipe, tmp_path / "ours")
    worst = max_abs_diff(load_file(out / "model.safetensors"), reference)
    print(f"parity slices {case}: max abs diff {worst:.3g}")
    assert worst <= TOLERANCE


def test_mixed_method_slices_merge_each_slice_as_its_method_would(family, tmp_path):
    """evosearch's per-slice merge_method: layers 0-1 are mergekit's ties merge of that slice, layers 2-3 its
    nuslerp merge, the embeddings follow the first slice and the head the last."""
    base, a, b = family
    ties = {"sources": _sources([a, b, base], 0, 2, [{"weight": 0.9, "density": 0.5}, {"weight": 0.4}, None])}
    nuslerp = {"sources": _sources([a, b, base], 2, 4, [{"weight": 0.3}, {"weight": 0.7}, None])}
    mixed = PSRecipe(merge_method="ties", base_model=base, slices=[ties, {**nuslerp, "merge_method": "nuslerp"}])
    assert mixed.mergekit_blocker() and "different methods" in mixed.mergekit_blocker()
    ours = PSMerger.open(mixed).merge_all()
    by_ties = mergekit_merge({"merge_method": "ties", "base_model": base, "slices": [ties, {
        "sources": _sources([a, b, base], 2, 4, [{"weight": 1.0}, {"weight": 1.0}, None])}]}, tmp_path / "ties")
    by_nuslerp = mergekit_merge({"merge_method": "nuslerp", "base_model": base, "slices": [{
        "sources": _sources([a, b, base], 0, 2, [{"weight": 1.0}, {"weight": 1.0}, None])}, nuslerp]},
        tmp_path / "nuslerp")
    for name, tensor in ours.items():
        first_half = name.startswith(("model.layers.0.", "model.layers.1.", "model.embed"))
        reference = (by_ties if first_half else by_nuslerp)[name]
        assert (tensor - reference).abs().max() <= TOLERANCE, name


def test_mergekit_evolve_best_config_is_accepted_by_evosearch_merge(family, tmp_path):
    """The config mergekit-evolve writes (`best_config.yaml`: slices form, one slice per layer block, per-group
    filters, bfloat16, int8_mask) runs through `evosearch merge`; in float32 it matches `mergekit-yaml`."""
    from mergekit.evo.genome import ModelGenome, ModelGenomeDefinition

    base, a, b = family
    genome = ModelGenome(ModelGenomeDefinition(models=[a, b], merge_method="ties", base_model=base,
                                               layer_granularity=2, filters=["self_attn", "mlp"]))
    torch.manual_seed(3)
    best = genome.genotype_merge_config(genome.initial_genotype(random=True)).to_yaml()
    (tmp_path / "best_config.yaml").write_text(best)
    result = CliRunner().invoke(app, ["merge", str(tmp_path / "best_config.yaml"), str(tmp_path / "as_written")])
    assert result.exit_code == 0, result.output
    assert load_file(tmp_path / "as_written" / "model.safetensors")["lm_head.weight"].dtype == torch.bfloat16

    config = yaml.safe_load(best) | {"dtype": "float32"}
    (tmp_path / "float32.yaml").write_text(yaml.safe_dump(config))
    assert CliRunner().invoke(app, ["merge", str(tmp_path / "float32.yaml"), str(tmp_path / "ours")]).exit_code == 0
    mergekit_yaml = Path(sys.executable).with_name("mergekit-yaml")
    subprocess.run([str(mergekit_yaml), str(tmp_path / "float32.yaml"), str(tmp_path / "mergekit"), "--no-copy-tokenizer",
                    "--quiet"], check=True, capture_output=True)
    worst = max_abs_diff(load_file(tmp_path / "ours" / "model.safetensors"),
                         load_file(tmp_path / "mergekit" / "model.safetensors"))
    print(f"parity mergekit-evolve best config (ties, 2 slices, filters) via mergekit-yaml: max abs diff {worst:.3g}")
    assert worst <= TOLERANCE


def test_slerp_evolve_config_ignores_other_methods_parameters(family):
    """mergekit-evolve writes normalize and int8_mask into slerp configs; mergekit ignores them, so do we,
    but a name no method knows is still a typo."""
    base, a, b = family
    config = {"merge_method": "slerp", "parameters": {"normalize": False, "int8_mask": True},
              "slices": _cases(base, a, b)["slerp_per_slice_base"]["slices"]}
    assert parse_recipe(copy.deepcopy(config)).parameters == {}
    config["parameters"]["temprature"] = 1
    with pytest.raises(RecipeError, match="parameters.temprature: unknown parameter"):
        parse_recipe(config)


@pytest.mark.parametrize("slices,needle", [
    (lambda base, a, b: [{"sources": [{"model": a, "layer_range": [0, 2]}, {"model": b, "layer_range": [1, 3]}]},
                         {"sources": _sources([a, b], 3, 4)}], "merges unlike layers"),
    (lambda base, a, b: [{"sources": _sources([a, b], 0, 3)}, {"sources": _sources([a, b], 2, 4)}],
     "base_model"),
    (lambda base, a, b: [{"sources": [{"model": a, "layer_range": [0, 2]}, {"model": b, "layer_range": [0, 3]}]}],
     "different numbers of layers"),
    (lambda base, a, b: [{"sources": _sources([a, b, base], 0, 4), "residual_weight": 0.5}], "residual_weight"),
    (lambda base, a, b: [{"sources": _sources([a, b, base], 0, 3), "parameters": {"lambda": [
        {"filter": "layers.1.", "value": 2.0}, {"value": 1.0}]}}, {"sources": _sources([a, b, base], 1, 4)}],
     "filters by 'layers.1.'"),
])
def test_slices_without_an_exact_form_are_refused_with_one_line(slices, needle, family):
    base, a, b = family
    config = {"merge_method": "task_arithmetic", "base_model": base, "parameters": {"weight": 0.5},
              "slices": slices(base, a, b)}
    with pytest.raises(RecipeError) as e:
        parse_recipe(config)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_export_writes_mergekit_yaml_only_for_what_mergekit_builds(family, tmp_path):
    from mergekit.config import MergeConfiguration

    base, a, b = family
    sliced = parse_recipe(_cases(base, a, b)["ties_slice_parameters"])
    out = export_recipe(sliced, tmp_path / "sliced")
    written = yaml.safe_load((out / "mergekit_config.yml").read_text())
    assert MergeConfiguration.model_validate(written).slices and parse_recipe(written) == sliced
    assert "for mergekit, `mergekit_config.yml`" in (out / "README.md").read_text()
    for name, recipe in {"own": PSRecipe(merge_method="tsv_m", base_model=base, models=[{"model": a}, {"model": b}]),
                         "mixed": PSRecipe(merge_method="ties", base_model=base, slices=[
                             {"sources": _sources([a, b, base], 0, 2, [{"weight": 1.0}, {"weight": 0.5}, None])},
                             {"sources": _sources([a, b, base], 2, 4), "merge_method": "iso_c"}])}.items():
        out = export_recipe(recipe, tmp_path / name)
        assert not (out / "mergekit_config.yml").exists() and (out / "evosearch_recipe.yaml").exists()
        assert "mergekit cannot build this merge" in (out / "README.md").read_text()
        with pytest.raises(RecipeError, match="mergekit cannot build"):
            recipe.to_mergekit()
