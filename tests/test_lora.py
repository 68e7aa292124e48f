"""LoRA sources: a PEFT adapter folded into its base, as PEFT and mergekit (`model+lora`) fold it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import LlamaForCausalLM

from evosearch.merge.export import export_recipe
from evosearch.merge.lora import AdapterError
from evosearch.merge.ps import PSMerger
from evosearch.merge.sources import SourceModel, source_key
from evosearch.recipe import parse_recipe
from mergekit_reference import max_abs_diff, mergekit_merge
from tiny_llama import save_llama_family, tiny_llama_config


def save_adapter(base: Path, out: Path, seed: int, **lora) -> Path:
    """A real PEFT LoRA adapter on `base` with random (not zero) B matrices, as after training."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM.from_pretrained(base)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], **lora)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape))
    peft_model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def lora_family(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    base, ft = save_llama_family(root, n_finetunes=1, config=tiny_llama_config(layers=2, hidden=32))
    adapters = [save_adapter(base, root / "adapter-plain", 1),
                save_adapter(base, root / "adapter-rslora", 2, use_rslora=True, rank_pattern={"v_proj": 2})]
    return root, str(base), str(ft), [str(a) for a in adapters]


def test_fold_equals_peft_merge_and_unload(lora_family):
    root, base, _, adapters = lora_family
    from peft import PeftModel

    for adapter in adapters:
        folded = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(base), adapter).merge_and_unload()
        expected = folded.state_dict()
        ours = SourceModel.open(f"{base}+{adapter}")
        changed = [n for n in ours.tensor_names() if not torch.equal(ours.read(n), SourceModel.open(base).read(n))]
        assert len(changed) == 3 * 2  # q, v, down in both layers
        assert max((ours.read(n) - expected[n]).abs().max().item() for n in ours.tensor_names()) <= 1e-6


def test_ties_with_lora_sources_matches_mergekit(lora_family, tmp_path):
    root, base, ft, adapters = lora_family
    config = {"merge_method": "ties", "base_model": base,
              "models": [{"model": f"{base}+{adapters[0]}", "parameters": {"weight": 0.6, "density": 0.7}},
                         {"model": f"{base}+{adapters[1]}", "parameters": {"weight": 0.5, "density": 0.7}},
                         {"model": ft, "parameters": {"weight": 0.3, "density": 0.7}}]}
    reference = mergekit_merge(config, tmp_path / "mergekit", lora_merge_cache=str(tmp_path / "cache"))
    ours = PSMerger.open(parse_recipe(config)).merge_all()
    assert max_abs_diff(ours, reference) <= 1e-5


def test_an_adapter_directory_alone_is_its_base_plus_the_adapter(lora_family, tmp_path):
    root, base, _, adapters = lora_family
    alone, spelled = SourceModel.open(adapters[0]), SourceModel.open(f"{base}+{adapters[0]}")
    assert source_key(adapters[0]) == source_key(f"{base}+{adapters[0]}")
    name = "model.layers.1.mlp.down_proj.weight"
    assert torch.equal(alone.read(name), spelled.read(name))
    out = export_recipe(parse_recipe({"kind": "ps", "merge_method": "linear", "models": [
        {"model": adapters[0], "parameters": {"weight": 1.0}}]}), tmp_path / "folded")
    assert torch.equal(load_file(out / "model.safetensors")[name], spelled.read(name))
    assert (out / "tokenizer_config.json").exists() is False  # the tiny base ships no tokenizer


def test_adapters_whose_fold_differs_are_refused_in_one_line(lora_family, tmp_path):
    root, base, _, adapters = lora_family
    dora = save_adapter(base, tmp_path / "dora", 3, use_dora=True)
    with pytest.raises(AdapterError) as err:
        SourceModel.open(f"{base}+{dora}")
    assert str(err.value) == (f"adapter {dora}: use_dora (DoRA rescales the folded weight) is not supported; "
                              f"fold it with PEFT first")
    config = json.loads((Path(adapters[0]) / "adapter_config.json").read_text())
    orphan = tmp_path / "orphan"
    orphan.mkdir()
    (orphan / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": None}))
    with pytest.raises(AdapterError, match="names no base_model_name_or_path; write the source as BASE\\+"):
        SourceModel.open(str(orphan))


def test_job_sources_take_adapters(lora_family):
    from evosearch.errors import UsageError
    from evosearch.search.sections import resolve_models

    root, base, _, adapters = lora_family
    raw = {"sources": {"plus": f"{base}+{adapters[0]}", "alone": adapters[1]}}
    resolve_models(raw, "job.yaml", UsageError)
    assert raw["sources"] == {"plus": source_key(f"{base}+{adapters[0]}"), "alone": source_key(adapters[1])}
    with pytest.raises(UsageError, match=r"job.yaml: sources.bad: no adapter at .*/nowhere \(missing adapter_config"):
        resolve_models({"sources": {"bad": f"{base}+{root}/nowhere"}}, "job.yaml", UsageError)
