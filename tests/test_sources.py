"""SourceModel: lazy tensor reads from local HF directories, and the compatibility check."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM, MistralConfig, MistralForCausalLM

from evosearch.merge.sources import ResidentModel, SourceError, SourceModel, check_compatible
from tiny_llama import save_llama_family, tiny_llama_config


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return save_llama_family(tmp_path_factory.mktemp("sources"), n_finetunes=1)


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_reads_every_tensor_lazily_and_exactly(family):
    model = SourceModel.open(str(family[0]))
    reference = LlamaForCausalLM.from_pretrained(family[0]).state_dict()
    assert set(model.tensor_names()) == set(reference)
    assert model.config.num_hidden_layers == 4
    for name, tensor in reference.items():
        assert model.shape(name) == tuple(tensor.shape)
        assert torch.equal(model.read(name), tensor)


def test_sharded_checkpoint(tmp_path, family):
    LlamaForCausalLM.from_pretrained(family[0]).save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    sharded, single = SourceModel.open(str(tmp_path)), SourceModel.open(str(family[0]))
    assert set(sharded.tensor_names()) == set(single.tensor_names())
    for name in single.tensor_names():
        assert torch.equal(sharded.read(name), single.read(name))


def test_missing_path_and_hub_id(tmp_path):
    with pytest.raises(SourceError) as e:
        SourceModel.open(str(tmp_path / "nowhere"))
    assert str(tmp_path / "nowhere") in _one_line(e)
    with pytest.raises(SourceError, match="not found locally") as e:
        SourceModel.open("meta-llama/Llama-3-8B")
    assert "meta-llama/Llama-3-8B" in _one_line(e)


def test_pickle_checkpoint_needs_opt_in(tmp_path, family):
    LlamaForCausalLM.from_pretrained(family[0]).save_pretrained(tmp_path, safe_serialization=False)
    if not list(tmp_path.glob("*.bin")):  # transformers versions that always write safetensors
        state = LlamaForCausalLM.from_pretrained(family[0]).state_dict()
        for f in tmp_path.glob("*.safetensors"):
            f.unlink()
        torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(SourceError, match="--allow-pickle") as e:
        SourceModel.open(str(tmp_path))
    assert str(tmp_path) in _one_line(e)
    model = SourceModel.open(str(tmp_path), allow_pickle=True)
    safe = SourceModel.open(str(family[0]))
    for name in safe.tensor_names():
        assert torch.equal(model.read(name), safe.read(name))


def test_incompatible_models_are_named(tmp_path, family):
    LlamaForCausalLM(tiny_llama_config(layers=5)).save_pretrained(tmp_path / "deeper")
    LlamaForCausalLM(tiny_llama_config(hidden=32)).save_pretrained(tmp_path / "narrower")
    cfg = MistralConfig(**{k: getattr(tiny_llama_config(), k) for k in (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads")})
    MistralForCausalLM(cfg).save_pretrained(tmp_path / "mistral")
    base = SourceModel.open(str(family[0]))
    check_compatible([base, SourceModel.open(str(family[1]))])
    cases = {"deeper": "model.layers.4", "narrower": "shape", "mistral": "MistralForCausalLM"}
    for name, expected in cases.items():
        with pytest.raises(SourceError) as e:
            check_compatible([base, SourceModel.open(str(tmp_path / name))])
        msg = _one_line(e)
        assert str(tmp_path / name) in msg and expected in msg


def test_resident_model_is_a_source(family):
    disk = SourceModel.open(str(family[0]))
    resident = ResidentModel("base", disk.load_all(), disk.config)
    check_compatible([disk, resident])
    with pytest.raises(SourceError, match="has no tensor nope"):
        resident.read("nope")


def test_sharded_sources_are_read_lazily_and_merge_like_single_files(tmp_path):
    """A checkpoint split over shards by model.safetensors.index.json: opening reads headers only, each
    tensor comes from its own shard, and a merge over sharded sources equals the one over single files."""
    from evosearch.merge.export import export_recipe
    from evosearch.merge.ps import PSMerger
    from evosearch.recipe import parse_recipe

    family = [str(p) for p in save_llama_family(tmp_path, n_finetunes=2, config=tiny_llama_config(layers=2, hidden=32))]
    sharded = []
    for path in family:
        identity = parse_recipe({"kind": "ps", "merge_method": "linear", "models": [{"model": path, "parameters": {"weight": 1.0}}]})
        sharded.append(str(export_recipe(identity, tmp_path / "sharded" / path.split("/")[-1], max_shard_size="20KB")))
    source = SourceModel.open(sharded[1])
    assert len({loc.file for loc in source._index.values()}) > 3  # many shards, one index
    assert torch.equal(source.read("model.norm.weight"), SourceModel.open(family[1]).read("model.norm.weight"))

    def ties(paths):
        return parse_recipe({"kind": "ps", "merge_method": "ties", "base_model": paths[0], "models": [
            {"model": m, "parameters": {"weight": 0.5, "density": 0.5}} for m in paths[1:]]})
    ours, single = PSMerger.open(ties(sharded)).merge_all(), PSMerger.open(ties(family)).merge_all()
    assert all(torch.equal(ours[n], single[n]) for n in single)
