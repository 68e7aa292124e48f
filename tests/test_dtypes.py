"""`dtype` and `out_dtype` as mergekit reads them: sources rounded to `dtype`, the merge written at
`out_dtype` (default `dtype`), on bf16 and fp16 checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from evosearch.merge.export import export_recipe
from evosearch.merge.ps import PSMerger, merge_state_dict
from evosearch.merge.sources import SourceModel
from evosearch.recipe import parse_recipe, recipe_hash
from tiny_llama import save_llama_family, tiny_llama_config


@pytest.fixture(scope="module")
def half_families(tmp_path_factory):
    """The same random family saved in float32, bfloat16 and float16."""
    root = tmp_path_factory.mktemp("dtypes")
    paths = save_llama_family(root / "float32", n_finetunes=2, config=tiny_llama_config(layers=2, hidden=32))
    families = {"float32": [str(p) for p in paths]}
    for name, dtype in (("bfloat16", torch.bfloat16), ("float16", torch.float16)):
        families[name] = []
        for p in paths:
            model = SourceModel.open(str(p))
            target = root / name / p.name
            target.mkdir(parents=True)
            save_file({n: model.read(n).to(dtype) for n in model.tensor_names()}, target / "model.safetensors")
            config = json.loads((p / "config.json").read_text()) | {"dtype": name}
            (target / "config.json").write_text(json.dumps(config))
            families[name].append(str(target))
    return families


def _ties(family, **extra):
    return {"merge_method": "ties", "base_model": family[0], **extra,
            "models": [{"model": m, "parameters": {"weight": 0.5, "density": 0.6}} for m in family[1:]]}


@pytest.mark.parametrize("stored", ["bfloat16", "float16"])
def test_half_sources_merge_in_float32_and_write_out_dtype(half_families, tmp_path, stored):
    family = half_families[stored]
    recipe = parse_recipe(_ties(family, dtype=stored, out_dtype="float32"))
    out = export_recipe(recipe, tmp_path / "out")
    written = load_file(out / "model.safetensors")
    assert {t.dtype for t in written.values()} == {torch.float32}
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"
    # The same merge of the sources upcast to float32 by hand: the arithmetic is float32 throughout.
    upcast = {p: {n: t.float() for n, t in SourceModel.open(p).load_all().items()} for p in family}
    expected = merge_state_dict(parse_recipe(_ties(family)), upcast)
    assert all(torch.equal(written[n], expected[n]) for n in expected)
    # Without out_dtype the merge is written at dtype.
    half = PSMerger.open(parse_recipe(_ties(family, dtype=stored))).merge_all()
    assert all(t.dtype == getattr(torch, stored) and torch.equal(t, expected[n].to(t.dtype)) for n, t in half.items())


def test_dtype_rounds_float32_sources_before_merging(half_families):
    family = half_families["float32"]
    rounded = PSMerger.open(parse_recipe(_ties(family, dtype="bfloat16", out_dtype="float32"))).merge_all()
    by_hand = {p: {n: t.bfloat16().float() for n, t in SourceModel.open(p).load_all().items()} for p in family}
    expected = merge_state_dict(parse_recipe(_ties(family)), by_hand)
    assert all(torch.equal(rounded[n], expected[n]) for n in expected)
    assert not all(torch.equal(rounded[n], PSMerger.open(parse_recipe(_ties(family))).merge_all()[n]) for n in expected)


def test_out_dtype_reads_from_mergekit_yaml_and_keeps_old_hashes(half_families):
    family = half_families["bfloat16"]
    recipe = parse_recipe(_ties(family, dtype="bfloat16", out_dtype="float16"))  # no `kind`: mergekit YAML
    assert recipe.out_dtype == "float16" and recipe.to_mergekit()["out_dtype"] == "float16"
    plain = parse_recipe({"kind": "ps", **_ties(family)})
    assert "out_dtype" not in plain.model_dump()
    assert recipe_hash(plain) == recipe_hash(parse_recipe({"kind": "ps", **_ties(family), "out_dtype": None}))
