"""The generalised task-arithmetic family's merge in one pass over memory.

``out = base + lam * combine_i(w_i * scale_i * keep_i * (m_i - base))``, where each task vector's `Keep`
says which elements survive (a window of magnitude ranks found beforehand, a counter-based draw, or an
explicit mask), so nothing of tensor size is materialised but the output: each element is read once from
every input, its task vectors sparsified, weighted, sign-reconciled (TIES) and summed, and written once.

Two backends compute the same function: a C kernel (`gta_kernel.c`, compiled with the system's C compiler
at first use and cached, float32 on CPU, chunks run on `torch.get_num_threads()` threads), and torch ops
chunk by chunk (any device, float64, or no compiler). Their float operations are the same, one by one,
so their outputs are bit-identical (the tests hold them to it); the environment variable
EVOSEARCH_MERGE_KERNEL=torch forces the torch backend.

Magnitude ranks count from the largest |delta|, with lower element indices first among equal magnitudes:
a rank window is two (threshold, index cut) pairs, found by a radix histogram and a selection inside one
bin, never by sorting the tensor, and the same on every device.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import math
import os
import platform
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from evosearch.merge.methods.counter_random import TWO_32, counter_hash

log = logging.getLogger(__name__)

NONE, RANKS, DRAW, MASK = 0, 1, 2, 3  # Keep.kind, as gta_kernel.c numbers them
CHUNK = 1 << 17  # elements per chunk of the combination: its inputs stay in cache between its steps
_DEVICE_SCRATCH = 1 << 26  # elements of scratch a GPU chunk may hold, over all its task vectors (256 MB in float32)
_BINS = 1 << 15  # histogram bins: the top 16 bits of a non-negative float32
_MAX_MODELS = 64  # the C kernel's per-element scratch
KERNEL_ENV = "EVOSEARCH_MERGE_KERNEL"


@dataclass(frozen=True)
class RankBound:
    """The elements of magnitude rank below r: |d| > threshold, or |d| == threshold and index < cut."""

    threshold: float
    cut: int

    @staticmethod
    def none() -> "RankBound":
        return RankBound(math.inf, 0)

    @staticmethod
    def all() -> "RankBound":
        return RankBound(-1.0, 0)


@dataclass
class Keep:
    """Which elements of one task vector survive, and the factor the survivors are scaled by."""

    kind: int = NONE
    upper: RankBound = RankBound.all()  # RANKS: kept are below `upper` and not below `lower`
    lower: RankBound = RankBound.none()
    key: tuple[int, int] = (0, 0)  # DRAW: counter_hash(key, j) < threshold
    threshold: int = 0
    mask: Optional[torch.Tensor] = None  # MASK: flat bool
    scale: Optional[float] = None


# --- the C kernel --------------------------------------------------------------------------------------
class _KeepSpec(ctypes.Structure):
    _fields_ = [("kind", ctypes.c_int32), ("weight", ctypes.c_float), ("scale", ctypes.c_float),
                ("has_scale", ctypes.c_int32), ("thr_hi", ctypes.c_float), ("thr_lo", ctypes.c_float),
                ("cut_hi", ctypes.c_int64), ("cut_lo", ctypes.c_int64), ("key0", ctypes.c_uint32),
                ("key1", ctypes.c_uint32), ("threshold", ctypes.c_uint64), ("mask", ctypes.c_void_p)]


_SOURCE = Path(__file__).with_name("gta_kernel.c")
# -march=native: vector instructions of this CPU (the cache key names the CPU); no FMA contraction and no
# fast-math, so every float operation rounds as torch's does. On x86, 512-bit vectors where the CPU has them
# (gcc defaults to 256): the counter hash's integer multiplies are the DARE passes' cost.
_FLAGS = ["-O3", "-march=native", *(["-mprefer-vector-width=512"] if platform.machine() in ("x86_64", "AMD64") else []),
          "-shared", "-fPIC", "-ffp-contract=off", "-fno-fast-math", "-std=c99"]
_library: Optional[ctypes.CDLL] = None
_library_failed = False
_pools: dict[int, ThreadPoolExecutor] = {}


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "evosearch" / "kernels"


def _cpu_identity() -> str:
    """The machine and its CPU's feature flags: a kernel built for one CPU is never loaded on another."""
    cpuinfo = Path("/proc/cpuinfo")
    flags = ""
    if cpuinfo.is_file():
        flags = next((line for line in cpuinfo.read_text().splitlines() if line.startswith(("flags", "Features"))), "")
    return f"{platform.machine()} {flags}"


def _compile() -> ctypes.CDLL:
    source = _SOURCE.read_bytes()
    tag = hashlib.sha256(source + " ".join(_FLAGS).encode() + _cpu_identity().encode()).hexdigest()[:16]
    target = _cache_dir() / f"gta_{tag}.so"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        # Compiled beside the target and renamed into place: workers starting together never load half a file.
        fd, partial = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        try:
            subprocess.run([os.environ.get("CC", "cc"), *_FLAGS, str(_SOURCE), "-o", partial, "-lm"],
                           check=True, capture_output=True, timeout=120)
            os.replace(partial, target)
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
    lib = ctypes.CDLL(str(target))
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.magnitude_histogram.argtypes = [ptr, ptr, i64, i64, ptr]
    lib.magnitude_gather.argtypes = [ptr, ptr, i64, i64, ctypes.c_int32, ptr, ptr]
    lib.magnitude_gather.restype = i64
    lib.window_select.argtypes = [ptr, ptr, ctypes.c_int32, ptr, ptr, i64, i64, i64, ptr, ptr, ptr, ptr]
    lib.kept_l1.argtypes = [ptr, ptr, ctypes.POINTER(_KeepSpec), i64, i64, ptr]
    lib.combine.argtypes = [ptr, ptr, ctypes.POINTER(_KeepSpec), ctypes.c_int32, ctypes.c_int32, ctypes.c_int32,
                            ctypes.c_float, ctypes.c_int32, ctypes.c_float, i64, i64, ptr]
    lib.della_mask.argtypes = [ptr, ptr, i64, i64, i64, ctypes.c_double, ctypes.c_double, ctypes.c_uint32,
                               ctypes.c_uint32, ptr]
    lib.della_mask.restype = ctypes.c_int
    lib.counter_hash.argtypes = [ctypes.c_uint32, ctypes.c_uint32, i64]
    lib.counter_hash.restype = ctypes.c_uint32
    return lib


def kernel() -> Optional[ctypes.CDLL]:
    """The compiled C kernel, or None when the torch backend is forced or no compiler could build it."""
    global _library, _library_failed
    if os.environ.get(KERNEL_ENV, "c") == "torch" or _library_failed:
        return None
    if _library is None:
        try:
            _library = _compile()
        except (OSError, subprocess.SubprocessError) as exc:
            _library_failed = True
            log.warning("merge kernel: no C compiler build (%s); merging with torch ops", exc)
            return None
    return _library


def _uses_kernel(*tensors: torch.Tensor) -> Optional[ctypes.CDLL]:
    if all(t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() for t in tensors):
        return kernel()
    return None


def _parallel(numel: int, chunk: int, work) -> list:
    """work(start, end) over the chunks of [0, numel), on torch's thread count, results in chunk order."""
    bounds = [(s, min(s + chunk, numel)) for s in range(0, numel, chunk)]
    threads = torch.get_num_threads()
    if threads <= 1 or len(bounds) <= 1:
        return [work(s, e) for s, e in bounds]
    pool = _pools.get(threads) or _pools.setdefault(threads, ThreadPoolExecutor(threads, "merge-kernel"))
    return list(pool.map(lambda b: work(*b), bounds))


def _torch_chunk(device: torch.device, rows: int, cpu_chunk: int) -> int:
    """Elements per chunk of the torch backend. On CPU, `cpu_chunk` (its inputs stay in cache between its
    steps); on a GPU, each step over a chunk is a kernel launch, so chunks of CHUNK elements would leave the
    launches, not memory, bounding the build: there a chunk takes as many elements as keep the scratch of
    its `rows` task vectors within _DEVICE_SCRATCH. The result does not depend on it: masks are keyed by
    element index, and the chunks only split sums taken in float64."""
    return cpu_chunk if device.type == "cpu" else max(cpu_chunk, _DEVICE_SCRATCH // max(rows, 1))


def _spec(keep: Keep, weight: float) -> _KeepSpec:
    return _KeepSpec(keep.kind, weight, 1.0 if keep.scale is None else keep.scale, keep.scale is not None,
                     keep.upper.threshold, keep.lower.threshold, keep.upper.cut, keep.lower.cut,
                     keep.key[0], keep.key[1], keep.threshold,
                     keep.mask.data_ptr() if keep.mask is not None else None)


# --- magnitude ranks -------------------------------------------------------------------------------------
_SAMPLE_BLOCK, _SAMPLE_STRIDE = 256, 64  # the sample that brackets a bound: every 64th run of 256 elements
_SAMPLE_SIGMAS = 6.0  # the bracket's half-width, in standard errors of the sample's quantile


def rank_bounds(base: torch.Tensor, requests: Sequence[tuple[torch.Tensor, int]]) -> list[RankBound]:
    """For each (model, rank): the bound below which lie the `rank` largest |model - base| (ties: lower
    indices first).

    On the C kernel, a small sample of each |delta| brackets its bound, and one pass over base and every
    model at once counts the elements above each bracket and gathers those inside it; the bound is then
    selected among the few gathered. A bracket that missed (an unlucky sample, a long run of equal
    magnitudes) falls back to an exact radix histogram of that task vector."""
    numel = base.numel()
    bounds: list[Optional[RankBound]] = [
        RankBound.none() if rank <= 0 else RankBound.all() if rank >= numel else None for _, rank in requests]
    todo = [i for i, b in enumerate(bounds) if b is None]
    lib = _uses_kernel(base, *(requests[i][0] for i in todo)) if todo else None
    if lib is not None and numel >= _SAMPLE_BLOCK * _SAMPLE_STRIDE * 64 and len(todo) <= _MAX_MODELS:
        for i, bound in zip(todo, _bracketed_bounds(lib, base, [requests[i] for i in todo])):
            bounds[i] = bound
    for i, bound in enumerate(bounds):
        if bound is None:
            bounds[i] = _exact_bound(base, *requests[i])
    return bounds


def _bracketed_bounds(lib: ctypes.CDLL, base: torch.Tensor, requests: list[tuple[torch.Tensor, int]]
                      ) -> list[Optional[RankBound]]:
    numel, n = base.numel(), len(requests)
    span = _SAMPLE_BLOCK * _SAMPLE_STRIDE
    blocks = numel // span
    flat_base = base.reshape(-1)[:blocks * span].view(blocks, span)[:, :_SAMPLE_BLOCK]
    lo, hi = np.empty(n, dtype=np.float32), np.empty(n, dtype=np.float32)
    size = blocks * _SAMPLE_BLOCK
    widest = 0.0
    for i, (model, rank) in enumerate(requests):
        sample = (model.reshape(-1)[:blocks * span].view(blocks, span)[:, :_SAMPLE_BLOCK] - flat_base).abs_()
        sample = sample.reshape(-1)
        q = rank / numel  # the bound's position, as a share from the top
        half_width = _SAMPLE_SIGMAS * math.sqrt(q * (1 - q) / size) + 2.0 / size
        widest = max(widest, half_width)
        top, bottom = math.floor((q - half_width) * size), math.ceil((q + half_width) * size)
        # kthvalue counts from the smallest, from 1: descending position p is ascending size - p.
        hi[i] = math.inf if top < 0 else float(sample.kthvalue(size - top).values)
        lo[i] = 0.0 if bottom >= size else float(sample.kthvalue(size - bottom).values)
    chunk = max(1 << 20, -(-numel // 64))
    chunks = -(-numel // chunk)
    capacity = int(3 * 2 * widest * chunk) + 4096  # three times the widest bracket's expected share
    values = np.empty((n, chunks, capacity), dtype=np.float32)
    indices = np.empty((n, chunks, capacity), dtype=np.int64)
    above, within = np.zeros((chunks, n), dtype=np.int64), np.zeros((chunks, n), dtype=np.int64)
    pointers = (ctypes.c_void_p * n)(*(m.data_ptr() for m, _ in requests))

    def select(start, end):
        c = start // chunk
        vals = (ctypes.c_void_p * n)(*(values[i, c].ctypes.data for i in range(n)))
        idx = (ctypes.c_void_p * n)(*(indices[i, c].ctypes.data for i in range(n)))
        lib.window_select(base.data_ptr(), pointers, n, lo.ctypes.data, hi.ctypes.data, start, end, capacity,
                          vals, idx, above[c].ctypes.data, within[c].ctypes.data)

    _parallel(numel, chunk, select)
    bounds: list[Optional[RankBound]] = []
    for i, (_, rank) in enumerate(requests):
        count_above, count_within = int(above[:, i].sum()), int(within[:, i].sum())
        if (within[:, i] > capacity).any() or not count_above < rank <= count_above + count_within:
            bounds.append(None)
            continue
        gathered = np.concatenate([values[i, c, :within[c, i]] for c in range(chunks)])
        where = np.concatenate([indices[i, c, :within[c, i]] for c in range(chunks)])
        bounds.append(_bound_among(gathered, where, rank, count_above))
    return bounds


def _bound_among(values: np.ndarray, indices: np.ndarray, rank: int, above: int) -> RankBound:
    """The bound of `rank`, given the `above` elements known larger and the gathered rest in index order."""
    within = rank - above
    threshold = np.partition(values, values.size - within)[values.size - within]
    above += int(np.count_nonzero(values > threshold))
    tied = indices[values == threshold]
    return RankBound(float(threshold), int(tied[rank - above - 1]) + 1)


def _exact_bound(base: torch.Tensor, model: torch.Tensor, rank: int) -> RankBound:
    """`rank_bounds` of one task vector by a radix histogram (C kernel) or torch's selection."""
    numel = base.numel()
    lib = _uses_kernel(base, model)
    if lib is None:
        magnitude = (model - base).abs_().reshape(-1)
        threshold = _kth_largest(magnitude, rank)
        above = int(torch.count_nonzero(magnitude > threshold))
        tied = torch.nonzero(magnitude == threshold).reshape(-1)
        return RankBound(float(threshold), int(tied[rank - above - 1]) + 1)
    # Selection chunks: few enough that their histograms stay small, even for an embedding matrix.
    chunk = max(1 << 20, -(-numel // 64))
    b, m = base.data_ptr(), model.data_ptr()

    def histogram(start, end):
        counts = np.empty(_BINS, dtype=np.int64)
        lib.magnitude_histogram(b, m, start, end, counts.ctypes.data)
        return counts

    per_chunk = np.stack(_parallel(numel, chunk, histogram))
    at_or_above = np.cumsum(per_chunk.sum(axis=0)[::-1])  # [j]: elements in the top j + 1 bins
    j = int(np.searchsorted(at_or_above, rank))
    above_bin = int(at_or_above[j - 1]) if j > 0 else 0
    bin_ = _BINS - 1 - j
    offsets = np.concatenate([[0], np.cumsum(per_chunk[:, bin_])])
    values = np.empty(int(offsets[-1]), dtype=np.float32)
    indices = np.empty(int(offsets[-1]), dtype=np.int64)

    def gather(start, end):
        at = int(offsets[start // chunk])
        lib.magnitude_gather(b, m, start, end, bin_, values[at:].ctypes.data, indices[at:].ctypes.data)

    _parallel(numel, chunk, gather)
    return _bound_among(values, indices, rank, above_bin)


_RADIX_BITS = 16


def _kth_largest(magnitude: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest of a flat tensor of non-negative floats (float32 or float64), by one radix pass.

    Non-negative IEEE floats order like their bit patterns read as integers, so a histogram of the top
    16 bits finds the bin holding the k-th largest, and only that bin (a sliver of the tensor) needs a
    selection."""
    bits = magnitude.view(torch.int32 if magnitude.element_size() == 4 else torch.int64)
    bins = bits >> (8 * magnitude.element_size() - _RADIX_BITS)
    counts = torch.bincount(bins, minlength=1 << (_RADIX_BITS - 1))  # the sign bit is 0: half the range
    at_or_above = counts.flip(0).cumsum(0)
    j = int(torch.searchsorted(at_or_above, k))
    above = int(at_or_above[j - 1]) if j > 0 else 0
    in_bin = magnitude[bins == counts.numel() - 1 - j]
    return in_bin.kthvalue(in_bin.numel() - (k - above) + 1).values


# --- the kept elements ---------------------------------------------------------------------------------
def _keep_chunk(keep: Keep, delta: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """The torch backend's keep mask (bool) of elements start..end-1, given their task vector `delta`."""
    if keep.kind == RANKS:
        magnitude = delta.abs()
        index = torch.arange(start, end, device=delta.device)

        def below(bound: RankBound) -> torch.Tensor:
            return (magnitude > bound.threshold) | ((magnitude == bound.threshold) & (index < bound.cut))

        return below(keep.upper) & ~below(keep.lower)
    if keep.kind == DRAW:
        return counter_hash(keep.key, start, end, delta.device) < keep.threshold
    return keep.mask[start:end]


def della_mask(base: torch.Tensor, model: torch.Tensor, low: float, step: float, key: tuple[int, int]
               ) -> torch.Tensor:
    """DELLA's kept elements (flat bool): element j of a row is kept when counter_hash(key, j) is below
    (low + step * its magnitude rank in the row) * 2^32, ranks from 0 = smallest, equal magnitudes by index
    (a stable sort: the same on every device). Rows are the first dimension (a vector is one row)."""
    rows = 1 if base.dim() < 2 else base.shape[0]
    cols = base.numel() // max(rows, 1)
    lib = _uses_kernel(base, model)
    if lib is None:
        magnitude = (model - base).abs_().reshape(rows, cols)
        order = magnitude.argsort(dim=1, stable=True)
        del magnitude
        ranks = torch.arange(cols, dtype=torch.float64, device=base.device).expand_as(order)
        probability = torch.empty(order.shape, dtype=torch.float64, device=base.device).scatter_(1, order, ranks)
        del order
        threshold = probability.mul_(step).add_(low).mul_(TWO_32).floor_().reshape(-1).to(torch.int64)
        return counter_hash(key, 0, base.numel(), base.device) < threshold
    mask = torch.empty(base.numel(), dtype=torch.bool)

    def rows_of(start, end):
        if lib.della_mask(base.data_ptr(), model.data_ptr(), cols, start, end, low, step, key[0], key[1],
                          mask.data_ptr()):
            raise MemoryError(f"della: no scratch memory for rows of {cols} elements")

    _parallel(rows, max(1, (CHUNK * 8) // max(cols, 1)), rows_of)
    return mask


def l1_rescale_factor(base: torch.Tensor, model: torch.Tensor, keep: Keep, eps: float = 1e-7) -> Optional[float]:
    """sum |d| / sum |kept d| of one task vector (None when either is ~0: nothing to rescale)."""
    numel = base.numel()
    lib = _uses_kernel(base, model)
    if lib is None:
        flat_b, flat_m = base.reshape(-1), model.reshape(-1)

        def sums(start, end):  # left on the device: one synchronisation at the end, not two per chunk
            d = flat_m[start:end] - flat_b[start:end]
            a = d.abs().double()
            return a.sum(), a[_keep_chunk(keep, d, start, end)].sum()

        chunk = _torch_chunk(base.device, 2, CHUNK * 8)
    else:
        spec = _spec(keep, 1.0)

        def sums(start, end):
            out = (ctypes.c_double * 2)()
            lib.kept_l1(base.data_ptr(), model.data_ptr(), ctypes.byref(spec), start, end, out)
            return out[0], out[1]

        chunk = CHUNK * 8
    parts = _parallel(numel, chunk, sums)
    before, after = float(sum(p[0] for p in parts)), float(sum(p[1] for p in parts))
    if before < eps or after < eps:
        return None
    return float(np.float32(before / after))


# --- the combination -----------------------------------------------------------------------------------
def fused_combine(base: torch.Tensor, models: Sequence[torch.Tensor], keeps: Sequence[Keep],
                  weights: Sequence[float], *, sign_consensus: bool, normalize: bool, lam: float) -> torch.Tensor:
    """``base + lam * combine_i(w_i * keep_i(m_i - base))`` (TIES's sign consensus when asked; `normalize`
    divides by the weights that contribute), one element at a time."""
    n, numel = len(models), base.numel()
    w = torch.tensor(list(weights), dtype=base.dtype, device=base.device).reshape(-1, 1)
    divisor = w.sum(dim=0)
    divisor[divisor.abs() < 1e-8] = 1
    out = torch.empty_like(base)
    lib = _uses_kernel(base, *models) if n <= _MAX_MODELS else None
    if lib is not None:
        specs = (_KeepSpec * n)(*(_spec(k, float(x)) for k, x in zip(keeps, w.reshape(-1).tolist())))
        pointers = (ctypes.c_void_p * n)(*(m.data_ptr() for m in models))
        args = (pointers, specs, n, sign_consensus, normalize, float(divisor), lam != 1, lam)
        _parallel(numel, CHUNK, lambda s, e: lib.combine(base.data_ptr(), *args, s, e, out.data_ptr()))
        return out
    flat_base, flat_out = base.reshape(-1), out.reshape(-1)
    flat_models = [m.reshape(-1) for m in models]
    scales = [torch.tensor(k.scale, dtype=base.dtype, device=base.device) if k.scale is not None else None
              for k in keeps]
    chunk = _torch_chunk(base.device, n, CHUNK)
    buffer = torch.empty(n, min(chunk, numel), dtype=base.dtype, device=base.device)
    for start in range(0, numel, chunk):
        end = min(start + chunk, numel)
        d = buffer[:, :end - start]
        for i, model in enumerate(flat_models):
            row = torch.sub(model[start:end], flat_base[start:end], out=d[i])
            if keeps[i].kind != NONE:
                row.mul_(_keep_chunk(keeps[i], row, start, end))
                if scales[i] is not None:
                    row.mul_(scales[i])
        d = d.mul_(w)
        if sign_consensus:
            majority = torch.where(d.sum(dim=0) >= 0, 1.0, -1.0).to(base.dtype)
            agree = d.sign().eq_(majority)  # 1.0 where the sign agrees; zeros (dropped) never do
            mixed = d.mul_(agree).sum(dim=0)
            chunk_divisor = agree.mul_(w).sum(dim=0)
            chunk_divisor[chunk_divisor == 0] = 1
        else:
            mixed, chunk_divisor = d.sum(dim=0), divisor
        if normalize:
            mixed /= chunk_divisor
        if lam != 1:
            mixed *= lam
        torch.add(mixed, flat_base[start:end], out=flat_out[start:end])
    return out
