"""Streaming export to a plain HF directory, and the `evosearch merge` command."""

from __future__ import annotations

import json

import pytest
import torch
import typer
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast
from typer.testing import CliRunner

from evosearch.cli.merge import merge_command
from evosearch.merge.export import ExportError, export_recipe, parse_size
from evosearch.merge.ps import PSMerger, build_merged_model
from evosearch.merge.sources import SourceError, SourceModel
from evosearch.recipe import RecipeError, load_recipe, parse_recipe, recipe_hash
from tiny_llama import save_llama_family, tiny_llama_config


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return [str(p) for p in save_llama_family(tmp_path_factory.mktemp("export"), n_finetunes=2)]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, **{f"w{i}": i + 1 for i in range(100)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path_factory.mktemp("tokenizer")
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>").save_pretrained(path)
    return path


def _ties(family, **extra):
    return parse_recipe({"kind": "ps", "merge_method": "ties", "base_model": family[0],
                         "models": [{"model": m, "parameters": {"weight": [0.3, 1.0], "density": 0.5}}
                                    for m in family[1:]], **extra})


def _no_leftovers(parent):
    return not [p.name for p in parent.iterdir() if ".evosearch-" in p.name]


def test_sharded_export_loads_and_matches_in_memory_merge(tmp_path, family, tokenizer_dir):
    recipe = _ties(family)
    out = export_recipe(recipe, tmp_path / "merged", max_shard_size="60KB", tokenizer_source=str(tokenizer_dir))
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 3 and all((out / s).stat().st_size < 60_000 + 70_000 for s in shards)
    expected = PSMerger.open(recipe).merge_all()
    written = {}
    for s in shards:
        written.update(load_file(out / s))
    assert set(written) == set(expected) and all(torch.equal(written[n], expected[n]) for n in expected)

    model = AutoModelForCausalLM.from_pretrained(out)
    reference = build_merged_model(recipe, {p: SourceModel.open(p) for p in recipe.source_paths()})
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    assert torch.equal(model(ids).logits, reference(ids).logits)

    assert AutoTokenizer.from_pretrained(out)("w1 w2").input_ids == [2, 3]
    assert recipe_hash(load_recipe(out / "evosearch_recipe.yaml")) == recipe_hash(recipe)
    from mergekit.config import MergeConfiguration

    mk = MergeConfiguration.model_validate(yaml.safe_load((out / "mergekit_config.yml").read_text()))
    assert mk.merge_method == "ties" and str(mk.base_model.model.path) == family[0]
    card = (out / "README.md").read_text()
    assert "ties" in card and all(p in card for p in family)
    assert _no_leftovers(tmp_path)


def test_single_shard_without_index(tmp_path, family):
    out = export_recipe(_ties(family), tmp_path / "one")
    assert (out / "model.safetensors").is_file() and not (out / "model.safetensors.index.json").exists()
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]


def test_refuses_non_empty_output_unless_forced(tmp_path, family):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty"):
        export_recipe(_ties(family), out)
    assert (out / "keep.txt").read_text() == "mine"
    export_recipe(_ties(family), out, force=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    assert _no_leftovers(tmp_path)


def test_failure_midway_leaves_nothing(tmp_path, family):
    """Weights that cancel only on the MLP tensors: the merge fails after earlier shards were written."""
    recipe = parse_recipe({"merge_method": "linear", "models": [
        {"model": family[1], "parameters": {"weight": [{"filter": "mlp", "value": 1.0}, {"value": 0.5}]}},
        {"model": family[2], "parameters": {"weight": [{"filter": "mlp", "value": -1.0}, {"value": 0.5}]}}]})
    with pytest.raises(RecipeError, match="mlp"):
        export_recipe(recipe, tmp_path / "broken", max_shard_size="10KB")
    assert not (tmp_path / "broken").exists() and _no_leftovers(tmp_path)


def test_parse_size():
    assert parse_size("2GB") == 2 * 10**9 and parse_size("1GiB") == 2**30 and parse_size(1234) == 1234
    with pytest.raises(ExportError, match="max shard size"):
        parse_size("lots")


# --- the command line -------------------------------------------------------------------------------
def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("merge")(merge_command)
    app.command("noop")(lambda: None)  # two commands, so `merge` stays a subcommand as in evosearch
    return app


def _run(*args):
    return CliRunner().invoke(_app(), ["merge", *map(str, args)])


def _write(path, data):
    path.write_text(yaml.safe_dump(data))
    return path


def test_cli_merges_a_mergekit_yaml(tmp_path, family):
    cfg = _write(tmp_path / "m.yml", {"merge_method": "slerp", "base_model": family[0], "parameters": {"t": 0.4},
                                      "models": [{"model": family[0]}, {"model": family[1]}]})
    result = _run(cfg, tmp_path / "out", "--max-shard-size", "100KB")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "model.safetensors.index.json").is_file()


@pytest.fixture(scope="module")
def misfits(tmp_path_factory, family):
    from transformers import LlamaForCausalLM

    root = tmp_path_factory.mktemp("misfits")
    LlamaForCausalLM(tiny_llama_config(hidden=32)).save_pretrained(root / "narrow")
    state = SourceModel.open(family[1]).load_all()
    (root / "pickled").mkdir()
    torch.save(state, root / "pickled" / "pytorch_model.bin")
    (root / "pickled" / "config.json").write_text((root / "narrow" / "config.json").read_text()
                                                  .replace('"hidden_size": 32', '"hidden_size": 64'))
    return root


def _ta(base, *models, **params):
    return {"merge_method": "task_arithmetic", "base_model": base, "parameters": params,
            "models": [{"model": str(m), "parameters": {"weight": 0.5}} for m in models]}


@pytest.mark.parametrize("case,needle", [
    ("narrow", "narrow"), ("missing", "missing-model"), ("pickled", "--allow-pickle"),
    ("method", "unknown merge_method"), ("param", "parameters.bogus"), ("empty", "parameters.lambda: empty list"),
    ("taken", "not empty"),
])
def test_cli_errors_are_one_line_and_write_nothing(case, needle, tmp_path, family, misfits):
    out = tmp_path / "out"
    recipe = {"narrow": _ta(family[0], family[1], misfits / "narrow"),
              "missing": _ta(family[0], tmp_path / "missing-model"),
              "pickled": _ta(family[0], misfits / "pickled"),
              "method": {**_ta(family[0], family[1]), "merge_method": "average_vibes"},
              "param": _ta(family[0], family[1], bogus=1),
              "empty": _ta(family[0], family[1], **{"lambda": []}),
              "taken": _ta(family[0], family[1])}[case]
    if case == "taken":
        out.mkdir()
        (out / "x").write_text("x")
    result = _run(_write(tmp_path / "r.yml", recipe), out)
    assert result.exit_code == 2  # every case is bad input: a usage error, as for every verb
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.stderr
    assert (case == "taken") == out.exists() and _no_leftovers(tmp_path)


def test_cli_allow_pickle_and_usage_error(tmp_path, family, misfits):
    recipe = _write(tmp_path / "r.yml", _ta(family[0], misfits / "pickled"))
    assert _run(recipe, tmp_path / "out", "--allow-pickle").exit_code == 0
    assert _run(recipe).exit_code == 2


def test_errors_are_domain_types(tmp_path, family):
    with pytest.raises(SourceError):
        export_recipe(parse_recipe(_ta(family[0], tmp_path / "gone")), tmp_path / "o")


def test_ps_plus_dfs_export(tmp_path, family):
    """A DFS path over a plain model and a PS merge: each hop's tensors come from the right engine."""
    from evosearch.recipe import DFSRecipe

    ps = _ties(family)
    indicator = [True, False, True, False] + [False, True, False, True]  # A0, A2, B1, B3
    recipe = DFSRecipe(sources=[family[1], ps], num_layers=4, indicator=indicator,
                       scales=[[1.0, 1.0], [1.0, 1.0]])
    out = export_recipe(recipe, tmp_path / "dfs", max_shard_size="100KB")
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 4
    state = model.state_dict()
    merged = PSMerger.open(ps)
    plain = SourceModel.open(family[1])
    for k, (src, layer) in enumerate([(plain, 0), (plain, 2), (merged, 1), (merged, 3)]):
        name = f"model.layers.{layer}.mlp.up_proj.weight"
        assert torch.equal(state[f"model.layers.{k}.mlp.up_proj.weight"], src.read(name))
    assert torch.equal(state["lm_head.weight"], plain.read("lm_head.weight"))
    assert (out / "evosearch_recipe.yaml").is_file() and not (out / "mergekit_config.yml").exists()


# --- streaming: peak memory stays far below the models' size ------------------------------------------
_MEASURE = """
import json, sys, time, torch
torch.set_num_threads(1)
from evosearch.merge.export import export_recipe
from evosearch.recipe import parse_recipe
root, shard = sys.argv[1], sys.argv[2]
def ties(family):
    return parse_recipe({"merge_method": "ties", "base_model": f"{root}/{family}/base", "models": [
        {"model": f"{root}/{family}/ft{i}", "parameters": {"weight": [0.5, 1.0], "density": 0.5}} for i in (0, 1)]})
rss = lambda key: int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1]) * 1024
# Warm up on a tiny merge: lazy imports and allocator arenas are fixed costs, not the streaming's.
export_recipe(ties("warmup"), f"{root}/warmup-out", max_shard_size=shard)
before, start = rss("VmRSS:"), time.perf_counter()
export_recipe(ties("big"), f"{root}/out", max_shard_size=shard)
print(json.dumps({"seconds": time.perf_counter() - start, "peak_rss_growth": rss("VmHWM:") - before}))
"""


def measure_export(root, layers: int, hidden: int, vocab: int, shard: str) -> dict:
    """Export a TIES merge of a base and two fine-tunes in a fresh process; its time and peak RSS growth."""
    import subprocess
    import sys

    config = tiny_llama_config(layers=layers, hidden=hidden, vocab=vocab)
    config.intermediate_size = hidden * 8 // 3
    save_llama_family(root / "warmup", n_finetunes=2)
    save_llama_family(root / "big", n_finetunes=2, config=config)
    model_bytes = sum(f.stat().st_size for f in (root / "big" / "base").glob("*.safetensors"))
    largest = vocab * hidden * 4  # the embedding and the head, float32
    run = subprocess.run([sys.executable, "-c", _MEASURE, str(root), shard],
                         capture_output=True, text=True, check=True)
    return {**json.loads(run.stdout.strip().splitlines()[-1]), "model_bytes": model_bytes,
            "largest_tensor_bytes": largest}


@pytest.mark.slow
def test_export_streams(tmp_path):
    m = measure_export(tmp_path, layers=16, hidden=256, vocab=2048, shard="8MB")
    # Three sources of model_bytes each: a merge that loaded them would grow by 3-4x model_bytes.
    assert m["peak_rss_growth"] < 0.75 * m["model_bytes"], m


if __name__ == "__main__":  # the measurement in the report: python tests/test_export.py DIR
    import sys
    from pathlib import Path

    print(measure_export(Path(sys.argv[1]), layers=12, hidden=768, vocab=32000, shard="200MB"))
