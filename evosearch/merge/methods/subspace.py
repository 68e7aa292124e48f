"""Subspace merges from the literature, from their papers' definitions (evosearch's own: mergekit has none).

Each merges the task vectors ``d_i = w_i (m_i - base)`` of every 2-D tensor (a weight matrix) through its
singular value decomposition and returns ``base + lambda * merged``; a tensor of any other rank takes the
mean of its task vectors, as the papers and FusionBench's implementations do.

* Iso-C (Marczak et al. 2025, "No Task Left Behind: Isotropic Model Merging with Common and Task-Specific
  Subspaces"): the task-arithmetic sum ``D = sum_i d_i = U S V^T`` with its spectrum flattened to the mean
  singular value, ``mean(S) U V^T``, so no direction of the common subspace dominates.
* Iso-CTS (same paper): the top ``common_space_fraction`` of D's singular directions (the common subspace)
  plus, per task, the top directions of ``d_i`` with the common subspace projected out (the task-specific
  subspaces, an equal share each); the bases are orthogonalised (the orthogonal Procrustes factor) and the
  spectrum flattened as in Iso-C.
* TSV-M (Gargiulo et al. 2025, "Task Singular Vectors: Reducing Task Interference in Model Merging"): each
  task vector keeps its top 1/T singular triplets; the concatenated left and right singular vectors are
  decorrelated (replaced by their orthogonal Procrustes factors) and the result is ``U_o S V_o^T``.

A full SVD of a 4096 x 4096 matrix takes tens of seconds on one CPU core and well under a second on a data
centre GPU; `bench/subspace_methods.py` measures it and checks every kernel against FusionBench's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from evosearch.errors import RecipeError
from evosearch.merge.methods.base import MergeMethod, TensorMerge, TensorParameters, number

Combine = Callable[[list[torch.Tensor], Mapping], torch.Tensor]


def orthogonal_factor(matrix: torch.Tensor) -> torch.Tensor:
    """The orthonormal matrix nearest to `matrix` (the polar / orthogonal Procrustes factor ``P Q^T`` of its
    SVD ``P S Q^T``)."""
    p, _, qh = torch.linalg.svd(matrix, full_matrices=False)
    return p @ qh


def iso_c(deltas: list[torch.Tensor], shared: Mapping) -> torch.Tensor:
    u, s, vh = torch.linalg.svd(sum(deltas), full_matrices=False)
    return torch.linalg.multi_dot((u, torch.diag(torch.full_like(s, float(s.mean()))), vh))


def common_and_task_dims(rank: int, tasks: int, common_fraction: float) -> tuple[int, int]:
    """(common directions, directions per task): the task-specific share is rounded to a multiple of the
    number of tasks, so every task gets the same number and the two parts fill the rank."""
    common = int(rank * common_fraction)
    specific = round((rank - common) / tasks) * tasks
    common = rank - specific
    return common, (rank - common) // tasks


def iso_cts(deltas: list[torch.Tensor], shared: Mapping) -> torch.Tensor:
    rank, tasks = min(deltas[0].shape), len(deltas)
    common, per_task = common_and_task_dims(rank, tasks, shared["common_space_fraction"])
    u, s, vh = torch.linalg.svd(sum(deltas), full_matrices=False)
    u_common = u[:, :common]
    us, ss, vhs = [], [], []
    for delta in deltas:
        tu, ts, tvh = torch.linalg.svd(delta - u_common @ (u_common.T @ delta), full_matrices=False)
        us.append(tu[:, :per_task])
        ss.append(ts[:per_task])
        vhs.append(tvh[:per_task])
    spectrum = torch.cat(ss + [s[:common]])
    spread = torch.full_like(spectrum, float(spectrum.mean()))
    left = orthogonal_factor(torch.cat(us + [u_common], dim=1))
    right = orthogonal_factor(torch.cat(vhs + [vh[:common]], dim=0))
    return torch.linalg.multi_dot((left, torch.diag(spread), right))


def tsv_m(deltas: list[torch.Tensor], shared: Mapping) -> torch.Tensor:
    rank = min(deltas[0].shape)
    keep = int(rank * (1 / len(deltas)))
    left = torch.zeros(deltas[0].shape[0], rank, dtype=deltas[0].dtype, device=deltas[0].device)
    right = torch.zeros(rank, deltas[0].shape[1], dtype=deltas[0].dtype, device=deltas[0].device)
    spectrum = torch.zeros(rank, dtype=deltas[0].dtype, device=deltas[0].device)
    for i, delta in enumerate(deltas):
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
        block = slice(i * keep, (i + 1) * keep)
        left[:, block], spectrum[block], right[block] = u[:, :keep], s[:keep], vh[:keep]
    return torch.linalg.multi_dot((orthogonal_factor(left), torch.diag(spectrum), orthogonal_factor(right)))


@dataclass(frozen=True)
class SubspaceMerge(MergeMethod):
    combine: Combine = iso_c

    def check_tensor(self, tensor: str, params: TensorParameters) -> None:
        fraction = params.shared.get("common_space_fraction")
        if fraction is not None and not 0 <= fraction <= 1:
            raise RecipeError(f"parameters.common_space_fraction: {fraction:g} for tensor {tensor} is outside [0, 1]")

    def merge(self, job: TensorMerge) -> torch.Tensor:
        base = job.tensors[job.base]
        deltas = [job.params.per_model[m]["weight"] * (job.tensors.pop(m) - base) for m in job.others]
        if base.dim() == 2:
            merged = self.combine(deltas, job.params.shared)
        else:
            merged = sum(deltas) / len(deltas)
        return base + job.params.shared["lambda"] * merged


_WEIGHT = number("weight", per_model=True, default=1.0, search_range=(0.0, 1.0),
                 doc="scale of the model's task vector before the decomposition")
_LAMBDA = number("lambda", default=1.0, doc="scale of the merged task vector (the papers' alpha)")
_VERIFIED = "checked against FusionBench (bench/subspace_methods.py)"
ISO_C = SubspaceMerge(name="iso_c", parameters=(_WEIGHT, _LAMBDA), combine=iso_c, mergekit=False,
                      verified=_VERIFIED, reference="Marczak et al. 2025, No Task Left Behind (Iso-C)")
ISO_CTS = SubspaceMerge(name="iso_cts", parameters=(
    _WEIGHT, _LAMBDA, number("common_space_fraction", default=0.8, doc="share of the rank given to the common subspace")),
    combine=iso_cts, mergekit=False, verified=_VERIFIED,
    reference="Marczak et al. 2025, No Task Left Behind (Iso-CTS)")
TSV_M = SubspaceMerge(name="tsv_m", parameters=(_WEIGHT, _LAMBDA), combine=tsv_m, mergekit=False,
                      verified=_VERIFIED,
                      reference="Gargiulo et al. 2025, Task Singular Vectors: Reducing Task Interference (TSV-M)")
