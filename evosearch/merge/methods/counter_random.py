"""Counter-based (stateless) random draws for DARE and DELLA.

Whether element j of a task vector survives is a pure function of (the tensor's seed, which task vector,
j): a 32-bit hash of the element index under a key, never a position in a generator's stream. So a
tensor's mask is the same whatever order the tensors are merged in, however the tensor is split into
chunks, however many threads work on it and whatever the device: a candidate built on a GPU worker
equals its export built on a CPU. The hash is two rounds of Wellons' `lowbias32` mixer; the C kernel
(`gta_kernel.c`) computes the same function, and `tests/test_fused_merge.py` holds both to it.
"""

from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF
TWO_32 = 1 << 32
_GOLDEN = 0x9E3779B97F4A7C15
_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + _GOLDEN) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def stream_key(tensor_seed: int, stream: int) -> tuple[int, int]:
    """The two 32-bit key words of one task vector's draws: `stream` numbers the task vectors of a tensor."""
    key = _splitmix64(_splitmix64(tensor_seed) ^ stream)
    return key & MASK32, key >> 32


def probability_threshold(p: float) -> int:
    """An element is kept when its hash is below this: a keep probability of threshold / 2^32."""
    return min(TWO_32, max(0, int(p * TWO_32)))


def _mix32(x: torch.Tensor) -> torch.Tensor:
    # int64 arithmetic on values below 2^32: a product may wrap past 2^63, its low 32 bits stay right.
    x ^= x >> 16
    x.mul_(0x7FEB352D).bitwise_and_(MASK32)
    x ^= x >> 15
    x.mul_(0x846CA68B).bitwise_and_(MASK32)
    x ^= x >> 16
    return x


def counter_hash(key: tuple[int, int], start: int, end: int, device: torch.device) -> torch.Tensor:
    """The 32-bit hashes (as int64) of element indices start..end-1 under `key`."""
    index = torch.arange(start, end, dtype=torch.int64, device=device)
    high = index >> 32
    x = _mix32(index.bitwise_and_(MASK32).bitwise_xor_(key[0]))
    return _mix32(x.bitwise_xor_(high).bitwise_xor_(key[1]))
