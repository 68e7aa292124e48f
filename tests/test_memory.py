"""The worker memory preflight: the prediction read from checkpoint headers (sharded, bf16 or float32),
the one-line refusal that names a setting that would fit, and `run_job` refusing before anything starts."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from evosearch.merge.sources import SourceModel
from evosearch.search.driver import run_job
from evosearch.search.job import parse_job
from evosearch.search.memory import GIB, MemoryFitError, check_fits, footprint, predict
from storage import Store
from test_job import zoo_job
from tiny_llama import save_llama_family, tiny_llama_config


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    root = tmp_path_factory.mktemp("memory")
    return [str(p) for p in save_llama_family(root, n_finetunes=2, config=tiny_llama_config(layers=2, hidden=32))]


def _shard_in_bf16(source: str, out) -> str:
    """`source` rewritten as two bf16 shards with a model.safetensors.index.json."""
    model = SourceModel.open(source)
    names = model.tensor_names()
    out.mkdir()
    weight_map = {}
    for k, part in enumerate((names[: len(names) // 2], names[len(names) // 2:])):
        file = f"model-{k + 1:05d}-of-00002.safetensors"
        save_file({n: model.read(n).bfloat16() for n in part}, out / file)
        weight_map.update({n: file for n in part})
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (out / "config.json").write_text((model.path / "config.json").read_text())
    return str(out)


def test_footprint_reads_sizes_and_dtypes_from_headers(family, tmp_path):
    sharded = _shard_in_bf16(family[1], tmp_path / "sharded")
    elements = sum(t.numel() for t in SourceModel.open(family[0]).load_all().values())
    fp = footprint([family[0], sharded], None)
    assert fp.source_bytes == [4 * elements, 2 * elements]  # float32 as stored; bf16 as stored
    assert footprint([family[0], sharded], "bfloat16").source_bytes == [2 * elements] * 2
    assert (fp.vocabulary, fp.hidden, fp.model_elements) == (128, 32, elements)
    assert fp.largest_tensor == 128 * 32


def test_resident_host_moves_the_sources_off_the_device(family):
    fp = footprint(family, "bfloat16")
    settings = dict(device_type="cuda", output_dtype="bfloat16", batch_size=4, sequence_length=16)
    device, host = predict(fp, resident="device", **settings), predict(fp, resident="host", **settings)
    assert device.device_bytes - host.device_bytes == sum(fp.source_bytes) == host.host["sources"]
    cpu = predict(fp, resident="device", **{**settings, "device_type": "cpu"})
    assert cpu.device == {} and cpu.host_bytes == device.host_bytes + device.device_bytes - device.device["cuda context"]
    assert "cuda" in device.describe() and "cuda" not in cpu.describe()


def test_refusal_is_one_line_naming_what_would_fit():
    from evosearch.search.memory import Footprint

    fp = Footprint(source_bytes=[14 * GIB] * 3, model_elements=7 * 10**9, largest_tensor=131072 * 4096,
                   vocabulary=131072, hidden=4096)
    settings = dict(device_type="cuda", output_dtype="bfloat16", batch_size=8, sequence_length=512)
    device, host = predict(fp, resident="device", **settings), predict(fp, resident="host", **settings)
    with pytest.raises(MemoryFitError) as err:
        check_fits(device, 200 * GIB, 60 * GIB, host)
    assert str(err.value) == (f"workers: predicted peak {device.device_bytes / GIB:.2f} GiB of cuda memory per "
                              f"worker exceeds the 60.00 GiB available; workers.resident: host would fit "
                              f"({host.device_bytes / GIB:.2f} GiB of cuda memory)")
    with pytest.raises(MemoryFitError, match="exceeds the 10.00 GiB available; try fewer or smaller sources"):
        check_fits(device, 200 * GIB, 10 * GIB, host)
    check_fits(host, 200 * GIB, 60 * GIB, device)  # fits: no error


@pytest.mark.slow
def test_run_refuses_a_job_whose_workers_cannot_fit_before_storing_it(ray_local, tiny_zoo, tmp_path):
    spec = parse_job({**zoo_job(tiny_zoo, name="huge"), "output_dir": str(tmp_path / "huge"),
                      "workers": {"eval_sequence_length": 10**9}})
    store = Store.open(f"sqlite:///{tmp_path / 'evosearch.db'}")
    with pytest.raises(MemoryFitError) as err:
        run_job(spec, store)
    assert str(err.value).startswith("job huge: workers: predicted peak ") and "GiB of host memory per worker " \
        "exceeds the " in str(err.value) and "\n" not in str(err.value)
    assert store.list_jobs() == []
    torch.set_num_threads(1)
