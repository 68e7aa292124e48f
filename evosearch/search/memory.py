"""Before a search starts: each worker's peak memory, predicted from the checkpoints' headers, against what
Ray reports the worker can have; a job that cannot fit is refused in one line that says what would fit.

A worker holds, at its peak (building a candidate, then evaluating it):

* sources: every source at the worker's dtype (`workers.dtype`, else as stored) - on the device with
  `workers.resident: device`, in host memory with `host`;
* candidate: one merged model at the recipes' output dtype, on the device;
* build: one tensor's merge buffers, on the device: the largest tensor in float32 for each input plus
  the method's task vectors and result (inputs + 2 copies);
* evaluation: a batch's float32 logits and their log-softmax (batch x sequence x vocabulary, twice)
  and the hidden states a decoder layer keeps alive (about 8 per token and hidden unit);
* runtime: the worker process itself (Python, torch, transformers, lm-eval, Ray), and a CUDA context.

On a CPU worker the device is host memory, so the parts add up into one figure, which the memory bench
(`bench/memory_fit.py`) compares with the measured peak RSS.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

from evosearch.errors import UsageError
from evosearch.merge.dtypes import TORCH_DTYPES
from evosearch.merge.sources import SourceModel, VOCABULARY_TENSOR_SUFFIXES

GIB = 2**30
# Peak RSS of a worker process with a model of a few kB loaded and its lm-eval tasks built, measured on
# CPU (bench/memory_fit.py --smoke); the device's share of a CUDA context.
RUNTIME_HOST_BYTES = int(0.65 * GIB)
CUDA_CONTEXT_BYTES = int(0.5 * GIB)
HIDDEN_STATES_PER_TOKEN = 8  # hidden-size vectors alive per token in a decoder forward pass (float32)


class MemoryFitError(UsageError):
    """A job whose workers cannot fit their memory; one line with the prediction, what is available and
    which setting would fit."""


@dataclass(frozen=True)
class Footprint:
    """What the prediction reads from the sources' headers."""

    source_bytes: list[int]  # per source, at the worker's dtype
    model_elements: int  # elements of one model (the largest source)
    largest_tensor: int  # elements of the largest single tensor
    vocabulary: int
    hidden: int


@dataclass(frozen=True)
class MemoryPrediction:
    """Bytes per part, in host memory and on the device (the device is host memory on a CPU worker)."""

    device_type: str  # "cpu" or "cuda"
    resident: str
    host: dict[str, int] = field(default_factory=dict)
    device: dict[str, int] = field(default_factory=dict)

    @property
    def host_bytes(self) -> int:
        return sum(self.host.values())

    @property
    def device_bytes(self) -> int:
        return sum(self.device.values())

    def describe(self) -> str:
        """One line: the prediction per memory, part by part."""
        def pool(name: str, parts: dict[str, int]) -> str:
            inner = " + ".join(f"{k} {v / GIB:.2f}" for k, v in parts.items() if v)
            return f"{name} {sum(parts.values()) / GIB:.2f} GiB ({inner})"
        pools = [pool("host", self.host)]
        if self.device_type != "cpu":
            pools.append(pool(self.device_type, self.device))
        return f"predicted peak per worker (resident: {self.resident}): " + "; ".join(pools)


def footprint(source_paths: Sequence[str], worker_dtype: Optional[str]) -> Footprint:
    """Sizes from the checkpoints' headers alone (no tensor is read)."""
    resident_itemsize = TORCH_DTYPES[worker_dtype].itemsize if worker_dtype else None
    source_bytes, elements, largest, vocabulary, hidden = [], 0, 0, 0, 0
    for path in source_paths:
        model = SourceModel.open(path)
        total, count = 0, 0
        for name in model.tensor_names():
            shape = model.shape(name)
            n = 1
            for d in shape:
                n *= d
            count += n
            largest = max(largest, n)
            total += n * (resident_itemsize or model.stored_itemsize(name))
            if name.endswith(VOCABULARY_TENSOR_SUFFIXES) and len(shape) == 2:
                vocabulary, hidden = max(vocabulary, shape[0]), max(hidden, shape[1])
        source_bytes.append(total)
        elements = max(elements, count)
    return Footprint(source_bytes, elements, largest, vocabulary, hidden)


def predict(fp: Footprint, *, resident: str, device_type: str, output_dtype: str, batch_size: int,
            sequence_length: int) -> MemoryPrediction:
    inputs = len(fp.source_bytes)
    tokens = batch_size * sequence_length
    on_device = {
        "sources": sum(fp.source_bytes) if resident == "device" else 0,
        "candidate": fp.model_elements * TORCH_DTYPES[output_dtype].itemsize,
        "build": fp.largest_tensor * 4 * (inputs + 2),
        "evaluation": tokens * 4 * (2 * fp.vocabulary + HIDDEN_STATES_PER_TOKEN * fp.hidden),
    }
    host = {"runtime": RUNTIME_HOST_BYTES, "sources": sum(fp.source_bytes) if resident == "host" else 0}
    if device_type == "cpu":
        merged = {k: host.get(k, 0) + on_device.get(k, 0) for k in ("runtime", *on_device)}
        return MemoryPrediction(device_type, resident, host=merged)
    return MemoryPrediction(device_type, resident, host=host,
                            device={"cuda context": CUDA_CONTEXT_BYTES, **on_device})


def check_fits(prediction: MemoryPrediction, available_host: Optional[int], available_device: Optional[int],
               alternative: Optional[MemoryPrediction] = None) -> None:
    """MemoryFitError (one line) when a memory's prediction exceeds what is available (None: not known,
    not checked). `alternative`: the prediction with the other `resident` setting, named when it fits."""
    for name, need, have, other in (
            ("host memory", prediction.host_bytes, available_host, alternative and alternative.host_bytes),
            (f"{prediction.device_type} memory", prediction.device_bytes if prediction.device_type != "cpu" else 0,
             available_device, alternative and alternative.device_bytes)):
        if have is None or need <= have:
            continue
        fits = alternative is not None and alternative.host_bytes <= (available_host or alternative.host_bytes) and (
            alternative.device_type == "cpu" or alternative.device_bytes <= (available_device or alternative.device_bytes))
        hint = (f"workers.resident: {alternative.resident} would fit ({other / GIB:.2f} GiB of {name})" if fits else
                "try fewer or smaller sources, workers.dtype: bfloat16, a smaller workers.batch_size or fewer "
                "workers per node")
        raise MemoryFitError(f"workers: predicted peak {need / GIB:.2f} GiB of {name} per worker exceeds the "
                             f"{have / GIB:.2f} GiB available; {hint}")


def available_per_worker(count: int, num_gpus: float, device_type: str) -> tuple[Optional[int], Optional[int]]:
    """(host, device) bytes one of `count` workers can have: Ray's `memory` resource shared out (capped by
    the largest node's), and the free memory of the CUDA device this process sees times the worker's GPU
    share (None where nothing is known: no Ray, or no CUDA visible here)."""
    import ray  # start-up time: only a job that runs gets here
    import torch  # start-up time

    host = None
    if ray.is_initialized():
        total = ray.available_resources().get("memory")
        largest = max((n["Resources"].get("memory", 0) for n in ray.nodes() if n.get("Alive")), default=0)
        if total:
            host = int(min(total / count, largest or total))
    device = None
    if device_type == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        device = int(free * min(1.0, num_gpus or 1.0))
    return host, device


def job_predictions(spec) -> tuple[MemoryPrediction, MemoryPrediction]:
    """The prediction for a job's `workers` section, and the one with the other `resident` setting."""
    import torch  # start-up time

    w = spec.workers
    device_type = "cuda" if (w.device == "auto" and torch.cuda.is_available()) or w.device.startswith("cuda") else "cpu"
    fp = footprint(spec.source_paths, w.dtype)
    ps = getattr(spec.search_space, "ps", spec.search_space)
    output = getattr(ps, "out_dtype", None) or getattr(ps, "dtype", None) or w.dtype or "float32"
    settings = dict(device_type=device_type, output_dtype=output, batch_size=w.batch_size,
                    sequence_length=w.eval_sequence_length)
    other = "host" if w.resident == "device" else "device"
    return predict(fp, resident=w.resident, **settings), predict(fp, resident=other, **settings)


def check_job_memory(spec) -> str:
    """The prediction line for a job (to print), after refusing it (MemoryFitError) when it cannot fit."""
    prediction, alternative = job_predictions(spec)
    w = spec.workers
    host, device = available_per_worker(w.count, w.num_gpus, prediction.device_type)
    check_fits(prediction, host, device, alternative)
    return prediction.describe()
