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
