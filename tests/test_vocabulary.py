"""tokenizer_source (base | union | a model): vocabularies mapped by token, against mergekit 0.1.5, and the
one-line refusal of differing vocabularies without one."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from evosearch.cli import app
from evosearch.merge.export import export_recipe
from evosearch.merge.ps import PSMerger, build_merged_model
from evosearch.merge.sources import SourceError, SourceModel, VocabularyError
from evosearch.recipe import parse_recipe
from evosearch.search.preflight import check_search_models
from evosearch.spaces.ps import PSSpaceConfig
from mergekit_reference import mergekit_merge
from vocab_family import BASE_TOKENS, save_vocab_family

VOCAB_TENSORS = ("model.embed_tokens.weight", "lm_head.weight")


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def family(request, tmp_path_factory):
    return save_vocab_family(tmp_path_factory.mktemp("vocab"), tied=request.param)


def _config(family, method: str, tokenizer_source: str) -> dict:
    """A mergekit config (no `kind`: evosearch reads it as mergekit YAML)."""
    per_model = {"weight": 0.7, "density": 0.6} if method == "ties" else {"weight": 0.7}
    return {"merge_method": method, "base_model": family["base"], "tokenizer_source": tokenizer_source,
            "models": [{"model": family["chat"], "parameters": per_model},
                       {"model": family["tool"], "parameters": {**per_model, "weight": 0.4}}]}


def _by_token(tensors: dict, directory) -> dict:
    """Vocabulary tensors with rows in token order (mergekit numbers a union's new tokens in hash order)."""
    vocab = AutoTokenizer.from_pretrained(directory).get_vocab()
    order = [vocab[t] for t in sorted(vocab)]
    return {n: t[order] if n in VOCAB_TENSORS else t for n, t in tensors.items()}


@pytest.mark.parametrize("method,tokenizer_source", [("ties", "union"), ("task_arithmetic", "union"),
                                                     ("ties", "base"), ("task_arithmetic", "chat")])
def test_parity_with_mergekit_token_by_token(family, tmp_path, method, tokenizer_source):
    source = family.get(tokenizer_source, tokenizer_source)
    config = _config(family, method, source)
    reference = _by_token(mergekit_merge(config, tmp_path / "mergekit"), tmp_path / "mergekit")
    out = export_recipe(parse_recipe(config), tmp_path / "ours")
    ours = _by_token(load_file(out / "model.safetensors"), out)
    assert set(ours) == set(reference)
    worst = max((ours[n] - reference[n]).abs().max().item() for n in reference)
    assert worst <= 1e-5, worst
    expected_size = {"union": BASE_TOKENS + 3, "base": BASE_TOKENS, "chat": BASE_TOKENS + 2}[tokenizer_source]
    assert json.loads((out / "config.json").read_text())["vocab_size"] == expected_size
    assert len(AutoTokenizer.from_pretrained(out)) == expected_size
    assert set(AutoTokenizer.from_pretrained(out).get_vocab()) == set(
        AutoTokenizer.from_pretrained(tmp_path / "mergekit").get_vocab())


def test_union_rows_follow_mergekits_rule_and_the_export_loads(family, tmp_path):
    """A token one source has comes from it; the base's row of one the two fine-tunes share is their mean;
    the export loads in transformers, its tokenizer gives the chat tokens their own ids, and the worker's
    in-memory build equals the export."""
    recipe = parse_recipe({"kind": "ps", **_config(family, "task_arithmetic", "union")})
    out = export_recipe(recipe, tmp_path / "union")
    tokenizer = AutoTokenizer.from_pretrained(out)
    merged = AutoModelForCausalLM.from_pretrained(out).get_input_embeddings().weight.detach()
    rows = {name: load_file(f"{family[name]}/model.safetensors")["model.embed_tokens.weight"]
            for name in ("chat", "tool")}
    chat_vocab = AutoTokenizer.from_pretrained(family["chat"]).get_vocab()
    tool_vocab = AutoTokenizer.from_pretrained(family["tool"]).get_vocab()
    im_end, im_start, tool = (tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|im_start|>", "<tool>"))
    assert len({im_end, im_start, tool}) == 3 and min(im_end, im_start, tool) >= BASE_TOKENS
    # Every source carries the donor's row, so task arithmetic leaves it as it was.
    torch.testing.assert_close(merged[im_end], rows["chat"][chat_vocab["<|im_end|>"]])
    torch.testing.assert_close(merged[tool], rows["tool"][tool_vocab["<tool>"]])
    # The base lacks <|im_start|>: its row is the mean of the two that have it, and each task vector
    # runs from there.
    chat_row, tool_row = rows["chat"][chat_vocab["<|im_start|>"]], rows["tool"][tool_vocab["<|im_start|>"]]
    base_row = (chat_row + tool_row) / 2
    torch.testing.assert_close(merged[im_start], base_row + 0.7 * (chat_row - base_row) + 0.4 * (tool_row - base_row))
    assert tokenizer("<|im_start|> w1 <tool>")["input_ids"][-3:] == [im_start, tokenizer.convert_tokens_to_ids("w1"), tool]

    resident = {p: SourceModel.open(p).load_all() for p in recipe.source_paths()}
    model = build_merged_model(recipe, resident, config=SourceModel.open(family["base"]).config)
    assert model.config.vocab_size == len(tokenizer)
    exported = load_file(out / "model.safetensors")
    assert all(torch.equal(model.state_dict()[n], exported[n]) for n in exported)


def test_differing_vocabularies_without_tokenizer_source_are_refused_in_one_line(family, tmp_path):
    config = {k: v for k, v in _config(family, "task_arithmetic", "union").items() if k != "tokenizer_source"}
    expected = (f"models {family['base']} (vocabulary {BASE_TOKENS}) and {family['chat']} (vocabulary "
                f"{BASE_TOKENS + 2}) differ in vocabulary; set tokenizer_source: base, union or a model path")
    with pytest.raises(VocabularyError) as err:
        PSMerger.open(parse_recipe(config))
    assert str(err.value) == expected
    recipe_file = tmp_path / "merge.yaml"
    recipe_file.write_text(json.dumps(config))
    result = CliRunner().invoke(app, ["merge", str(recipe_file), str(tmp_path / "out")])
    assert result.exit_code == 2 and expected in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()

    # `evosearch run` preflight: the same line, naming the job field.
    sources = [family["base"], family["chat"], family["tool"]]
    space = dict(kind="ps", sources=sources[1:], base_model=sources[0], methods=["task_arithmetic"])
    with pytest.raises(SourceError) as err:
        check_search_models(sources, PSSpaceConfig(**space))
    assert str(err.value) == f"sources: {expected}"
    check_search_models(sources, PSSpaceConfig(**space, tokenizer_source="union"))


def test_a_ps_source_with_a_union_vocabulary_feeds_a_dfs_path(family, tmp_path):
    """PS+DFS: the PS source maps the vocabularies (union) and gives the path its embeddings, head and
    tokenizer; the other DFS source (the base, 96 tokens) gives layers only. The export is a plain model of
    the union's size whose logits are the in-memory candidate's."""
    from transformers import AutoModelForCausalLM

    from evosearch.merge.dfs_model import build_dfs_model
    from evosearch.recipe import DFSRecipe

    ps = parse_recipe({"kind": "ps", **_config(family, "task_arithmetic", "union")})
    recipe = DFSRecipe(sources=[ps, family["base"]], num_layers=2, indicator=[True, True, False, True],
                       scales=[[1.0, 1.2], [0.9, 1.0]])
    out = export_recipe(recipe, tmp_path / "dfs")
    exported = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert exported.config.vocab_size == len(AutoTokenizer.from_pretrained(out)) == BASE_TOKENS + 3
    resident = {p: SourceModel.open(p).load_all() for p in ps.source_paths()}
    merged = build_merged_model(ps, resident, config=SourceModel.open(family["base"]).config)
    base = AutoModelForCausalLM.from_pretrained(family["base"], dtype=torch.float32).eval()
    ids = torch.tensor([[1, 5, BASE_TOKENS, BASE_TOKENS + 2, 7]])
    with torch.no_grad():
        expected = build_dfs_model(recipe, [merged, base])(ids).logits
        # The fold is exact up to RMSNorm's eps, which a random init's small stream makes visible
        # (evosearch.merge.dfs): relative, not absolute, agreement.
        assert (exported(ids).logits - expected).abs().max().item() <= 1e-3 * expected.abs().max().item()


def test_a_search_worker_scores_a_union_candidate_with_the_union_tokenizer(family, tmp_path):
    from evosearch.zoo.tasks import make_eval_items, write_task_files
    from workers.candidate import CandidateTask, CandidateWorker

    if SourceModel.open(family["base"]).config.tie_word_embeddings:
        pytest.skip("the untied family covers the worker path")
    write_task_files(make_eval_items(0, 4), tmp_path / "tasks")
    torch.set_num_threads(1)
    worker = CandidateWorker([family["base"], family["chat"], family["tool"]], str(tmp_path / "tasks"), ["zoo_math"],
                             device="cpu")
    recipe = _config(family, "ties", "union")
    model, tokenizer = worker._build(parse_recipe(recipe))
    assert len(tokenizer) == model.config.vocab_size == model.get_input_embeddings().weight.shape[0] == BASE_TOKENS + 3
    result = worker.run(CandidateTask(key="union", recipe=recipe, samples={"zoo_math": [0, 1]}))
    assert sorted(result.correct["zoo_math"]) == [0, 1]


def test_a_dfs_recipe_or_space_refuses_base_and_union_in_one_line(family):
    from evosearch.errors import RecipeError
    from evosearch.spaces.dfs import DFSSpaceConfig

    expected = ("tokenizer_source: union maps vocabularies in a PS merge; a DFS path takes its vocabulary from its "
                "embed source (give tokenizer_source to a PS source)")
    with pytest.raises(RecipeError, match=re.escape(expected)):
        parse_recipe({"kind": "dfs", "sources": [family["base"]], "num_layers": 2, "indicator": [True, True],
                      "scales": [[1.0]], "tokenizer_source": "union"})
    with pytest.raises(ValueError, match=re.escape(expected)):
        DFSSpaceConfig(sources=[family["base"]], num_layers=2, tokenizer_source="union")
